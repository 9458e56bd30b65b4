"""Global labels for a locally labelled task collection: features in, ``global_labels.csv`` out.

The labeler (:mod:`mela.methods.labeler`) clusters the task classes of a ragged pile; this module feeds it
a collection's features (each image through the model once), turns its answer into labelled images for
pre-training, and writes what a user reads: one row per task class with its global class and how far its
key sits from that class's centroid, and one entry per global class with its members.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mela.data.tasks import TaskCollection
from mela.jsonio import write_json_atomic
from mela.methods.evaluator import Extract, extract_features
from mela.methods.global_labels import GlobalLabels
from mela.methods.labeler import RaggedFeatures
from mela.methods.labels_file import ClassIndex, cluster_names, write_labels_file

GLOBAL_LABELS_FILE = "global_labels.csv"
GLOBAL_CLASSES_FILE = "global_classes.json"


def collection_image_features(model: torch.nn.Module, collection: TaskCollection, mean: tuple[float, ...],
                              std: tuple[float, ...], device: torch.device,
                              extract: Extract = extract_features) -> np.ndarray:
    """(N, d) features of the collection's image rows (rows no task uses are left at zero, never computed);
    ``extract``: the plain images' features by default (:mod:`mela.methods.label_views` passes its views)."""
    used = np.unique(collection.item_image)
    computed = extract(model, collection.images[used], mean, std, device).numpy()
    features = np.zeros((len(collection.images), computed.shape[1]), dtype=computed.dtype)
    features[used] = computed
    return features


def ragged_features(collection: TaskCollection, image_features: np.ndarray) -> RaggedFeatures:
    """The labeler's ragged pile: every item's feature, grouped by task class and task."""
    return RaggedFeatures(image_features[collection.item_image], collection.class_offsets, collection.task_offsets)


def labelled_items(collection: TaskCollection, labels: GlobalLabels) -> tuple[np.ndarray, np.ndarray]:
    """Image rows of every item of an assigned task class, and its global label (0..n_clusters-1)."""
    item_labels = labels.item_labels(collection.class_offsets)
    keep = item_labels >= 0
    return collection.item_image[keep], item_labels[keep]


def global_class_names(assigned: np.ndarray) -> np.ndarray:
    """(K,) the name of each task class's global class: ``g0``, ``g1``, ... in cluster order ("" if none)."""
    return cluster_names(assigned)


def write_global_labels(run_dir: Path, collection: TaskCollection, assigned: np.ndarray,
                        distances: np.ndarray) -> tuple[Path, Path]:
    """``global_labels.csv`` (task, local_label, global_class, distance, inferred, collection) and
    ``global_classes.json`` ({global class: {size, images, members: [[task, local_label], ...]}}), atomically."""
    index = ClassIndex.from_names(collection.task_ids, collection.class_names, collection.task_offsets)
    names = global_class_names(assigned)
    csv_path = write_labels_file(run_dir / GLOBAL_LABELS_FILE, index, names, distances)
    return csv_path, write_global_classes(run_dir, index, names, collection.class_sizes)


def write_global_classes(run_dir: Path, index: ClassIndex, names: np.ndarray, class_sizes: np.ndarray) -> Path:
    """``global_classes.json``: per global class its size (task classes), images and members."""
    classes: dict[str, dict] = {}
    task_of = index.class_task
    for k in range(index.n_classes):
        if names[k]:
            entry = classes.setdefault(names[k], {"size": 0, "images": 0, "members": []})
            entry["size"] += 1
            entry["images"] += int(class_sizes[k])
            entry["members"].append([index.task_ids[task_of[k]], index.class_names[k]])
    json_path = run_dir / GLOBAL_CLASSES_FILE
    write_json_atomic(json_path, classes)
    return json_path
