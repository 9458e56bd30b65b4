"""``mela pipeline``: every step on one data set, then the comparison table.

Each step's config is composed once (its yaml, the pipeline's shared settings and
its per-step section) and read into typed settings before anything runs, so a typo
fails before any training. The data set is opened once and every split loaded once,
for all steps. Runs are named after the pipeline run, so rerunning with the same
``run_name`` resumes and skips finished steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mela import distributed
from mela.config import compose_pipeline_step, readers
from mela.data.registry import Dataset, DatasetRef, open_dataset
from mela.data.task_dataset import TaskDataset
from mela.errors import MelaError
from mela.jsonio import write_json_atomic
from mela.models.registry import check_model_name
from mela.reporting.columns import columns_of, row_column
from mela.runlock import RunLock
from mela.runs.store import RunSettings, RunStore, check_reuse
from mela.runs.task_results import PER_TASK_FILE, model_tasks, write_per_task
from mela.steps import meta_eval
from mela.steps.registry import pipeline_steps, step_info
from mela.workspace import data_dir, init_workspace, saves_dir, workspace_root

# The training steps (the step registry's with a results row), in the order they run; each module has
# read_settings, check_data and run.
STEP_MODULES = {info.name: info.load() for info in pipeline_steps()}
TRAINING_STEPS: dict[str, Callable[..., dict]] = {step: module.run for step, module in STEP_MODULES.items()}
# Which trained model each results row evaluates.
EVALUATED = tuple((str(info.pipeline_row), info.name) for info in pipeline_steps())


@dataclass(frozen=True)
class PipelineSettings:
    """Attributes beyond the usual: every step's typed ``steps`` settings, the ``evaluation`` of each model,
    and ``plots`` (``accuracy.png`` and the plots the report embeds)."""

    run: RunSettings
    dataset: DatasetRef
    model: str
    steps: Mapping[str, object]
    evaluation: meta_eval.MetaEvalSettings
    config: Mapping
    plots: bool = True


def read_settings(cfg: DictConfig) -> PipelineSettings:
    """Compose and read every step's config, once; a bad value anywhere fails here."""
    check_model_name(str(cfg.model))
    run_settings = readers.read_run(cfg, "pipeline")
    run_name = run_settings.run_name or f"{cfg.dataset}_{cfg.model}_{time.strftime('%Y%m%d-%H%M%S')}"
    saves = saves_dir(workspace_root(run_settings.workspace))
    # Each step that starts from another's model (learn_labeler, fine_tune) takes that step's run of this pipeline.
    refs = {info.name: {info.model_from[0]: str(saves / info.model_from[1] / run_name)}
            for info in pipeline_steps() if info.model_from is not None}
    steps = {step: module.read_settings(compose_pipeline_step(cfg, step, run_name, refs.get(step)))
             for step, module in STEP_MODULES.items()}
    evaluation = meta_eval.read_settings(compose_pipeline_step(cfg, "meta_eval", run_name))
    config = {**readers.record(cfg), "run_name": run_name}
    return PipelineSettings(RunSettings(run_settings.workspace, run_name, run_settings.device, run_settings.seed,
                                        free_keys=run_settings.free_keys),
                            readers.read_dataset(cfg), str(cfg.model), steps, evaluation, config, bool(cfg.plots))


def results_table(rows: list[dict]) -> str:
    """A plain-text table: one line per model, one column per shot count (and held-out tasks, eval_dataset)."""
    columns = columns_of(rows)
    models = list(dict.fromkeys(r["model"] for r in rows))
    width = max([24] + [len(c) + 16 for c in columns])
    header = f"{'model':<15}" + "".join(f"{f'{c} acc (95% CI)':>{width}}" for c in columns)
    lines = [header, "-" * len(header)]
    for m in models:
        cells = {row_column(r): f"{r['acc']:.2f} ± {r['ci']:.2f}" for r in rows if r["model"] == m}
        lines.append(f"{m:<15}" + "".join(f"{cells.get(c, '-'):>{width}}" for c in columns))
    return "\n".join(lines)


def labeler_line(labeler: Mapping) -> str:
    kept = f"{labeler['tasks_kept']}/{labeler['tasks_total']} tasks kept"
    if labeler.get("true_classes") is None:
        line = f"labeler: {labeler['clusters']} global classes found (no true labels to score them), {kept}"
    else:
        ari = f", ARI {labeler['ari']:.3f}" if labeler.get("ari") is not None else ""
        line = (f"labeler: {labeler['clusters']} clusters for {labeler['true_classes']} true classes, clustering "
                f"accuracy {labeler['clustering_accuracy']:.3f}{ari}, {kept}")
    return line + (f"\nWARNING: {labeler['warning']}" if labeler.get("warning") else "")


