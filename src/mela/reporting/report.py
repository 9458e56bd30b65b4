"""``mela report PATH... [--out DIR]``: one Markdown file and one self-contained HTML page across runs.

PATH is a run folder, a pipeline folder, a step folder, a ``saves`` folder, a sweep folder or a workspace. The
report reads only the files runs already write (config.yaml, done.json, results.json, labeler_report.json,
history.json or metrics.csv, log.txt, and any PNG in the run folder), so it works on old runs too.

This module sits in the reporting layer, below the experiments that compare runs: the aggregate over seeds and
the paired comparisons (:func:`mela.experiments.aggregate.report_sections`) come in as ``more_sections`` from
the callers above (``mela report`` in cli.py, the pipeline step).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mela.errors import MelaError
from mela.jsonio import read_json
from mela.reporting.columns import columns_of, row_column
from mela.reporting.sections import Image, Raw, Section, Table, read_config

SAVES = Path("checkpoint") / "label_learn" / "saves"
SWEEP_JSON = "sweep.json"  # a sweep folder's record (written by mela.experiments), listing its jobs' run folders
PIPELINE = "pipeline"
MD_FILE, HTML_FILE, PLOTS_DIR = "report.md", "report.html", "report_plots"
GALLERY_DIR = "report_gallery"  # the full lists of the learn_labeler galleries, beside the report
# The PNG names steps write into their run folders; the report draws the first two itself when they are missing.
CURVES_PNG, PASSES_PNG, ACCURACY_PNG = "learning_curves.png", "labeler_passes.png", "accuracy.png"
# Steps in pipeline order, for sorting; steps not listed here come after, by name.
STEP_ORDER = ("learn_meta_repr", "learn_labeler", "fine_tune", "sup_baseline", "meta_eval")
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ")

# Sections a higher layer adds after the pipelines' (the experiments' aggregate): called with the pipeline
# folders, the meta_eval run folders outside any pipeline, and the plots folder (None: no plots).
MoreSections = Callable[[Sequence[Path], Sequence[Path], Path | None], list]


@dataclass
class Run:
    """What one step run left on disk."""

    path: Path
    step: str
    config: dict = field(default_factory=dict)
    done: dict | None = None
    results: dict | None = None
    labeler: dict | None = None
    history: list[dict] = field(default_factory=list)
    seconds: float | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model(self) -> str:
        return str(self.config.get("train_model") or self.config.get("model") or "")


@dataclass
class Pipeline:
    """A pipeline folder's results.json and config, with the step runs it made."""

    path: Path
    config: dict
    results: dict
    runs: dict[str, Run]  # step -> run; meta_eval runs keyed meta_eval:<row model>

    @property
    def name(self) -> str:
        return self.path.name


# ---------------------------------------------------------------- reading


def _read_json(path: Path) -> dict | list | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MelaError(f"{path} is not valid JSON ({exc.msg}); delete the file or rerun its step") from exc


def wall_seconds(log_lines: Sequence[str], finished: str | None = None) -> float | None:
    """Wall time of a run from its log.txt: the sum of its sessions (a resume starts a new "run folder" line),
    each from its first to its last timestamp; ``finished`` (done.json) closes the last session."""
    sessions: list[list[float]] = []
    for line in log_lines:
        match = _LOG_TIME.match(line)
        if not match:
            continue
        stamp = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S"))
        if "| run folder " in line or not sessions:
            sessions.append([stamp, stamp])
        sessions[-1][1] = stamp
    if finished and sessions:
        try:
            end = time.mktime(time.strptime(finished, "%Y-%m-%dT%H:%M:%S"))
            sessions[-1][1] = max(sessions[-1][1], end)
        except ValueError:
            pass
    return sum(end - start for start, end in sessions) if sessions else None


def read_run(path: Path, step: str | None = None) -> Run:
    """Everything the report shows about one run folder."""
    from mela.reporting.metrics import METRICS_FILE, read_metrics

    done = _read_json(path / "done.json")
    run = Run(path, step or (done or {}).get("step") or path.parent.name, read_config(path / "config.yaml"), done)
    results = _read_json(path / "results.json")
    run.results = results if isinstance(results, dict) else None
    labeler = _read_json(path / "labeler_report.json")
    run.labeler = labeler if isinstance(labeler, dict) else None
    if (path / METRICS_FILE).is_file():
        run.history = read_metrics(path / METRICS_FILE)  # type: ignore[assignment]
    else:
        history = _read_json(path / "history.json")
        run.history = history if isinstance(history, list) else []
    log = path / "log.txt"
    if log.is_file():
        run.seconds = wall_seconds(log.read_text(errors="replace").splitlines(), (done or {}).get("finished"))
    return run


