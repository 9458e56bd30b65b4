"""Merging indistinguishable centroids: cannot-link pairs, the two-sample test, dense and sparse greedy loops."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist

from mela.data.tasks.collection import offsets_of
from mela.errors import MelaError
from mela.methods.labeler.constants import CHUNK_ENTRIES, DENSE_MERGE_MAX, MERGE_METHODS
from mela.methods.labeler.distances import paired_sq_distances
from mela.methods.labeler.keys import TaskKeys, _flat_assigned, task_pairs, tasks_kept


def cooccurrence(assigned: np.ndarray, n_centroids: int, offsets: np.ndarray | None = None) -> np.ndarray:
    """(K, K) boolean: True where two centroids labelled two classes of one task.

    ``assigned`` is (T, n_ways), or flat (K,) with the task ``offsets``; tasks with an
    unlabelled class are left out.
    """
    flat, offsets = _flat_assigned(assigned, offsets)
    seen = np.zeros((n_centroids, n_centroids), dtype=bool)
    first, second, task = task_pairs(offsets)
    ok = tasks_kept(flat, offsets)[task]
    a, b = flat[first[ok]], flat[second[ok]]
    seen[a, b] = True
    seen[b, a] = True
    return seen


@dataclass(frozen=True)
class CentroidPairs:
    """A symmetric (n, n) boolean relation held sparsely: the unordered pairs a < b as sorted unique codes
    ``a * n + b`` (the diagonal is not held: a centroid is never merged with itself anyway).

    Attributes:
        codes: (P,) sorted unique int64 pair codes.
        n: number of centroids.
    """

    codes: np.ndarray
    n: int

    @classmethod
    def from_pairs(cls, first: np.ndarray, second: np.ndarray, n: int) -> CentroidPairs:
        """Pairs from two index arrays, in either order; pairs of a centroid with itself are dropped."""
        first, second = np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)
        lo, hi = np.minimum(first, second), np.maximum(first, second)
        keep = lo != hi
        return cls(np.unique(lo[keep] * n + hi[keep]), int(n))

    @classmethod
    def from_dense(cls, apart: np.ndarray) -> CentroidPairs:
        """A (n, n) boolean matrix (taken as symmetric: a pair marked in either direction counts)."""
        apart = np.asarray(apart, dtype=bool)
        if apart.ndim != 2 or apart.shape[0] != apart.shape[1]:
            raise MelaError(f"apart must be a square (K, K) boolean matrix, got shape {apart.shape}")
        first, second = np.nonzero(apart)
        return cls.from_pairs(first, second, apart.shape[0])

    def dense(self) -> np.ndarray:
        """The (n, n) symmetric boolean matrix (for small n only)."""
        out = np.zeros((self.n, self.n), dtype=bool)
        first, second = np.divmod(self.codes, max(self.n, 1))
        out[first, second] = True
        out[second, first] = True
        return out

    def contains(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Elementwise: is the pair (first[i], second[i]) marked? (first < second)"""
        codes = np.asarray(first, dtype=np.int64) * self.n + np.asarray(second, dtype=np.int64)
        where = np.searchsorted(self.codes, codes)
        return self.codes[np.minimum(where, max(len(self.codes) - 1, 0))] == codes if len(self.codes) else \
            np.zeros(len(codes), dtype=bool)

    def neighbours(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR form, both directions: centroid c's partners are ``indices[indptr[c]:indptr[c + 1]]``."""
        first, second = np.divmod(self.codes, max(self.n, 1))
        rows, cols = np.concatenate([first, second]), np.concatenate([second, first])
        order = np.argsort(rows, kind="stable")
        return offsets_of(np.bincount(rows, minlength=self.n)), cols[order]


def cooccurrence_pairs(assigned: np.ndarray, n_centroids: int, offsets: np.ndarray | None = None) -> CentroidPairs:
    """:func:`cooccurrence` held sparsely: the centroid pairs that labelled two classes of one kept task,
    as :class:`CentroidPairs` (memory proportional to the task pairs, not to ``n_centroids`` squared)."""
    flat, offsets = _flat_assigned(assigned, offsets)
    first, second, task = task_pairs(offsets)
    ok = tasks_kept(flat, offsets)[task]
    return CentroidPairs.from_pairs(flat[first[ok]], flat[second[ok]], n_centroids)


def member_means(keys: np.ndarray | TaskKeys, assigned: np.ndarray, centroids: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and number of the keys matched to each centroid (an unmatched centroid keeps its place, count 0)."""
    flat_keys = keys.keys if isinstance(keys, TaskKeys) else keys.reshape(-1, keys.shape[-1]).astype(np.float64)
    flat = np.asarray(assigned).reshape(-1)
    ok = flat >= 0
    counts = np.bincount(flat[ok], minlength=len(centroids)).astype(np.float64)
    sums = np.zeros_like(centroids, dtype=np.float64)
    np.add.at(sums, flat[ok], flat_keys[ok])
    means = centroids.astype(np.float64).copy()
    hit = counts > 0
    means[hit] = sums[hit] / counts[hit, None]
    return means, counts


def different_class_chance(observed_sq: np.ndarray, noise: np.ndarray, key_distance: float,
                           different_sq: np.ndarray) -> np.ndarray:
    """How often two *different* classes' cluster means would be as close as ``observed_sq``.

    Two keys of one task (different classes) are ``delta^2 + s^2`` apart, squared; two
    cluster means of different classes ``delta^2 + noise``. So the chance is the
    fraction of within-task squared key distances at most ``observed - noise + s^2``.
    """
    if len(different_sq) == 0:
        return np.zeros_like(observed_sq)
    bound = observed_sq - noise + key_distance**2
    return np.searchsorted(different_sq, bound, side="right") / len(different_sq)


def merge_indistinguishable(
    centroids: np.ndarray, counts: np.ndarray, apart: np.ndarray | CentroidPairs, key_distance: float, z_max: float,
    different_sq: np.ndarray | None = None, risk: float = 1.0, groups: list[list[int]] | None = None,
    allowance: float = 0.0, method: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Greedily merge the most similar pair while its squared distance is at most ``z_max * noise + allowance``.

    ``noise`` is the expected squared distance of the two means if they were one class
    (``s^2 / 2 (1/a + 1/b)`` for means of a and b keys), so with ``allowance=0`` this is
    ``z <= z_max``. ``allowance`` covers the split of one class over two centroids:
    each centroid then takes the keys on its side, so their means sit apart by about
    one within-class standard deviation along the split, however many keys they hold.

    With ``different_sq`` (:func:`different_class_sq_distances`), a pair also needs a
    :func:`different_class_chance` of at most ``risk``: where different classes are
    as close as one class's clusters, the data cannot justify a merge. Merged clusters
    take the count-weighted mean and the summed count; pairs marked in ``apart`` (two
    classes of one task; a symmetric (K, K) boolean matrix or :class:`CentroidPairs`), and
    groups that would contain one, never merge. A ``groups`` list, if given, is filled with
    the input indices behind each output centroid.

    ``method``: ``dense`` holds the (K, K) statistic; ``sparse`` holds only the pairs that
    can merge (:func:`_merge_sparse`), memory about proportional to K; ``auto`` takes dense up
    to :data:`DENSE_MERGE_MAX` centroids. Both give the same merges in the same order, to the bit.
    """
    if method not in MERGE_METHODS:
        raise MelaError(f"unknown merge method '{method}'; valid methods: {', '.join(MERGE_METHODS)}")
    if method == "auto":
        method = "dense" if len(centroids) <= DENSE_MERGE_MAX else "sparse"
    centroids, counts = centroids.astype(np.float64).copy(), counts.astype(np.float64).copy()
    if method == "dense":
        dense = apart.dense() if isinstance(apart, CentroidPairs) else np.asarray(apart, dtype=bool).copy()
        alive, members = _merge_dense(centroids, counts, dense, key_distance, z_max, different_sq, risk, allowance)
    else:
        pairs = apart if isinstance(apart, CentroidPairs) else CentroidPairs.from_dense(apart)
        if pairs.n != len(centroids):
            raise MelaError(f"apart pairs are over {pairs.n} centroids but {len(centroids)} centroids were given; "
                            "build them with the same number of centroids")
        alive, members = _merge_sparse(centroids, counts, pairs, key_distance, z_max, different_sq, risk, allowance)
    if groups is not None:
        groups[:] = [members[i] for i in np.flatnonzero(alive)]
    return centroids[alive], counts[alive]


def _merge_z(observed: np.ndarray, noise: np.ndarray, z_max: float, allowance: float, key_distance: float,
             different_sq: np.ndarray | None, risk: float) -> np.ndarray:
    """z of :func:`merge_indistinguishable` (1 at the merge bound), inf where the different-class guard refuses."""
    z = observed / (z_max * noise + allowance)
    if different_sq is not None and risk < 1.0:
        z[different_class_chance(observed, noise, key_distance, different_sq) > risk] = np.inf
    return z


def _merge_dense(
    centroids: np.ndarray, counts: np.ndarray, apart: np.ndarray, key_distance: float, z_max: float,
    different_sq: np.ndarray | None, risk: float, allowance: float,
) -> tuple[np.ndarray, list[list[int]]]:
    """The greedy merge on the (K, K) matrix of z (argmin: the row-major first minimum); updates ``centroids``
    and ``counts`` in place, returns which survive and the members of each."""
    alive = np.ones(len(centroids), dtype=bool)

    def statistic(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        inverse = 1.0 / np.maximum(counts, 1.0)
        noise = 0.5 * key_distance**2 * (inverse[rows][:, None] + inverse[cols][None, :])
        observed = cdist(centroids[rows], centroids[cols], "sqeuclidean")
        return _merge_z(observed, noise, z_max, allowance, key_distance, different_sq, risk)

    everything = np.arange(len(centroids))
    members = [[i] for i in everything.tolist()]
    z = statistic(everything, everything)
    np.fill_diagonal(z, np.inf)
    z[apart] = np.inf
    while len(z):
        i, j = np.unravel_index(np.argmin(z), z.shape)
        if not z[i, j] <= 1.0:
            break
        _merge_into(centroids, counts, i, j)
        apart[i] |= apart[j]
        apart[:, i] |= apart[:, j]
        alive[j] = False
        members[i] += members[j]
        z[j, :] = z[:, j] = np.inf
        row = statistic(np.array([i]), everything)[0]
        row[~alive | apart[i]] = np.inf
        row[i] = np.inf
        z[i, :] = z[:, i] = row
    return alive, members


def _merge_into(centroids: np.ndarray, counts: np.ndarray, i: int, j: int) -> None:
    """Centroid j joins centroid i: the count-weighted mean and the summed count, in place."""
    total = counts[i] + counts[j]
    weight_i = counts[i] / total if total > 0 else 0.5
    centroids[i] = weight_i * centroids[i] + (1 - weight_i) * centroids[j]
    counts[i] = total


def merge_candidates(
    centroids: np.ndarray, counts: np.ndarray, apart: CentroidPairs, key_distance: float, z_max: float,
    different_sq: np.ndarray | None = None, risk: float = 1.0, allowance: float = 0.0,
    chunk_entries: int = CHUNK_ENTRIES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair a < b that may merge now (z <= 1, or NaN), not ``apart``: (z, a, b) arrays, unsorted.

    A radius query without a (K, K) matrix: noise is at most ``s^2 / 2 (1 / n_a + max_b 1 / n_b)`` for row a,
    so a pair can only merge within ``z_max`` times that plus ``allowance``. Blocks of rows against the
    centroids after them are ranked by a matrix product (after centring), with a slack far above its
    rounding error; the survivors get the exact squared distance (summed as ``cdist`` sums it) and the
    exact z of the dense statistic.
    """
    n = len(centroids)
    empty = (np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    if n < 2:
        return empty
    inverse = 1.0 / np.maximum(counts, 1.0)
    half = 0.5 * key_distance**2
    radius = (z_max * (half * (inverse + inverse.max())) + allowance) * (1.0 + 1e-9)
    centre = centroids.mean(axis=0)
    shifted = centroids - centre
    norms = (shifted**2).sum(axis=1)
    scaled = -2.0 * shifted.T
    rows_per_block = max(1, chunk_entries // n)
    zs, firsts, seconds = [], [], []
    for lo in range(0, n - 1, rows_per_block):
        hi = min(lo + rows_per_block, n - 1)
        # Row a meets the columns after it: a block of rows [lo, hi) needs columns [lo + 1, n).
        rank = shifted[lo:hi] @ scaled[:, lo + 1 :]
        rank += norms[lo + 1 :]
        rank += norms[lo:hi, None]
        slack = 1e-9 * (norms[lo:hi] + norms[lo + 1 :].max()) + 1e-300
        # Not "rank <= bound": NaN coordinates must reach the exact test (where the dense argmin stops on them).
        r, c = np.nonzero(~(rank > (radius[lo:hi] + slack)[:, None]))
        a, b = r + lo, c + lo + 1
        keep = b > a
        a, b = a[keep], b[keep]
        observed = paired_sq_distances(centroids, a, centroids, b)
        z = _merge_z(observed, half * (inverse[a] + inverse[b]), z_max, allowance, key_distance, different_sq, risk)
        keep = ~(z > 1.0) & ~apart.contains(a, b)
        zs.append(z[keep])
        firsts.append(a[keep])
        seconds.append(b[keep])
    return np.concatenate(zs), np.concatenate(firsts), np.concatenate(seconds)


def _merge_sparse(
    centroids: np.ndarray, counts: np.ndarray, apart: CentroidPairs, key_distance: float, z_max: float,
    different_sq: np.ndarray | None, risk: float, allowance: float,
) -> tuple[np.ndarray, list[list[int]]]:
    """The greedy merge of :func:`_merge_dense` without a (K, K) matrix, giving the same merges in the same order.

    The dense loop takes the row-major first minimum of a symmetric z, i.e. the least (z, a, b) over
    pairs a < b, merges b into a and recomputes a's row. Here: the pairs that can merge at the start
    (:func:`merge_candidates`) sorted by (NaN first, z, a, b), plus a heap of the pairs pushed after
    each merge (the merged centroid's row, 1 x K, computed as the dense loop computes it); an entry
    is stale once one of its centroids died or changed (versions). Pairs with z > 1 are never needed:
    when no pair is at most 1 the dense loop stops too. ``apart`` is tracked through the original
    pairs of each group's members: two groups are apart when any two of their members are.
    """
    n = len(centroids)
    alive = np.ones(n, dtype=bool)
    version = np.zeros(n, dtype=np.int64)
    members = [[i] for i in range(n)]
    if n < 2:
        return alive, members
    z0, a0, b0 = merge_candidates(centroids, counts, apart, key_distance, z_max, different_sq, risk, allowance,
                                  CHUNK_ENTRIES)
    nan0 = np.isnan(z0)
    order = np.lexsort((b0, a0, np.where(nan0, 0.0, z0), ~nan0))
    # Plain lists: the loop reads one entry at a time.
    first_ok, first_z = (~nan0[order]).tolist(), np.where(nan0, 0.0, z0)[order].tolist()
    first_a, first_b = a0[order].tolist(), b0[order].tolist()
    indptr, indices = apart.neighbours()
    partners: dict[int, np.ndarray] = {}  # original apart partners of the members of a merged group
    group_of = np.arange(n)
    heap: list[tuple[bool, float, int, int, int, int]] = []
    half = 0.5 * key_distance**2
    pos = 0
    while True:
        while pos < len(first_a) and not (version[first_a[pos]] == 0 and version[first_b[pos]] == 0
                                          and alive[first_a[pos]] and alive[first_b[pos]]):
            pos += 1
        while heap and not (alive[heap[0][2]] and alive[heap[0][3]] and version[heap[0][2]] == heap[0][4]
                            and version[heap[0][3]] == heap[0][5]):
            heapq.heappop(heap)
        best = (first_ok[pos], first_z[pos], first_a[pos], first_b[pos]) if pos < len(first_a) else None
        if heap and (best is None or heap[0][:4] < best):
            best = heapq.heappop(heap)[:4]
        elif best is not None:
            pos += 1
        if best is None or not best[0] or not best[1] <= 1.0:
            break  # nothing left that can merge, or a NaN z (the dense argmin stops on it as well)
        _, _, i, j = best
        _merge_into(centroids, counts, i, j)
        alive[j] = False
        version[i] += 1
        group_of[members[j]] = i
        members[i] += members[j]
        partners[i] = np.concatenate([partners.get(i, indices[indptr[i] : indptr[i + 1]]),
                                      partners.pop(j, indices[indptr[j] : indptr[j + 1]])])
        inverse = 1.0 / np.maximum(counts, 1.0)
        observed = cdist(centroids[i : i + 1], centroids, "sqeuclidean")[0]
        row = _merge_z(observed, half * (inverse[i] + inverse), z_max, allowance, key_distance, different_sq, risk)
        row[~alive] = np.inf
        row[group_of[partners[i]]] = np.inf
        row[i] = np.inf
        for k in np.flatnonzero(~(row > 1.0)).tolist():
            lo, hi = min(i, k), max(i, k)
            z = float(row[k])
            nan = math.isnan(z)
            heapq.heappush(heap, (not nan, 0.0 if nan else z, lo, hi, int(version[lo]), int(version[hi])))
    return alive, members


def merge_threshold(merge_factor: float, effective_dim: float) -> float:
    """z below which two clusters are one class: the chi^2_D / D mean plus ``merge_factor`` standard deviations."""
    return 1.0 + merge_factor * math.sqrt(2.0 / effective_dim)
