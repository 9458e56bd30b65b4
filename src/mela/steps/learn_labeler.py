"""Step 2: infer global labels from the task pile by clustering, then pre-train on them."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
from mela.engine.checkpoint import initial_model, load_feature_model, model_metadata, peek_model
from mela.engine.supervised import SupervisedSettings, train_supervised
from mela.engine.trainer import ReportSettings, check_validation_data
from mela.errors import MelaError
from mela.methods.centroids_io import load_centroids_file
from mela.methods.collection_labels import GLOBAL_LABELS_FILE, ragged_features, write_global_classes
from mela.methods.doubt import labels_doubt, precision_at, truth_flags
from mela.methods.global_labels import GlobalLabels, infer_global_labels
from mela.methods.label_views import LabellingViews, collection_view_features, pile_view_features
from mela.methods.labeler import LabelerConfig, RaggedFeatures, clustering_report, key_spread
from mela.methods.labels_file import (
    ClassIndex,
    LabelsFile,
    cluster_names,
    read_labels_file,
    training_labels,
    write_labels_file,
)
from mela.models.feature_model import FeatureModel
from mela.models.registry import check_model_name
from mela.runs.store import MODEL_FILE, Run, RunSettings, RunStore, start_run
from mela.steps.registry import model_steps
from mela.workspace import data_dir

STEP = "learn_labeler"
CENTROIDS_FILE = "centroids.npz"


@dataclass(frozen=True)
class LabelsSettings:
    """Where the labels come from and how they are shown: ``global_labels`` (an edited ``global_labels.csv``
    replaces the clustering; None: cluster), ``allow_shared`` (a task may give two of its local classes one
    global class), ``gallery_top`` (doubtful classes in the gallery's review view), ``gallery`` (build it)."""

    global_labels: str | None = None
    allow_shared: bool = False
    gallery_top: int = 50
    gallery: bool = True

    def __post_init__(self) -> None:
        if self.gallery_top < 0:
            raise MelaError(f"gallery_top must be zero or positive, got {self.gallery_top}")


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
    labels: LabelsSettings = field(default_factory=LabelsSettings)
    model_options: Mapping = field(default_factory=dict)  # for train_model
    views: LabellingViews = field(default_factory=LabellingViews)  # data_aug, rotate_aug: the labelling features

    def __post_init__(self) -> None:
        if self.labels.global_labels and self.pretrained_centroids:
            raise MelaError("global_labels and pretrained_centroids both give the labels; set one of them (the other "
                            "to false)")


def read_settings(cfg: DictConfig) -> LearnLabelerSettings:
    check_model_name(str(cfg.train_model))
    labels = LabelsSettings(readers.model_ref(cfg.get("global_labels")), bool(cfg.get("global_labels_allow_shared")),
                            int(cfg.get("gallery_top", 50)), bool(cfg.get("gallery", True)))
    return LearnLabelerSettings(
        readers.read_run(cfg, STEP), readers.read_dataset(cfg), str(cfg.label_recovery_model), str(cfg.train_model),
        readers.read_feat_dim(cfg), readers.model_ref(cfg.pretrained_labeler),
        readers.model_ref(cfg.pretrained_centroids), readers.model_ref(cfg.pretrained_model), readers.read_shape(cfg),
        bool(cfg.no_replacement), int(cfg.train_db_size), readers.read_labeler(cfg),
        readers.read_supervised(cfg, "sup_data_aug", "sup_rotate_aug"), readers.record(cfg), labels,
        readers.read_model_options(cfg, "train_model"),
        LabellingViews(readers.read_augment(cfg, "data_aug"), bool(cfg.rotate_aug), int(cfg.seed)))


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
    start = store.find_model(settings.pretrained_model, model_steps(), None, settings.train_model)
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
    if settings.labels.global_labels:  # a bad file is refused before any work
        read_labels_file(settings.labels.global_labels, class_index(data, pile), settings.labels.allow_shared)
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
                              run.log, settings.model_options)
        outcome, n_classes = train_supervised(model, images, item_images, [inferred], data.episode_data("val"),
                                              data.mean, data.std, settings.training, run.device, run.run_dir,
                                              run.log, model_metadata(STEP, data))
        run.publish_model(outcome.chosen)
        summary = {k: report.get(k) for k in ("clusters", "true_classes", "clustering_accuracy", "ari", "nmi",
                                              "purity", "tasks_kept", "tasks_total", "warning")}
        return run.finish({"model": str(run.run_dir / MODEL_FILE), "selected": outcome.chosen.name,
                           "best_val": outcome.best_val, "n_classes": n_classes, "labeler": summary})


def class_index(data: Dataset | TaskDataset, pile: np.ndarray | None) -> ClassIndex:
    """The task classes a labels file names: a collection's training tasks, or a sampled ``pile``'s."""
    if isinstance(data, TaskDataset):
        train = data.tasks("train")
        return ClassIndex.from_names(train.task_ids, train.class_names, train.task_offsets)
    return ClassIndex.from_pile(pile, data.identity)


