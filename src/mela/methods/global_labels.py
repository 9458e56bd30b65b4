"""From a task pile's features to global labels: the labeler's whole procedure, as one call.

:mod:`mela.methods.labeler` holds the clustering math; this module strings it
together (keys, same-class distance, centroids, one-to-one labelling) and turns
the result into labelled images for pre-training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mela.data.base import ImageSplit
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


@dataclass(frozen=True)
class GlobalLabels:
    """Inferred global classes of a task pile.

    Attributes:
        centroids: (K, d) one centroid per global class found.
        assigned: (T, n_ways) centroid index of each task class; -1 for a task the labeler dropped
            (``labeler=reference`` only).
        passes: what each clustering pass did (spawned, pruned, merged, ...); empty with given centroids.
        diagnostics: label-free reliability of the labels (``methods.labeler.key_diagnostics``): same- vs
            different-class key distance, cannot-link violations, and ``warning`` (a sentence or None).
    """

    centroids: np.ndarray
    assigned: np.ndarray
    passes: list[dict] = field(default_factory=list)
    diagnostics: dict = field(default_factory=dict)

    @property
    def warning(self) -> str | None:
        """Why the inferred labels may be unreliable, or None."""
        return self.diagnostics.get("warning")

    @property
    def n_clusters(self) -> int:
        """Global classes that label at least one task class."""
        return len(np.unique(self.assigned[self.assigned >= 0]))

    def labelled_items(self, tasks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Items of the kept tasks and their inferred labels, renumbered 0..n_clusters-1.

        ``tasks`` is the (T, n_ways, per_class) item pile the labels were inferred from.
        """
        kept = (self.assigned >= 0).all(axis=1)
        items = tasks[kept].reshape(-1)
        clusters = np.repeat(self.assigned[kept], tasks.shape[2], axis=1).reshape(-1)
        _, labels = np.unique(clusters, return_inverse=True)
        return items, labels

    def report(self, true_classes: np.ndarray | None = None) -> dict:
        """Counts, and with ``true_classes`` (T, n_ways) the agreement with them (see ``clustering_report``)."""
        base = {"centroids": len(self.centroids), "clusters": self.n_clusters,
                "tasks_kept": int((self.assigned >= 0).all(axis=1).sum()), "tasks_total": int(len(self.assigned))}
        if true_classes is not None:
            base.update(clustering_report(self.assigned, true_classes))
        return {**base, "passes": self.passes, "diagnostics": self.diagnostics,
                "same_class_key_distance": self.diagnostics.get("same_class_key_distance"),
                "warning": self.warning}


def infer_global_labels(
    features: np.ndarray, config: LabelerConfig = LabelerConfig(), centroids: np.ndarray | None = None
) -> GlobalLabels:
    """Cluster a pile's classes into global classes and label every task.

    Args:
        features: (T, n_ways, m, d) features of the m images of each local class of each task.
        config: the clustering settings.
        centroids: reuse these (K, d) centroids instead of fitting new ones.
    """
    keys = task_keys(features)
    spread = key_spread(features)
    passes: list[dict] = []
    if centroids is None:
        clustering = cluster_features(features, config)
        centroids, passes = clustering.centroids, clustering.passes
        spread = clustering.spread or spread
    centroids = np.asarray(centroids)
    return GlobalLabels(centroids, label_tasks(keys, centroids, config.mode), passes,
                        key_diagnostics(keys, centroids, spread))


def pile_features(
    model: torch.nn.Module, split: ImageSplit, tasks: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
    device: torch.device,
) -> np.ndarray:
    """(T, n_ways, per_class, d) features of the pile's images, without augmentation.

    Only the images the pile uses go through the model, each once.
    """
    rows = split.item_images()[tasks]
    used, inverse = np.unique(rows, return_inverse=True)
    features = extract_features(model, split.images[used], mean, std, device).numpy()
    return features[inverse.reshape(rows.shape)]
