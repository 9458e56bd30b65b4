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
  one-to-one matching instead of skipping the task, (3) gives a key that is far
  from every centroid a new centroid ("far": ``spawn_factor`` times the typical
  distance ``s`` between two keys of one class), so classes absent from the first
  tasks are not lost, and (4) after each pass merges two centroids only when the
  data cannot tell them apart (below).

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
key of its class by about ``sqrt(2 tr(S) / m)``. A task class of a single image
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
cases of ``benchmarks/labeler_sweep.py`` this flags all but 3 of the runs with ARI
below 0.2, and 7 runs with ARI above 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist, pdist
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from mela.errors import MelaError

MODES = ("improved", "reference")

# Warning thresholds of key_diagnostics (see benchmarks/labeler_sweep.py for where they come from).
MAX_RELIABLE_DISTANCE_RATIO = 0.6
MAX_RELIABLE_COLLISION_RATE = 0.2
# Squared within-class sds, along the split direction, that two halves of one split class may sit apart.
SPLIT_ALLOWANCE = 4.0


@dataclass(frozen=True)
class LabelerConfig:
    """Settings of the clustering (names follow the reference's config)."""

    K: int = 400
    std_factor: float = 3.5
    mode: str = "improved"
    max_passes: int = 30
    spawn_factor: float = 2.0
    merge_factor: float = 6.0
    merge_risk: float = 0.01

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
    ``source``: ``images`` (spread inside each local class) or ``clusters`` (keys around their centroid).
    """

    distance: float
    effective_dim: float
    source: str = "images"


@dataclass
class Clustering:
    """The fitted centroids and what happened on each pass."""

    centroids: np.ndarray
    passes: list[dict] = field(default_factory=list)
    spawn_distance: float | None = None
    spread: KeySpread | None = None


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


def same_class_key_distance(features: np.ndarray) -> float | None:
    """Typical distance between two keys of one class, from (T, n_ways, m, d) item features.

    A key averages m items, so two keys of one class differ by about
    sqrt(2 tr(Σ) / m), with Σ the within-class covariance; Σ is estimated from
    the items of each local class, which are one class by construction. ``None``
    when m = 1 (no spread inside a one-image class): see :func:`cluster_spread`.
    """
    m = features.shape[2]
    if m < 2:
        return None
    centred = features - features.mean(axis=2, keepdims=True)
    within_trace = float((centred**2).sum(-1).sum(-1).mean() / (m - 1))
    return math.sqrt(2.0 * within_trace / m)


def key_spread(features: np.ndarray, max_samples: int = 20000, seed: int = 0) -> KeySpread | None:
    """``s`` and D from the spread of the images inside each local class; ``None`` when m = 1."""
    distance = same_class_key_distance(features)
    if distance is None:
        return None
    t, n, m, d = features.shape
    centred = (features - features.mean(axis=2, keepdims=True)).reshape(-1, d)
    dof = t * n * (m - 1)
    if len(centred) > max_samples:
        rows = np.random.default_rng(seed).choice(len(centred), max_samples, replace=False)
        centred, dof = centred[rows], round(dof * max_samples / len(centred))
    return KeySpread(distance, effective_dimension(centred.astype(np.float64), dof), "images")


def cluster_spread(keys: np.ndarray, assigned: np.ndarray) -> KeySpread | None:
    """``s`` and D from keys around the mean of the keys matched to the same centroid.

    For one-image classes. Deviations are taken from each cluster's coordinate-wise
    median, scaled by a / (a - 1) as for a mean of a keys, and their median is used,
    so that keys matched to a wrong centroid (their class had none) do not inflate
    it. ``None`` when no centroid got two keys.
    """
    flat_keys = keys.reshape(-1, keys.shape[-1]).astype(np.float64)
    flat = assigned.reshape(-1)
    ok = flat >= 0
    flat_keys, flat = flat_keys[ok], flat[ok]
    _, inverse, sizes = np.unique(flat, return_inverse=True, return_counts=True)
    # Coordinate-wise median centres: a few keys of another class barely move them (a mean would follow them).
    centres = np.stack([np.median(flat_keys[inverse == c], axis=0) for c in range(len(sizes))])
    residual = flat_keys - centres[inverse]
    useful = sizes[inverse] >= 2
    if useful.sum() < 2:
        return None
    scale = (sizes[inverse] / (sizes[inverse] - 1.0))[useful]
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


def cooccurrence(assigned: np.ndarray, n_centroids: int) -> np.ndarray:
    """(K, K) boolean: True where two centroids labelled two classes of one task."""
    seen = np.zeros((n_centroids, n_centroids), dtype=bool)
    valid = assigned[(assigned >= 0).all(axis=1)]
    for a in range(valid.shape[1]):
        for b in range(valid.shape[1]):
            if a != b:
                seen[valid[:, a], valid[:, b]] = True
    return seen


def member_means(keys: np.ndarray, assigned: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and number of the keys matched to each centroid (an unmatched centroid keeps its place, count 0)."""
    flat_keys = keys.reshape(-1, keys.shape[-1]).astype(np.float64)
    flat = assigned.reshape(-1)
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


