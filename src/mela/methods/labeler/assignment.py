"""Per-task assignment of keys to distinct centroids, collisions and the pruning threshold."""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment


def colliding_tasks(nearest: np.ndarray, task_of: np.ndarray, n_tasks: int) -> np.ndarray:
    """(T,) True for tasks in which two keys share a nearest centroid (a cannot-link violation)."""
    order = np.lexsort((nearest, task_of))
    t, c = task_of[order], nearest[order]
    same = (t[1:] == t[:-1]) & (c[1:] == c[:-1])
    out = np.zeros(n_tasks, dtype=bool)
    out[t[1:][same]] = True
    return out


def prune_threshold(hits: np.ndarray, n_ways: int | np.ndarray, std_factor: float) -> float:
    """Hits a centroid must exceed to survive a pass.

    Under the null that each accepted task hits each of K centroids with
    probability p = n_ways / K, a centroid's hits are Binomial(accepted tasks, p);
    centroids more than ``std_factor`` standard deviations below the mean are
    spurious. Never below 1: a centroid hit once is never trusted.

    ``n_ways`` is one number for fixed-shape piles, or the (accepted tasks,) ways of
    each accepted task of a ragged pile: task t hits a centroid with p_t = ways_t / K,
    so the hits have variance sum_t p_t (1 - p_t) (a Poisson-binomial).
    """
    k = len(hits)
    if np.ndim(n_ways) == 0:
        p = n_ways / k
        accepted_tasks = hits.sum() / n_ways
        std = math.sqrt(max(p * (1 - p) * accepted_tasks, 0.0))
    else:
        p_t = np.asarray(n_ways, dtype=np.float64) / k
        std = math.sqrt(max(float((p_t * (1 - p_t)).sum()), 0.0))
    return max(float(hits.mean()) - std_factor * std, 1.0)


def nearest_distinct(distances: np.ndarray) -> np.ndarray | None:
    """Reference assignment: each key to its nearest centroid; None if two keys collide."""
    choice = distances.argmin(axis=1)
    return choice if len(set(choice.tolist())) == len(choice) else None


def cheapest_distinct(cost: np.ndarray) -> np.ndarray:
    """:func:`matched_distinct`, taking each key's cheapest centroid when those are distinct (then they are the
    optimal matching) and solving the assignment only when they collide."""
    choice = nearest_distinct(cost)
    return matched_distinct(cost) if choice is None else choice


def matched_distinct(distances: np.ndarray) -> np.ndarray:
    """Optimal one-to-one assignment of a task's keys to distinct centroids (min total distance)."""
    rows, cols = linear_sum_assignment(distances)
    out = np.empty(distances.shape[0], dtype=np.int64)
    out[rows] = cols
    return out


def debiased_cost(distances: np.ndarray, counts: np.ndarray, key_distance: float) -> np.ndarray:
    """Squared key-centroid distances minus each centroid's own noise, s^2 / (2 max(count, 1)).

    A centroid made of few keys carries their noise, so every key looks farther from
    it than from a centroid that averages many; uncorrected, well-fed centroids win
    every contest, feed further and starve the rest (on weak features the pruning then
    cascades down to n_ways centroids). The correction makes the contest fair.
    """
    return distances**2 - 0.5 * key_distance**2 / np.maximum(counts, 1.0)[None, :]
