"""Global label inference: cluster the per-task class means, then label every task.

Each task brings n_ways class "keys" (the mean feature of a local class) that are
known to belong to n_ways *different* global classes. The labeler keeps a set of
centroids, assigns each task's keys to distinct centroids, prunes centroids that
too few tasks reach, and repeats until the number of centroids is stable.

Two modes:

- ``reference`` reproduces the reference exactly: K centroids from the keys of the
  first K/n_ways tasks, nearest-centroid assignment, tasks whose keys collide are
  skipped, and centroids are never created later. Its crashes become clear errors.
- ``improved`` (default) keeps the same pruning rule but (1) accepts any K,
  (2) assigns a task's keys to distinct centroids by an optimal one-to-one matching
  instead of skipping the task, and (3) gives a key that is far from every centroid
  a new centroid, where "far" is learnt from the data: ``spawn_factor`` times the
  distance expected between two keys of one class, estimated from the spread of
  the images inside each local class (which are one class by construction).
  Classes absent from the first tasks are therefore not lost. After each pass,
  (4) two centroids closer than ``merge_factor`` times the same-class key distance are merged unless some task
  put them on two of its own classes (then they are different classes for sure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from mela.errors import MelaError

MODES = ("improved", "reference")


@dataclass(frozen=True)
class LabelerConfig:
    """Settings of the clustering (names follow the reference's config)."""

    K: int = 400
    std_factor: float = 3.5
    mode: str = "improved"
    max_passes: int = 30
    spawn_factor: float = 2.0
    merge_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise MelaError(f"unknown labeler mode '{self.mode}'; valid modes: {', '.join(MODES)}")
        if self.K < 1:
            raise MelaError(f"K (number of initial centroids) must be positive, got {self.K}")


@dataclass
class Clustering:
    """The fitted centroids and what happened on each pass."""

    centroids: np.ndarray
    passes: list[dict] = field(default_factory=list)
    spawn_distance: float | None = None


def task_keys(features: np.ndarray) -> np.ndarray:
    """(T, n_ways, per_class, d) item features -> (T, n_ways, d) class means."""
    return features.mean(axis=2)


def prune_threshold(hits: np.ndarray, n_ways: int, std_factor: float) -> float:
    """Hits a centroid must exceed to survive a pass.

    Under the null that each accepted task hits each of K centroids with
    probability p = n_ways / K, a centroid's hits are Binomial(accepted tasks, p);
    centroids more than ``std_factor`` standard deviations below the mean are
    spurious. Never below 1: a centroid hit once is never trusted.
    """
    k = len(hits)
    p = n_ways / k
    accepted_tasks = hits.sum() / n_ways
    std = math.sqrt(max(p * (1 - p) * accepted_tasks, 0.0))
    return max(float(hits.mean()) - std_factor * std, 1.0)


def nearest_distinct(distances: np.ndarray) -> np.ndarray | None:
    """Reference assignment: each key to its nearest centroid; None if two keys collide."""
    choice = distances.argmin(axis=1)
    return choice if len(np.unique(choice)) == len(choice) else None


def matched_distinct(distances: np.ndarray) -> np.ndarray:
    """Optimal one-to-one assignment of a task's keys to distinct centroids (min total distance)."""
    rows, cols = linear_sum_assignment(distances)
    out = np.empty(distances.shape[0], dtype=np.int64)
    out[rows] = cols
    return out


def same_class_key_distance(features: np.ndarray) -> float:
    """Typical distance between two keys of one class, from (T, n_ways, m, d) item features.

    A key averages m items, so two keys of one class differ by about
    sqrt(2 tr(Σ) / m), with Σ the within-class covariance; Σ is estimated from
    the items of each local class, which are one class by construction.
    """
    m = features.shape[2]
    if m < 2:
        raise MelaError("the improved labeler needs at least 2 images per task class (n_shots + n_queries >= 2)")
    centred = features - features.mean(axis=2, keepdims=True)
    within_trace = float((centred**2).sum(-1).sum(-1).mean() / (m - 1))
    return math.sqrt(2.0 * within_trace / m)


def cooccurrence(assigned: np.ndarray, n_centroids: int) -> np.ndarray:
    """(K, K) boolean: True where two centroids labelled two classes of one task."""
    seen = np.zeros((n_centroids, n_centroids), dtype=bool)
    valid = assigned[(assigned >= 0).all(axis=1)]
    for a in range(valid.shape[1]):
        for b in range(valid.shape[1]):
            if a != b:
                seen[valid[:, a], valid[:, b]] = True
    return seen


def merge_close_centroids(
    centroids: np.ndarray, counts: np.ndarray, apart: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Merge centroids closer than ``radius`` (closest pair first, count-weighted means).

    Pairs marked in ``apart`` (seen as two classes of one task) are never merged,
    nor are groups that would contain such a pair.
    """
    centroids, counts, apart = centroids.copy(), counts.copy(), apart.copy()
    alive = np.ones(len(centroids), dtype=bool)
    distances = cdist(centroids, centroids)
    np.fill_diagonal(distances, np.inf)
    distances[apart] = np.inf
    while True:
        i, j = np.unravel_index(np.argmin(distances), distances.shape)
        if not distances[i, j] < radius:
            break
        total = counts[i] + counts[j]
        weight_i = counts[i] / total if total > 0 else 0.5
        centroids[i] = weight_i * centroids[i] + (1 - weight_i) * centroids[j]
        counts[i] = total
        apart[i] |= apart[j]
        apart[:, i] |= apart[:, j]
        alive[j] = False
        distances[j, :] = distances[:, j] = np.inf
        row = np.linalg.norm(centroids - centroids[i], axis=1)
        row[~alive] = np.inf
        row[i] = np.inf
        row[apart[i]] = np.inf
        distances[i, :] = distances[:, i] = row
    return centroids[alive], counts[alive]


def fit_centroids(keys: np.ndarray, config: LabelerConfig, key_distance: float | None = None) -> Clustering:
    """Cluster (T, n_ways, d) task keys into global classes; see the module docstring.

    ``key_distance`` (improved mode): the typical distance between two keys of one
    class (:func:`same_class_key_distance`); keys farther than ``spawn_factor`` times
    it from every centroid start a new one. ``None`` disables spawning.
    """
    n_tasks, n_ways, _ = keys.shape
    keys = keys.astype(np.float64)
    reference = config.mode == "reference"
    if reference:
        if config.K % n_ways:
            raise MelaError(f"labeler=reference needs K divisible by n_ways ({config.K} % {n_ways} != 0); "
                            "change K or use labeler=improved")
        if config.K // n_ways > n_tasks:
            raise MelaError(f"labeler=reference needs at least K/n_ways = {config.K // n_ways} tasks to initialise "
                            f"its centroids but there are {n_tasks}; lower K or use labeler=improved")
        n_init = config.K // n_ways
    else:
        n_init = min(math.ceil(config.K / n_ways), n_tasks)
    centroids = keys[:n_init].reshape(-1, keys.shape[-1])[: config.K].copy()
    counts = np.zeros(len(centroids))
    far = None if reference or key_distance is None else config.spawn_factor * key_distance
    result = Clustering(centroids=centroids, spawn_distance=far)

    for _ in range(config.max_passes):
        k_before = len(centroids)
        hits = np.zeros(len(centroids))
        accepted = spawned = 0
        new_centroids: list[np.ndarray] = []
        for task in keys:
            distances = cdist(task, centroids)
            if reference:
                choice = nearest_distinct(distances)
                if choice is None:
                    continue
            else:
                choice = matched_distinct(distances)
            accepted += 1
            for j, c in enumerate(choice):
                if far is not None and distances[j, c] > far:
                    new_centroids.append(task[j])
                    continue
                counts[c] += 1
                centroids[c] += (task[j] - centroids[c]) / counts[c]
                hits[c] += 1
            if new_centroids:
                # Spawned centroids join at once, so later keys of the same class find them.
                spawned += len(new_centroids)
                centroids = np.concatenate([centroids, np.stack(new_centroids)])
                counts = np.concatenate([counts, np.ones(len(new_centroids))])
                hits = np.concatenate([hits, np.ones(len(new_centroids))])
                new_centroids = []
        threshold = prune_threshold(hits, n_ways, config.std_factor)
        keep = hits > threshold
        if keep.sum() < n_ways:
            if reference:
                raise MelaError(
                    f"pruning removed all but {int(keep.sum())} of {len(hits)} centroids (threshold {threshold:.2f} "
                    "hits): there are too few tasks per class for this K; lower K or std_factor, or use "
                    "labeler=improved"
                )
            keep = np.zeros(len(hits), dtype=bool)
            keep[np.argsort(-hits, kind="stable")[:n_ways]] = True
        centroids, counts = centroids[keep], counts[keep]
        k_pruned = len(centroids)
        if far is not None:
            apart = cooccurrence(label_tasks(keys, centroids, "improved"), len(centroids))
            centroids, counts = merge_close_centroids(centroids, counts, apart, config.merge_factor * key_distance)
        result.passes.append({
            "centroids_before": k_before, "spawned": spawned, "pruned": int(k_before + spawned - k_pruned),
            "merged": int(k_pruned - len(centroids)), "centroids_after": len(centroids),
            "clustering_rate": accepted / max(n_tasks, 1), "prune_threshold": threshold,
        })
        if len(centroids) == k_before:
            break
    result.centroids = centroids
    return result


def label_tasks(keys: np.ndarray, centroids: np.ndarray, mode: str = "improved") -> np.ndarray:
    """(T, n_ways) centroid index of each task class; rows of -1 for tasks the labeler drops.

    ``reference`` drops tasks whose keys collide on one centroid; ``improved``
    matches every task one-to-one, so none is dropped.
    """
    labels = np.full(keys.shape[:2], -1, dtype=np.int64)
    if len(centroids) < keys.shape[1]:
        raise MelaError(f"{len(centroids)} centroids cannot label {keys.shape[1]}-way tasks; lower std_factor")
    for t, task in enumerate(keys):
        distances = cdist(task, centroids)
        choice = nearest_distinct(distances) if mode == "reference" else matched_distinct(distances)
        if choice is not None:
            labels[t] = choice
    return labels


def clustering_report(assigned: np.ndarray, true_classes: np.ndarray) -> dict:
    """How inferred clusters line up with the true classes (diagnostics only).

    Args:
        assigned: (T, n_ways) cluster of each task class, -1 where the task was dropped.
        true_classes: (T, n_ways) true global class of each task class.

    ``clustering_accuracy`` maps each cluster to its majority true class and counts
    a task class right when its cluster maps to its true class; dropped ones count wrong.
    """
    flat_assigned, flat_true = assigned.ravel(), true_classes.ravel()
    kept = flat_assigned >= 0
    majority: dict[int, int] = {}
    classes_per_cluster, clusters_per_class = {}, {}
    for cluster in np.unique(flat_assigned[kept]):
        members = flat_true[flat_assigned == cluster]
        values, counts = np.unique(members, return_counts=True)
        majority[int(cluster)] = int(values[counts.argmax()])
        classes_per_cluster[int(cluster)] = len(values)
    for cls in np.unique(flat_true[kept]):
        clusters_per_class[int(cls)] = len(np.unique(flat_assigned[kept & (flat_true == cls)]))
    correct = np.array([a >= 0 and majority[int(a)] == t for a, t in zip(flat_assigned, flat_true, strict=True)])
    n_true = len(np.unique(flat_true))
    return {
        "clusters": len(majority),
        "true_classes": n_true,
        "clustering_accuracy": float(correct.mean()) if len(correct) else 0.0,
        "tasks_kept": int((assigned >= 0).all(axis=1).sum()),
        "tasks_total": int(len(assigned)),
        "true_classes_found": len(set(majority.values())),
        "classes_split_over_clusters": int(sum(v > 1 for v in clusters_per_class.values())),
        "clusters_mixing_classes": int(sum(v > 1 for v in classes_per_cluster.values())),
    }
