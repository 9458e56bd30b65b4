"""Over-splitting, without true labels: global classes that look like parts of one class (docs/labeler.md).

Two classes of one task are different by construction, so two global classes that share a task are never
one class split in two. For each global class g:

- its *rival* h is the nearest class (centre to centre) that never shares a task with it, one of ``M_g``;
- its nearest *partner* c is the nearest class that shares a task with it (certainly another class), one of
  ``n_g``.

Were h another class, then, with tasks drawn without regard to how alike their classes look, h is the
nearest of ``M_g`` classes and c the nearest of ``n_g`` drawn from the same classes around g. Near g the
number of classes within squared distance x grows as ``x^beta``, so ``M_g F(d_h)`` and ``n_g F(d_c)`` are two
independent Exp(1) draws and their ratio ``R = (M_g / n_g) (d_h / d_c)^beta`` (squared distances) has
``P(R <= r) = r / (1 + r)``: ``chance = R / (1 + R)`` is how often another class would lie that close. A class
with ``chance <= alpha`` looks split: its rival is too close to be another class. ``beta`` is the
Levina-Bickel estimate from each class's nearest partners (certainly other classes), pooled over the pile.

Classes that look split and their rivals form groups (one group: one class split over several clusters);
``looks_split`` counts the groups, ``split_share`` divides it by the number of classes the labels would have
with each group counted once. The check reads the keys and labels only (no noise model): it works in every
mode and with one-image keys. Centre noise shrinks the ratio toward 1, so noisy centres make it cautious.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from mela.methods.labeler.constants import MAX_OVERSPLIT_SHARE, MIN_OVERSPLIT_GROUPS, OVERSPLIT_ALPHA
from mela.methods.labeler.distances import paired_sq_distances
from mela.methods.labeler.keys import TaskKeys, as_task_keys, task_pairs

# Candidate rivals per class: its nearest centres, of which the first that never shares a task with it is used.
RIVALS = 16
# Nearest partners per class in the Levina-Bickel estimate of beta, and classes it samples at most.
EXPONENT_NEIGHBOURS = 5
EXPONENT_CLASSES = 4096
# Centres per block of the nearest-centre search.
CHUNK_CENTRES = 1024


def _nearest(centres: np.ndarray, count: int) -> np.ndarray:
    """(G, count) indices of each centre's nearest other centres, nearest first (blocks of rows, no G x G)."""
    g = len(centres)
    count = min(count, g - 1)
    out = np.zeros((g, max(count, 0)), dtype=np.int64)
    if count <= 0:
        return out
    norms = (centres**2).sum(1)
    for lo in range(0, g, CHUNK_CENTRES):
        block = centres[lo : lo + CHUNK_CENTRES] @ centres.T
        block *= -2.0
        block += norms[None, :]
        block[np.arange(len(block)), np.arange(lo, lo + len(block))] = np.inf
        part = np.argpartition(block, count - 1, axis=1)[:, :count]
        order = np.argsort(np.take_along_axis(block, part, 1), axis=1, kind="stable")
        out[lo : lo + CHUNK_CENTRES] = np.take_along_axis(part, order, 1)
    return out


def _partner_distances(centres: np.ndarray, first: np.ndarray, second: np.ndarray
                       ) -> tuple[np.ndarray, float]:
    """Each class's squared distance to its nearest partner (inf without one), and beta (NaN if unmeasurable).

    ``first``, ``second``: the pairs of classes that share a task (each pair once).
    """
    g = len(centres)
    nearest = np.full(g, np.inf)
    squared = paired_sq_distances(centres, first, centres, second)  # in chunks of pairs
    np.minimum.at(nearest, first, squared)
    np.minimum.at(nearest, second, squared)
    # beta from the EXPONENT_NEIGHBOURS nearest partners of (a sample of) the classes: (k - 1) / sum log(x_k / x_j).
    sample = np.arange(g) if g <= EXPONENT_CLASSES else np.sort(
        np.random.default_rng(0).choice(g, EXPONENT_CLASSES, replace=False))
    chosen = np.zeros(g, dtype=bool)
    chosen[sample] = True
    owner = np.concatenate([first, second])
    value = np.concatenate([squared, squared])
    keep = chosen[owner] & (value > 0)
    owner, value = owner[keep], value[keep]
    order = np.lexsort((value, owner))
    owner, value = owner[order], value[order]
    rank = np.arange(len(owner)) - np.searchsorted(owner, owner)
    near = rank < EXPONENT_NEIGHBOURS
    owner, value = owner[near], value[near]
    counts = np.bincount(owner, minlength=g)
    farthest = np.zeros(g)
    np.maximum.at(farthest, owner, value)
    logs = np.bincount(owner, weights=np.log(farthest[owner] / value), minlength=g)
    usable = counts >= 3
    total = float(logs[usable].sum())
    beta = float((counts[usable] - 1).sum()) / total if total > 0 else math.nan
    return nearest, beta


