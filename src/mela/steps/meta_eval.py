"""Evaluate a saved model on few-shot test tasks: 1-shot and 5-shot, mean and 95% CI, per sub-data set."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig

from mela import distributed
from mela.config import readers
from mela.data.preprocessing import Preprocessing
from mela.data.registry import Dataset, DatasetRef, open_dataset
from mela.data.samplers import TaskShape, check_can_sample
from mela.data.task_dataset import TaskDataset
from mela.data.tasks import check_scorable
from mela.device import pick_device
from mela.engine.checkpoint import check_architecture, load_feature_model
from mela.engine.precision import Compute, ComputeSettings
from mela.errors import MelaError
from mela.methods.evaluator import EvalProtocol, evaluate_collection, evaluate_model
from mela.models.feature_model import FeatureModel, check_feat_dim
from mela.reporting.columns import HELD_OUT_1SHOT_COLUMN, HELD_OUT_COLUMN, row_column
from mela.runs.store import Run, RunSettings, RunStore, start_run
from mela.runs.task_results import HELD_OUT_SCHEME, PER_TASK_FILE, SHOT_SCHEME, write_per_task
from mela.steps.registry import model_steps
from mela.workspace import data_dir

STEP = "meta_eval"
# The support images per class of each view of the held-out tasks (None: half of the class, at least one).
HELD_OUT_VIEWS = ((HELD_OUT_COLUMN, None), (HELD_OUT_1SHOT_COLUMN, 1))
PRODUCERS = model_steps(refined_first=True)  # where `latest` and a run name look, the most refined model first


@dataclass(frozen=True)
class MetaEvalSettings:
    """Attributes beyond the usual: the task ``shapes`` (one per shot count), ``n_tasks`` per shape, the
    ``split`` evaluated, the test-time ``protocol``, and where ``latest`` looks (``producers``)."""

    run: RunSettings
    dataset: DatasetRef
    model: str
    feat_dim: int | None
    pretrained_model: str | None
    producers: tuple[str, ...]
    split: str
    shapes: tuple[TaskShape, ...]
    n_tasks: int
    protocol: EvalProtocol
    config: Mapping
    eval_dataset: DatasetRef | None = None
    compute: ComputeSettings = field(default_factory=ComputeSettings)

    def for_model(self, run_name: str, model_ref: str, model: str) -> MetaEvalSettings:
        """The same evaluation of another model in another run (how the pipeline evaluates each model)."""
        config = {**self.config, "run_name": run_name, "pretrained_model": model_ref, "model": model}
        return dataclasses.replace(self, run=dataclasses.replace(self.run, run_name=run_name),
                                   pretrained_model=model_ref, model=model, config=config)


def read_settings(cfg: DictConfig) -> MetaEvalSettings:
    if int(cfg.n_ways) < 2:
        raise MelaError(f"n_ways must be at least 2, got {cfg.n_ways}")
    if int(cfg.test_db_size) < 1:
        raise MelaError(f"test_db_size (evaluation tasks per shot count) must be at least 1, got {cfg.test_db_size}")
    producers = (str(cfg.from_step),) if cfg.get("from_step") else PRODUCERS
    shapes = tuple(TaskShape(int(cfg.n_ways), int(k), int(cfg.n_queries)) for k in cfg.shots)
    dataset = readers.read_dataset(cfg)
    eval_dataset = None
    if cfg.get("eval_dataset"):
        name = str(cfg.eval_dataset)
        if name == "tasks":
            raise MelaError("eval_dataset names a data set of labelled images (e.g. glyphs); the held-out tasks of a "
                            "collection are evaluated anyway")
        eval_dataset = dataclasses.replace(dataset, name=name, tasks_path=None)
    return MetaEvalSettings(readers.read_run(cfg, STEP), dataset, str(cfg.model),
                            readers.read_feat_dim(cfg), readers.model_ref(cfg.pretrained_model), producers,
                            str(cfg.split), shapes, int(cfg.test_db_size), readers.read_protocol(cfg, str(cfg.head)),
                            readers.record(cfg), eval_dataset, readers.read_compute(cfg))


def check_data(settings: MetaEvalSettings, data: Dataset | TaskDataset, other: Dataset | None = None) -> None:
    """Refuse, before any work, a split too small for the evaluation tasks (of ``data``, and of ``other``, the
    ``eval_dataset``), or a collection with nothing to evaluate."""
    if isinstance(data, TaskDataset):
        if len(data.indices["test"]):
            check_scorable(data.tasks("test"), "meta_eval's held-out tasks")
        elif other is None:
            raise MelaError("tasks_holdout=0 holds no task out and no eval_dataset is given: nothing to evaluate; "
                            "set tasks_holdout (e.g. 0.1) or eval_dataset=NAME")
    else:
        _check_shapes(settings, data)
    if other is not None:
        _check_shapes(settings, other)
        shape = data.episode_data("train").image_shape
        if tuple(other.split(settings.split).image_shape) != tuple(shape):
            raise MelaError(f"eval_dataset={other.name} has images of shape {other.split(settings.split).image_shape}, "
                            f"the training data {shape}; make them match (image_size=..., "
                            "or a collection made from that data set)")


def _check_shapes(settings: MetaEvalSettings, data: Dataset) -> None:
    split = data.split(settings.split)
    for shape in settings.shapes:
        check_can_sample(split, shape, f"meta_eval's {shape.n_shots}-shot tasks on the {settings.split} split of "
                                       f"{data.name}")


def open_eval_dataset(settings: MetaEvalSettings, store: RunStore) -> Dataset | None:
    """The ``eval_dataset`` to evaluate on besides the main data, or None."""
    if settings.eval_dataset is None:
        return None
    return open_dataset(settings.eval_dataset, data_dir(store.root))


def run(settings: MetaEvalSettings, dataset: Dataset | TaskDataset | None = None,
        eval_dataset: Dataset | None = None) -> dict:
    """Evaluate ``pretrained_model`` on ``split`` and write ``results.json`` in the run folder.

    On a task collection, ``split`` is its held-out tasks, each evaluated inside itself; ``eval_dataset``
    (opened here unless given) adds the usual n-way k-shot rows on that data set's ``split``.
    """
    store = RunStore(settings.run.workspace)
    data = dataset or open_dataset(settings.dataset, data_dir(store.root))
    other = eval_dataset or open_eval_dataset(settings, store)
    path = store.find_model(settings.pretrained_model, settings.producers, data.identity, settings.model)
    if path is None:
        raise MelaError("meta_eval needs a model: set pretrained_model=latest, a run name, a run folder or a file")
    check_data(settings, data, other)
    model, _ = load_feature_model(path, distributed.device_for(pick_device(settings.run.device)))
    check_architecture(model, settings.model, path)
    check_feat_dim(settings.feat_dim, model)
    with start_run(settings.run, STEP, data, settings.model, settings.config, resumable=False,
                   compute=settings.compute) as run:
        model = model.to(run.device)
        compute = settings.compute.resolve(run.device, model.spec.backbone)
        normalised_as = _normalisation(model, data)
        rows = []
        if isinstance(data, TaskDataset):
            if len(data.indices["test"]):
                rows += _held_out_rows(run, settings, data, model, compute, normalised_as)
        else:
            rows += _shot_rows(run, settings, data, normalised_as, model, compute)
        if other is not None:
            rows += _shot_rows(run, settings, other, normalised_as, model, compute, column_prefix=f"{other.name} ")
        if distributed.is_main():  # every task's accuracy, so that models evaluated on the same tasks can be paired
            write_per_task(run.run_dir / PER_TASK_FILE, {row_column(r): r.pop("per_task") for r in rows})
        else:
            for r in rows:
                r.pop("per_task")
        run.write_json("results.json", {"model": str(path), "rows": rows, "per_task": PER_TASK_FILE})
        return run.finish({"model": str(path), "rows": rows})


Normalisation = Preprocessing | Dataset | TaskDataset  # anything with the .mean and .std pixels are normalised by


def _normalisation(model: FeatureModel, data: Dataset | TaskDataset) -> Normalisation:
    """What pixels are normalised with: the model's recorded preprocessing (models since 0.3.0: the statistics of
    the data it was trained on), else the statistics of the data it is evaluated on."""
    return model.preprocessing if isinstance(model.preprocessing, Preprocessing) else data


def _shot_rows(run: Run, settings: MetaEvalSettings, data: Dataset, normalised_as: Normalisation,
               model: FeatureModel, compute: Compute, column_prefix: str = "") -> list[dict]:
    """One row per shot count on ``data``'s split (pixels normalised as the model was trained: ``normalised_as``)."""
    results = evaluate_model(model, data.split(settings.split), list(settings.shapes), settings.n_tasks,
                             settings.protocol, normalised_as.mean, normalised_as.std, run.device, compute)
    rows = []
    for shape, result in zip(settings.shapes, results, strict=True):
        row = {"shots": shape.n_shots, "acc": result.overall.acc, "ci": result.overall.ci,
               "tasks": result.overall.n_tasks,
               "per_group": {g: {"acc": a.acc, "ci": a.ci} for g, a in result.per_group.items()},
               "task_set": {"dataset": data.identity, "split": settings.split, "n_ways": shape.n_ways,
                            "n_shots": shape.n_shots, "n_queries": shape.n_queries, "n_tasks": settings.n_tasks,
                            "scheme": SHOT_SCHEME, "digest": result.tasks_digest},
               "per_task": result.per_task}
        if column_prefix:
            row.update(column=f"{column_prefix}{shape.n_shots}-shot", on=data.name)
        rows.append(row)
        groups = "" if len(result.per_group) < 2 else " | " + ", ".join(
            f"{g} {a.acc:.2f} ± {a.ci:.2f}" for g, a in result.per_group.items())
        run.log(f"{shape.n_ways}-way {shape.n_shots}-shot on {data.name}/{settings.split}: "
                f"{result.overall.acc:.2f} ± {result.overall.ci:.2f} (95% CI, {result.overall.n_tasks} tasks)"
                f"{groups}")
    return rows


