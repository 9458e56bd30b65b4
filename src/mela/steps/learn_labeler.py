"""Step 2: infer global labels from the task pile by clustering, then pre-train on them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from mela.data.base import ImageSplit
from mela.data.samplers import TaskShape, TaskSource
from mela.errors import MelaError
from mela.methods.checkpoint import load_feature_model
from mela.methods.evaluator import extract_features
from mela.methods.labeler import (
    LabelerConfig,
    cluster_features,
    clustering_report,
    key_diagnostics,
    key_spread,
    label_tasks,
    task_keys,
)
from mela.models.registry import check_model_name
from mela.steps import common
from mela.steps.sup_baseline import train_supervised
from mela.workspace import workspace_root

CENTROIDS_FILE = "centroids.npz"


def labeling_tasks(train: ImageSplit, cfg: DictConfig) -> np.ndarray:
    """The fixed task pile the labeler sees (flat tasks: every image of each task, grouped by class)."""
    shape = TaskShape(int(cfg.n_ways), int(cfg.n_shots), int(cfg.n_queries))
    source = TaskSource(train, shape, bool(cfg.no_replacement), True, int(cfg.train_db_size), int(cfg.seed))
    return source.pile() if cfg.no_replacement else source.epoch_tasks(0)


def pile_features(model, train: ImageSplit, tasks: np.ndarray, spec, device) -> np.ndarray:
    """(T, n_ways, per_class, d) features of the pile's images, without augmentation."""
    features = extract_features(model, train.images, spec.mean, spec.std, device).numpy()
    return features[train.item_images()][tasks]


def load_centroids(ref: object, root: Path) -> np.ndarray | None:
    if ref in (None, False, "", "false", "null"):
        return None
    path = Path(str(ref)).expanduser()
    if not path.exists():
        path = common.find_model(ref, root, ("learn_labeler",), None).parent
    if path.is_dir():
        path = path / CENTROIDS_FILE
    if not path.is_file():
        raise MelaError(f"no centroids at {path}; give a centroids.npz or a finished learn_labeler run")
    return np.load(path)["centroids"]


def inferred_split(tasks: np.ndarray, assigned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items of the kept tasks and their inferred labels, renumbered 0..n_clusters-1."""
    kept = (assigned >= 0).all(axis=1)
    items = tasks[kept].reshape(-1)
    clusters = np.repeat(assigned[kept], tasks.shape[2], axis=1).reshape(-1)
    _, labels = np.unique(clusters, return_inverse=True)
    return items, labels


def run(cfg: DictConfig) -> dict:
    """Label the pile with the frozen step-1 model, report, then train ``train_model`` on the inferred labels."""
    check_model_name(cfg.train_model)
    labeler_config = LabelerConfig(K=int(cfg.K), std_factor=float(cfg.std_factor), mode=str(cfg.labeler),
                                   max_passes=int(cfg.max_passes), spawn_factor=float(cfg.spawn_factor),
                                   merge_factor=float(cfg.merge_factor), merge_risk=float(cfg.merge_risk))
    spec = common.dataset_spec(cfg)
    root = workspace_root(cfg.get("workspace"))
    labeler_path = common.find_model(cfg.pretrained_labeler, root, ("learn_meta_repr",), str(cfg.dataset))
    if labeler_path is None:
        raise MelaError("learn_labeler needs the learn_meta_repr model: set pretrained_labeler=latest, a run or a file")
    start = common.find_model(cfg.pretrained_model, root, common.STEPS, None)
    train = common.load_data(cfg, spec, "train", root)
    val = common.load_data(cfg, spec, "val", root)
    ctx = common.start_run(cfg, "learn_labeler", cfg.train_model)
    tasks = labeling_tasks(train, cfg)
    labeler_model, payload = load_feature_model(labeler_path, ctx.device)
    if payload["spec"]["backbone"] != cfg.label_recovery_model:
        raise MelaError(f"label_recovery_model={cfg.label_recovery_model} but {labeler_path} holds a "
                        f"{payload['spec']['backbone']}; set label_recovery_model={payload['spec']['backbone']}")
    ctx.log(f"labelling {len(tasks)} tasks with {labeler_path}")
    item_features = pile_features(labeler_model, train, tasks, spec, ctx.device)
    keys = task_keys(item_features)
    centroids = load_centroids(cfg.pretrained_centroids, ctx.workspace)
    passes: list[dict] = []
    spread = key_spread(item_features)
    if centroids is None:
        clustering = cluster_features(item_features, labeler_config)
        centroids, passes = clustering.centroids, clustering.passes
        spread = clustering.spread or spread
        for i, p in enumerate(passes):
            ctx.log(f"pass {i + 1}: " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in p.items()))
    tmp = ctx.run_dir / f".{CENTROIDS_FILE}.tmp.npz"
    np.savez(tmp, centroids=centroids)
    os.replace(tmp, ctx.run_dir / CENTROIDS_FILE)
    assigned = label_tasks(keys, centroids, labeler_config.mode)
    true_classes = train.labels[tasks[:, :, 0]]
    diagnostics = key_diagnostics(keys, centroids, spread)
    report = clustering_report(assigned, true_classes)
    report.update(centroids=len(centroids), passes=passes, mode=labeler_config.mode, K_initial=labeler_config.K,
                  same_class_key_distance=diagnostics["same_class_key_distance"], diagnostics=diagnostics,
                  warning=diagnostics["warning"])
    (ctx.run_dir / "labeler_report.json").write_text(json.dumps(report, indent=1))
    ratio = diagnostics["distance_ratio"]
    ctx.log(f"label-free: same/different-class key distance {'n/a' if ratio is None else f'{ratio:.2f}'}, "
            f"{100 * diagnostics['cannot_link_violation_rate']:.1f}% of tasks collide on a centroid")
    if diagnostics["warning"]:
        ctx.log(f"WARNING: {diagnostics['warning']}")
    ctx.log(f"{report['clusters']} clusters for {report['true_classes']} true classes, clustering accuracy "
            f"{report['clustering_accuracy']:.3f}, ARI {report['ari']:.3f}, NMI {report['nmi']:.3f}, "
            f"{report['tasks_kept']}/{report['tasks_total']} tasks kept")
    items, labels = inferred_split(tasks, assigned)
    item_images = train.item_images()[items]
    model = common.initial_model(start, cfg.train_model, common.in_channels(train), cfg.feat_dim, ctx)
    result = train_supervised(ctx, cfg, spec, train, item_images, [labels], model, val, bool(cfg.sup_data_aug),
                              bool(cfg.sup_rotate_aug), {"step": "learn_labeler", "dataset": str(cfg.dataset)})
    labeler_summary = {k: report[k] for k in ("clusters", "true_classes", "clustering_accuracy", "ari", "nmi",
                                              "tasks_kept", "tasks_total", "warning")}
    return common.finish_run(ctx, {**result, "labeler": labeler_summary})
