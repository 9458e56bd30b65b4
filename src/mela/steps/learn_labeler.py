"""Step 2: infer global labels from the task pile by clustering, then pre-train on them."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from mela import distributed
from mela.config import readers
from mela.data.base import ImageSplit
from mela.data.registry import Dataset, DatasetRef, open_dataset
from mela.data.samplers import TaskShape, check_can_sample, labeling_pile
from mela.data.task_dataset import TaskDataset
from mela.data.tasks import TaskCollection
from mela.engine.checkpoint import initial_model, load_feature_model, peek_model
from mela.engine.supervised import SupervisedSettings, train_supervised
from mela.engine.trainer import ReportSettings, check_validation_data
from mela.errors import MelaError
from mela.methods.centroids_io import load_centroids_file
from mela.methods.collection_labels import (
    collection_image_features,
    ragged_features,
    write_global_labels,
)
from mela.methods.collection_labels import labelled_items as collection_labelled_items
from mela.methods.global_labels import GlobalLabels, infer_global_labels, pile_features
from mela.methods.labeler import LabelerConfig
from mela.models.feature_model import FeatureModel
from mela.models.registry import check_model_name
from mela.runs.store import MODEL_FILE, STEPS, Run, RunSettings, RunStore, start_run
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


def check_data(settings: LearnLabelerSettings, data: Dataset | TaskDataset) -> None:
    """Refuse, before any work, a train split the labelling pile cannot be drawn from, or a small val split."""
    if not isinstance(data, TaskDataset):
        check_can_sample(data.split("train"), settings.pile,
                         f"{STEP}'s labelling tasks on the train split of {data.name}")
    check_validation_data(settings.training.validation, data, STEP)


def run(settings: LearnLabelerSettings, dataset: Dataset | TaskDataset | None = None) -> dict:
    """Label the pile with the frozen step-1 model, report, then train ``train_model`` on the inferred labels.

    On a task collection the pile is its training tasks as given, and the labels are also written per task
    class (``global_labels.csv``) and per global class (``global_classes.json``).
    """
    store = RunStore(settings.run.workspace)
    data = dataset or open_dataset(settings.dataset, data_dir(store.root))
    labeler_path = store.find_model(settings.pretrained_labeler, ("learn_meta_repr",), data.identity,
                                    settings.label_recovery_model)
    if labeler_path is None:
        raise MelaError("learn_labeler needs the learn_meta_repr model: set pretrained_labeler=latest, a run or a file")
    start = store.find_model(settings.pretrained_model, STEPS, None, settings.train_model)
    check_data(settings, data)
    peeked = peek_model(labeler_path)
    if peeked.spec.backbone != settings.label_recovery_model:
        raise MelaError(f"label_recovery_model={settings.label_recovery_model} but {labeler_path} holds a "
                        f"{peeked.spec.backbone}; set label_recovery_model={peeked.spec.backbone}")
    on_tasks = isinstance(data, TaskDataset)
    min_ways = int(data.tasks("train").ways.max()) if on_tasks else settings.pile.n_ways
    centroids = load_centroids(settings.pretrained_centroids, store, peeked.feat_dim, min_ways)
    pile = None if on_tasks else labeling_pile(data.split("train"), settings.pile, settings.no_replacement,
                                               settings.train_db_size, settings.run.seed)
    with start_run(settings.run, STEP, data, settings.train_model, settings.config,
                   compute=settings.training.compute) as run:
        labeler_model, _ = load_feature_model(labeler_path, run.device)  # after the seed, as every run does
        if on_tasks:
            images, item_images, inferred, report = _label_collection(run, settings, data, labeler_model, labeler_path,
                                                                      centroids)
        else:
            images, item_images, inferred, report = _label_pile(run, settings, data, pile, labeler_model,
                                                                labeler_path, centroids)
        model = initial_model(start, settings.train_model, images.image_shape[-1], settings.feat_dim, run.device,
                              run.log)
        outcome, n_classes = train_supervised(model, images, item_images, [inferred], data.episode_data("val"),
                                              data.mean, data.std, settings.training, run.device, run.run_dir,
                                              run.log, {"step": STEP, "dataset": settings.dataset.name})
        run.publish_model(outcome.chosen)
        summary = {k: report.get(k) for k in ("clusters", "true_classes", "clustering_accuracy", "ari", "nmi",
                                              "purity", "tasks_kept", "tasks_total", "warning")}
        return run.finish({"model": str(run.run_dir / MODEL_FILE), "selected": outcome.chosen.name,
                           "best_val": outcome.best_val, "n_classes": n_classes, "labeler": summary})


def _label_pile(run: Run, settings: LearnLabelerSettings, data: Dataset, tasks: np.ndarray, model: FeatureModel,
                labeler_path: Path, centroids: np.ndarray | None) -> tuple[ImageSplit, np.ndarray, np.ndarray, dict]:
    """Cluster a sampled pile of a base data set; returns its images, the labelled items' rows and labels, and
    the report."""
    train = data.split("train")
    run.log(f"labelling {len(tasks)} tasks with {labeler_path}")
    features = pile_features(model, train, tasks, data.mean, data.std, run.device)  # every rank its share
    labelled = None
    if distributed.is_main():  # the labeler is sequential: it runs once, and its labels go to every rank
        labels = infer_global_labels(features, settings.labeler, centroids, run.device)
        report = _publish_labels(run, settings, labels, train.labels[tasks[:, :, 0]])
        items, inferred = labels.labelled_items(tasks)
        labelled = (train.item_images()[items], inferred, report)
    item_images, inferred, report = distributed.broadcast_object(labelled)
    return train, item_images, inferred, report


def _label_collection(run: Run, settings: LearnLabelerSettings, data: TaskDataset, model: FeatureModel,
                      labeler_path: Path, centroids: np.ndarray | None
                      ) -> tuple[TaskCollection, np.ndarray, np.ndarray, dict]:
    """Cluster the training tasks of a collection as given, and write the labels per task class and class."""
    train = data.tasks("train")
    run.log(f"labelling {train.n_tasks} tasks ({train.n_classes} task classes) with {labeler_path}")
    image_features = collection_image_features(model, train, data.mean, data.std, run.device)  # every rank
    labelled = None
    if distributed.is_main():  # the labeler is sequential: it runs once, and its labels go to every rank
        labels = infer_global_labels(ragged_features(train, image_features), settings.labeler, centroids,
                                     run.device)
        report = _publish_labels(run, settings, labels, train.class_truth)
        csv_path, json_path = write_global_labels(run.run_dir, train, labels.assigned, labels.key_distances)
        run.log(f"wrote {csv_path.name} (global class of each task class) and {json_path.name} (members of each "
                "global class)")
        labelled = (*collection_labelled_items(train, labels), report)
    item_images, inferred, report = distributed.broadcast_object(labelled)
    return train, item_images, inferred, report


def _publish_labels(run: Run, settings: LearnLabelerSettings, labels: GlobalLabels,
                    true_classes: np.ndarray | None) -> dict:
    """Log the passes and diagnostics, save the centroids, write ``labeler_report.json`` and the plots."""
    for i, p in enumerate(labels.passes):
        run.log(f"pass {i + 1}: " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in p.items()))
    tmp = run.run_dir / f".{CENTROIDS_FILE}.tmp.npz"
    np.savez(tmp, centroids=labels.centroids)
    os.replace(tmp, run.run_dir / CENTROIDS_FILE)
    report = labels.report(true_classes)
    report.update(mode=settings.labeler.mode, K_initial=settings.labeler.K)
    run.write_json("labeler_report.json", report)
    show_labeler(run.run_dir, labels, true_classes, settings.training.report, run.log)
    ratio = labels.diagnostics.get("distance_ratio")
    run.log(f"label-free: same/different-class key distance {'n/a' if ratio is None else f'{ratio:.2f}'}, "
            f"{100 * labels.diagnostics.get('cannot_link_violation_rate', 0.0):.1f}% of tasks collide on a "
            "centroid")
    if labels.diagnostics.get("same_class_distance_source") == "images+keys":
        shared = labels.diagnostics["shared_key_noise"] / (0.5 * labels.diagnostics["same_class_key_distance"] ** 2)
        run.log(f"the images of one local class share {100 * shared:.0f}% of a key's noise (one session, background "
                "or font per local class?): the same-class spread is measured from the keys, not the images")
    check = labels.diagnostics.get("count_check")
    if check:
        run.log(f"count check: {check['clusters_lower']} clusters with K={check['K_lower']}, {check['clusters']} "
                f"with K={check['K']} (slope {check['slope']:.2f}; near 0 the data set the count, near 1 K did); "
                f"the two labellings agree at ARI {check['agreement']:.3f}")
    if labels.warning:
        run.log(f"WARNING: {labels.warning}")
    if true_classes is None:
        run.log(f"{report['clusters']} global classes found, {report['tasks_kept']}/{report['tasks_total']} tasks "
                "kept (no true labels to score them against: give truth.csv to get ARI / NMI / purity)")
    else:
        run.log(f"{report['clusters']} clusters for {report['true_classes']} true classes, clustering accuracy "
                f"{report['clustering_accuracy']:.3f}, ARI {report['ari']:.3f}, NMI {report['nmi']:.3f}, "
                f"{report['tasks_kept']}/{report['tasks_total']} tasks kept")
    return report