def _held_out_rows(run: Run, settings: MetaEvalSettings, data: TaskDataset, model: FeatureModel,
                   compute: Compute, normalised_as: Normalisation) -> list[dict]:
    """Accuracy inside each held-out task, in two views (features extracted once): half of each class's images as
    support, the rest as queries (``held-out tasks``); and one support image per class, the rest of the class as
    queries (``held-out tasks 1-shot``).

    Both views split task ``t`` with ``default_rng([seed, t])``, so every model sees the same support images
    (paired comparisons); the 1-shot support of a class is the first image of the same permutation. A class of one
    image has no query: it stays in the support (a distractor the head must still tell apart) and is not scored;
    a task with no class of two images is left out of both views, so both score the same tasks.
    """
    held_out = data.tasks("test")
    results = evaluate_collection(model, held_out, [shots for _, shots in HELD_OUT_VIEWS], settings.protocol,
                                  normalised_as.mean, normalised_as.std, run.device, seed=settings.run.seed,
                                  compute=compute)
    rows = []
    for (column, shots), result in zip(HELD_OUT_VIEWS, results, strict=True):
        acc = result.accuracy
        left_out = []
        if result.unscored_classes:
            left_out.append(f"{result.unscored_classes} single-image classes not scored (support only)")
        if result.unscored_tasks:
            left_out.append(f"{result.unscored_tasks} tasks without a class of two images left out")
        support = "half of each class" if shots is None else f"{shots} image per class"
        run.log(f"{column} ({held_out.n_tasks} of the collection, each evaluated inside itself, {support} as "
                f"support): {acc.acc:.2f} ± {acc.ci:.2f} (95% CI, {acc.n_tasks} tasks)"
                + (f"; {', '.join(left_out)}" if left_out else ""))
        task_ids = hashlib.sha1(np.ascontiguousarray(result.task_ids, dtype=np.int64).tobytes()).hexdigest()[:16]
        task_set = {"dataset": data.identity, "split": "test", "n_tasks": held_out.n_tasks,
                    "seed": settings.run.seed, "scheme": HELD_OUT_SCHEME, "digest": task_ids}
        if shots is not None:  # the half view's task set keeps its earlier form, so earlier runs still pair with it
            task_set["support_per_class"] = shots
        rows.append({"shots": shots, "column": column, "acc": acc.acc, "ci": acc.ci, "tasks": acc.n_tasks,
                     "unscored_classes": result.unscored_classes, "unscored_tasks": result.unscored_tasks,
                     "task_set": task_set, "per_task": result.per_task})
    return rows