def _views_note(views: LabellingViews) -> str:
    """How the labelling features see the images, for the log (nothing for the plain images)."""
    seen = [what for what, on in (("augmented views (data_aug)", views.augment.enabled),
                                  ("the mean of 4 rotations (rotate_aug)", views.rotations)) if on]
    return f", features from {' and '.join(seen)}" if seen else ""


def _label_pile(run: Run, settings: LearnLabelerSettings, data: Dataset, tasks: np.ndarray, model: FeatureModel,
                labeler_path: Path, centroids: np.ndarray | None) -> tuple[ImageSplit, np.ndarray, np.ndarray, dict]:
    """Cluster a sampled pile of a base data set (or read its labels from a file); returns its images, the
    labelled items' rows and labels, and the report."""
    train = data.split("train")
    run.log(f"labelling {len(tasks)} tasks with {labeler_path}{_views_note(settings.views)}")
    features = pile_view_features(model, train, tasks, data.mean, data.std, run.device, settings.views)  # per rank
    labelled = None
    if distributed.is_main():  # the labeler is sequential: it runs once, and its labels go to every rank
        index = class_index(data, tasks)
        rows = train.item_images()[tasks.reshape(len(index.class_names), -1)]  # (task classes, m) image rows
        labels, report = _labels(run, settings, features, index, train.labels[tasks[:, :, 0]].reshape(-1), centroids,
                                 lambda k: train.images[rows[k, 0]])
        keep = labels >= 0
        labelled = (rows[keep].reshape(-1), np.repeat(labels[keep], rows.shape[1]), report)
    item_images, inferred, report = distributed.broadcast_object(labelled)
    return train, item_images, inferred, report


def _label_collection(run: Run, settings: LearnLabelerSettings, data: TaskDataset, model: FeatureModel,
                      labeler_path: Path, centroids: np.ndarray | None
                      ) -> tuple[TaskCollection, np.ndarray, np.ndarray, dict]:
    """Cluster the training tasks of a collection as given (or read their labels from a file), and write the
    labels per task class and class."""
    train = data.tasks("train")
    run.log(f"labelling {train.n_tasks} tasks ({train.n_classes} task classes) with {labeler_path}"
            f"{_views_note(settings.views)}")
    image_features = collection_view_features(model, train, data.mean, data.std, run.device, settings.views)
    labelled = None
    if distributed.is_main():  # the labeler is sequential: it runs once, and its labels go to every rank
        index = class_index(data, None)
        first = train.item_image[train.class_offsets[:-1]]
        labels, report = _labels(run, settings, ragged_features(train, image_features), index, train.class_truth,
                                 centroids, lambda k: train.images[first[k]])
        item_labels = np.repeat(labels, train.class_sizes)
        keep = item_labels >= 0
        labelled = (train.item_image[keep], item_labels[keep], report)
    item_images, inferred, report = distributed.broadcast_object(labelled)
    return train, item_images, inferred, report


def _labels(run: Run, settings: LearnLabelerSettings, features: np.ndarray | RaggedFeatures, index: ClassIndex,
            true_classes: np.ndarray | None, centroids: np.ndarray | None,
            image_of: Callable[[int], np.ndarray]) -> tuple[np.ndarray, dict]:
    """The global class of every task class (clustered, or from ``global_labels``), written as
    ``global_labels.csv``, ``global_classes.json`` and the gallery; returns the training label of each task
    class (-1: left out) and the labeler report."""
    edited = None
    if settings.labels.global_labels:
        edited = read_labels_file(settings.labels.global_labels, index, settings.labels.allow_shared)
        names, inferred = edited.names, np.where(edited.inferred != "", edited.inferred, edited.names)
        labels = GlobalLabels(np.zeros((0, 1)), training_labels(names), diagnostics=_file_diagnostics(features),
                              task_offsets=index.task_offsets)
        report = _publish_file_labels(run, edited, labels, true_classes, index)
    else:
        labels = infer_global_labels(features, settings.labeler, centroids, run.device)
        names = inferred = cluster_names(labels.assigned)
        flat_true = None if true_classes is None else np.asarray(true_classes).reshape(labels.assigned.shape)
        report = _publish_labels(run, settings, labels, flat_true)
    train_labels = training_labels(names)
    doubt = labels_doubt(features, GlobalLabels(labels.centroids, train_labels, diagnostics=labels.diagnostics,
                                                task_offsets=index.task_offsets))
    distances = labels.key_distances.reshape(-1) if edited is None and labels.key_distances is not None else (
        _member_distance(features, train_labels))
    write_labels_file(run.run_dir / GLOBAL_LABELS_FILE, index, names, distances, inferred)
    write_global_classes(run.run_dir, index, names, _class_sizes(features))
    run.log(f"wrote {GLOBAL_LABELS_FILE} (global class of each task class; edit it and give it back as "
            "global_labels=FILE to correct the labels) and global_classes.json (members of each global class)")
    flags = None if true_classes is None else truth_flags(doubt.member_class, np.asarray(true_classes).reshape(-1),
                                                          len(doubt.labels))
    precision = None if flags is None else precision_at(doubt.score, flags.wrong)
    if settings.labels.gallery:
        _write_gallery(run, settings, index, names, doubt, doubt.member_distance, image_of, flags, precision,
                       "file" if edited else "inferred")
    if precision is not None:
        report["doubt_precision"] = precision
        run.log(f"doubt: of the {precision['top']} most doubtful global classes, {100 * precision['precision']:.0f}% "
                f"are mixed or split by the true labels ({100 * precision['base_rate']:.0f}% of all classes are)")
        run.write_json("labeler_report.json", report)
    return train_labels, report


