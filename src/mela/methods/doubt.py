"""Doubt about each inferred global class, without true labels: which classes are likely mixed or split.

The labeler's noise model (:mod:`mela.methods.labeler`) says how far a key lies from the mean of its class's
other keys when the class is clean: its squared distance over its expectation, ``t``, follows
``chi^2_D / D`` (mean 1), D the effective dimension of the key noise. Two pieces of evidence follow, each
in decades (log10 of a likelihood ratio or of a p-value, so that 2 means "a hundred to one"):

- ``spread`` (a *mixed* class): the member farthest from the mean of the others, as a p-value under the
  noise model with a Bonferroni factor for the class's size: ``-log10(min(1, a * P(chi^2_D / D >= t_max)))``.
  A key of another class lies out by the squared distance between the classes, far in the tail.
- ``split`` (one class spread over two global classes): for the closest other class that never shares a
  task with it (two classes of one task are certainly different), the log-odds that the two are one class:
  ``log10 P(same-class centres lie this far apart) - log10 P(two different classes lie this close)``; the
  first from the noise of the two centres (``chi^2_D / D`` again), the second from the pairs of keys inside
  one task, which are certainly different classes (their squared distance minus their noise estimates the
  squared distance between two classes, as the centres' does).

The two are in decades under the noise model, but real features have heavier tails than it (on the glyph
demo clean classes reach 30 decades of spread while the truly split pairs sit at -5 to -30 split log-odds),
so they are not added or compared as they are: each ranks the pile's classes, and ``doubt`` is how far up
the class stands on the ranking where it stands highest, ``-log10(min(rank_spread, rank_split) / G)``
(G classes; ties share the lower place; a class with no evidence on either, spread 0 and no rival, scores
0). ``doubt = 2`` means the class is among the top 1 % of the pile on spread or on split. Before either
ranking the noise model is calibrated on the pile: keys noisier than their images predict (single-image
keys, shared sources) would otherwise make every class look spread out. ``calibration`` is the median ``t``
over that of ``chi^2_D / D``; every expected squared distance is multiplied by it.

The score ranks classes for review; it is not a test with a guaranteed error rate. ``truth_flags`` and
``precision_at`` check it against true labels where they exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2

from mela.errors import MelaError
from mela.methods.global_labels import GlobalLabels
from mela.methods.labeler import (
    KeySpread,
    RaggedFeatures,
    as_task_keys,
    cluster_spread,
    key_noise,
    task_keys,
)

# Distances are computed in blocks of this many rows (keys or centres) against all centres.
CHUNK = 1024
# Candidate rivals per class: the nearest centres, of which the first not sharing a task with it is used.
RIVALS = 8
_LOG10 = math.log(10.0)
MIN_LOG10 = -999.0


@dataclass(frozen=True)
class ClassDoubt:
    """Doubt about each global class of a labelling.

    Attributes:
        labels: (G,) the labelling's value of each global class (``assigned``'s values), in increasing order.
        score: (G,) ``-log10`` of the class's best place (as a fraction of G) on the spread and split
            rankings: higher is more doubtful, 0 without evidence.
        spread: (G,) evidence that the class is mixed (decades); 0 for a class of one member.
        split: (G,) log-odds (decades) that the class and its rival are one class; -inf without a rival.
        rival: (G,) position (in ``labels``) of the closest class that never shares a task with it, -1 if none.
        contested: (G,) members lying nearer (in noise units) another class's centre than their own.
        sizes: (G,) members (task classes).
        member_class: (N,) position in ``labels`` of each key's class, -1 for unassigned keys.
        member_distance: (N,) each key's squared distance to its class centre over its noise (order members by it).
        calibration: how much noisier the keys are than the noise model says (1: as modelled).
        effective_dim: D used.
    """

    labels: np.ndarray
    score: np.ndarray
    spread: np.ndarray
    split: np.ndarray
    rival: np.ndarray
    contested: np.ndarray
    sizes: np.ndarray
    member_class: np.ndarray
    member_distance: np.ndarray
    calibration: float
    effective_dim: float

    def ranking(self) -> np.ndarray:
        """Positions of the classes, most doubtful first (ties: larger class first, then label)."""
        return np.lexsort((self.labels, -self.sizes, -self.score))

    def near_misses(self, count: int) -> list[tuple[int, int, float]]:
        """Up to ``count`` pairs (position, position, split log-odds) nearly merged: highest ``split`` first,
        each pair once."""
        order = np.argsort(-self.split, kind="stable")
        seen: set[tuple[int, int]] = set()
        out = []
        for g in order.tolist():
            h = int(self.rival[g])
            if h < 0 or not np.isfinite(self.split[g]):
                continue
            pair = (min(g, h), max(g, h))
            if pair in seen:
                continue
            seen.add(pair)
            out.append((g, h, float(self.split[g])))
            if len(out) == count:
                break
        return out


def _chi2_log10_sf(statistic: np.ndarray, dim: float) -> np.ndarray:
    """log10 P(chi^2_D / D >= statistic), at least ``MIN_LOG10`` (beyond it, the float underflows)."""
    return np.maximum(chi2.logsf(np.maximum(statistic, 0.0) * dim, dim) / _LOG10, MIN_LOG10)


def _nearest(x: np.ndarray, y: np.ndarray, exclude: np.ndarray | None, count: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row of x, its ``count`` nearest rows of y (squared distances, indices), nearest first; row i
    never gets ``exclude[i]``. Computed in blocks of rows, ranking ``|y|^2 - 2 x.y`` in place (``|x|^2`` is added
    to the chosen ones only)."""
    count = min(count, len(y) - (exclude is not None))
    idx = np.zeros((len(x), max(count, 0)), dtype=np.int64)
    dist = np.zeros((len(x), max(count, 0)))
    if count <= 0:
        return dist, idx
    y_sq = (y**2).sum(1)
    for start in range(0, len(x), CHUNK):
        rows = x[start : start + CHUNK]
        block = rows @ y.T
        block *= -2.0
        block += y_sq[None, :]
        if exclude is not None:
            block[np.arange(len(block)), exclude[start : start + CHUNK]] = np.inf
        if count == 1:
            part = block.argmin(axis=1)[:, None]
        elif count < len(y):
            part = np.argpartition(block, count - 1, axis=1)[:, :count]
        else:
            part = np.tile(np.arange(len(y)), (len(block), 1))
        values = np.take_along_axis(block, part, 1)
        order = np.argsort(values, axis=1, kind="stable")
        idx[start : start + CHUNK] = np.take_along_axis(part, order, 1)
        dist[start : start + CHUNK] = np.maximum(np.take_along_axis(values, order, 1) + (rows**2).sum(1)[:, None], 0.0)
    return dist, idx


