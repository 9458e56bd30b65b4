"""Step 1: learn a representation from local labels only, with the ridge meta-learner."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from omegaconf import DictConfig

from mela.config import readers
from mela.data.registry import Dataset, DatasetRef, open_dataset
from mela.engine.checkpoint import initial_model, model_metadata
from mela.engine.episodic import EpisodicSettings, check_episodic_data, train_episodic
from mela.models.registry import check_model_name
from mela.runs.store import MODEL_FILE, RunSettings, RunStore, start_run
from mela.steps.registry import model_steps
from mela.workspace import data_dir

STEP = "learn_meta_repr"


@dataclass(frozen=True)
class LearnMetaReprSettings:
    run: RunSettings
    dataset: DatasetRef
    model: str
    feat_dim: int | None
    pretrained_model: str | None
    training: EpisodicSettings
    config: Mapping
    model_options: Mapping = field(default_factory=dict)


def read_settings(cfg: DictConfig) -> LearnMetaReprSettings:
    check_model_name(str(cfg.model))
    return LearnMetaReprSettings(readers.read_run(cfg, STEP), readers.read_dataset(cfg), str(cfg.model),
                                 readers.read_feat_dim(cfg), readers.model_ref(cfg.pretrained_model),
                                 readers.read_episodic(cfg), readers.record(cfg),
                                 model_options=readers.read_model_options(cfg))


def check_data(settings: LearnMetaReprSettings, data: Dataset) -> None:
    """Refuse, before any work, data the step's tasks cannot be drawn from."""
    check_episodic_data(settings.training, data, STEP)


def run(settings: LearnMetaReprSettings, dataset: Dataset | None = None) -> dict:
    """Train, validate, and publish ``model.pt`` (best by validation at ``val_n_shots``)."""
    store = RunStore(settings.run.workspace)
    data = dataset or open_dataset(settings.dataset, data_dir(store.root))
    start = store.find_model(settings.pretrained_model, model_steps(), None, settings.model)
    check_data(settings, data)
    train, val = data.episode_data("train"), data.episode_data("val")
    with start_run(settings.run, STEP, data, settings.model, settings.config,
                   compute=settings.training.compute) as run:
        model = initial_model(start, settings.model, train.image_shape[-1], settings.feat_dim, run.device, run.log,
                              settings.model_options)
        outcome, n_tasks = train_episodic(model, train, val, data.mean, data.std, settings.training, run.device,
                                          run.run_dir, run.log, model_metadata(STEP, data))
        run.publish_model(outcome.chosen)
        return run.finish({"model": str(run.run_dir / MODEL_FILE), "selected": outcome.chosen.name,
                           "best_val": outcome.best_val, "train_tasks": n_tasks})
