"""Evaluate a saved model on few-shot test tasks: 1-shot and 5-shot, mean and 95% CI, per sub-data set."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from omegaconf import DictConfig

from mela.config import readers
from mela.data.registry import Dataset, DatasetRef, open_dataset
from mela.data.samplers import TaskShape, check_can_sample
from mela.device import pick_device
from mela.engine.checkpoint import check_architecture, load_feature_model
from mela.engine.precision import ComputeSettings
from mela.errors import MelaError
from mela.methods.evaluator import EvalProtocol, evaluate_model
from mela.models.feature_model import check_feat_dim
from mela.runs.store import RunSettings, RunStore, start_run
from mela.workspace import data_dir

STEP = "meta_eval"
PRODUCERS = ("fine_tune", "learn_labeler", "sup_baseline", "learn_meta_repr")


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
    return MetaEvalSettings(readers.read_run(cfg), readers.read_dataset(cfg), str(cfg.model),
                            readers.read_feat_dim(cfg), readers.model_ref(cfg.pretrained_model), producers,
                            str(cfg.split), shapes, int(cfg.test_db_size), readers.read_protocol(cfg, str(cfg.head)),
                            readers.record(cfg), readers.read_compute(cfg))


def check_data(settings: MetaEvalSettings, data: Dataset) -> None:
    """Refuse, before any work, a split too small for the evaluation tasks."""
    split = data.split(settings.split)
    for shape in settings.shapes:
        check_can_sample(split, shape, f"meta_eval's {shape.n_shots}-shot tasks on the {settings.split} split of "
                                       f"{data.name}")


def run(settings: MetaEvalSettings, dataset: Dataset | None = None) -> dict:
    """Evaluate ``pretrained_model`` on ``split`` and write ``results.json`` in the run folder."""
    store = RunStore(settings.run.workspace)
    data = dataset or open_dataset(settings.dataset, data_dir(store.root))
    path = store.find_model(settings.pretrained_model, settings.producers, data.identity, settings.model)
    if path is None:
        raise MelaError("meta_eval needs a model: set pretrained_model=latest, a run name, a run folder or a file")
    check_data(settings, data)
    model, _ = load_feature_model(path, pick_device(settings.run.device))
    check_architecture(model, settings.model, path)
    check_feat_dim(settings.feat_dim, model)
    split = data.split(settings.split)
    with start_run(settings.run, STEP, data, settings.model, settings.config, resumable=False,
                   compute=settings.compute) as run:
        results = evaluate_model(model.to(run.device), split, list(settings.shapes), settings.n_tasks,
                                 settings.protocol, data.mean, data.std, run.device,
                                 settings.compute.resolve(run.device, model.spec.backbone))
        rows = []
        for shape, result in zip(settings.shapes, results, strict=True):
            rows.append({"shots": shape.n_shots, "acc": result.overall.acc, "ci": result.overall.ci,
                         "tasks": result.overall.n_tasks,
                         "per_group": {g: {"acc": a.acc, "ci": a.ci} for g, a in result.per_group.items()}})
            groups = "" if len(result.per_group) < 2 else " | " + ", ".join(
                f"{g} {a.acc:.2f} ± {a.ci:.2f}" for g, a in result.per_group.items())
            run.log(f"{shape.n_ways}-way {shape.n_shots}-shot on {settings.dataset.name}/{settings.split}: "
                    f"{result.overall.acc:.2f} ± {result.overall.ci:.2f} (95% CI, {result.overall.n_tasks} tasks)"
                    f"{groups}")
        run.write_json("results.json", {"model": str(path), "rows": rows})
        return run.finish({"model": str(path), "rows": rows})