def _task_pairs(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of keys in the same task, built per number of ways (no loop over tasks)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    ways = np.diff(offsets)
    first, second = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for n in np.unique(ways[ways >= 2]).tolist():
        starts = offsets[:-1][ways == n]
        i, j = np.triu_indices(n, 1)
        first.append((starts[:, None] + i[None, :]).reshape(-1))
        second.append((starts[:, None] + j[None, :]).reshape(-1))
    return np.concatenate(first), np.concatenate(second)


def class_doubt(keys: np.ndarray, assigned: np.ndarray, task_offsets: np.ndarray, noise: np.ndarray | float,
                effective_dim: float) -> ClassDoubt:
    """Doubt about each global class of a labelling (see the module docstring).

    Args:
        keys: (N, d) one key (mean feature) per task class, in task order.
        assigned: (N,) global class of each key (any integers), -1 for unassigned keys.
        task_offsets: (T + 1,) task t owns keys ``task_offsets[t]:task_offsets[t + 1]``.
        noise: (N,) or a scalar: each key's expected squared distance to its class mean (``s^2 / 2`` when all
            keys average as many images).
        effective_dim: D, the effective dimension of the key noise (> 0).
    """
    keys = np.asarray(keys, dtype=np.float64)
    assigned = np.asarray(assigned).reshape(-1)
    offsets = np.asarray(task_offsets, dtype=np.int64)
    n = len(keys)
    if keys.ndim != 2 or len(assigned) != n or offsets[0] != 0 or offsets[-1] != n:
        raise MelaError(f"class_doubt needs (N, d) keys, (N,) labels and task offsets ending at N; got keys "
                        f"{keys.shape}, labels {assigned.shape}, offsets ending at {offsets[-1]}")
    noise = np.broadcast_to(np.asarray(noise, dtype=np.float64), (n,)).copy()
    if not (np.isfinite(noise).all() and (noise > 0).all()) or not effective_dim > 0:
        raise MelaError("class_doubt needs a positive key noise and effective dimension")
    dim = float(effective_dim)
    kept = assigned >= 0
    labels, inverse = np.unique(assigned[kept], return_inverse=True)
    g = len(labels)
    member_class = np.full(n, -1, dtype=np.int64)
    member_class[kept] = inverse
    sizes = np.bincount(inverse, minlength=g).astype(np.int64)
    sums = np.zeros((g, keys.shape[1]))
    np.add.at(sums, inverse, keys[kept])
    centres = sums / np.maximum(sizes, 1)[:, None]
    noise_sum = np.bincount(inverse, weights=noise[kept], minlength=g)
    centre_noise = noise_sum / np.maximum(sizes, 1) ** 2

    # Each member against the mean of its class's other members: t ~ chi^2_D / D for a clean class.
    a = sizes[inverse].astype(np.float64)
    residual = ((keys[kept] - centres[inverse]) ** 2).sum(1)
    member_distance = np.full(n, np.nan)
    member_distance[kept] = residual / noise[kept]
    multi = a >= 2
    loo_sq = residual[multi] * (a[multi] / (a[multi] - 1.0)) ** 2
    loo_noise = noise[kept][multi] + (noise_sum[inverse][multi] - noise[kept][multi]) / (a[multi] - 1.0) ** 2
    t = loo_sq / loo_noise
    median_chi = (1.0 - 2.0 / (9.0 * dim)) ** 3  # Wilson-Hilferty median of chi^2_D / D
    calibration = float(np.median(t) / median_chi) if len(t) else 1.0
    calibration = calibration if calibration > 0 else 1.0
    t_max = np.zeros(g)
    np.maximum.at(t_max, inverse[multi], t / calibration)
    spread = np.zeros(g)
    many = sizes >= 2
    spread[many] = np.maximum(0.0, -(np.log10(sizes[many]) + _chi2_log10_sf(t_max[many], dim)))

    # Contested members: nearer, in noise units, another centre than the mean of their own class's others.
    contested = np.zeros(g, dtype=np.int64)
    if g >= 2 and multi.any():
        rows = np.flatnonzero(kept)[multi]
        other_sq, other = _nearest(keys[rows], centres, member_class[rows], 1)
        other_t = other_sq[:, 0] / (calibration * (noise[rows] + centre_noise[other[:, 0]]))
        np.add.at(contested, member_class[rows], (other_t < t / calibration).astype(np.int64))

    # Split: the closest centre that never shares a task with the class, as log-odds of one class.
    split = np.full(g, -np.inf)
    rival = np.full(g, -1, dtype=np.int64)
    if g >= 2:
        cooccur = _cooccurring(member_class, offsets, g)
        _, near = _nearest(centres, centres, np.arange(g), RIVALS)
        for pos in range(g):
            for h in near[pos].tolist():
                if (min(pos, h), max(pos, h)) not in cooccur:
                    rival[pos] = h
                    break
        has = np.flatnonzero(rival >= 0)
        if len(has):
            h = rival[has]
            sq = ((centres[has] - centres[h]) ** 2).sum(1)
            pair_noise = calibration * (centre_noise[has] + centre_noise[h])
            log_same = _chi2_log10_sf(sq / pair_noise, dim)
            first, second = _task_pairs(offsets)
            within = np.sort(((keys[first] - keys[second]) ** 2).sum(1) - calibration * (noise[first] + noise[second]))
            closer = np.searchsorted(within, sq - pair_noise, side="right")
            log_different = np.log10((closer + 1.0) / (len(within) + 1.0))
            split[has] = log_same - log_different
    score = -np.log10(np.minimum(_top_fraction(spread, spread > 0), _top_fraction(split, np.isfinite(split))))
    return ClassDoubt(labels, score, spread, split, rival, contested, sizes, member_class, member_distance,
                      calibration, dim)


def _top_fraction(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each value's place from the top among all G values, over G (ties share the lower place); 1 where not
    ``valid``."""
    out = np.ones(len(values))
    if valid.any():
        ranked = np.sort(values[valid])
        above = len(ranked) - np.searchsorted(ranked, values[valid], side="left")  # values >= this one
        out[valid] = above / len(values)
    return out


def _cooccurring(member_class: np.ndarray, offsets: np.ndarray, g: int) -> set[tuple[int, int]]:
    """Pairs of class positions (low, high) that label two classes of one task."""
    first, second = _task_pairs(offsets)
    a, b = member_class[first], member_class[second]
    ok = (a >= 0) & (b >= 0) & (a != b)
    low, high = np.minimum(a[ok], b[ok]), np.maximum(a[ok], b[ok])
    codes = np.unique(low * g + high)
    return {(int(c // g), int(c % g)) for c in codes.tolist()}


@dataclass(frozen=True)
class TruthFlags:
    """What true labels say about each global class: ``mixed`` (members of more than one true class) and
    ``split`` (its majority true class is also the majority of another global class)."""

    mixed: np.ndarray
    split: np.ndarray
    majority: np.ndarray

    @property
    def wrong(self) -> np.ndarray:
        return self.mixed | self.split


def truth_flags(member_class: np.ndarray, true_classes: np.ndarray, n_classes: int) -> TruthFlags:
    """Flags of each class position from the true class of each key (keys with ``member_class`` -1 ignored)."""
    member_class = np.asarray(member_class).reshape(-1)
    true_classes = np.asarray(true_classes).reshape(-1)
    kept = member_class >= 0
    _, truth = np.unique(true_classes[kept], return_inverse=True)
    pairs = np.unique(np.stack([member_class[kept], truth]), axis=1)
    distinct = np.bincount(pairs[0], minlength=n_classes)
    counts: dict[tuple[int, int], int] = {}
    for c, t in zip(member_class[kept].tolist(), truth.tolist(), strict=True):
        counts[(c, t)] = counts.get((c, t), 0) + 1
    majority = np.full(n_classes, -1, dtype=np.int64)
    best = np.zeros(n_classes, dtype=np.int64)
    for (c, t), k in sorted(counts.items()):
        if k > best[c]:
            best[c], majority[c] = k, t
    holders = np.bincount(majority[majority >= 0], minlength=int(truth.max(initial=-1)) + 1)
    split = (majority >= 0) & (holders[np.maximum(majority, 0)] >= 2)
    return TruthFlags(distinct >= 2, split, majority)


def precision_at(score: np.ndarray, wrong: np.ndarray, fraction: float = 0.1) -> dict:
    """Precision of the top ``fraction`` of classes by ``score`` against ``wrong`` (true mixed or split), with
    the base rate (the precision of a random ranking) for comparison."""
    score, wrong = np.asarray(score), np.asarray(wrong, dtype=bool)
    top = max(1, math.ceil(fraction * len(score))) if len(score) else 0
    order = np.argsort(-score, kind="stable")[:top]
    return {"fraction": fraction, "top": int(top), "precision": float(wrong[order].mean()) if top else None,
            "base_rate": float(wrong.mean()) if len(wrong) else None, "wrong": int(wrong.sum()),
            "classes": int(len(score))}


def labels_doubt(features: np.ndarray | RaggedFeatures, labels: GlobalLabels) -> ClassDoubt:
    """:func:`class_doubt` of inferred ``labels`` on the pile ``features`` they came from, with the noise model
    the labeler measured (``labels.diagnostics``); without a measured spread, the keys around their centres."""
    keys = task_keys(features)
    tk, _ = as_task_keys(keys)
    assigned = np.asarray(labels.assigned).reshape(-1)
    diagnostics = labels.diagnostics
    distance, dim = diagnostics.get("same_class_key_distance"), diagnostics.get("effective_dimension")
    if distance is None or not dim:
        spread = cluster_spread(tk, assigned) or KeySpread(1.0, float(tk.dim), "given")
    else:
        spread = KeySpread(float(distance), float(dim), str(diagnostics.get("same_class_distance_source")),
                           float(diagnostics.get("shared_key_noise") or 0.0))
    noise = key_noise(features, spread)
    if noise is None:
        noise = np.full(tk.n_keys, 0.5 * spread.distance**2)
    # Identical images give no spread at all: keep the score defined (every distance is then "far").
    floor = 1e-12 * (1.0 + float(np.mean(tk.keys**2))) if tk.n_keys else 1e-12
    noise = np.where(np.isfinite(noise) & (noise > floor), noise, floor)
    dim = spread.effective_dim if np.isfinite(spread.effective_dim) and spread.effective_dim > 0 else float(tk.dim)
    return class_doubt(tk.keys, assigned, tk.offsets, noise, dim)