def different_class_sq_distances(keys: np.ndarray) -> np.ndarray:
    """Sorted squared distances between two keys of one task: a sample of certainly-different-class pairs."""
    if keys.shape[1] < 2:
        return np.zeros(0)
    return np.sort(np.concatenate([pdist(task, "sqeuclidean") for task in keys.astype(np.float64)]))


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
    centroids: np.ndarray, counts: np.ndarray, apart: np.ndarray, key_distance: float, z_max: float,
    different_sq: np.ndarray | None = None, risk: float = 1.0, groups: list[list[int]] | None = None,
    allowance: float = 0.0,
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
    classes of one task), and groups that would contain one, never merge. A ``groups``
    list, if given, is filled with the input indices behind each output centroid.
    """
    centroids, counts, apart = centroids.astype(np.float64).copy(), counts.astype(np.float64).copy(), apart.copy()
    alive = np.ones(len(centroids), dtype=bool)
    guard = different_sq is not None and risk < 1.0

    def statistic(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        inverse = 1.0 / np.maximum(counts, 1.0)
        noise = 0.5 * key_distance**2 * (inverse[rows][:, None] + inverse[cols][None, :])
        observed = cdist(centroids[rows], centroids[cols], "sqeuclidean")
        z = observed / (z_max * noise + allowance)
        if guard:
            z[different_class_chance(observed, noise, key_distance, different_sq) > risk] = np.inf
        return z

    everything = np.arange(len(centroids))
    members = [[i] for i in everything.tolist()]
    z = statistic(everything, everything)
    np.fill_diagonal(z, np.inf)
    z[apart] = np.inf
    while len(z):
        i, j = np.unravel_index(np.argmin(z), z.shape)
        if not z[i, j] <= 1.0:
            break
        total = counts[i] + counts[j]
        weight_i = counts[i] / total if total > 0 else 0.5
        centroids[i] = weight_i * centroids[i] + (1 - weight_i) * centroids[j]
        counts[i] = total
        apart[i] |= apart[j]
        apart[:, i] |= apart[:, j]
        alive[j] = False
        members[i] += members[j]
        z[j, :] = z[:, j] = np.inf
        row = statistic(np.array([i]), everything)[0]
        row[~alive | apart[i]] = np.inf
        row[i] = np.inf
        z[i, :] = z[:, i] = row
    if groups is not None:
        groups[:] = [members[i] for i in np.flatnonzero(alive)]
    return centroids[alive], counts[alive]


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


def fit_centroids(
    keys: np.ndarray, config: LabelerConfig, key_distance: float | KeySpread | None = None
) -> Clustering:
    """Cluster (T, n_ways, d) task keys into global classes; see the module docstring.

    ``key_distance`` (improved mode): a :class:`KeySpread` (or a bare same-class key
    distance, taken as high-dimensional); keys farther than ``spawn_factor`` times
    it from every centroid start a new one, and indistinguishable centroids merge.
    ``None`` disables spawning and merging.
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
    spread = None if reference else as_spread(key_distance, keys.shape[-1])
    centroids = keys[:n_init].reshape(-1, keys.shape[-1])[: config.K].copy()
    counts = np.zeros(len(centroids))
    far = None if spread is None else config.spawn_factor * spread.distance
    result = Clustering(centroids=centroids, spawn_distance=far, spread=spread)
    different_sq = different_class_sq_distances(keys) if spread is not None else None

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
                cost = distances if spread is None else debiased_cost(distances, counts, spread.distance)
                choice = matched_distinct(cost)
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
        k_merged = len(centroids)
        if spread is not None:
            # Merge before pruning, so a class split over two centroids pools its hits instead of losing both.
            centroids, counts, hits = merge_pass(keys, centroids, hits, spread, different_sq, config)
        k_merged -= len(centroids)
        threshold = prune_threshold(hits, n_ways, config.std_factor)
        keep = hits > threshold
        if keep.sum() < n_ways:
            if reference:
                raise MelaError(
                    f"pruning removed all but {int(keep.sum())} of {len(hits)} centroids (threshold {threshold:.2f} "
                    "hits): there are too few tasks per class for this K; lower K or std_factor, or use "
                    "labeler=improved"
                )
            # No centroid is reached by two tasks: nothing shows which ones are spurious, so keep them all.
            keep = np.ones(len(hits), dtype=bool)
        centroids, counts = centroids[keep], counts[keep]
        result.passes.append({
            "centroids_before": k_before, "spawned": spawned,
            "pruned": int(k_before + spawned - k_merged - len(centroids)), "merged": int(k_merged),
            "centroids_after": len(centroids),
            "clustering_rate": accepted / max(n_tasks, 1), "prune_threshold": threshold,
        })
        if len(centroids) == k_before:
            break
    result.centroids = centroids
    return result


