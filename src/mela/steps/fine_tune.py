"""Step 3: a residual MLP on the frozen learn_labeler backbone, trained episodically."""

from __future__ import annotations

from omegaconf import DictConfig

from mela.methods.checkpoint import load_feature_model
from mela.models.feature_model import FeatureModel, ModelSpec
from mela.steps import common
from mela.steps.learn_meta_repr import check_episodic_config, train_episodic
from mela.workspace import workspace_root


def run(cfg: DictConfig) -> dict:
    """Load the labeler's model, freeze it, train the MLP on top, publish ``model.pt``."""
    check_episodic_config(cfg)
    spec = common.dataset_spec(cfg)
    root = workspace_root(cfg.get("workspace"))
    source = common.find_model(cfg.pretrained_model or "latest", root, ("learn_labeler",), str(cfg.dataset))
    train = common.load_data(cfg, spec, "train", root)
    val = common.load_data(cfg, spec, "val", root)
    ctx = common.start_run(cfg, "fine_tune", cfg.model)
    base, _ = load_feature_model(source, ctx.device)
    ctx.log(f"fine-tuning on top of {source}")
    model = FeatureModel(ModelSpec(base.spec.backbone, base.spec.backbone_kwargs, residual_mlp=True))
    model.backbone.load_state_dict(base.backbone.state_dict())
    common.check_feat_dim(cfg.feat_dim, model, base.spec.backbone)
    model.freeze_backbone()
    result = train_episodic(ctx, cfg, model, spec, train, val,
                            {"step": "fine_tune", "dataset": str(cfg.dataset), "base_model": str(source)})
    return common.finish_run(ctx, result)
