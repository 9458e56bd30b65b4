"""Ragged task containers (:class:`TaskKeys`, :class:`RaggedFeatures`) and their offsets."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from mela.errors import MelaError
from mela.methods.labeler.constants import CHUNK_PAIRS


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
