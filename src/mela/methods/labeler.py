"""Global label inference: cluster the per-task class means, then label every task.

Each task brings n_ways class "keys" (the mean feature of a local class) that are
known to belong to n_ways *different* global classes (cannot-link), while the images
averaged into one key are one class (must-link). The labeler keeps a set of
centroids, assigns each task's keys to distinct centroids, prunes centroids that
too few tasks reach, and repeats until the number of centroids is stable.

Two modes:

- ``reference`` reproduces the reference exactly: K centroids from the keys of the
  first K/n_ways tasks, nearest-centroid assignment, tasks whose keys collide are
  skipped, and centroids are never created later. Its crashes become clear errors.
- ``improved`` (default) keeps the same initialisation and pruning rule but
  (1) accepts any K, (2) assigns a task's keys to distinct centroids by an optimal
  one-to-one matching instead of skipping the task, (3) gives a key that is too far
  from its matched centroid to be of its class a new centroid (below), so classes absent
  from the first tasks are not lost, and (4) after each pass merges two centroids only
  when the data cannot tell them apart (below).

The spawn rule is a test too. A key of the centroid's class lies from the centroid's
running mean of a keys by its own noise plus the centroid's: the squared distance is
about ``(v + s^2 / (2 a)) chi^2_D / D``, with v the key's noise (``s^2 / 2`` when all
keys average as many images; ``tr(S) / m`` for a key of m images in a ragged pile).
Above ``1 + spawn_factor * sqrt(2 / D)`` times that expectation the key starts a
centroid of its own. The earlier radius (twice ``s``: 8 times the expected squared
distance) let a centroid sitting among several classes (a mixed one, near their
average) swallow every class that had no centroid of its own: with K below the class
count most of them were lost (500 classes in 256-d, 5-image keys recurring 8 times:
354 clusters at ARI 0.09; with the test 523 at ARI 0.97).

The merge rule is a two-sample test, not a radius. After a pass every key is matched
to a centroid; a centroid is re-estimated as the mean of its a keys. If two
centroids with a and b keys are one class, their means differ only by key noise,
so ``z = |mu_a - mu_b|^2 / ((s^2 / 2) (1/a + 1/b))`` is about chi^2_D / D: mean 1,
standard deviation sqrt(2 / D), with D the effective dimension of the within-class
noise (participation ratio ``tr(S)^2 / tr(S^2)`` of its covariance S). Pairs with
``z <= 1 + merge_factor * sqrt(2 / D)`` merge, most similar first, never two
centroids that one task used for two of its classes, nor a group containing such a
pair. Two *different* classes have ``z = 1 + |delta|^2 / noise``: they merge only when
their means are closer than the noise of the cluster means, which shrinks as the
clusters grow. The earlier rule (merge below ``merge_factor * s``) merged almost
everything when classes vary a lot inside, because then ``s`` is as large as the
distance between classes; the test's threshold scales with the noise of a *mean*
of several keys, not of one key, so weak representations keep their clusters
(about as many as the reference finds) instead of collapsing.

``s`` and D come from the images inside each local class (:func:`key_spread`),
which are one class by construction: a key averaging m images differs from another
key of its class by about ``sqrt(2 tr(S) / m)``. That holds when the images of a local
class are independent draws of their class; when they share a source (one session,
background or font per local class) a key carries the shared offset undivided, keys of
one class lie further apart, and the spawn test would give nearly every key its own
centroid. So the first pass records each key's squared distance to its matched centroid
over its expectation; keys matched to their own class follow ``chi^2_D / D``, keys of a
class met for the first time lie further out, and a low quantile of the statistic over
that of ``chi^2_D / D`` says how much larger the key noise really is. Above
``SHARED_NOISE_RATIO^2`` the excess is taken as noise the images share
(:func:`shared_noise`, ``KeySpread.shared``) and the clustering starts again with it
(300 classes, shared noise as large as one image's over the 5 averaged: 1200 clusters at
ARI 0.00 before, 300 at ARI 1.00 now; ``benchmarks/labeler_shared_noise.py``). A task class of a single image
(m = 1, e.g. 1-shot tasks without queries) has no inside spread; then the labeler
first clusters without spawning or merging, and estimates ``s`` and D from the keys
around the centroids they were matched to (:func:`cluster_spread`, a median, so
that the wrongly matched keys of unseen classes do not inflate it), and clusters
again with them.

:func:`key_diagnostics` says, without true labels, how trustworthy the result is:
the ratio of the same-class key distance to the median distance between two keys
of one task (certainly two classes; near 1 the keys do not separate classes at
all), and the fraction of tasks whose keys' nearest centroids collide, i.e. that
violate a cannot-link constraint under plain nearest-centroid labelling. A ratio
above 0.6, more than 20 % colliding tasks, or a same-class distance that cannot be
measured gives a warning that the inferred labels are unreliable (on the 108
cases of ``benchmarks/labeler_sweep.py`` this flags 35 of the 36 runs with ARI
below 0.2, and 9 runs with ARI above 0.5). Whether the number of clusters came from the data or from K is
another question, answered by clustering again with a smaller K
(:func:`mela.methods.global_labels.count_sensitivity`): with keys of one image whose classes overlap at that
resolution the spawn and merge tests are not decisive and the count stays near K.

Ragged piles. A real task collection has tasks of 2 to 20 ways and classes of 1 to many
images. Every function takes either the fixed-shape arrays (keys (T, n_ways, d), item
features (T, n_ways, m, d), ``assigned`` (T, n_ways)) or the ragged forms :class:`TaskKeys`
(keys (K, d) and task offsets: task t owns keys ``offsets[t]:offsets[t + 1]``) and
:class:`RaggedFeatures` (items (M, d), class and task offsets), with which ``assigned`` is
flat (K,), -1 where reference mode dropped the task. On fixed-shape input the results are
exactly those of the fixed-shape code. The rules that change with ragged shapes:

- initialisation: the keys of the first tasks until K keys are collected (the first K keys);
  reference mode needs at least K keys, and K divisible by n_ways only when all tasks have
  n_ways classes;
- pruning null: an accepted task t hits each of the K centroids with probability
  ``p_t = ways_t / K``, so a centroid's hits have mean ``sum_t ways_t / K`` and variance
  ``sum_t p_t (1 - p_t)`` (:func:`prune_threshold`; for fixed ways, the binomial of before);
- key spread with classes of m_k images: the within-class covariance S is pooled over the
  classes with m_k >= 2 (dof ``sum (m_k - 1)``; one-image classes have no inside spread and
  are skipped). A key of m_k images carries noise ``tr(S) / m_k``, so two keys of one class
  drawn at random are ``s = sqrt(2 tr(S) mean_k(1 / m_k))`` apart (mean over all classes,
  one-image ones included). This is also what the merge test and the cost correction need:
  the mean of a keys carries ``tr(S) mean(1 / m) / a = s^2 / (2 a)``. With no class of two
  images, ``s`` comes from the keys around their centroids (:func:`cluster_spread`) as before;
- cannot-link: every pair of classes inside one task, whatever its ways (a 2-way task gives one pair);
- the widest task sets how many centroids labelling needs.

Scale: labelling, cooccurrence and the diagnostics never hold a keys-by-keys or
keys-by-centroids matrix whole. Key-centroid distances are computed in chunks of keys
(:func:`nearest_centroids`); a task whose keys' nearest centroids are distinct takes them
(they are its optimal one-to-one matching), and only tasks whose keys collide are matched
with ``linear_sum_assignment``. Within-task pairs are index arrays, their distances
computed in chunks. :func:`fit_centroids` updates centroids online, so it stays a loop
over tasks (each task's keys against the current centroids).

On a GPU (``device``, the training device in learn_labeler) the distances are computed
there: the per-task distances of the loop against a device copy of the centroids kept in
step row by row (:class:`CentroidTable`; equal to SciPy's to float64 rounding), and the
chunked ranking of :func:`nearest_centroids` (the exact tie-break stays on the host, so its
labels are the host's to the bit). The loop's bookkeeping (matching, spawn test, counts)
and the merge stay on the host: they are per task or per centroid pair, not per distance.

The merge holds no centroid-by-centroid matrix either once there are more than
``DENSE_MERGE_MAX`` centroids (a 35,000-centroid pile would need ~10 GB for it): the
cannot-link pairs are :class:`CentroidPairs` (sorted pair codes, :func:`cooccurrence_pairs`),
the pairs that can merge at all come from a radius query in blocks of rows
(:func:`merge_candidates`: no pair is farther than ``z_max`` times the largest noise plus
the allowance), and a heap replays the dense greedy loop exactly (same merges, same order,
ties to the row-major first pair), recomputing one 1 x K row after each merge.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from scipy.stats import chi2
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from mela.errors import MelaError

MODES = ("improved", "reference")

# Warning thresholds of key_diagnostics (see benchmarks/labeler_sweep.py for where they come from).
MAX_RELIABLE_DISTANCE_RATIO = 0.6
MAX_RELIABLE_COLLISION_RATE = 0.2
# Squared within-class sds, along the split direction, that two halves of one split class may sit apart.
SPLIT_ALLOWANCE = 4.0
# shared_noise: keys lying this many times further from their centroids than their images predict share a
# source; the quantile of the first pass's key-to-centroid statistics that measures it (keys matched to their
# own class's centroid; keys of a class not seen before lie further out).
SHARED_NOISE_RATIO = 1.3
SHARED_NOISE_QUANTILE = 0.2
# Keys per block of key-centroid distances, and pairs per block of within-task distances (memory bounds).
CHUNK_KEYS = 8192
CHUNK_PAIRS = 65536
# Centroids up to which the merge works on a (K, K) matrix; above, on candidate pairs (the same merges, memory ~ K).
DENSE_MERGE_MAX = 256
# Entries of one block of centroid-centroid products in the sparse merge's radius query (32 MB of float64).
CHUNK_ENTRIES = 1 << 22
MERGE_METHODS = ("auto", "dense", "sparse")


@dataclass(frozen=True)
class LabelerConfig:
    """Settings of the clustering (names follow the reference's config).

    ``count_check`` (improved mode): cluster a second time with a smaller K to tell whether the number of
    clusters came from the data or from K (see :func:`mela.methods.global_labels.count_sensitivity`).
    """

    K: int = 400
    std_factor: float = 3.5
    mode: str = "improved"
    max_passes: int = 30
    spawn_factor: float = 8.0
    merge_factor: float = 6.0
    merge_risk: float = 0.01
    count_check: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise MelaError(f"unknown labeler mode '{self.mode}'; valid modes: {', '.join(MODES)}")
        if self.K < 1:
            raise MelaError(f"K (number of initial centroids) must be positive, got {self.K}")
        if not self.std_factor >= 0:
            raise MelaError(f"std_factor must be zero or positive, got {self.std_factor}")
        if not self.spawn_factor > 0:
            raise MelaError(f"spawn_factor must be positive, got {self.spawn_factor}")
        if not self.merge_factor >= 0:
            raise MelaError(f"merge_factor must be zero or positive (0 merges only clear duplicates), "
                            f"got {self.merge_factor}")
        if not 0.0 <= self.merge_risk <= 1.0:
            raise MelaError(f"merge_risk must be between 0 and 1, got {self.merge_risk}")
        if self.max_passes < 1:
            raise MelaError(f"max_passes must be at least 1, got {self.max_passes}")


@dataclass(frozen=True)
class KeySpread:
    """How far apart two keys of one class typically are, and in how many dimensions they vary.

    ``distance``: typical distance between two keys of one class (``s``);
    ``effective_dim``: participation ratio of the key noise covariance (D);
    ``source``: ``images`` (spread inside each local class), ``clusters`` (keys around their centroid), or
    ``images+keys`` (the images of one local class share part of their noise: see :func:`shared_noise`);
    ``shared``: the part of a key's noise (``s^2 / 2``) that all images of its local class share, 0 when they
    are independent draws of their class.
    """

    distance: float
    effective_dim: float
    source: str = "images"
    shared: float = 0.0


@dataclass
class Clustering:
    """The fitted centroids and what happened on each pass."""

    centroids: np.ndarray
    passes: list[dict] = field(default_factory=list)
    spawn_z: float | None = None
    spread: KeySpread | None = None


def _offsets(counts: np.ndarray) -> np.ndarray:
    """(n,) counts -> (n + 1,) int64 start offsets."""
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _check_offsets(offsets: np.ndarray, total: int, what: str, parts: str) -> np.ndarray:
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != total:
        raise MelaError(f"{what} offsets must run from 0 to {total} (one entry more than {parts}); "
                        "build them as the cumulative sum of the counts with a leading 0")
    if (np.diff(offsets) < 1).any():
        raise MelaError(f"every entry of {what} offsets must be above the previous one (no empty {parts[:-1]}); "
                        f"drop the empty {parts}")
    return offsets


@dataclass(frozen=True)
class TaskKeys:
    """A ragged pile of task keys: task t's class keys are ``keys[offsets[t]:offsets[t + 1]]``.

    Attributes:
        keys: (K, d) float64 class means, tasks one after another.
        offsets: (T + 1,) int64 task offsets into ``keys``.
    """

    keys: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        keys = np.asarray(self.keys, dtype=np.float64)
        if keys.ndim != 2:
            raise MelaError(f"task keys must be a (K, d) array, got shape {keys.shape}")
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "offsets", _check_offsets(self.offsets, len(keys), "task", "tasks"))

    @classmethod
    def from_array(cls, keys: np.ndarray) -> TaskKeys:
        """(T, n_ways, d) fixed-shape keys -> the same keys as a ragged pile."""
        keys = np.asarray(keys)
        if keys.ndim != 3:
            raise MelaError(f"task keys must be (T, n_ways, d), got shape {keys.shape}")
        t, n, d = keys.shape
        return cls(keys.reshape(t * n, d), np.arange(t + 1, dtype=np.int64) * n)

    @property
    def n_tasks(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_keys(self) -> int:
        return len(self.keys)

    @property
    def dim(self) -> int:
        return self.keys.shape[1]

    @cached_property
    def ways(self) -> np.ndarray:
        """(T,) classes of each task."""
        return np.diff(self.offsets)

    @cached_property
    def task_of(self) -> np.ndarray:
        """(K,) task of each key."""
        return np.repeat(np.arange(self.n_tasks), self.ways)

    @cached_property
    def uniform_ways(self) -> int | None:
        """n_ways when every task has that many classes, else None."""
        ways = self.ways
        return int(ways[0]) if len(ways) and (ways == ways[0]).all() else None

    @property
    def max_ways(self) -> int:
        return int(self.ways.max()) if self.n_tasks else 0

    def task(self, t: int) -> np.ndarray:
        """(ways_t, d) keys of task t."""
        return self.keys[self.offsets[t] : self.offsets[t + 1]]


@dataclass(frozen=True)
class RaggedFeatures:
    """Item features of a ragged pile: class k's items are ``items[class_offsets[k]:class_offsets[k + 1]]``,
    task t's classes are ``task_offsets[t]:task_offsets[t + 1]`` (the layout of ``mela.data.tasks``).

    Attributes:
        items: (M, d) features of every item (an image used twice appears twice).
        class_offsets: (K + 1,) int64 class offsets into ``items``.
        task_offsets: (T + 1,) int64 task offsets into the classes.
    """

    items: np.ndarray
    class_offsets: np.ndarray
    task_offsets: np.ndarray

    def __post_init__(self) -> None:
        items = np.asarray(self.items)
        if items.ndim != 2:
            raise MelaError(f"ragged item features must be an (M, d) array, got shape {items.shape}")
        object.__setattr__(self, "items", items)
        class_offsets = _check_offsets(self.class_offsets, len(items), "class", "classes")
        object.__setattr__(self, "class_offsets", class_offsets)
        object.__setattr__(self, "task_offsets",
                           _check_offsets(self.task_offsets, len(class_offsets) - 1, "task", "tasks"))

    @classmethod
    def from_array(cls, features: np.ndarray) -> RaggedFeatures:
        """(T, n_ways, m, d) fixed-shape item features -> the same features as a ragged pile."""
        features = np.asarray(features)
        if features.ndim != 4:
            raise MelaError(f"item features must be (T, n_ways, m, d), got shape {features.shape}")
        t, n, m, d = features.shape
        return cls(features.reshape(-1, d), np.arange(t * n + 1, dtype=np.int64) * m,
                   np.arange(t + 1, dtype=np.int64) * n)

    @property
    def n_tasks(self) -> int:
        return len(self.task_offsets) - 1

    @property
    def n_classes(self) -> int:
        return len(self.class_offsets) - 1

    @cached_property
    def class_sizes(self) -> np.ndarray:
        """(K,) items of each class."""
        return np.diff(self.class_offsets)

    @property
    def ways(self) -> np.ndarray:
        return np.diff(self.task_offsets)

    @cached_property
    def uniform_class_size(self) -> int | None:
        """m when every class has m items, else None."""
        sizes = self.class_sizes
        return int(sizes[0]) if len(sizes) and (sizes == sizes[0]).all() else None

    def keys(self) -> TaskKeys:
        """Class means as a ragged key pile (with equal class sizes, exactly the fixed-shape ``mean(axis=2)``)."""
        m = self.uniform_class_size
        if m is not None:
            means = self.items.reshape(self.n_classes, m, -1).mean(axis=1)
        else:
            means = np.empty((self.n_classes, self.items.shape[1]), dtype=np.float64)
            for lo, hi in _class_blocks(self.class_offsets):
                starts = self.class_offsets[lo:hi] - self.class_offsets[lo]
                block = self.items[self.class_offsets[lo] : self.class_offsets[hi]]
                means[lo:hi] = np.add.reduceat(block, starts, axis=0, dtype=np.float64)
            means /= self.class_sizes[:, None]
        return TaskKeys(means, self.task_offsets)


def _class_blocks(class_offsets: np.ndarray, max_items: int = CHUNK_PAIRS) -> Iterator[tuple[int, int]]:
    """Consecutive class ranges [lo, hi) of about ``max_items`` items each (at least one class)."""
    n = len(class_offsets) - 1
    lo = 0
    while lo < n:
        hi = int(np.searchsorted(class_offsets, class_offsets[lo] + max_items, side="right")) - 1
        hi = min(max(hi, lo + 1), n)
        yield lo, hi
        lo = hi


def as_task_keys(keys: np.ndarray | TaskKeys) -> tuple[TaskKeys, tuple[int, int] | None]:
    """Either key form -> a :class:`TaskKeys` and the (T, n_ways) shape to give per-key results (None: ragged)."""
    if isinstance(keys, TaskKeys):
        return keys, None
    keys = np.asarray(keys)
    if keys.ndim != 3:
        raise MelaError(f"task keys must be (T, n_ways, d) or TaskKeys, got an array of shape {keys.shape}")
    return TaskKeys.from_array(keys), keys.shape[:2]


def _shaped(flat: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    return flat if shape is None else flat.reshape(shape)


def task_keys(features: np.ndarray | RaggedFeatures) -> np.ndarray | TaskKeys:
    """(T, n_ways, per_class, d) item features -> (T, n_ways, d) class means; ragged features -> TaskKeys."""
    if isinstance(features, RaggedFeatures):
        return features.keys()
    return features.mean(axis=2)


def task_pairs(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of keys inside one task: (first, second, task) index arrays, first < second.

    Built per distinct task width, without a Python loop over tasks; the order is by
    width, then task, then pair.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    ways = np.diff(offsets)
    firsts, seconds, tasks = [], [], []
    for w in np.unique(ways):
        if w < 2:
            continue
        a, b = np.triu_indices(int(w), 1)
        which = np.flatnonzero(ways == w)
        starts = offsets[which][:, None]
        firsts.append((starts + a).ravel())
        seconds.append((starts + b).ravel())
        tasks.append(np.repeat(which, len(a)))
    if not firsts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(tasks)


def paired_sq_distances(x: np.ndarray, rows: np.ndarray, y: np.ndarray, cols: np.ndarray,
                        chunk: int = CHUNK_PAIRS) -> np.ndarray:
    """Squared distances ``|x[rows[i]] - y[cols[i]]|^2``, in chunks of pairs.

    The squares are summed coordinate by coordinate, in order, as SciPy's ``cdist`` /
    ``pdist`` do, so the values are the same to the last bit.
    """
    out = np.empty(len(rows), dtype=np.float64)
    for lo in range(0, len(rows), chunk):
        hi = min(lo + chunk, len(rows))
        diff = np.asarray(x[rows[lo:hi]], dtype=np.float64) - np.asarray(y[cols[lo:hi]], dtype=np.float64)
        np.square(diff, out=diff)
        acc = np.zeros(hi - lo)
        for column in np.ascontiguousarray(diff.T):
            acc += column
        out[lo:hi] = acc
    return out


def nearest_centroids(keys: np.ndarray, centroids: np.ndarray, chunk: int = CHUNK_KEYS,
                      device: torch.device | None = None) -> np.ndarray:
    """(K,) index of each key's nearest centroid, ``chunk`` keys at a time (fewer when there are more than
    ``CHUNK_ENTRIES / chunk`` centroids): ``cdist(keys, centroids).argmin(1)``.

    A matrix product ranks the centroids fast (``|c|^2 - 2 x.c``, after centring); the few
    centroids within its rounding error of the best are then compared by the exact
    distance, summed as ``cdist`` sums it, ties to the lowest index as ``argmin`` breaks them.
    With a torch ``device`` the product runs there (float64) and only the few candidates come
    back, so the answer is the host's to the bit.
    """
    keys = np.asarray(keys, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    out = np.empty(len(keys), dtype=np.int64)
    if len(centroids) == 0 or len(keys) == 0:
        return out
    centre = centroids.mean(axis=0)
    shifted = centroids - centre
    norms = (shifted**2).sum(axis=1)
    rank_candidates = _candidates_on(device, shifted, norms) if device is not None else _candidates(shifted, norms)
    # At most CHUNK_ENTRIES key-centroid entries per block, however many centroids there are.
    chunk = max(1, min(chunk, CHUNK_ENTRIES // len(centroids)))
    for lo in range(0, len(keys), chunk):
        block = keys[lo : lo + chunk]
        rows, cols = rank_candidates(block - centre)
        exact = np.sqrt(paired_sq_distances(block, rows, centroids, cols))
        order = np.lexsort((cols, exact, rows))
        first = np.ones(len(order), dtype=bool)
        first[1:] = rows[order][1:] != rows[order][:-1]
        out[lo + rows[order][first]] = cols[order][first]
    return out


def _candidates(shifted: np.ndarray, norms: np.ndarray):
    """(rows, cols) of the centroids within rounding of each centred key's best by the product form, NumPy."""
    scaled, top = -2.0 * shifted.T, norms.max()

    def candidates(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rank = x @ scaled
        rank += norms
        # Rounding of the product form is far below 1e-9 of |x|^2 + |c|^2; anything that close may be the nearest.
        slack = 1e-9 * ((x**2).sum(axis=1) + top) + 1e-300
        return np.nonzero(rank <= (rank.min(axis=1) + slack)[:, None])

    return candidates


def _candidates_on(device: torch.device, shifted: np.ndarray, norms: np.ndarray):
    """:func:`_candidates` with the product on a torch device (float64, the same slack)."""
    scaled = torch.as_tensor(-2.0 * shifted.T, device=device)
    norms_t = torch.as_tensor(norms, device=device)
    top = float(norms.max())

    def candidates(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xt = torch.as_tensor(x, device=device)
        rank = xt @ scaled + norms_t
        slack = 1e-9 * ((xt**2).sum(dim=1) + top) + 1e-300
        rows, cols = torch.nonzero(rank <= (rank.min(dim=1).values + slack)[:, None], as_tuple=True)
        return rows.cpu().numpy(), cols.cpu().numpy()

    return candidates


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


def effective_dimension(samples: np.ndarray, dof: int) -> float:
    """Participation ratio tr(S)^2 / tr(S^2) of the covariance of zero-mean ``samples`` (N, d).

    ``dof`` is the number of independent deviations behind them. tr(S^2) of a sample
    covariance is biased up by about tr(S)^2 / dof; that bias is removed, so pure
    noise in d dimensions gives about d even from few samples. Clamped to [1, d].
    """
    d = samples.shape[1]
    dof = max(int(dof), 1)
    if samples.shape[0] <= d:
        gram = samples @ samples.T / dof
        trace, trace_sq = float(np.trace(gram)), float((gram**2).sum())
    else:
        cov = samples.T @ samples / dof
        trace, trace_sq = float(np.trace(cov)), float((cov**2).sum())
    if trace <= 0:
        return 1.0
    trace_sq = (trace_sq - trace**2 / dof) / (1.0 + 1.0 / dof)
    if trace_sq <= 0:
        return float(d)
    return float(min(max(trace**2 / trace_sq, 1.0), d))


def _as_fixed(features: np.ndarray | RaggedFeatures) -> np.ndarray | None:
    """Item features as a (T, n, m, d) array whenever every class has m items (ragged ones as (1, K, m, d)):
    the within-class statistics only look at classes, so the fixed-shape code applies unchanged."""
    if not isinstance(features, RaggedFeatures):
        return features
    m = features.uniform_class_size
    if m is None:
        return None
    return features.items.reshape(1, features.n_classes, m, -1)


@dataclass(frozen=True)
class WithinClass:
    """Pooled within-class statistics of a ragged pile: trace of S, its dof, and mean_k(1 / m_k) over all classes."""

    trace: float
    dof: int
    mean_inverse_size: float


def _class_means_block(items: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return np.add.reduceat(items, starts, axis=0, dtype=np.float64) / sizes[:, None]


def within_class(features: RaggedFeatures) -> WithinClass | None:
    """tr(S) pooled over the classes with at least two items (dof sum (m_k - 1)), in blocks of classes;
    ``None`` when no class has two items."""
    sizes = features.class_sizes
    dof = int((sizes[sizes >= 2] - 1).sum())
    if dof == 0:
        return None
    total = 0.0
    for lo, hi in _class_blocks(features.class_offsets):
        base = features.class_offsets[lo]
        block = features.items[base : features.class_offsets[hi]]
        means = _class_means_block(block, features.class_offsets[lo:hi] - base, sizes[lo:hi])
        centred = block - np.repeat(means, sizes[lo:hi], axis=0)
        total += float((centred**2).sum())
    return WithinClass(total / dof, dof, float((1.0 / sizes).mean()))


def _centred_sample(features: RaggedFeatures, max_samples: int, seed: int) -> tuple[np.ndarray, int]:
    """Items of classes with at least two items, minus their class mean (a random ``max_samples`` of them),
    and the dof behind them."""
    sizes = features.class_sizes
    item_class = np.repeat(np.arange(features.n_classes), sizes)
    eligible = np.flatnonzero(sizes[item_class] >= 2)
    dof = int((sizes[sizes >= 2] - 1).sum())
    if len(eligible) > max_samples:
        rows = np.sort(np.random.default_rng(seed).choice(len(eligible), max_samples, replace=False))
        dof = round(dof * max_samples / len(eligible))
        eligible = eligible[rows]
    used, inverse = np.unique(item_class[eligible], return_inverse=True)
    used_sizes = sizes[used]
    starts = _offsets(used_sizes)
    # Items of the sampled classes, class after class: their means without touching the other classes.
    rows = np.repeat(features.class_offsets[used] - starts[:-1], used_sizes) + np.arange(starts[-1])
    means = _class_means_block(features.items[rows], starts[:-1], used_sizes)
    return features.items[eligible].astype(np.float64) - means[inverse], dof


def same_class_key_distance(features: np.ndarray | RaggedFeatures) -> float | None:
    """Typical distance between two keys of one class, from (T, n_ways, m, d) item features.

    A key averages m items, so two keys of one class differ by about
    sqrt(2 tr(Σ) / m), with Σ the within-class covariance; Σ is estimated from
    the items of each local class, which are one class by construction. ``None``
    when m = 1 (no spread inside a one-image class): see :func:`cluster_spread`.
    Ragged features (classes of m_k items): sqrt(2 tr(Σ) mean_k(1 / m_k)), Σ pooled
    over the classes with m_k >= 2; ``None`` when there is none.
    """
    fixed = _as_fixed(features)
    if fixed is None:
        stats = within_class(features)
        return None if stats is None else math.sqrt(2.0 * stats.trace * stats.mean_inverse_size)
    features = fixed
    m = features.shape[2]
    if m < 2:
        return None
    centred = features - features.mean(axis=2, keepdims=True)
    within_trace = float((centred**2).sum(-1).sum(-1).mean() / (m - 1))
    return math.sqrt(2.0 * within_trace / m)


def key_spread(features: np.ndarray | RaggedFeatures, max_samples: int = 20000, seed: int = 0) -> KeySpread | None:
    """``s`` and D from the spread of the images inside each local class; ``None`` when m = 1 (ragged: when no
    class has two images)."""
    distance = same_class_key_distance(features)
    if distance is None:
        return None
    fixed = _as_fixed(features)
    if fixed is None:
        centred, dof = _centred_sample(features, max_samples, seed)
        return KeySpread(distance, effective_dimension(centred, dof), "images")
    features = fixed
    t, n, m, d = features.shape
    centred = (features - features.mean(axis=2, keepdims=True)).reshape(-1, d)
    dof = t * n * (m - 1)
    if len(centred) > max_samples:
        rows = np.random.default_rng(seed).choice(len(centred), max_samples, replace=False)
        centred, dof = centred[rows], round(dof * max_samples / len(centred))
    return KeySpread(distance, effective_dimension(centred.astype(np.float64), dof), "images")


def cluster_spread(keys: np.ndarray | TaskKeys, assigned: np.ndarray) -> KeySpread | None:
    """``s`` and D from keys around the mean of the keys matched to the same centroid.

    For one-image classes. Deviations are taken from each cluster's coordinate-wise
    median, scaled by a / (a - 1) as for a mean of a keys, and their median is used,
    so that keys matched to a wrong centroid (their class had none) do not inflate
    it. ``None`` when no centroid got two keys.
    """
    flat_keys = keys.keys if isinstance(keys, TaskKeys) else keys.reshape(-1, keys.shape[-1]).astype(np.float64)
    flat = np.asarray(assigned).reshape(-1)
    ok = flat >= 0
    flat_keys, flat = flat_keys[ok], flat[ok]
    _, inverse, sizes = np.unique(flat, return_inverse=True, return_counts=True)
    # Coordinate-wise median centres: a few keys of another class barely move them (a mean would follow them).
    by_cluster = flat_keys[np.argsort(inverse, kind="stable")]
    bounds = _offsets(sizes).tolist()
    centres = np.stack([np.median(by_cluster[bounds[c] : bounds[c + 1]], axis=0) for c in range(len(sizes))])
    residual = flat_keys - centres[inverse]
    useful = sizes[inverse] >= 2
    if useful.sum() < 2:
        return None
    scale = sizes[inverse][useful] / (sizes[inverse][useful] - 1.0)
    squared = (residual[useful] ** 2).sum(-1) * scale
    dim = effective_dimension(residual[useful] * np.sqrt(scale)[:, None], int(useful.sum()))
    # The median of chi^2_D / D is about 1 - 2 / (3 D): undo that shrinkage.
    key_noise = float(np.median(squared)) / max(1.0 - 2.0 / (3.0 * dim), 1e-3)
    if key_noise <= 0:
        return None
    return KeySpread(math.sqrt(2.0 * key_noise), dim, "clusters")


def as_spread(key_distance: float | KeySpread | None, dim: int) -> KeySpread | None:
    """A bare distance (the older call form) is taken as isotropic noise in all ``dim`` dimensions."""
    if key_distance is None or isinstance(key_distance, KeySpread):
        return key_distance
    return KeySpread(float(key_distance), float(dim), "given")


def debiased_cost(distances: np.ndarray, counts: np.ndarray, key_distance: float) -> np.ndarray:
    """Squared key-centroid distances minus each centroid's own noise, s^2 / (2 max(count, 1)).

    A centroid made of few keys carries their noise, so every key looks farther from
    it than from a centroid that averages many; uncorrected, well-fed centroids win
    every contest, feed further and starve the rest (on weak features the pruning then
    cascades down to n_ways centroids). The correction makes the contest fair.
    """
    return distances**2 - 0.5 * key_distance**2 / np.maximum(counts, 1.0)[None, :]


def _flat_assigned(assigned: np.ndarray, offsets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(T, n_ways) or flat (K,) labels -> flat labels and task offsets."""
    assigned = np.asarray(assigned)
    if offsets is not None:
        flat = assigned.reshape(-1)
        return flat, _check_offsets(offsets, len(flat), "task", "tasks")
    if assigned.ndim != 2:
        raise MelaError(f"flat labels of shape {assigned.shape} need the task offsets to tell the tasks apart; "
                        "pass task_offsets (or labels of shape (T, n_ways))")
    t, n = assigned.shape
    return assigned.reshape(-1), np.arange(t + 1, dtype=np.int64) * n


def tasks_kept(assigned: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """(T,) True for the tasks whose every class is labelled (reference mode drops whole tasks)."""
    flat, offsets = _flat_assigned(assigned, offsets)
    if len(flat) == 0:
        return np.zeros(len(offsets) - 1, dtype=bool)
    return np.minimum.reduceat(flat, offsets[:-1]) >= 0


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
        return _offsets(np.bincount(rows, minlength=self.n)), cols[order]


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


def merge_statistic(centroids: np.ndarray, counts: np.ndarray, key_distance: float) -> np.ndarray:
    """(K, K) z: squared distance of two cluster means over its expectation if they were one class.

    Key noise per key is s^2 / 2 (two keys differ by s), so the mean of a keys
    carries s^2 / (2a); an empty cluster counts as one key.
    """
    inverse = 1.0 / np.maximum(counts, 1.0)
    noise = 0.5 * key_distance**2 * (inverse[:, None] + inverse[None, :])
    return cdist(centroids, centroids, "sqeuclidean") / noise


def within_task_sq_distances(keys: np.ndarray | TaskKeys) -> np.ndarray:
    """Squared distances between every two keys of one task (unsorted), from pair index arrays in chunks."""
    tk, _ = as_task_keys(keys)
    first, second, _ = task_pairs(tk.offsets)
    return paired_sq_distances(tk.keys, first, tk.keys, second)


def different_class_sq_distances(keys: np.ndarray | TaskKeys) -> np.ndarray:
    """Sorted squared distances between two keys of one task: a sample of certainly-different-class pairs."""
    return np.sort(within_task_sq_distances(keys))


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
    (the denominator of :func:`merge_statistic`), so with ``allowance=0`` this is
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


def merge_close_centroids(
    centroids: np.ndarray, counts: np.ndarray, apart: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Merge centroids closer than ``radius`` (closest pair first, count-weighted means).

    The earlier fixed-radius rule, kept as a building block. Pairs marked in
    ``apart`` (seen as two classes of one task) are never merged, nor are groups
    that would contain such a pair.
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


def merge_threshold(merge_factor: float, effective_dim: float) -> float:
    """z below which two clusters are one class: the chi^2_D / D mean plus ``merge_factor`` standard deviations."""
    return 1.0 + merge_factor * math.sqrt(2.0 / effective_dim)


def spawn_threshold(spawn_factor: float, effective_dim: float) -> float:
    """Squared key-centroid distance, over its same-class expectation, above which a key starts a centroid."""
    return 1.0 + spawn_factor * math.sqrt(2.0 / effective_dim)


def key_noise(features: np.ndarray | RaggedFeatures, spread: KeySpread) -> np.ndarray | None:
    """Each key's noise (expected squared distance to its class mean) where keys average unequal numbers of
    images: ``tr(S) / m_k`` plus the noise its images share, i.e. ``(s^2 / 2 - shared) (1 / m_k) / mean(1 / m)
    + shared``. ``None`` (every key ``s^2 / 2``) when all classes have one size or the spread did not come from
    the images."""
    if not isinstance(features, RaggedFeatures) or features.uniform_class_size is not None:
        return None
    if spread.source not in ("images", "images+keys"):
        return None
    inverse = 1.0 / features.class_sizes
    return (0.5 * spread.distance**2 - spread.shared) * inverse / inverse.mean() + spread.shared


def shared_noise(statistics: np.ndarray, spread: KeySpread) -> KeySpread:
    """The image-based ``spread``, or, when the keys lie clearly further from their centroids than their
    images predict, a spread that adds the noise the images of one local class share.

    The image-based ``s`` assumes the images averaged into a key are independent draws of their class. When
    they share a source (one session, background or font per local class), a key carries that shared offset
    undivided, two keys of one class lie further apart than ``s`` says, and the spawn test gives almost every
    key a centroid of its own. ``statistics``: each key's squared distance to its matched centroid over its
    expectation, from the first pass (``chi^2_D / D`` for keys matched to their own class; keys of a class
    met for the first time lie further out, so a low quantile measures the first kind as long as most keys'
    classes recur). Its ``SHARED_NOISE_QUANTILE`` quantile over that of ``chi^2_D / D`` estimates how much
    larger the key noise is; above ``SHARED_NOISE_RATIO^2``, the excess is the shared part.
    """
    if len(statistics) == 0:
        return spread
    dim = spread.effective_dim
    inflation = float(np.quantile(statistics, SHARED_NOISE_QUANTILE)) / (chi2.ppf(SHARED_NOISE_QUANTILE, dim) / dim)
    if not inflation > SHARED_NOISE_RATIO**2:
        return spread
    half = 0.5 * spread.distance**2
    return KeySpread(spread.distance * math.sqrt(inflation), dim, "images+keys", (inflation - 1.0) * half)


class CentroidTable:
    """The centroids of :func:`fit_centroids`' loop, and the distances of one task's keys to them.

    The loop is sequential (each task's keys against the current centroids, then an update of the
    few it matched), so it runs on the host; what costs is the distances, K centroids x d per task.
    With a torch ``device`` they are computed there (float64) from a copy of the centroids kept in
    step row by row, so only a task's keys, its n_ways updated or spawned rows and its distances
    travel (the copy grows by doubling, as a list does). Without one, SciPy's ``cdist``. The two
    agree to float64 rounding.
    """

    def __init__(self, centroids: np.ndarray, device: torch.device | None = None) -> None:
        self.host = np.asarray(centroids, dtype=np.float64).copy()
        self.device = device
        self._mirror: torch.Tensor | None = None
        self.replace(self.host)

    def __len__(self) -> int:
        return len(self.host)

    def distances(self, task: np.ndarray) -> np.ndarray:
        """(n, K) Euclidean distances of the task's keys to every centroid."""
        if self._mirror is None:
            return cdist(task, self.host)
        keys = torch.as_tensor(np.asarray(task, dtype=np.float64), device=self.device)
        rows = self._mirror[None, : len(self.host)]
        return torch.cdist(keys[None], rows, compute_mode="donot_use_mm_for_euclid_dist")[0].cpu().numpy()

    def move_toward(self, rows: np.ndarray, keys: np.ndarray, counts: np.ndarray) -> None:
        """Running means: centroid ``rows[i]`` (now of ``counts[i]`` keys) moves toward ``keys[i]``."""
        self.host[rows] += (keys - self.host[rows]) / counts[:, None]
        if self._mirror is not None:
            self._mirror[torch.as_tensor(rows, device=self.device)] = torch.as_tensor(self.host[rows],
                                                                                     device=self.device)

    def append(self, keys: np.ndarray) -> None:
        """New centroids at these keys (spawns)."""
        start = len(self.host)
        self.host = np.concatenate([self.host, keys])
        if self._mirror is None:
            return
        if len(self.host) > len(self._mirror):
            grown = self._mirror.new_empty((max(2 * len(self._mirror), len(self.host)), self.host.shape[1]))
            grown[:start] = self._mirror[:start]
            self._mirror = grown
        self._mirror[start : len(self.host)] = torch.as_tensor(self.host[start:], device=self.device)

    def replace(self, centroids: np.ndarray) -> None:
        """New centroids (after a merge or a prune)."""
        self.host = np.asarray(centroids, dtype=np.float64)
        if self.device is not None:
            self._mirror = torch.as_tensor(self.host, device=self.device).clone()


def fit_centroids(
    keys: np.ndarray | TaskKeys, config: LabelerConfig, key_distance: float | KeySpread | None = None,
    noise: np.ndarray | None = None, device: torch.device | None = None, check_shared: bool = False,
) -> Clustering:
    """Cluster (T, n_ways, d) task keys (or a ragged :class:`TaskKeys`) into global classes; see the module docstring.

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
    reference = config.mode == "reference"
    if reference:
        if n_ways is not None:
            if config.K % n_ways:
                raise MelaError(f"labeler=reference needs K divisible by n_ways ({config.K} % {n_ways} != 0); "
                                "change K or use labeler=improved")
            if config.K // n_ways > n_tasks:
                raise MelaError(f"labeler=reference needs at least K/n_ways = {config.K // n_ways} tasks to "
                                f"initialise its centroids but there are {n_tasks}; lower K or use labeler=improved")
        elif tk.n_keys < config.K:
            raise MelaError(f"labeler=reference needs at least K = {config.K} task classes to initialise its "
                            f"centroids but there are {tk.n_keys}; lower K or use labeler=improved")
    spread = None if reference else as_spread(key_distance, tk.dim)
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
            if reference:
                choice = nearest_distinct(distances)
                if choice is None:
                    continue
            else:
                choice = cheapest_distinct(
                    distances if spread is None else debiased_cost(distances, counts, spread.distance))
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
            if reference:
                raise MelaError(
                    f"pruning removed all but {int(keep.sum())} of {len(hits)} centroids (threshold {threshold:.2f} "
                    "hits): there are too few tasks per class for this K; lower K or std_factor, or use "
                    "labeler=improved"
                )
            # No centroid is reached by two tasks: nothing shows which ones are spurious, so keep them all.
            keep = np.ones(len(hits), dtype=bool)
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
    clustering without spawning or merging (:func:`cluster_spread`), then clusters with it. Reference mode
    uses no spread.
    ``keys``: the features' :func:`task_keys`, when the caller has them already. ``device``: where the
    distances are computed (:func:`fit_centroids`).
    """
    keys = task_keys(features) if keys is None else keys
    if config.mode == "reference":
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


def label_tasks(keys: np.ndarray | TaskKeys, centroids: np.ndarray, mode: str = "improved",
                chunk: int = CHUNK_KEYS, device: torch.device | None = None) -> np.ndarray:
    """(T, n_ways) centroid index of each task class; rows of -1 for tasks the labeler drops.

    Ragged keys give flat (K,) labels, -1 for the classes of a dropped task.
    ``reference`` drops tasks whose keys collide on one centroid; ``improved``
    matches every task one-to-one, so none is dropped. Each key's nearest centroid
    comes from distances computed ``chunk`` keys at a time; only the tasks whose
    nearest centroids collide need the optimal matching.
    """
    tk, shape = as_task_keys(keys)
    if len(centroids) < tk.max_ways:
        raise MelaError(f"{len(centroids)} centroids cannot label {tk.max_ways}-way tasks; lower std_factor")
    labels = nearest_centroids(tk.keys, centroids, chunk, device)
    collide = colliding_tasks(labels, tk.task_of, tk.n_tasks)
    if mode == "reference":
        labels[collide[tk.task_of]] = -1
    else:
        for t in np.flatnonzero(collide).tolist():
            lo, hi = tk.offsets[t], tk.offsets[t + 1]
            labels[lo:hi] = matched_distinct(cdist(tk.keys[lo:hi], centroids))
    return _shaped(labels, shape)


def key_distances(keys: np.ndarray | TaskKeys, centroids: np.ndarray, assigned: np.ndarray) -> np.ndarray:
    """Each key's distance to the centroid it is labelled with (NaN where unlabelled), shaped like ``assigned``."""
    tk, _ = as_task_keys(keys)
    flat = np.asarray(assigned).reshape(-1)
    ok = np.flatnonzero(flat >= 0)
    out = np.full(len(flat), np.nan)
    out[ok] = np.sqrt(paired_sq_distances(tk.keys, ok, np.asarray(centroids, dtype=np.float64), flat[ok]))
    return out.reshape(np.shape(assigned))


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


def key_diagnostics(
    keys: np.ndarray | TaskKeys, centroids: np.ndarray, spread: KeySpread | float | None, max_pairs_keys: int = 4000,
    chunk: int = CHUNK_KEYS, device: torch.device | None = None,
) -> dict:
    """Label-free reliability of the inferred labels; ``warning`` is a sentence or ``None``.

    - ``different_class_key_distance``: median distance between two keys of one task
      (certainly two classes);
    - ``distance_ratio``: same-class over different-class key distance; two keys of one
      class should be much closer than two keys of different classes, near 1 they are not;
    - ``cannot_link_violation_rate``: fraction of tasks with two keys whose nearest
      centroid is the same (plain nearest-centroid labels would give two classes of one
      task one label);
    - ``nearest_key_same_task_rate``: fraction of keys whose nearest other key is in their
      own task, over what chance would give (1 means the geometry knows nothing of tasks).
    """
    tk, _ = as_task_keys(keys)
    spread = as_spread(spread, tk.dim)
    if spread is None and len(centroids) >= tk.max_ways:  # one-image classes: measure it around the centroids
        spread = cluster_spread(tk, label_tasks(tk, centroids, "improved", chunk, device))
    within = np.sqrt(within_task_sq_distances(tk))
    different = float(np.median(within)) if len(within) else float("nan")
    if len(centroids):
        collisions = float(colliding_tasks(nearest_centroids(tk.keys, centroids, chunk, device), tk.task_of,
                                           tk.n_tasks).mean())
    else:
        collisions = 1.0
    flat, task_of = tk.keys, tk.task_of
    if len(flat) > max_pairs_keys:
        rows = np.random.default_rng(0).choice(len(flat), max_pairs_keys, replace=False)
        flat, task_of = flat[rows], task_of[rows]
    all_d = cdist(flat, flat)
    np.fill_diagonal(all_d, np.inf)
    nearest = all_d.argmin(axis=1)
    same_task = float((task_of[nearest] == task_of).mean())
    chance = float(((np.bincount(task_of)[task_of] - 1) / max(len(flat) - 1, 1)).mean())
    out = {
        "same_class_key_distance": None if spread is None else spread.distance,
        "same_class_distance_source": None if spread is None else spread.source,
        "shared_key_noise": None if spread is None else spread.shared,
        "effective_dimension": None if spread is None else spread.effective_dim,
        "different_class_key_distance": different,
        "distance_ratio": None if spread is None or not different > 0 else spread.distance / different,
        "cannot_link_violation_rate": collisions,
        "nearest_key_same_task_rate": same_task / chance if chance > 0 else None,
    }
    out["warning"] = reliability_warning(out)
    return out


def reliability_warning(diagnostics: dict) -> str | None:
    """One sentence when the diagnostics say the inferred labels cannot be trusted, else ``None``."""
    reasons = []
    if diagnostics.get("same_class_key_distance") is None:
        reasons.append("the same-class key distance could not be measured (one image per class and no centroid "
                       "reached by two keys)")
    ratio = diagnostics.get("distance_ratio")
    if ratio is not None and ratio > MAX_RELIABLE_DISTANCE_RATIO:
        reasons.append(f"two keys of one class are {ratio:.2f} times as far apart as two keys of different classes "
                       f"(reliable below {MAX_RELIABLE_DISTANCE_RATIO})")
    collisions = diagnostics.get("cannot_link_violation_rate")
    if collisions is not None and collisions > MAX_RELIABLE_COLLISION_RATE:
        reasons.append(f"{100 * collisions:.0f}% of tasks put two of their classes nearest one centroid "
                       f"(reliable below {100 * MAX_RELIABLE_COLLISION_RATE:.0f}%)")
    if not reasons:
        return None
    return ("inferred labels are unreliable: " + "; ".join(reasons)
            + "; the representation does not separate the classes: train learn_meta_repr longer or on more data, "
              "or use the true labels")
