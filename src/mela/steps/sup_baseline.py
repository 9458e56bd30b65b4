"""The oracle: supervised pre-training with the true global labels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig

from mela.config import readers
from mela.data.base import ImageSplit
from mela.data.registry import Dataset, DatasetRef, open_dataset
from mela.data.task_dataset import TaskDataset
from mela.data.tasks import TaskCollection
from mela.engine.checkpoint import initial_model, model_metadata
from mela.engine.supervised import SupervisedSettings, train_supervised
from mela.engine.trainer import check_validation_data
from mela.errors import MelaError
from mela.models.registry import check_model_name
from mela.runs.store import MODEL_FILE, RunSettings, RunStore, start_run
from mela.steps.registry import model_steps
from mela.workspace import data_dir

STEP = "sup_baseline"


@dataclass(frozen=True)
class SupBaselineSettings:
    run: RunSettings
    dataset: DatasetRef
    model: str
    feat_dim: int | None
    pretrained_model: str | None
    training: SupervisedSettings
    config: Mapping
    model_options: Mapping = field(default_factory=dict)


def read_settings(cfg: DictConfig) -> SupBaselineSettings:
    check_model_name(str(cfg.model))
    return SupBaselineSettings(readers.read_run(cfg, STEP), readers.read_dataset(cfg), str(cfg.model),
                               readers.read_feat_dim(cfg), readers.model_ref(cfg.pretrained_model),
                               readers.read_supervised(cfg), readers.record(cfg),
                               model_options=readers.read_model_options(cfg))


def true_label_sets(train: ImageSplit | TaskCollection) -> tuple[np.ndarray, list[np.ndarray]]:
    """Images and labels to train the oracle on: one head, or one per label set (h_aircraft); for a task
    collection, every item of the training tasks with its true global class from ``truth.csv``."""
    if isinstance(train, TaskCollection):
        _, labels = np.unique(train.class_truth[train.item_class], return_inverse=True)
        return train.item_image, [labels.astype(np.int64)]
    if train.label_sets:
        item_images = np.arange(len(train.images))
        return item_images, [np.asarray(v) for v in train.label_sets.values()]
    return train.item_images(), [train.labels]


def check_data(settings: SupBaselineSettings, data: Dataset | TaskDataset) -> None:
    """Refuse, before any work, a val split too small for the validation tasks, or tasks without true labels."""
    if not data.has_truth:
        raise MelaError("sup_baseline trains on the true global labels, and this task collection has none: give "
                        "tasks_truth=truth.csv (task,local_label,global_label), or skip the oracle")
    check_validation_data(settings.training.validation, data, STEP)


def run(settings: SupBaselineSettings, dataset: Dataset | TaskDataset | None = None) -> dict:
    store = RunStore(settings.run.workspace)
    data = dataset or open_dataset(settings.dataset, data_dir(store.root))
    start = store.find_model(settings.pretrained_model, model_steps(), None, settings.model)
    check_data(settings, data)
    train, val = data.episode_data("train"), data.episode_data("val")
    with start_run(settings.run, STEP, data, settings.model, settings.config,
                   compute=settings.training.compute) as run:
        model = initial_model(start, settings.model, train.image_shape[-1], settings.feat_dim, run.device, run.log,
                              settings.model_options)
        item_images, label_sets = true_label_sets(train)
        outcome, n_classes = train_supervised(model, train, item_images, label_sets, val, data.mean, data.std,
                                              settings.training, run.device, run.run_dir, run.log,
                                              model_metadata(STEP, data))
        run.publish_model(outcome.chosen)
        return run.finish({"model": str(run.run_dir / MODEL_FILE), "selected": outcome.chosen.name,
                           "best_val": outcome.best_val, "n_classes": n_classes})
