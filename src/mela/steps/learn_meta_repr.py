"""Step 1: learn a representation from local labels only, with the ridge meta-learner."""

from __future__ import annotations

from omegaconf import DictConfig

from mela.data.samplers import TaskShape, TaskSource
from mela.errors import MelaError
from mela.methods.episodic import RidgeLossSettings, episodic_epoch
from mela.methods.training import Trainer
from mela.models.registry import check_model_name
from mela.steps import common
from mela.workspace import workspace_root


def check_episodic_config(cfg: DictConfig) -> None:
    if cfg.sample_shape != "few_shot":
        raise MelaError(f"{cfg.logger_name} trains on few_shot tasks; sample_shape={cfg.sample_shape} is not "
                        "possible here (flat tasks are what learn_labeler reads)")
    if cfg.hinge_mask not in ("fixed", "reference"):
        raise MelaError(f"hinge_mask must be fixed or reference, got {cfg.hinge_mask}")
    if int(cfg.tasks_per_step) < 1:
        raise MelaError(f"tasks_per_step must be at least 1, got {cfg.tasks_per_step}")


def train_episodic(ctx: common.RunContext, cfg: DictConfig, model, spec, train, val, metadata: dict) -> dict:
    """Shared by learn_meta_repr and fine_tune: episodic ridge training with validation and checkpoints."""
    shape = TaskShape(int(cfg.n_ways), int(cfg.n_shots), int(cfg.n_queries))
    source = TaskSource(train, shape, bool(cfg.no_replacement), bool(cfg.fixed_db), int(cfg.train_db_size),
                        int(cfg.seed))
    how = "fixed pile, no replacement" if cfg.no_replacement else "drawn"
    ctx.log(f"{len(source)} training tasks per epoch ({how}), {train.n_classes} classes, {train.n_items} images")
    model.to(ctx.device)
    trainer = Trainer(ctx.run_dir, model, model, common.optim_settings(cfg),
                      common.step_validator(ctx, model, val, spec, cfg), ctx.log, metadata)
    loss = RidgeLossSettings(float(cfg.lam), bool(cfg.normalize_lam), bool(cfg.extra_reg), str(cfg.hinge_mask))
    epoch_fn = episodic_epoch(model, trainer.optimizer, source, shape, common.images_tensor(train, ctx.device),
                              train.item_images(), common.augmenter(spec, cfg, bool(cfg.data_aug)), loss, ctx.device,
                              int(cfg.seed), bool(cfg.rotate_aug), int(cfg.tasks_per_step), bool(cfg.progress))
    state = trainer.fit(epoch_fn)
    chosen = trainer.select(f"{int(cfg.val_n_shots)}shot")
    common.publish_model(ctx, chosen)
    return {"model": str(ctx.run_dir / common.MODEL_FILE), "selected": chosen.name, "best_val": state.best,
            "train_tasks": len(source)}


def run(cfg: DictConfig) -> dict:
    """Train, validate, and publish ``model.pt`` (best by validation at ``val_n_shots``)."""
    check_episodic_config(cfg)
    check_model_name(cfg.model)
    spec = common.dataset_spec(cfg)
    root = workspace_root(cfg.get("workspace"))
    start = common.find_model(cfg.pretrained_model, root, common.STEPS, None)
    train = common.load_data(cfg, spec, "train", root)
    val = common.load_data(cfg, spec, "val", root)
    ctx = common.start_run(cfg, "learn_meta_repr", cfg.model)
    model = common.initial_model(start, cfg.model, common.in_channels(train), cfg.feat_dim, ctx)
    result = train_episodic(ctx, cfg, model, spec, train, val,
                            {"step": "learn_meta_repr", "dataset": str(cfg.dataset)})
    return common.finish_run(ctx, result)
