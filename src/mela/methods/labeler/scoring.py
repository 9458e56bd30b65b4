"""Scoring inferred clusters against true classes (diagnostics only)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from mela.errors import MelaError
from mela.methods.labeler.keys import _flat_assigned, tasks_kept


def with_singletons(assigned: np.ndarray) -> np.ndarray:
    """Flat cluster ids where every unassigned (-1) task class becomes a cluster of its own."""
    flat = assigned.ravel().astype(np.int64).copy()
    dropped = flat < 0
    base = flat.max() + 1 if (~dropped).any() else 0
    flat[dropped] = base + np.arange(int(dropped.sum()))
    return flat


def clustering_report(assigned: np.ndarray, true_classes: np.ndarray, task_offsets: np.ndarray | None = None) -> dict:
    """How inferred clusters line up with the true classes (diagnostics only).

    Args:
        assigned: (T, n_ways) cluster of each task class, -1 where the task was dropped;
            or flat (K,) for a ragged pile, with ``task_offsets``.
        true_classes: true global class of each task class, shaped like ``assigned`` (or flat).
        task_offsets: (T + 1,) task offsets of flat labels.

    ``clustering_accuracy`` maps each cluster to its majority true class and counts
    a task class right when its cluster maps to its true class; dropped ones count wrong.
    ``ari``, ``nmi`` and ``purity`` score the partition in which each dropped task class
    is a cluster of its own (``clusters_with_unassigned`` counts those too).
    """
    flat_assigned, offsets = _flat_assigned(assigned, task_offsets)
    flat_true = np.asarray(true_classes).reshape(-1)
    if len(flat_true) != len(flat_assigned):
        raise MelaError(f"{len(flat_true)} true classes for {len(flat_assigned)} task classes; give one per task "
                        "class, in the order of the labels")
    kept = flat_assigned >= 0
    clusters, cluster_code = np.unique(flat_assigned[kept], return_inverse=True)
    classes, class_code = np.unique(flat_true[kept], return_inverse=True)
    # Distinct (cluster, class) pairs and how many task classes each holds.
    pair, size = np.unique(cluster_code * max(len(classes), 1) + class_code, return_counts=True)
    pair_cluster, pair_class = pair // max(len(classes), 1), pair % max(len(classes), 1)
    # Majority class of each cluster: the most members, the smallest class on ties.
    order = np.lexsort((pair_class, -size, pair_cluster))
    first = np.ones(len(order), dtype=bool)
    first[1:] = pair_cluster[order][1:] != pair_cluster[order][:-1]
    majority = np.empty(len(clusters), dtype=np.int64)
    majority[pair_cluster[order][first]] = pair_class[order][first]
    correct = np.zeros(len(flat_assigned), dtype=bool)
    correct[kept] = majority[cluster_code] == class_code
    partition = with_singletons(flat_assigned)
    kept_tasks = tasks_kept(flat_assigned, offsets)
    return {
        "clusters": len(clusters),
        "true_classes": len(np.unique(flat_true)),
        "clustering_accuracy": float(correct.mean()) if len(correct) else 0.0,
        "tasks_kept": int(kept_tasks.sum()),
        "tasks_total": int(len(kept_tasks)),
        "true_classes_found": len(np.unique(majority)),
        "classes_split_over_clusters": int((np.bincount(pair_class, minlength=len(classes)) > 1).sum()),
        "clusters_mixing_classes": int((np.bincount(pair_cluster, minlength=len(clusters)) > 1).sum()),
        "clusters_with_unassigned": int(len(np.unique(partition))),
        "ari": float(adjusted_rand_score(flat_true, partition)),
        "nmi": float(normalized_mutual_info_score(flat_true, partition)),
        "purity": purity(partition, flat_true),
    }


def purity(clusters: np.ndarray, true_classes: np.ndarray) -> float:
    """Fraction of items whose cluster's most common true class is their own."""
    if len(clusters) == 0:
        return 0.0
    _, cluster_ids = np.unique(clusters, return_inverse=True)
    _, class_ids = np.unique(true_classes, return_inverse=True)
    table = np.zeros((cluster_ids.max() + 1, class_ids.max() + 1), dtype=np.int64)
    np.add.at(table, (cluster_ids, class_ids), 1)
    return float(table.max(axis=1).sum() / len(clusters))
