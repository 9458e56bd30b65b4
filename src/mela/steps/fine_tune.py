"""Step 3: a residual MLP on the frozen learn_labeler backbone, trained episodically."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from omegaconf import DictConfig

from mela.config import readers
from mela.data.registry import Dataset, DatasetRef, open_dataset
from mela.engine.checkpoint import check_architecture, load_feature_model, model_metadata, peek_model
from mela.engine.episodic import EpisodicSettings, check_episodic_data, train_episodic
from mela.models.feature_model import FeatureModel, ModelSpec, check_feat_dim
from mela.runs.store import MODEL_FILE, RunSettings, RunStore, start_run
from mela.workspace import data_dir

STEP = "fine_tune"


@dataclass(frozen=True)
class FineTuneSettings:
    run: RunSettings
    dataset: DatasetRef
    model: str
    feat_dim: int | None
    pretrained_model: str
    training: EpisodicSettings
    config: Mapping


def read_settings(cfg: DictConfig) -> FineTuneSettings:
    return FineTuneSettings(readers.read_run(cfg, STEP), readers.read_dataset(cfg), str(cfg.model),
                            readers.read_feat_dim(cfg), readers.model_ref(cfg.pretrained_model) or "latest",
                            readers.read_episodic(cfg), readers.record(cfg))


def check_data(settings: FineTuneSettings, data: Dataset) -> None:
    """Refuse, before any work, data the step's tasks cannot be drawn from."""
    check_episodic_data(settings.training, data, STEP)


def run(settings: FineTuneSettings, dataset: Dataset | None = None) -> dict:
    """Load the labeler's model, freeze it, train the MLP on top, publish ``model.pt``."""
    store = RunStore(settings.run.workspace)
    data = dataset or open_dataset(settings.dataset, data_dir(store.root))
    source = store.find_model(settings.pretrained_model, ("learn_labeler",), data.identity, settings.model)
    check_data(settings, data)
    train, val = data.episode_data("train"), data.episode_data("val")
    check_architecture(peek_model(source), settings.model, source)
    with start_run(settings.run, STEP, data, settings.model, settings.config,
                   compute=settings.training.compute) as run:
        base, _ = load_feature_model(source, run.device)  # after the seed: the MLP's initialisation follows it
        run.log(f"fine-tuning on top of {source}")
        model = FeatureModel(ModelSpec(base.spec.backbone, base.spec.backbone_kwargs, residual_mlp=True))
        model.backbone.load_state_dict(base.backbone.state_dict())
        check_feat_dim(settings.feat_dim, model)
        model.freeze_backbone()
        outcome, n_tasks = train_episodic(model, train, val, data.mean, data.std, settings.training, run.device,
                                          run.run_dir, run.log,
                                          model_metadata(STEP, data, base_model=str(source)))
        run.publish_model(outcome.chosen)
        return run.finish({"model": str(run.run_dir / MODEL_FILE), "selected": outcome.chosen.name,
                           "best_val": outcome.best_val, "train_tasks": n_tasks})
