"""Labeler modes: strategy objects registered by name (``LabelerConfig.mode`` names one).

A mode decides the places where the labeler's behaviour differs: the checks before fitting, how a task's keys
are matched to centroids during the fit, what happens when pruning would leave too few centroids, how tasks whose
keys collide are labelled, whether a key spread is measured (spawning and merging), and whether the count check
runs. A new mode is one class registered with :func:`register_mode` (see ``tests/methods/test_labeler_toy_mode.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial.distance import cdist

from mela.errors import MelaError
from mela.methods.labeler.assignment import cheapest_distinct, debiased_cost, matched_distinct, nearest_distinct

if TYPE_CHECKING:
    from mela.methods.labeler.keys import TaskKeys
    from mela.methods.labeler.noise import KeySpread

_MODES: dict[str, LabelerMode] = {}


def register_mode(name: str):
    """Class decorator: register an instance of the decorated :class:`LabelerMode` subclass under ``name``."""

    def register(cls: type[LabelerMode]) -> type[LabelerMode]:
        instance = cls()
        instance.name = name
        _MODES[name] = instance
        return cls

    return register


def mode_names() -> tuple[str, ...]:
    """The registered mode names, in registration order."""
    return tuple(_MODES)


def get_mode(name: str) -> LabelerMode:
    """The mode registered as ``name``; an error listing the valid names otherwise."""
    try:
        return _MODES[name]
    except (KeyError, TypeError):
        raise MelaError(f"unknown labeler mode '{name}'; valid modes: {', '.join(_MODES)}") from None


class LabelerMode:
    """The labeler's behaviour where modes differ; the defaults are those of ``improved``."""

    name: str = ""
    uses_spread: bool = True  # measure the key spread: spawn centroids and merge indistinguishable ones
    count_check: bool = True  # infer_global_labels may cluster again with a smaller K (LabelerConfig.count_check)

    def check_start(self, keys: TaskKeys, K: int) -> None:
        """Refuse, with a clear error, a pile this mode cannot fit."""

    def match(self, distances: np.ndarray, counts: np.ndarray, spread: KeySpread | None) -> np.ndarray | None:
        """One task's keys -> distinct centroids during the fit (``distances`` (ways, K)); None skips the task."""
        return cheapest_distinct(distances if spread is None else debiased_cost(distances, counts, spread.distance))

    def keep_after_failed_prune(self, hits: np.ndarray, keep: np.ndarray, threshold: float) -> np.ndarray:
        """Which centroids to keep when pruning would leave fewer than the widest task needs."""
        # No centroid is reached by two tasks: nothing shows which ones are spurious, so keep them all.
        return np.ones(len(hits), dtype=bool)

    def label_colliding(self, labels: np.ndarray, collide: np.ndarray, keys: TaskKeys, centroids: np.ndarray) -> None:
        """Label, in place, the tasks whose keys' nearest centroids collide (``collide``: (T,) bool)."""
        for t in np.flatnonzero(collide).tolist():
            lo, hi = keys.offsets[t], keys.offsets[t + 1]
            labels[lo:hi] = matched_distinct(cdist(keys.keys[lo:hi], centroids))


@register_mode("improved")
class ImprovedMode(LabelerMode):
    """Any K, one-to-one matching of every task, spawning and merging (docs/labeler.md)."""


@register_mode("reference")
class ReferenceMode(LabelerMode):
    """The reference exactly: nearest-centroid assignment, colliding tasks skipped, no spawning or merging."""

    uses_spread = False
    count_check = False

    def check_start(self, keys: TaskKeys, K: int) -> None:
        n_ways, n_tasks = keys.uniform_ways, keys.n_tasks
        if n_ways is not None:
            if K % n_ways:
                raise MelaError(f"labeler=reference needs K divisible by n_ways ({K} % {n_ways} != 0); "
                                "change K or use labeler=improved")
            if K // n_ways > n_tasks:
                raise MelaError(f"labeler=reference needs at least K/n_ways = {K // n_ways} tasks to "
                                f"initialise its centroids but there are {n_tasks}; lower K or use labeler=improved")
        elif keys.n_keys < K:
            raise MelaError(f"labeler=reference needs at least K = {K} task classes to initialise its "
                            f"centroids but there are {keys.n_keys}; lower K or use labeler=improved")

    def match(self, distances: np.ndarray, counts: np.ndarray, spread: KeySpread | None) -> np.ndarray | None:
        return nearest_distinct(distances)

    def keep_after_failed_prune(self, hits: np.ndarray, keep: np.ndarray, threshold: float) -> np.ndarray:
        raise MelaError(
            f"pruning removed all but {int(keep.sum())} of {len(hits)} centroids (threshold {threshold:.2f} "
            "hits): there are too few tasks per class for this K; lower K or std_factor, or use "
            "labeler=improved"
        )

    def label_colliding(self, labels: np.ndarray, collide: np.ndarray, keys: TaskKeys, centroids: np.ndarray) -> None:
        labels[collide[keys.task_of]] = -1