def run(settings: PipelineSettings, dataset: Dataset | None = None) -> dict:
    """Run (or resume) the pipeline and write ``results.json``; returns its content plus its ``path``."""
    started = time.time()
    store = RunStore(settings.run.workspace)
    run_name = str(settings.run.run_name)
    pipeline_dir = store.saves / "pipeline" / run_name
    data = dataset or open_dataset(settings.dataset, data_dir(store.root))
    other = meta_eval.open_eval_dataset(settings.evaluation, store)
    check_data(settings, data, other)
    if not distributed.is_main():  # under torchrun rank 0 holds the lock and writes; the others train along
        return _run_steps(settings, store, data, other, pipeline_dir, started)
    init_workspace(store.root)
    with RunLock(pipeline_dir):
        check_reuse(pipeline_dir, settings.config, settings.run.free_keys)  # the same pipeline, never another one
        OmegaConf.save(OmegaConf.create(dict(settings.config)), pipeline_dir / "config.yaml")
        return _run_steps(settings, store, data, other, pipeline_dir, started)


def steps_for(data: Dataset | TaskDataset) -> list[str]:
    """The training steps that run on ``data``: all, except those that need true labels (the oracle) on tasks
    without them."""
    return [step for step in STEP_MODULES if not step_info(step).needs_truth or data.has_truth]


def check_data(settings: PipelineSettings, data: Dataset | TaskDataset, other: Dataset | None = None) -> None:
    """Every step's data needs (training, validation and test tasks), checked before the first step trains."""
    for step in steps_for(data):
        STEP_MODULES[step].check_data(settings.steps[step], data)
    meta_eval.check_data(settings.evaluation, data, other)


def _run_steps(settings: PipelineSettings, store: RunStore, data: Dataset | TaskDataset, other: Dataset | None,
               pipeline_dir: Path, started: float) -> dict:
    run_name = str(settings.run.run_name)
    outcomes: dict[str, dict] = {}
    steps = steps_for(data)
    for step in STEP_MODULES:
        if step not in steps:
            print(f"[pipeline] {step}: skipped (the task collection has no true labels: give tasks_truth=truth.csv "
                  "to train it)")
    for step, step_run in TRAINING_STEPS.items():
        if step not in steps:
            continue
        done = store.finished(step, run_name)
        if done is not None:
            print(f"[pipeline] {step}: already finished in {done['run_dir']}, reusing it")
            outcomes[step] = done
            continue
        print(f"[pipeline] {step} ...")
        outcomes[step] = step_run(settings.steps[step], data)
    rows, per_task, task_sets = [], {}, {}
    for label, step in EVALUATED:
        if step not in steps:
            continue
        eval_name = f"{run_name}_{label}"
        done = store.finished("meta_eval", eval_name)
        if done is None:
            evaluation = settings.evaluation.for_model(eval_name, str(store.run_dir(step, run_name)), settings.model)
            done = meta_eval.run(evaluation, data, other)
        rows += [{"model": label, **{k: r[k] for k in ("shots", "column", "acc", "ci") if k in r}}
                 for r in done["rows"]]
        arrays, tasks = model_tasks(label, done)
        per_task.update(arrays)
        task_sets.update(tasks)
    labeler = outcomes["learn_labeler"].get("labeler")
    if labeler is None:
        raise MelaError(f"the learn_labeler run of {run_name} has no labeler summary; delete it and rerun")
    results = {"dataset": settings.dataset.name, "model": settings.model, "run_name": run_name, "rows": rows,
               "labeler": labeler, "seconds": round(time.time() - started, 1), "task_sets": task_sets}
    path = pipeline_dir / "results.json"
    if not distributed.is_main():
        return {**results, "path": str(path)}
    if per_task:  # every test task's accuracy per model and column, for paired comparisons (mela.experiments)
        results["per_task"] = write_per_task(pipeline_dir / PER_TASK_FILE, per_task).name
    write_json_atomic(path, results)
    report_paths = write_pipeline_report(pipeline_dir, results, settings.plots)
    print()
    print(results_table(rows))
    print(labeler_line(labeler))
    print(f"pipeline time: {results['seconds']:.0f} s")
    for report_path in report_paths:
        print(report_path)
    print(path)  # last: scripts and tests read the results.json path from here
    results["path"] = str(path)
    return results


def write_pipeline_report(pipeline_dir: Path, results: Mapping, plots: bool) -> tuple[Path, Path]:
    """``accuracy.png`` (95 % CIs per model and shot count) and ``report.md`` / ``report.html`` across the
    pipeline's runs, in the pipeline folder."""
    from mela.experiments.aggregate import report_sections
    from mela.reporting import plots as drawing
    from mela.reporting.report import ACCURACY_PNG, write_report

    if plots:
        drawing.pipeline_accuracy(results["rows"], pipeline_dir / ACCURACY_PNG,
                                  title=f"{results['run_name']}: {results['dataset']} / {results['model']}")
    return write_report([pipeline_dir], pipeline_dir, with_plots=plots, more_sections=report_sections)