def merge_pass(
    keys: np.ndarray, centroids: np.ndarray, hits: np.ndarray, spread: KeySpread, different_sq: np.ndarray,
    config: LabelerConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match every task, re-estimate centroids as member means, merge indistinguishable ones.

    Returns centroids, their key counts (at least 1) and their pooled hits. When
    nothing merges the centroids keep their running means.
    """
    assigned = label_tasks(keys, centroids, "improved")
    means, members = member_means(keys, assigned, centroids)
    apart = cooccurrence(assigned, len(centroids))
    z_max = merge_threshold(config.merge_factor, spread.effective_dim)
    groups: list[list[int]] = []
    # Splitting one class can put its two halves' means up to about 2 sds apart along the split direction,
    # whose variance is about the key noise tr(S_key) = s^2 / 2 spread over D effective dimensions.
    allowance = SPLIT_ALLOWANCE * 0.5 * spread.distance**2 / spread.effective_dim
    # merge_risk bounds the chance that *any* of the other centroids' classes comes this close (Bonferroni).
    risk = config.merge_risk / max(len(centroids) - 1, 1)
    merged, merged_members = merge_indistinguishable(means, members, apart, spread.distance, z_max,
                                                     different_sq, risk, groups, allowance)
    if len(merged) == len(centroids):
        return centroids, np.maximum(members, 1.0), hits
    pooled = np.array([hits[g].sum() for g in groups])
    return merged, np.maximum(merged_members, 1.0), pooled


def cluster_features(features: np.ndarray, config: LabelerConfig) -> Clustering:
    """Cluster (T, n_ways, m, d) item features: what learn_labeler runs.

    Improved mode measures the key spread from the images of each local class, or,
    with one image per class, from a first clustering without spawning or merging
    (:func:`cluster_spread`), then clusters with it. Reference mode uses no spread.
    """
    keys = task_keys(features)
    if config.mode == "reference":
        return fit_centroids(keys, config)
    spread = key_spread(features)
    if spread is None:
        first = fit_centroids(keys, replace(config, max_passes=1))
        spread = cluster_spread(keys, label_tasks(keys, first.centroids, "improved"))
        if spread is None:
            return first
    return fit_centroids(keys, config, spread)


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


def with_singletons(assigned: np.ndarray) -> np.ndarray:
    """Flat cluster ids where every unassigned (-1) task class becomes a cluster of its own."""
    flat = assigned.ravel().astype(np.int64).copy()
    dropped = flat < 0
    base = flat.max() + 1 if (~dropped).any() else 0
    flat[dropped] = base + np.arange(int(dropped.sum()))
    return flat


def clustering_report(assigned: np.ndarray, true_classes: np.ndarray) -> dict:
    """How inferred clusters line up with the true classes (diagnostics only).

    Args:
        assigned: (T, n_ways) cluster of each task class, -1 where the task was dropped.
        true_classes: (T, n_ways) true global class of each task class.

    ``clustering_accuracy`` maps each cluster to its majority true class and counts
    a task class right when its cluster maps to its true class; dropped ones count wrong.
    ``ari``, ``nmi`` and ``purity`` score the partition in which each dropped task class
    is a cluster of its own (``clusters_with_unassigned`` counts those too).
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
    partition = with_singletons(assigned)
    return {
        "clusters": len(majority),
        "true_classes": n_true,
        "clustering_accuracy": float(correct.mean()) if len(correct) else 0.0,
        "tasks_kept": int((assigned >= 0).all(axis=1).sum()),
        "tasks_total": int(len(assigned)),
        "true_classes_found": len(set(majority.values())),
        "classes_split_over_clusters": int(sum(v > 1 for v in clusters_per_class.values())),
        "clusters_mixing_classes": int(sum(v > 1 for v in classes_per_cluster.values())),
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
    keys: np.ndarray, centroids: np.ndarray, spread: KeySpread | float | None, max_pairs_keys: int = 4000
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
    t, n, d = keys.shape
    keys = keys.astype(np.float64)
    spread = as_spread(spread, d)
    if spread is None and len(centroids) >= n:  # one-image classes: measure it around the centroids
        spread = cluster_spread(keys, label_tasks(keys, centroids, "improved"))
    within = np.concatenate([pdist(task) for task in keys]) if n > 1 else np.zeros(0)
    different = float(np.median(within)) if len(within) else float("nan")
    collisions = float(np.mean([nearest_distinct(cdist(task, centroids)) is None for task in keys])) if len(
        centroids) else 1.0
    flat = keys.reshape(-1, d)
    task_of = np.repeat(np.arange(t), n)
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