def _write_gallery(run: Run, settings: LearnLabelerSettings, index: ClassIndex, names: np.ndarray, doubt,
                   distance: np.ndarray, image_of: Callable[[int], np.ndarray], flags, precision: dict | None,
                   source: str) -> None:
    """The gallery of the global classes: ``gallery.json``, ``gallery_thumbs.npz``, ``gallery.html``."""
    from mela.reporting.gallery import build_gallery, save_gallery, write_gallery_html

    class_names = np.empty(len(doubt.labels), dtype=object)
    task_of = index.class_task
    members: list[list] = [[] for _ in range(len(doubt.labels))]
    for k in np.flatnonzero(doubt.member_class >= 0).tolist():
        p = int(doubt.member_class[k])
        class_names[p] = names[k]
        members[p].append((index.task_ids[task_of[k]], index.class_names[k], float(distance[k]), k))
    gallery = build_gallery(class_names, members, doubt, image_of, flags, source=source, precision=precision)
    save_gallery(run.run_dir, gallery)
    page = write_gallery_html(gallery, run.run_dir, f"{STEP} {run.run_dir.name}: global classes",
                              settings.labels.gallery_top)
    top = ", ".join(f"{c.name} ({c.doubt:.1f})" for c in gallery.classes[:5])
    run.log(f"wrote {page.name}: the global classes as thumbnails, most doubtful first ({top}); "
            f"`mela labels doubtful {run.run_dir}` lists them")


def _class_sizes(features: np.ndarray | RaggedFeatures) -> np.ndarray:
    """(task classes,) images per task class."""
    if isinstance(features, RaggedFeatures):
        return features.class_sizes
    t, n, m = features.shape[:3]
    return np.full(t * n, m, dtype=np.int64)


def _member_distance(features: np.ndarray | RaggedFeatures, labels: np.ndarray) -> np.ndarray:
    """Distance of each task class's key to the mean key of its global class (NaN where left out)."""
    from mela.methods.labeler import as_task_keys, task_keys

    keys = as_task_keys(task_keys(features))[0].keys
    out = np.full(len(labels), np.nan)
    keep = labels >= 0
    if keep.any():
        sums = np.zeros((int(labels.max()) + 1, keys.shape[1]))
        np.add.at(sums, labels[keep], keys[keep])
        centres = sums / np.bincount(labels[keep])[:, None]
        out[keep] = np.sqrt(((keys[keep] - centres[labels[keep]]) ** 2).sum(1))
    return out


def _file_diagnostics(features: np.ndarray | RaggedFeatures) -> dict:
    """The noise model of the keys, measured inside the local classes (no clustering ran): what the doubt
    score needs; empty when no class has two images (the doubt score then measures it around the classes)."""
    spread = key_spread(features)
    if spread is None:
        return {}
    return {"same_class_key_distance": spread.distance, "same_class_distance_source": spread.source,
            "shared_key_noise": spread.shared, "effective_dimension": spread.effective_dim}


def _publish_file_labels(run: Run, edited: LabelsFile, labels: GlobalLabels, true_classes: np.ndarray | None,
                         index: ClassIndex) -> dict:
    """Log what the file gave and write ``labeler_report.json`` (no clustering ran: ``labels_from`` says so)."""
    assigned = labels.assigned
    kept = assigned >= 0
    report: dict = {"clusters": int(len(np.unique(assigned[kept]))), "centroids": 0,
                    "tasks_kept": int(np.logical_and.reduceat(kept, index.task_offsets[:-1]).sum()),
                    "tasks_total": len(index.task_ids), "passes": [], "diagnostics": labels.diagnostics,
                    "warning": None, "labels_from": edited.record()}
    if true_classes is not None:
        report.update(clustering_report(assigned, np.asarray(true_classes).reshape(-1), index.task_offsets))
    report["mode"] = "file"
    run.write_json("labeler_report.json", report)
    changed = "" if edited.changed is None else f", {edited.changed} changed from the inferred ones"
    run.log(f"global labels from {edited.path} (sha256 {edited.sha256[:12]}): {edited.rows} rows{changed}, "
            f"{report['clusters']} global classes; {edited.left_out} task classes left out ({edited.absent} without "
            "a row); no clustering")
    if true_classes is not None:
        run.log(f"against the true labels: ARI {report['ari']:.3f}, clustering accuracy "
                f"{report['clustering_accuracy']:.3f}")
    return report


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
    split = labels.diagnostics.get("oversplit")
    if split:
        run.log(f"over-split check: {split['looks_split']} classes look split over {split['clusters_involved']} of the "
                f"{split['classes']} global classes ({100 * split['split_share']:.1f}%; warns above "
                f"{100 * split['max_share']:.0f}%)")
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
