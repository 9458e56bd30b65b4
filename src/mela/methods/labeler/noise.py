"""The key noise model: how far apart two keys of one class lie, and in how many dimensions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2

from mela.data.tasks.collection import offsets_of
from mela.methods.labeler.constants import SHARED_NOISE_QUANTILE, SHARED_NOISE_RATIO
from mela.methods.labeler.keys import RaggedFeatures, TaskKeys, _class_blocks


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
    starts = offsets_of(used_sizes)
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
    bounds = offsets_of(sizes).tolist()
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