def _run_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / "config.yaml").is_file())


def sweep_run_dirs(path: Path) -> list[Path]:
    """The run folders of a sweep folder's jobs (``mela report SWEEP``), from its ``sweep.json``."""
    record = read_json(path / SWEEP_JSON)
    if not isinstance(record, dict) or not isinstance(record.get("jobs"), list):
        raise MelaError(f"{path / SWEEP_JSON} is not a sweep record; rerun the sweep's command")
    return [Path(j["run_dir"]) for j in record["jobs"] if Path(j["run_dir"]).is_dir()]


def read_pipeline(path: Path) -> Pipeline:
    """A pipeline folder and the runs named after it (``<step>/<name>``, ``meta_eval/<name>_<model>``)."""
    results = _read_json(path / "results.json")
    if not isinstance(results, dict):
        raise MelaError(f"{path} has no results.json: the pipeline did not finish; rerun it with "
                        f"run_name={path.name}")
    saves = path.parent.parent
    runs: dict[str, Run] = {}
    for step_dir in sorted(p for p in saves.iterdir() if p.is_dir() and p.name != PIPELINE):
        if (step_dir / path.name / "config.yaml").is_file():
            runs[step_dir.name] = read_run(step_dir / path.name, step_dir.name)
    for model in dict.fromkeys(str(r["model"]) for r in results.get("rows", [])):
        run_dir = saves / "meta_eval" / f"{path.name}_{model}"
        if (run_dir / "config.yaml").is_file():
            runs[f"meta_eval:{model}"] = read_run(run_dir, "meta_eval")
    return Pipeline(path, read_config(path / "config.yaml"), results, runs)


def discover(paths: Iterable[Path]) -> tuple[list[Pipeline], list[Run]]:
    """Pipelines and runs under ``paths`` (each a workspace, saves, step, pipeline or run folder), deduplicated."""
    pipeline_dirs: dict[Path, bool] = {}  # folder -> given explicitly (then it must have finished)
    run_dirs: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if not path.is_dir():
            raise MelaError(f"{raw} is not a folder; give run folders, pipeline folders or a workspace")
        if (path / SAVES).is_dir():
            path = path / SAVES
        if path.name == "saves" or path.parent.name == "label_learn":
            for step_dir in sorted(p for p in path.iterdir() if p.is_dir()):
                target = pipeline_dirs if step_dir.name == PIPELINE else run_dirs
                target.update(dict.fromkeys(_run_dirs(step_dir), False))
        elif (path / SWEEP_JSON).is_file():  # a sweep folder: its jobs' runs (mela.experiments)
            for job_dir in sweep_run_dirs(path):
                target = pipeline_dirs if job_dir.parent.name == PIPELINE else run_dirs
                target[job_dir.resolve()] = False  # type: ignore[index]
        elif path.parent.name == PIPELINE or ((path / "results.json").is_file() and not (path / "done.json").exists()):
            pipeline_dirs[path] = True
        elif (path / "config.yaml").is_file():
            run_dirs[path] = None
        elif _run_dirs(path):
            target = pipeline_dirs if path.name == PIPELINE else run_dirs
            target.update(dict.fromkeys(_run_dirs(path), False))
        else:
            raise MelaError(f"{raw} holds no run (no config.yaml, results.json or checkpoint/label_learn/saves); "
                            "give run folders, pipeline folders or a workspace")
    pipelines = [read_pipeline(p) for p, explicit in pipeline_dirs.items()
                 if explicit or (p / "results.json").is_file()]
    for pipeline in pipelines:
        run_dirs.update(dict.fromkeys(run.path.resolve() for run in pipeline.runs.values()))
    runs = sorted((read_run(p) for p in run_dirs), key=lambda r: (_step_rank(r.step), str(r.path)))
    if not pipelines and not runs:
        raise MelaError(f"no runs found under {', '.join(str(p) for p in paths)}")
    return pipelines, runs


