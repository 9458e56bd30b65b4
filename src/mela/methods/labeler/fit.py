"""Fitting the centroids: the online pass loop with spawning, merging and pruning."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from mela.errors import MelaError
from mela.methods.labeler.assignment import prune_threshold
from mela.methods.labeler.config import LabelerConfig
from mela.methods.labeler.constants import DENSE_MERGE_MAX, SPLIT_ALLOWANCE
from mela.methods.labeler.distances import CentroidTable, different_class_sq_distances
from mela.methods.labeler.keys import RaggedFeatures, TaskKeys, as_task_keys, task_keys
from mela.methods.labeler.labelling import label_tasks
from mela.methods.labeler.merge import (
    cooccurrence,
    cooccurrence_pairs,
    member_means,
    merge_indistinguishable,
    merge_threshold,
)
from mela.methods.labeler.modes import get_mode
from mela.methods.labeler.noise import KeySpread, as_spread, cluster_spread, key_noise, key_spread, shared_noise


@dataclass
class Clustering:
    """The fitted centroids and what happened on each pass."""

    centroids: np.ndarray
    passes: list[dict] = field(default_factory=list)
    spawn_z: float | None = None
    spread: KeySpread | None = None


def spawn_threshold(spawn_factor: float, effective_dim: float) -> float:
    """Squared key-centroid distance, over its same-class expectation, above which a key starts a centroid."""
    return 1.0 + spawn_factor * math.sqrt(2.0 / effective_dim)


def fit_centroids(
    keys: np.ndarray | TaskKeys, config: LabelerConfig, key_distance: float | KeySpread | None = None,
    noise: np.ndarray | None = None, device: torch.device | None = None, check_shared: bool = False,
) -> Clustering:
    """Cluster (T, n_ways, d) task keys (or a ragged :class:`TaskKeys`) into global classes (docs/labeler.md).

    ``key_distance`` (improved mode): a :class:`KeySpread` (or a bare same-class key
    distance, taken as high-dimensional); a key too far from its matched centroid to be
    of its class starts a new one (the spawn test), and indistinguishable centroids merge.
    ``None`` disables spawning and merging. ``noise``: each key's noise (:func:`key_noise`);
    ``None``: ``s^2 / 2`` for every key. ``device``: where the key-centroid distances are computed
    (:class:`CentroidTable`, :func:`nearest_centroids`); ``None``: NumPy on the host. ``check_shared``: after
    the first pass, test whether the keys lie further from their centroids than the spread predicts
    (:func:`shared_noise`) and, if so, start again with the larger spread.
    """
    tk, _ = as_task_keys(keys)
    flat_keys, n_tasks, n_ways = tk.keys, tk.n_tasks, tk.uniform_ways
    mode = get_mode(config.mode)
    mode.check_start(tk, config.K)
    spread = as_spread(key_distance, tk.dim) if mode.uses_spread else None
    spawn_z = None if spread is None else spawn_threshold(config.spawn_factor, spread.effective_dim)
    half = 0.0 if spread is None else 0.5 * spread.distance**2
    if noise is not None and len(noise) != tk.n_keys:
        raise MelaError(f"noise has {len(noise)} entries for {tk.n_keys} keys; give one per key (or none)")
    # The keys of the first tasks until K are collected (for n-way tasks: of the first ceil(K / n) tasks).
    table = CentroidTable(flat_keys[: config.K], device)
    n_initial = len(table)
    counts = np.zeros(len(table))
    result = Clustering(centroids=table.host, spawn_z=spawn_z, spread=spread)
    different_sq = different_class_sq_distances(tk) if spread is not None else None
    bounds = tk.offsets.tolist()
    widest = tk.max_ways

    for pass_index in range(config.max_passes):
        k_before = len(table)
        hits = np.zeros(len(table))
        accepted_tasks = np.zeros(n_tasks, dtype=bool)
        spawned = 0
        statistics: list[np.ndarray] = []
        for t in range(n_tasks):
            task = flat_keys[bounds[t] : bounds[t + 1]]
            distances = table.distances(task)
            choice = mode.match(distances, counts, spread)
            if choice is None:
                continue
            accepted_tasks[t] = True
            # A task's keys go to distinct centroids, so their online updates are independent of each other.
            if spawn_z is not None:
                # Same class: squared distance ~ (key noise + centroid noise) chi^2_D / D; far above it, a new class.
                own = half if noise is None else noise[bounds[t] : bounds[t + 1]]
                expected = own + half / np.maximum(counts[choice], 1.0)
                statistic = distances[np.arange(len(choice)), choice] ** 2 / expected
                if check_shared and pass_index == 0 and bounds[t + 1] > n_initial:
                    # Not the keys that seeded the centroids: they sit on their own seed at distance 0.
                    statistics.append(statistic[max(n_initial - bounds[t], 0) :])
                new = statistic > spawn_z
                if new.any():
                    # Spawned centroids join at once, so later keys of the same class find them.
                    spawned += int(new.sum())
                    table.append(task[new])
                    counts = np.concatenate([counts, np.ones(int(new.sum()))])
                    hits = np.concatenate([hits, np.ones(int(new.sum()))])
                    choice, task = choice[~new], task[~new]
            counts[choice] += 1
            table.move_toward(choice, task, counts[choice])
            hits[choice] += 1
        if statistics:
            wider = shared_noise(np.concatenate(statistics), spread)
            if wider is not spread:
                return fit_centroids(keys, config, wider, None if noise is None else noise + wider.shared, device)
        accepted = int(accepted_tasks.sum())
        centroids = table.host
        k_merged = len(centroids)
        if spread is not None:
            # Merge before pruning, so a class split over two centroids pools its hits instead of losing both.
            centroids, counts, hits = merge_pass(tk, centroids, hits, spread, different_sq, config, device)
        k_merged -= len(centroids)
        threshold = prune_threshold(hits, n_ways if n_ways is not None else tk.ways[accepted_tasks],
                                    config.std_factor)
        keep = hits > threshold
        if keep.sum() < widest:
            keep = mode.keep_after_failed_prune(hits, keep, threshold)
        centroids, counts = centroids[keep], counts[keep]
        table.replace(centroids)
        result.passes.append({
            "centroids_before": k_before, "spawned": spawned,
            "pruned": int(k_before + spawned - k_merged - len(centroids)), "merged": int(k_merged),
            "centroids_after": len(centroids),
            "clustering_rate": accepted / max(n_tasks, 1), "prune_threshold": threshold,
        })
        if len(centroids) == k_before:
            break
    result.centroids = table.host
    return result


def merge_pass(
    keys: np.ndarray | TaskKeys, centroids: np.ndarray, hits: np.ndarray, spread: KeySpread,
    different_sq: np.ndarray, config: LabelerConfig, device: torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match every task, re-estimate centroids as member means, merge indistinguishable ones.

    Returns centroids, their key counts (at least 1) and their pooled hits. When
    nothing merges the centroids keep their running means.
    """
    tk, _ = as_task_keys(keys)
    assigned = label_tasks(tk, centroids, "improved", device=device)
    means, members = member_means(tk, assigned, centroids)
    sparse = len(centroids) > DENSE_MERGE_MAX
    apart = (cooccurrence_pairs if sparse else cooccurrence)(assigned, len(centroids), tk.offsets)
    z_max = merge_threshold(config.merge_factor, spread.effective_dim)
    groups: list[list[int]] = []
    # Splitting one class can put its two halves' means up to about 2 sds apart along the split direction,
    # whose variance is about the key noise tr(S_key) = s^2 / 2 spread over D effective dimensions.
    allowance = SPLIT_ALLOWANCE * 0.5 * spread.distance**2 / spread.effective_dim
    # merge_risk bounds the chance that *any* of the other centroids' classes comes this close (Bonferroni).
    risk = config.merge_risk / max(len(centroids) - 1, 1)
    merged, merged_members = merge_indistinguishable(means, members, apart, spread.distance, z_max,
                                                     different_sq, risk, groups, allowance,
                                                     "sparse" if sparse else "dense")
    if len(merged) == len(centroids):
        return centroids, np.maximum(members, 1.0), hits
    pooled = np.array([hits[g].sum() for g in groups])
    return merged, np.maximum(merged_members, 1.0), pooled


