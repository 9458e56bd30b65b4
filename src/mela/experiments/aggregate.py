"""The aggregate of several evaluated runs (a sweep's jobs, or the runs a report covers).

Runs whose settings differ only in ``seed`` (and names, devices, ...) form one group. Per group, model and
column: the mean accuracy over the runs, its standard deviation over seeds and the mean of the runs' own 95 %
CIs. For every pair of models evaluated on identical tasks: the paired difference (later model minus earlier
one, mean of the per-task differences) with its 95 % CI in each run and pooled over the runs
(:mod:`mela.methods.paired`): the pooled CI covers the sampling of test tasks; the spread of the runs'
differences (sd, and a t interval with the seeds as the sample) covers the training's randomness.
Models evaluated on different tasks, or without per-task accuracies, are never paired: the row says why.
For every setting that varies between groups other than the seed: accuracy against its value, as a table
and a plot with the standard deviation over seeds as error bars.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mela.config.settings import never_defining
from mela.jsonio import read_json, write_json_atomic
from mela.methods.paired import mean_sd, paired_difference, pooled_difference, t_interval
from mela.reporting.columns import columns_of, row_column
from mela.reporting.report import SWEEP_JSON
from mela.reporting.sections import Image, Section, Table, read_config
from mela.runs.store import RECORDED_KEYS
from mela.runs.task_results import PER_TASK_FILE, read_per_task

SWEEP_MD = "sweep.md"  # in a sweep's folder, beside the record (SWEEP_JSON): its table

# Keys that never make two runs "different settings": the seed is what a group aggregates over, the model
# reference of a meta_eval run is what it compares.
NOT_GROUPING = frozenset(never_defining() | RECORDED_KEYS | {"seed", "pretrained_model", "from_step"})


@dataclass(frozen=True)
class Record:
    """One model's result in one column of one run: accuracy, CI, and (when kept) every task's accuracy."""

    acc: float
    ci: float
    per_task: np.ndarray | None = None
    task_set: Mapping | None = None


@dataclass
class Unit:
    """One evaluated run: a pipeline (all its models) or a meta_eval run (one model, named after its model)."""

    name: str
    run_key: str  # models of the same run_key in a group were evaluated together and may be paired
    seed: int | None
    config: dict
    records: dict[tuple[str, str], Record] = field(default_factory=dict)


def _flat(config: Mapping, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _config(path: Path) -> dict:

    return read_config(path / "config.yaml")


def _model_label(ref: object) -> str:
    """A meta_eval run's model as a short name: the run folder's name (``.../learn_labeler/RUN``) or the file."""
    path = Path(str(ref))
    return path.parent.name if path.name == "model.pt" else path.name


def load_unit(path: Path) -> Unit | None:
    """The evaluated results in ``path`` (a pipeline folder or a meta_eval run folder); None when it holds none."""
    path = Path(path)
    results = read_json(path / "results.json") if (path / "results.json").is_file() else None
    if not isinstance(results, dict) or not results.get("rows"):
        return None
    config = _config(path)
    arrays = read_per_task(path / PER_TASK_FILE)
    seed = config.get("seed")
    seed = int(seed) if isinstance(seed, int) else None
    records = {}
    if (path / "done.json").is_file():  # a meta_eval run: one model
        model = _model_label(config.get("pretrained_model") or results.get("model") or path.name)
        for row in results["rows"]:
            column = row_column(row)
            records[(model, column)] = Record(float(row["acc"]), _float(row.get("ci")), arrays.get(column),
                                              row.get("task_set"))
        return Unit(path.name, f"seed {seed}", seed, config, records)
    task_sets = results.get("task_sets") or {}
    for row in results["rows"]:
        key = f"{row['model']}/{row_column(row)}"
        records[(str(row["model"]), row_column(row))] = Record(float(row["acc"]), _float(row.get("ci")),
                                                               arrays.get(key), task_sets.get(key))
    return Unit(path.name, path.name, seed, config, records)


def _float(value: object) -> float:
    return float("nan") if value is None else float(value)  # type: ignore[arg-type]


def varying_keys(units: Sequence[Unit]) -> list[str]:
    """The settings (flattened, e.g. ``learn_labeler.K``) whose values differ between units, seed aside."""
    flats = [_flat(u.config) for u in units]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    out = []
    for key in keys:
        if key.split(".")[-1] in NOT_GROUPING:
            continue
        values = {str(f.get(key)).replace(u.name, "<run>") for f, u in zip(flats, units, strict=True)}
        if len(values) > 1:
            out.append(key)
    return out


def task_set_difference(a: Mapping | None, b: Mapping | None) -> str | None:
    """Why two task sets are not the same tasks (the first field that differs), or None when they are."""
    if a is None or b is None:
        return "no per-task record (a run before 0.3.0: rerun its meta_eval)"
    for key in dict.fromkeys([*a, *b]):
        if a.get(key) != b.get(key):
            return f"evaluated on different tasks ({key}: {a.get(key)} vs {b.get(key)})"
    return None


def _pair(runs: Sequence[tuple[str, Record, Record]]) -> dict:
    """The paired difference (second minus first model) in each run and pooled, or why it is refused."""
    reasons = []
    for _, first, second in runs:
        reason = task_set_difference(first.task_set, second.task_set)
        if reason is None and (first.per_task is None or second.per_task is None):
            reason = "no per-task accuracies (a run before 0.3.0: rerun its meta_eval)"
        if reason is None and len(first.per_task) != len(second.per_task):  # type: ignore[arg-type]
            reason = "evaluated on different numbers of tasks"
        if reason:
            reasons.append(reason)
    if reasons:
        return {"paired": False, "reason": reasons[0]}
    per_run, diffs = [], []
    for label, first, second in runs:
        d = paired_difference(second.per_task, first.per_task)  # type: ignore[arg-type]
        diffs.append(np.asarray(second.per_task) - np.asarray(first.per_task))
        per_run.append({"run": label, "mean": d.mean, "ci": d.ci, "tasks": d.n})
    same = all(r[1].task_set == runs[0][1].task_set and len(r[1].per_task) == len(runs[0][1].per_task)  # type: ignore[arg-type]
               for r in runs)
    pooled = pooled_difference(diffs, same_tasks=same)
    _, sd = mean_sd([r["mean"] for r in per_run])
    over_runs = t_interval(np.array([r["mean"] for r in per_run]))  # the seeds as the sample: training variance
    return {"paired": True, "per_run": per_run,
            "pooled": {"mean": pooled.mean, "ci": pooled.ci, "tasks": pooled.n, "same_tasks": same},
            "sd_over_runs": sd, "ci_over_runs": over_runs.ci}


def _ordered_columns(names: Sequence[str]) -> list[str]:
    """Distinct column names in table order (see :mod:`mela.reporting.columns`)."""
    rows = [{"shots": int(n.split("-")[0]), "column": None} if re.fullmatch(r"\d+-shot", n)
            else {"shots": None, "column": n} for n in names]
    return columns_of(rows)


def aggregate(units: Sequence[Unit]) -> dict:
    """Groups (by the settings that vary, seed aside), each with its models' accuracy over seeds and the
    paired differences of its models; plus, per varying setting, accuracy against its value."""
    swept = varying_keys(units)
    groups: dict[tuple, list[Unit]] = {}
    for unit in units:
        flat = _flat(unit.config)
        groups.setdefault(tuple(str(flat.get(k)) for k in swept), []).append(unit)
    out_groups = []
    for values, members in groups.items():
        models = list(dict.fromkeys(m for u in members for m, _ in u.records))
        columns = _ordered_columns([c for u in members for _, c in u.records])
        accuracy = []
        for model in models:
            for column in columns:
                found = [(u, u.records[(model, column)]) for u in members if (model, column) in u.records]
                if not found:
                    continue
                mean, sd = mean_sd([r.acc for _, r in found])
                accuracy.append({"model": model, "column": column, "runs": len(found), "mean": mean, "sd": sd,
                                 "mean_ci": float(np.nanmean([r.ci for _, r in found]))
                                 if any(np.isfinite(r.ci) for _, r in found) else float("nan"),
                                 "per_run": [{"run": u.name, "seed": u.seed, "acc": r.acc, "ci": r.ci}
                                             for u, r in found]})
        pairs = []
        by_run: dict[str, dict[tuple[str, str], Record]] = {}
        seeds: dict[str, int | None] = {}
        for u in members:
            by_run.setdefault(u.run_key, {}).update(u.records)
            seeds[u.run_key] = u.seed
        for column in columns:
            for i, first in enumerate(models):
                for second in models[i + 1:]:
                    runs = [(f"seed {seeds[k]}" if seeds[k] is not None else k, recs[(first, column)],
                             recs[(second, column)])
                            for k, recs in by_run.items() if (first, column) in recs and (second, column) in recs]
                    if runs:
                        pairs.append({"first": first, "second": second, "column": column, **_pair(runs)})
        out_groups.append({"settings": dict(zip(swept, values, strict=True)),
                           "runs": [u.name for u in members], "accuracy": accuracy, "pairs": pairs})
    return {"swept": swept, "groups": out_groups}


# ---------------------------------------------------------------- tables, plots, files


def _pm(mean: float, half: float, signed: bool = False) -> str:
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return text if not np.isfinite(half) else f"{text} ± {half:.2f}"


def _settings_text(settings: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def aggregate_tables(agg: Mapping) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the aggregate's tables: accuracy over seeds, paired differences, and accuracy
    against each varying setting."""
    several = len(agg["groups"]) > 1
    lead = ["settings"] if several else []
    acc_rows, pair_rows = [], []
    for group in agg["groups"]:
        cell = [_settings_text(group["settings"])] if several else []
        for a in group["accuracy"]:
            acc_rows.append([*cell, a["model"], a["column"], str(a["runs"]), f"{a['mean']:.2f}",
                             "-" if not np.isfinite(a["sd"]) else f"{a['sd']:.2f}",
                             "-" if not np.isfinite(a["mean_ci"]) else f"± {a['mean_ci']:.2f}"])
        for p in group["pairs"]:
            what = f"{p['second']} − {p['first']}"
            if not p["paired"]:
                pair_rows.append([*cell, what, p["column"], f"not paired: {p['reason']}", "", "", ""])
                continue
            runs = "; ".join(f"{r['run']}: {_pm(r['mean'], r['ci'], True)}" for r in p["per_run"])
            pooled = p["pooled"]
            sd, half = p["sd_over_runs"], p["ci_over_runs"]
            seeds = "-" if not np.isfinite(sd) else f"sd {sd:.2f}, 95% CI ± {half:.2f}"
            pair_rows.append([*cell, what, p["column"], runs, _pm(pooled["mean"], pooled["ci"], True), seeds,
                              str(pooled["tasks"])])
    tables = [("Accuracy over seeds (%)", [*lead, "model", "column", "runs", "mean", "sd over seeds",
                                           "mean 95% CI of a run"], acc_rows),
              ("Paired differences (points, 95% CI; the same test tasks for both models)",
               [*lead, "difference", "column", "per run", "pooled over seeds (tasks)", "across seeds",
                "tasks pooled"],
               pair_rows)]
    for key in agg["swept"]:
        rows = []
        for group in agg["groups"]:
            others = _settings_text({k: v for k, v in group["settings"].items() if k != key})
            for a in group["accuracy"]:
                rows.append([str(group["settings"][key]), others, a["model"], a["column"],
                             _pm(a["mean"], a["sd"]), str(a["runs"])])
        tables.append((f"Accuracy against {key} (mean ± sd over seeds)",
                       [key, "other settings", "model", "column", "accuracy", "runs"], rows))
    return tables


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (also readable as plain text)."""
    esc = [[str(c).replace("|", "\\|") for c in row] for row in [header, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in esc[1:]])


def _numeric(values: Sequence[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def plot_against(agg: Mapping, key: str, path: Path) -> Path:
    """Accuracy against the value of ``key``: a line per model, column and other settings, sd over seeds as
    error bars (categorical values are spread evenly in their first-seen order)."""
    from mela.reporting.plots import _save, plt

    lines: dict[str, list[tuple[str, float, float]]] = {}
    for group in agg["groups"]:
        others = _settings_text({k: v for k, v in group["settings"].items() if k != key})
        for a in group["accuracy"]:
            label = f"{a['model']} {a['column']}" + (f" ({others})" if others else "")
            lines.setdefault(label, []).append((str(group["settings"][key]), a["mean"],
                                                a["sd"] if np.isfinite(a["sd"]) else 0.0))
    values = list(dict.fromkeys(v for points in lines.values() for v, _, _ in points))
    numeric = _numeric(values)
    position = dict(zip(values, numeric if numeric is not None else range(len(values)), strict=True))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, points in lines.items():
        points = sorted(points, key=lambda p: position[p[0]])
        ax.errorbar([position[v] for v, _, _ in points], [m for _, m, _ in points], yerr=[s for _, _, s in points],
                    marker="o", capsize=3, label=label)
    if numeric is None:
        ax.set_xticks(range(len(values)), values)
    ax.set_xlabel(key)
    ax.set_ylabel("test accuracy (%), sd over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_name(key: str) -> str:
    return "accuracy_vs_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + ".png"


def aggregate_sections(agg: Mapping, plots_dir: Path | None) -> list:
    """The aggregate as report sections (tables, and a plot per varying setting when ``plots_dir``)."""

    section = Section("Aggregate over seeds and paired comparisons")
    for title, header, rows in aggregate_tables(agg):
        section.items += [title, Table(list(header), [list(r) for r in rows])]
        key = title.removeprefix("Accuracy against ").split(" (")[0]
        if plots_dir is not None and key in agg["swept"]:
            section.items.append(Image(plot_against(agg, key, plots_dir / plot_name(key)), f"accuracy against {key}"))
    return [section]


def units_of(paths: Sequence[Path]) -> list[Unit]:
    """The evaluated runs among ``paths`` (pipeline or meta_eval folders; others are skipped)."""
    return [u for u in (load_unit(Path(p)) for p in paths) if u is not None]


def write_aggregate(sweep_dir: Path, record: dict, run_dirs: Sequence[Path], say: Callable[[str], None] = print,
                    plots: bool = True) -> list[Path]:
    """Aggregate the sweep's runs into ``record`` (then ``sweep.json``) and write ``sweep.md`` (and the plots);
    prints the tables; returns the paths written besides sweep.json."""

    units = units_of(run_dirs)
    agg = aggregate(units) if units else None
    record["aggregate"] = agg
    write_json_atomic(sweep_dir / SWEEP_JSON, record)
    md = [f"# sweep {record['name']}", "", f"`{record['command']}`", ""]
    jobs = [[str(j["index"]), _settings_text(j["swept"]), j["run_name"], j["status"],
             "" if j.get("seconds") is None else f"{j['seconds']:.0f} s"] for j in record["jobs"]]
    md += ["## Jobs", "", text_table(["job", "swept values", "run", "status", "wall time"], jobs), "",
           f"total wall time of the jobs: {record.get('seconds') or 0:.0f} s", ""]
    written = []
    if agg is None:
        md += ["No job has test accuracies (only pipeline and meta_eval runs do)."]
    else:
        for title, header, rows in aggregate_tables(agg):
            md += [f"## {title}", "", text_table(header, rows), ""]
            say(f"\n{title}\n{text_table(header, rows)}")
        for key in agg["swept"] if plots else ():
            path = plot_against(agg, key, sweep_dir / plot_name(key))
            md += [f"![accuracy against {key}]({path.name})", ""]
            written.append(path)
    (sweep_dir / SWEEP_MD).write_text("\n".join(md) + "\n", encoding="utf-8")
    return [*written, sweep_dir / SWEEP_MD]


def report_sections(pipeline_dirs: Sequence[Path], eval_dirs: Sequence[Path], plots_dir: Path | None) -> list:
    """``mela report``'s aggregate: over the pipelines and the meta_eval runs that belong to none; nothing when
    no settings were run with several seeds and no pair of models could be paired (e.g. runs before 0.3.0).
    The callers pass it to :func:`mela.reporting.report.write_report` as ``more_sections``."""
    units = units_of([*pipeline_dirs, *eval_dirs])
    if not units:
        return []
    agg = aggregate(units)
    if not any(len(g["runs"]) > 1 or any(p["paired"] for p in g["pairs"]) for g in agg["groups"]):
        return []
    return aggregate_sections(agg, plots_dir)