# ---------------------------------------------------------------- summarising


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested config -> ``{"learn_labeler.epochs": 2, ...}``."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def differing_settings(configs: dict[str, dict], own_names: dict[str, str] | None = None) -> dict[str, dict]:
    """Per run, the config keys whose values are not the same in every run of ``configs`` (name -> config).

    ``run_name`` is left out, and a run's own name inside a value (e.g. a model path) counts as equal, so
    runs are not "different" merely for being named differently. A key missing in a run shows as ``-``.
    """
    if len(configs) < 2:
        return {name: {} for name in configs}
    flat = {name: flatten(cfg) for name, cfg in configs.items()}
    keys = list(dict.fromkeys(k for f in flat.values() for k in f if k != "run_name"))

    def normal(name: str, value: object) -> str:
        own = (own_names or {}).get(name, name)
        text = str(value)
        if not own:
            return text
        # The run's name as the whole value or as the last path component that equals it (``<step>/<run>/...``).
        parts = text.split("/")
        if own in parts:
            parts[len(parts) - 1 - parts[::-1].index(own)] = "<run>"
        return "/".join(parts)

    out: dict[str, dict] = {name: {} for name in configs}
    for key in keys:
        values = {name: normal(name, f[key]) if key in f else None for name, f in flat.items()}
        if len(set(values.values())) > 1:
            for name, f in flat.items():
                out[name][key] = f.get(key, "-")
    return out


def accuracy_cell(acc: float, ci: float) -> str:
    """``61.50 ± 5.32``, the precision of the pipeline's own table."""
    return f"{acc:.2f} ± {ci:.2f}"


def labeler_cell(summary: dict | None) -> str:
    """Counts and agreement of the labeler; a warning in its report is flagged (the sentence is too long for a
    table: it is in labeler_report.json and the run's log)."""
    if not summary:
        return ""
    tasks = f"{summary.get('tasks_kept', '?')}/{summary.get('tasks_total', '?')} tasks"
    warned = ", WARNING in labeler_report.json" if summary.get("warning") else ""
    if summary.get("true_classes") is None:  # a task collection without truth.csv
        return f"{summary.get('clusters', '?')} global classes (no true labels), {tasks}{warned}"
    ari = f", ARI {float(summary['ari']):.3f}" if summary.get("ari") is not None else ""
    return (f"{summary.get('clusters', '?')} clusters / {summary.get('true_classes', '?')} classes, "
            f"acc {float(summary.get('clustering_accuracy', 0.0)):.3f}{ari}, {tasks}{warned}")


def seconds_cell(seconds: float | None) -> str:
    """Wall times come from log timestamps (whole seconds), so they are shown as such."""
    from mela.reporting.progress import format_duration

    if seconds is None:
        return ""
    if seconds < 1:
        return "< 1 s"
    return f"{seconds:.0f} s" if seconds < 60 else format_duration(seconds)


def _short(value: object) -> str:
    """A path inside a saves folder as ``<step>/<run>``: the rest is the same for every run."""
    text = str(value)
    marker = f"/{SAVES.as_posix()}/"
    return text.split(marker, 1)[1] if marker in text else text


def _settings_cell(settings: dict) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in settings.items())


def _step_rank(step: str) -> tuple[int, str]:
    return (STEP_ORDER.index(step) if step in STEP_ORDER else len(STEP_ORDER), step)


def _shots_of(rows: Iterable[dict]) -> list[str]:
    return columns_of(rows)


