"""The oracle: supervised pre-training with the true global labels."""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from mela.data.base import DatasetSpec, ImageSplit
from mela.methods.supervised import head_sizes, supervised_epoch
from mela.methods.training import Trainer
from mela.models.feature_model import Classifier, FeatureModel
from mela.models.registry import check_model_name
from mela.steps import common
from mela.workspace import workspace_root


def train_supervised(
    ctx: common.RunContext,
    cfg: DictConfig,
    spec: DatasetSpec,
    images_split: ImageSplit,
    item_images: np.ndarray,
    label_sets: list[np.ndarray],
    model: FeatureModel,
    val: ImageSplit,
    data_aug: bool,
    rotate_aug: bool,
    metadata: dict,
) -> dict:
    """Cross-entropy pre-training of ``model`` + linear head(s); shared by sup_baseline and learn_labeler."""
    n_classes = [int(ls.max()) + 1 for ls in label_sets]
    model.to(ctx.device)
    classifier = Classifier(model, head_sizes(n_classes, rotate_aug)).to(ctx.device)
    trainer = Trainer(ctx.run_dir, model, classifier, common.optim_settings(cfg),
                      common.step_validator(ctx, model, val, spec, cfg), ctx.log, metadata)
    ctx.log(f"supervised training on {len(item_images)} images, {n_classes} classes per head, "
            f"data_aug={data_aug} rotate_aug={rotate_aug}")
    epoch_fn = supervised_epoch(classifier, trainer.optimizer, common.images_tensor(images_split, ctx.device),
                                item_images, label_sets, n_classes, common.augmenter(spec, cfg, data_aug),
                                int(cfg.batch_size), ctx.device, int(cfg.seed), rotate_aug, bool(cfg.progress))
    state = trainer.fit(epoch_fn)
    chosen = trainer.select(f"{int(cfg.val_n_shots)}shot")
    common.publish_model(ctx, chosen)
    return {"model": str(ctx.run_dir / common.MODEL_FILE), "selected": chosen.name, "best_val": state.best,
            "n_classes": n_classes}


def true_label_sets(train: ImageSplit) -> tuple[np.ndarray, list[np.ndarray]]:
    """Images and labels to train the oracle on: one head, or one per label set (h_aircraft)."""
    if train.label_sets:
        item_images = np.arange(len(train.images))
        return item_images, [np.asarray(v) for v in train.label_sets.values()]
    return train.item_images(), [train.labels]


def run(cfg: DictConfig) -> dict:
    check_model_name(cfg.model)
    spec = common.dataset_spec(cfg)
    root = workspace_root(cfg.get("workspace"))
    start = common.find_model(cfg.pretrained_model, root, common.STEPS, None)
    train = common.load_data(cfg, spec, "train", root)
    val = common.load_data(cfg, spec, "val", root)
    ctx = common.start_run(cfg, "sup_baseline", cfg.model)
    model = common.initial_model(start, cfg.model, common.in_channels(train), cfg.feat_dim, ctx)
    item_images, label_sets = true_label_sets(train)
    result = train_supervised(ctx, cfg, spec, train, item_images, label_sets, model, val, bool(cfg.data_aug),
                              bool(cfg.rotate_aug), {"step": "sup_baseline", "dataset": str(cfg.dataset)})
    return common.finish_run(ctx, result)