def cluster_features(features: np.ndarray | RaggedFeatures, config: LabelerConfig,
                     keys: np.ndarray | TaskKeys | None = None, device: torch.device | None = None) -> Clustering:
    """Cluster (T, n_ways, m, d) item features (or :class:`RaggedFeatures`): what learn_labeler runs.

    Improved mode measures the key spread from the images of each local class (checked against the keys'
    own distances in the first pass: :func:`shared_noise`), or, with one image per class, from a first
    clustering without spawning or merging (:func:`cluster_spread`), then clusters with it. A mode
    without a spread (``reference``) clusters without one.
    ``keys``: the features' :func:`task_keys`, when the caller has them already. ``device``: where the
    distances are computed (:func:`fit_centroids`).
    """
    keys = task_keys(features) if keys is None else keys
    if not get_mode(config.mode).uses_spread:
        return fit_centroids(keys, config, device=device)
    spread = key_spread(features)
    if spread is None:
        first = fit_centroids(keys, replace(config, max_passes=1), device=device)
        spread = cluster_spread(keys, label_tasks(keys, first.centroids, "improved", device=device))
        if spread is None:
            return first
    # Only a spread predicted from the images can miss what the images of one local class share.
    return fit_centroids(keys, config, spread, key_noise(features, spread), device,
                         check_shared=spread.source == "images")