# ---------------------------------------------------------------- document model and rendering


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, sections: Sequence[Section], out_dir: Path) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for item in section.items:
            if isinstance(item, Table):
                lines.append("| " + " | ".join(_md_cell(h) for h in item.header) + " |")
                lines.append("|" + "|".join("---" for _ in item.header) + "|")
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in item.rows]
            elif isinstance(item, Raw):
                lines.append(item.markdown)
            elif isinstance(item, Image):
                rel = Path(os.path.relpath(item.path, out_dir)).as_posix()
                lines.append(f"![{_md_cell(item.caption)}]({rel})")
            else:
                lines.append(item)
            lines.append("")
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f2f2}figure{margin:1em 0}img{max-width:100%}figcaption{font-size:0.85em;color:#555}"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(title: str, sections: Sequence[Section]) -> str:
    """One page, no external resource: styles inline, images as base64 data URIs; well-formed XML too."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8" />',
             f"<title>{esc(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>", f"<h1>{esc(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{esc(section.title)}</h2>")
        for item in section.items:
            if isinstance(item, Table):
                parts.append("<table>")
                parts.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in item.header) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in item.rows]
                parts.append("</table>")
            elif isinstance(item, Raw):
                parts.append(item.html)
            elif isinstance(item, Image):
                parts.append(f'<figure><img src="{_data_uri(item.path)}" alt="{esc(item.caption)}" />'
                             f"<figcaption>{esc(item.caption)}</figcaption></figure>")
            else:
                parts.append(f"<p>{esc(item)}</p>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


# ---------------------------------------------------------------- building the report


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def pipeline_sections(pipelines: Sequence[Pipeline], plots_dir: Path | None) -> list[Section]:
    """The accuracy table (one row per pipeline and evaluated model) and the per-pipeline summary."""
    if not pipelines:
        return []
    from mela.reporting import plots

    shots = _shots_of(r for p in pipelines for r in p.results.get("rows", []))
    accuracy = Table(["pipeline", "data set", "backbone", "model", *[f"{k} acc (95% CI)" for k in shots]], [])
    for p in pipelines:
        rows = p.results.get("rows", [])
        for model in dict.fromkeys(str(r["model"]) for r in rows):
            cells = {row_column(r): accuracy_cell(float(r["acc"]), float(r["ci"])) for r in rows
                     if str(r["model"]) == model}
            accuracy.rows.append([p.name, str(p.results.get("dataset", "")), str(p.results.get("model", "")), model,
                                  *[cells.get(k, "") for k in shots]])
    steps = sorted(dict.fromkeys(s.split(":")[0] for p in pipelines for s in p.runs), key=_step_rank)
    differ = differing_settings({p.name: p.config for p in pipelines})
    summary = Table(["pipeline", "labeler", *[f"{s} time" for s in steps], "total time", "settings that differ"], [])
    for p in pipelines:
        times = []
        for step in steps:
            seconds = [r.seconds for key, r in p.runs.items() if key.split(":")[0] == step and r.seconds is not None]
            times.append(seconds_cell(sum(seconds)) if seconds else "")
        total = p.results.get("seconds")
        summary.rows.append([p.name, labeler_cell(p.results.get("labeler")), *times,
                             seconds_cell(float(total)) if total is not None else "", _settings_cell(differ[p.name])])
    section = Section("Pipelines", [accuracy, summary])
    for p in pipelines if plots_dir is not None else ():
        existing = p.path / ACCURACY_PNG
        path = existing if existing.is_file() else plots.pipeline_accuracy(
            p.results.get("rows", []), plots_dir / f"pipeline_{_slug(p.name)}_{ACCURACY_PNG}",
            title=f"{p.name}: {p.results.get('dataset', '')} / {p.results.get('model', '')}")
        section.items.append(Image(path, f"{p.name}: test accuracy with 95% CI per model and column"))
    return [section]


def run_sections(runs: Sequence[Run], plots_dir: Path | None, out_dir: Path | None = None) -> list[Section]:
    """One table row per run (status, best validation, test accuracy, labeler, wall time, settings that differ
    from the other runs of its step), then each run's plots; with ``out_dir``, a learn_labeler run's gallery."""
    if not runs:
        return []
    from mela.reporting import plots

    shots = _shots_of(r for run in runs for r in (run.results or {}).get("rows", []))
    differ: dict[str, dict] = {}
    for step in dict.fromkeys(run.step for run in runs):
        group = {str(r.path): r.config for r in runs if r.step == step}
        differ.update(differing_settings(group, {str(r.path): r.name for r in runs if r.step == step}))
    table = Table(["step", "run", "data set", "model", "status", "best val", *[f"{k} test (95% CI)"
                                                                              for k in shots],
                   "labeler", "wall time", "settings that differ"], [])
    section = Section("Runs", [table])
    for run in runs:
        epochs = run.config.get("epochs")
        done_epochs = max((int(float(h["epoch"])) for h in run.history if "epoch" in h), default=0)
        if run.done is not None:
            status = "finished" + (f", {done_epochs} epoch{'s' * (done_epochs != 1)}" if done_epochs else "")
        else:
            status = f"unfinished ({done_epochs}/{epochs} epochs)" if epochs else "unfinished"
        best = (run.done or {}).get("best_val") or {}
        cells = {row_column(r): accuracy_cell(float(r["acc"]), float(r["ci"]))
                 for r in (run.results or {}).get("rows", [])}
        labeler = (run.done or {}).get("labeler") or run.labeler
        table.rows.append([run.step, run.name, str(run.config.get("dataset", "")), run.model, status,
                           ", ".join(f"{k.replace('shot', '-shot')} {float(v):.2f}" for k, v in best.items()),
                           *[cells.get(k, "") for k in shots], labeler_cell(labeler), seconds_cell(run.seconds),
                           _settings_cell(differ.get(str(run.path), {}))])
        if run.step == "learn_labeler" and out_dir is not None:
            section.items += gallery_items(run, out_dir)
        if plots_dir is None:
            continue
        tag = f"{run.step}_{_slug(run.name)}"
        if run.history:
            existing = run.path / CURVES_PNG
            path = existing if existing.is_file() else plots.learning_curves(
                run.history, plots_dir / f"{tag}_{CURVES_PNG}", title=f"{run.step} {run.name}")
            section.items.append(Image(path, f"{run.step} {run.name}: learning curves"))
        if run.labeler and run.labeler.get("passes") and not (run.path / PASSES_PNG).is_file():
            path = plots.labeler_passes(run.labeler["passes"], plots_dir / f"{tag}_{PASSES_PNG}")
            section.items.append(Image(path, f"{run.step} {run.name}: centroids per clustering pass"))
        for png in sorted(run.path.glob("*.png")):
            if png.name != CURVES_PNG:
                section.items.append(Image(png, f"{run.step} {run.name}: {png.stem.replace('_', ' ')}"))
    return [section]


def gallery_items(run: Run, out_dir: Path) -> list[Raw]:
    """A learn_labeler run's gallery (see :mod:`mela.reporting.gallery`): the review view inline, every class
    on pages beside the report (``report_gallery/``)."""
    from mela.reporting.gallery import gallery_html, load_gallery, write_gallery_pages

    gallery = load_gallery(run.path)
    if gallery is None:
        return []
    tag = _slug(f"{run.step}_{run.name}")
    pages = write_gallery_pages(gallery, out_dir / GALLERY_DIR, tag, f"{run.step} {run.name}: every global class")
    hrefs = [Path(os.path.relpath(p, out_dir)).as_posix() for p in pages]
    top = int(run.config.get("gallery_top") or 50)
    title = f"<h3>{html.escape(f'{run.step} {run.name}: the global classes, most doubtful first')}</h3>"
    md = [f"{run.step} {run.name}: {len(gallery.classes)} global classes; most doubtful first (full list: "
          f"{', '.join(hrefs)})", "", "| class | doubt | members |", "|---|---|---|"]
    md += [f"| {c.name} | {c.doubt:.2f} | {c.size} |" for c in gallery.classes[:top]]
    return [Raw(title + gallery_html(gallery, top=top, prefix=f"{tag}-", pages=hrefs), "\n".join(md))]


def write_report(paths: list[Path], out_dir: Path, with_plots: bool = True,
                 more_sections: MoreSections | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (plots in ``report_plots/``) for ``paths`` into ``out_dir``.

    ``with_plots=False`` gives the tables only (fast on a workspace of hundreds of runs): no plot, no gallery.
    ``more_sections`` (e.g. :func:`mela.experiments.aggregate.report_sections`) adds sections after the
    pipelines'; without it the report has no aggregate over seeds.
    """
    pipelines, runs = discover(paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots_dir = out_dir / PLOTS_DIR if with_plots else None
    in_pipelines = {r.path.resolve() for p in pipelines for r in p.runs.values()}
    evals = [r.path for r in runs if r.step == "meta_eval" and r.path.resolve() not in in_pipelines]
    sections = (pipeline_sections(pipelines, plots_dir)
                + (more_sections([p.path for p in pipelines], evals, plots_dir) if more_sections else [])
                + run_sections(runs, plots_dir, out_dir if with_plots else None))
    title = "mela report"
    intro = Section("Sources", [f"{len(pipelines)} pipeline(s) and {len(runs)} run(s) from "
                                f"{', '.join(str(p) for p in paths)}; written {time.strftime('%Y-%m-%d %H:%M:%S')}"])
    md_path, html_path = out_dir / MD_FILE, out_dir / HTML_FILE
    md_path.write_text(render_markdown(title, [intro, *sections], out_dir), encoding="utf-8")
    html_path.write_text(render_html(title, [intro, *sections]), encoding="utf-8")
    return md_path, html_path


def main(argv: list[str], more_sections: MoreSections | None = None) -> int:
    """``mela report PATH... [--out DIR]``: prints the two files' paths (``more_sections``: as
    :func:`write_report`)."""
    parser = argparse.ArgumentParser(prog="mela report", description="A Markdown and a self-contained HTML report "
                                     "across runs: run folders, pipeline folders or a workspace.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    parser.add_argument("--out", type=Path, default=None,
                        help="where report.md and report.html go (default: PATH when there is one, else .)")
    parser.add_argument("--no-plots", action="store_true", help="tables only: no plot is drawn or embedded")
    args = parser.parse_args(argv)
    out = args.out or (args.paths[0] if len(args.paths) == 1 else Path("."))
    md_path, html_path = write_report(args.paths, out, with_plots=not args.no_plots, more_sections=more_sections)
    print(md_path)
    print(html_path)
    return 0