@dataclass(frozen=True)
class SplitChances:
    """Each global class's rival and how often another class would lie as close (module docstring).

    Attributes:
        labels: (G,) the labels' value of each class, increasing.
        rival: (G,) position (in ``labels``) of the nearest class never sharing a task with it; -1 when none of
            its ``RIVALS`` nearest classes qualifies, or when it shares no task with any class.
        chance: (G,) ``R / (1 + R)``; 1 where there is no rival.
        exponent: beta (NaN when no class has three partners at a positive distance).
    """

    labels: np.ndarray
    rival: np.ndarray
    chance: np.ndarray
    exponent: float


def split_chances(keys: np.ndarray | TaskKeys, assigned: np.ndarray) -> SplitChances:
    """:class:`SplitChances` of the labels ``assigned`` ((T, n_ways) or flat, -1 where unlabelled) of ``keys``."""
    tk, _ = as_task_keys(keys)
    flat = np.asarray(assigned).reshape(-1)
    kept = flat >= 0
    labels, inverse = np.unique(flat[kept], return_inverse=True)
    g = len(labels)
    rival, chance = np.full(g, -1, dtype=np.int64), np.ones(g)
    if g < 3:
        return SplitChances(labels, rival, chance, math.nan)
    member = np.full(len(flat), -1, dtype=np.int64)
    member[kept] = inverse
    centres = np.zeros((g, tk.dim))
    np.add.at(centres, inverse, tk.keys[kept])
    centres /= np.bincount(inverse, minlength=g)[:, None]
    a, b, _ = task_pairs(tk.offsets)
    a, b = member[a], member[b]
    ok = (a >= 0) & (b >= 0) & (a != b)
    codes = np.unique(np.minimum(a[ok], b[ok]) * g + np.maximum(a[ok], b[ok]))
    first, second = np.divmod(codes, g)
    partners = np.bincount(first, minlength=g) + np.bincount(second, minlength=g)
    nearest_partner, beta = _partner_distances(centres, first, second)
    near = _nearest(centres, RIVALS)
    low, high = np.minimum(np.arange(g)[:, None], near), np.maximum(np.arange(g)[:, None], near)
    apart = ~np.isin(low * g + high, codes)
    has = apart.any(axis=1) & (partners > 0) & np.isfinite(nearest_partner) & (nearest_partner > 0)
    if math.isnan(beta) or not has.any():
        return SplitChances(labels, rival, chance, beta)
    rows = np.flatnonzero(has)
    rival[rows] = near[rows, apart[rows].argmax(axis=1)]
    ratio = paired_sq_distances(centres, rows, centres, rival[rows]) / nearest_partner[rows]
    odds = (g - 1 - partners[rows]) / partners[rows] * ratio**beta
    chance[rows] = odds / (1.0 + odds)
    return SplitChances(labels, rival, chance, beta)


def oversplit_check(keys: np.ndarray | TaskKeys, assigned: np.ndarray, alpha: float = OVERSPLIT_ALPHA,
                    max_share: float = MAX_OVERSPLIT_SHARE) -> dict:
    """How many global classes look split (module docstring); reads ``keys`` and ``assigned`` only.

    ``keys``: (T, n_ways, d) or :class:`TaskKeys`; ``assigned``: the labels, shaped like the keys' classes
    ((T, n_ways) or flat), -1 where unlabelled. Returns ``classes`` (global classes labelled), ``looks_split``
    (groups of classes that look like one class split: a class whose ``chance`` is at most ``alpha`` joins
    its rival), ``clusters_involved`` (classes in those groups), ``split_share`` (``looks_split`` over the
    classes with each group counted once), ``exponent`` (beta), ``alpha``, ``max_share`` and ``fires``
    (``split_share > max_share`` and at least ``MIN_OVERSPLIT_GROUPS`` groups).
    """
    found = split_chances(keys, assigned)
    g = len(found.labels)
    flagged = np.flatnonzero(found.chance <= alpha)
    graph = coo_matrix((np.ones(len(flagged)), (flagged, found.rival[flagged])), shape=(g, g))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component, minlength=1)
    groups = int((sizes >= 2).sum())
    involved = int(sizes[sizes >= 2].sum())
    share = groups / (g - involved + groups) if g else 0.0
    return {"classes": g, "looks_split": groups, "clusters_involved": involved, "split_share": share,
            "exponent": None if math.isnan(found.exponent) else found.exponent, "alpha": alpha,
            "max_share": max_share, "fires": bool(share > max_share and groups >= MIN_OVERSPLIT_GROUPS)}


def oversplit_warning(check: dict) -> str | None:
    """One sentence when :func:`oversplit_check` fires, else ``None``."""
    if not check.get("fires"):
        return None
    return (f"{check['looks_split']} classes ({100 * check['split_share']:.0f}%) look split over "
            f"{check['clusters_involved']} global classes that never share a task yet lie closer than other classes "
            f"do (over-split check; warns above {100 * check['max_share']:.0f}%): expect too many classes; review the "
            "pairs gallery.html ranks high on split and merge them in global_labels.csv, or label again with a larger "
            "merge_factor")
