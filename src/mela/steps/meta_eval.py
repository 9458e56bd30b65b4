"""Evaluate a saved model on few-shot test tasks: 1-shot and 5-shot, mean and 95% CI, per sub-data set."""

from __future__ import annotations

import json

from omegaconf import DictConfig

from mela.data.samplers import TaskShape
from mela.errors import MelaError
from mela.methods.checkpoint import load_feature_model
from mela.methods.evaluator import evaluate_model
from mela.steps import common
from mela.workspace import workspace_root


def run(cfg: DictConfig) -> dict:
    """Evaluate ``pretrained_model`` on ``split`` and write ``results.json`` in the run folder."""
    protocol = common.eval_protocol(cfg, str(cfg.head))
    protocol.head_factory()  # an unknown head fails before anything loads
    producers = (cfg.from_step,) if cfg.get("from_step") else ("fine_tune", "learn_labeler", "sup_baseline",
                                                               "learn_meta_repr")
    spec = common.dataset_spec(cfg)
    path = common.find_model(cfg.pretrained_model, workspace_root(cfg.get("workspace")), producers, str(cfg.dataset))
    if path is None:
        raise MelaError("meta_eval needs a model: set pretrained_model=latest, a run name, a run folder or a file")
    split = common.load_data(cfg, spec, str(cfg.split), workspace_root(cfg.get("workspace")))
    ctx = common.start_run(cfg, "meta_eval", str(cfg.model), resumable=False)
    model, payload = load_feature_model(path, ctx.device)
    if payload["spec"]["backbone"] != cfg.model:
        ctx.log(f"note: model={cfg.model} but {path} holds a {payload['spec']['backbone']}; evaluating the file")
    common.check_feat_dim(cfg.feat_dim, model, payload["spec"]["backbone"])
    rows = []
    shapes = [TaskShape(int(cfg.n_ways), int(k), int(cfg.n_queries)) for k in cfg.shots]
    results = evaluate_model(model, split, shapes, int(cfg.test_db_size), protocol,
                             spec.mean, spec.std, ctx.device)
    for k, result in zip(cfg.shots, results, strict=True):
        rows.append({"shots": int(k), "acc": result.overall.acc, "ci": result.overall.ci,
                     "tasks": result.overall.n_tasks,
                     "per_group": {g: {"acc": a.acc, "ci": a.ci} for g, a in result.per_group.items()}})
        groups = "" if len(result.per_group) < 2 else " | " + ", ".join(
            f"{g} {a.acc:.2f} ± {a.ci:.2f}" for g, a in result.per_group.items())
        ctx.log(f"{cfg.n_ways}-way {k}-shot on {cfg.dataset}/{cfg.split}: {result.overall.acc:.2f} ± "
                f"{result.overall.ci:.2f} (95% CI, {result.overall.n_tasks} tasks){groups}")
    (ctx.run_dir / "results.json").write_text(json.dumps({"model": str(path), "rows": rows}, indent=1))
    return common.finish_run(ctx, {"model": str(path), "rows": rows})
