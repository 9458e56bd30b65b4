"""Step 2: infer global labels from the task pile by clustering, then pre-train on them."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from mela.config import readers
from mela.data.registry import Dataset, DatasetRef, open_dataset
from mela.data.samplers import TaskShape, check_can_sample, labeling_pile
from mela.engine.checkpoint import initial_model, load_feature_model, peek_model
from mela.engine.supervised import SupervisedSettings, train_supervised
from mela.engine.trainer import ReportSettings, check_validation_data
from mela.errors import MelaError
from mela.methods.centroids_io import load_centroids_file
from mela.methods.global_labels import GlobalLabels, infer_global_labels, pile_features
from mela.methods.labeler import LabelerConfig
from mela.models.registry import check_model_name
from mela.runs.store import MODEL_FILE, STEPS, RunSettings, RunStore, start_run
from mela.workspace import data_dir

STEP = "learn_labeler"
CENTROIDS_FILE = "centroids.npz"


@dataclass(frozen=True)
class LearnLabelerSettings:
    """Attributes beyond the usual: the pile the labeler sees (``pile`` shape, ``no_replacement``,
    ``train_db_size``), the clustering (``labeler``), and the model references."""

    run: RunSettings
    dataset: DatasetRef
    label_recovery_model: str
    train_model: str
    feat_dim: int | None
    pretrained_labeler: str | None
    pretrained_centroids: str | None
    pretrained_model: str | None
    pile: TaskShape
    no_replacement: bool
    train_db_size: int
    labeler: LabelerConfig
    training: SupervisedSettings
    config: Mapping


def read_settings(cfg: DictConfig) -> LearnLabelerSettings:
    check_model_name(str(cfg.train_model))
    return LearnLabelerSettings(
        readers.read_run(cfg), readers.read_dataset(cfg), str(cfg.label_recovery_model), str(cfg.train_model),
        readers.read_feat_dim(cfg), readers.model_ref(cfg.pretrained_labeler),
        readers.model_ref(cfg.pretrained_centroids), readers.model_ref(cfg.pretrained_model), readers.read_shape(cfg),
        bool(cfg.no_replacement), int(cfg.train_db_size), readers.read_labeler(cfg),
        readers.read_supervised(cfg, "sup_data_aug", "sup_rotate_aug"), readers.record(cfg))


def load_centroids(ref: str | None, store: RunStore, feat_dim: int, n_ways: int) -> np.ndarray | None:
    """Centroids to reuse: a ``centroids.npz``, or a finished learn_labeler run (name or folder)."""
    if ref is None:
        return None
    path = Path(ref).expanduser()
    if not path.exists():
        path = store.find_model(ref, (STEP,), None).parent
    return load_centroids_file(path, feat_dim, min_count=n_ways)


def show_labeler(run_dir: Path, labels: GlobalLabels, true_classes: np.ndarray | None,
                 report: ReportSettings | None, log: Callable[[str], None]) -> None:
    """What the clustering did, for people: per-pass counts and cluster sizes in TensorBoard, and the labeler's
    plots (passes, cluster sizes, clusters against true classes) in the run folder."""
    if report is None:
        return
    from mela.reporting.metrics import MetricsWriter
    from mela.reporting.plots import cluster_sizes, labeler_plots

    with MetricsWriter(run_dir, STEP, report.tensorboard, log) as writer:
        writer.log_labeler(labels.passes, cluster_sizes(labels.assigned))
    if report.plots:
        labeler_plots(run_dir, labels.passes, labels.assigned, true_classes)


def check_data(settings: LearnLabelerSettings, data: Dataset) -> None:
    """Refuse, before any work, a train split the labelling pile cannot be drawn from, or a small val split."""
    check_can_sample(data.split("train"), settings.pile, f"{STEP}'s labelling tasks on the train split of {data.name}")
    check_validation_data(settings.training.validation, data, STEP)


def run(settings: LearnLabelerSettings, dataset: Dataset | None = None) -> dict:
    """Label the pile with the frozen step-1 model, report, then train ``train_model`` on the inferred labels."""
    store = RunStore(settings.run.workspace)
    data = dataset or open_dataset(settings.dataset, data_dir(store.root))
    labeler_path = store.find_model(settings.pretrained_labeler, ("learn_meta_repr",), data.identity,
                                    settings.label_recovery_model)
    if labeler_path is None:
        raise MelaError("learn_labeler needs the learn_meta_repr model: set pretrained_labeler=latest, a run or a file")
    start = store.find_model(settings.pretrained_model, STEPS, None, settings.train_model)
    train, val = data.split("train"), data.split("val")
    check_data(settings, data)
    peeked = peek_model(labeler_path)
    if peeked.spec.backbone != settings.label_recovery_model:
        raise MelaError(f"label_recovery_model={settings.label_recovery_model} but {labeler_path} holds a "
                        f"{peeked.spec.backbone}; set label_recovery_model={peeked.spec.backbone}")
    centroids = load_centroids(settings.pretrained_centroids, store, peeked.feat_dim, settings.pile.n_ways)
    tasks = labeling_pile(train, settings.pile, settings.no_replacement, settings.train_db_size, settings.run.seed)
    with start_run(settings.run, STEP, data, settings.train_model, settings.config,
                   compute=settings.training.compute) as run:
        labeler_model, _ = load_feature_model(labeler_path, run.device)  # after the seed, as every run does
        run.log(f"labelling {len(tasks)} tasks with {labeler_path}")
        features = pile_features(labeler_model, train, tasks, data.mean, data.std, run.device)
        labels = infer_global_labels(features, settings.labeler, centroids)
        for i, p in enumerate(labels.passes):
            run.log(f"pass {i + 1}: " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in p.items()))
        tmp = run.run_dir / f".{CENTROIDS_FILE}.tmp.npz"
        np.savez(tmp, centroids=labels.centroids)
        os.replace(tmp, run.run_dir / CENTROIDS_FILE)
        report = labels.report(train.labels[tasks[:, :, 0]])
        report.update(mode=settings.labeler.mode, K_initial=settings.labeler.K)
        run.write_json("labeler_report.json", report)
        show_labeler(run.run_dir, labels, train.labels[tasks[:, :, 0]], settings.training.report, run.log)
        ratio = labels.diagnostics.get("distance_ratio")
        run.log(f"label-free: same/different-class key distance {'n/a' if ratio is None else f'{ratio:.2f}'}, "
                f"{100 * labels.diagnostics.get('cannot_link_violation_rate', 0.0):.1f}% of tasks collide on a "
                "centroid")
        if labels.warning:
            run.log(f"WARNING: {labels.warning}")
        run.log(f"{report['clusters']} clusters for {report['true_classes']} true classes, clustering accuracy "
                f"{report['clustering_accuracy']:.3f}, ARI {report['ari']:.3f}, NMI {report['nmi']:.3f}, "
                f"{report['tasks_kept']}/{report['tasks_total']} tasks kept")
        items, inferred = labels.labelled_items(tasks)
        model = initial_model(start, settings.train_model, train.image_shape[-1], settings.feat_dim, run.device,
                              run.log)
        outcome, n_classes = train_supervised(model, train, train.item_images()[items], [inferred], val, data.mean,
                                              data.std, settings.training, run.device, run.run_dir, run.log,
                                              {"step": STEP, "dataset": settings.dataset.name})
        run.publish_model(outcome.chosen)
        summary = {k: report[k] for k in ("clusters", "true_classes", "clustering_accuracy", "ari", "nmi",
                                          "tasks_kept", "tasks_total", "warning")}
        return run.finish({"model": str(run.run_dir / MODEL_FILE), "selected": outcome.chosen.name,
                           "best_val": outcome.best_val, "n_classes": n_classes, "labeler": summary})
