"""The collection model: :class:`TaskCollection` (compressed-sparse-row arrays), skipped tasks, small helpers.

See :mod:`mela.data.tasks` for the layout.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from mela.errors import MelaError

SKIP_REASONS = ("too_few_classes", "empty_class", "missing_file", "unreadable_image", "duplicate_row",
                "image_in_two_classes")


@dataclass(frozen=True)
class SkippedTask:
    """A task left out because ``skip_bad_tasks`` was set: its id, why (one of ``SKIP_REASONS``) and the line."""

    task: str
    reason: str
    message: str


@dataclass(frozen=True)
class TaskCollection:
    """Locally labelled tasks of any shapes; see the module docstring for the layout.

    Attributes:
        images: (N, H, W, C) uint8, each distinct image once.
        task_ids: (T,) task names.
        class_names: (K,) local name of each task class.
        task_offsets: (T + 1,) int64; task t's classes are ``task_offsets[t]:task_offsets[t + 1]``.
        class_offsets: (K + 1,) int64; class k's items are ``class_offsets[k]:class_offsets[k + 1]``.
        item_image: (M,) int64 image row of each item.
        class_truth: (K,) int64 index into ``truth_names`` of each task class's true global class, or None.
        truth_names: the true global class names.
        source: where the collection came from (a path, or "python").
        skipped: the tasks skipped with ``skip_bad_tasks``.
        notes: things the loader did that the log should say (resizing, files that are not images).
    """

    images: np.ndarray
    task_ids: tuple[str, ...]
    class_names: tuple[str, ...]
    task_offsets: np.ndarray
    class_offsets: np.ndarray
    item_image: np.ndarray
    class_truth: np.ndarray | None = None
    truth_names: tuple[str, ...] = ()
    source: str = ""
    skipped: tuple[SkippedTask, ...] = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise MelaError(f"task images must be (N, H, W, C) uint8, got {self.images.dtype} {self.images.shape}")
        if len(self.task_offsets) != len(self.task_ids) + 1 or len(self.class_offsets) != len(self.class_names) + 1:
            raise ValueError("task_offsets / class_offsets must have one entry more than tasks / classes")
        if self.task_offsets[-1] != len(self.class_names) or self.class_offsets[-1] != len(self.item_image):
            raise ValueError("the last offset must equal the number of classes / items")
        if self.class_truth is not None and len(self.class_truth) != len(self.class_names):
            raise ValueError("class_truth must have one entry per task class")

    # ------------------------------------------------------------------ sizes

    @property
    def n_tasks(self) -> int:
        return len(self.task_ids)

    @property
    def n_classes(self) -> int:
        """Task classes over all tasks (the labeler's keys)."""
        return len(self.class_names)

    @property
    def n_items(self) -> int:
        return len(self.item_image)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def ways(self) -> np.ndarray:
        """(T,) number of classes of each task."""
        return np.diff(self.task_offsets)

    @property
    def class_sizes(self) -> np.ndarray:
        """(K,) number of images of each task class."""
        return np.diff(self.class_offsets)

    @property
    def class_task(self) -> np.ndarray:
        """(K,) task of each task class."""
        return np.repeat(np.arange(self.n_tasks), self.ways)

    @property
    def item_class(self) -> np.ndarray:
        """(M,) task class (0..K-1) of each item."""
        return np.repeat(np.arange(self.n_classes), self.class_sizes)

    @property
    def item_task(self) -> np.ndarray:
        """(M,) task of each item."""
        return self.class_task[self.item_class]

    @property
    def item_local_class(self) -> np.ndarray:
        """(M,) class index inside its task (0..ways-1) of each item."""
        item_class = self.item_class
        return item_class - self.task_offsets[self.class_task[item_class]]

    # ------------------------------------------------------------------ per task

    def task_classes(self, task: int) -> list[np.ndarray]:
        """Image rows of each local class of task ``task``, in class order."""
        lo, hi = self.task_offsets[task], self.task_offsets[task + 1]
        return [self.item_image[self.class_offsets[k] : self.class_offsets[k + 1]] for k in range(lo, hi)]

    def task_class_names(self, task: int) -> tuple[str, ...]:
        return self.class_names[self.task_offsets[task] : self.task_offsets[task + 1]]

    def task_truth(self, task: int) -> np.ndarray | None:
        """(ways,) true global class of each class of ``task``, or None without truth."""
        if self.class_truth is None:
            return None
        return self.class_truth[self.task_offsets[task] : self.task_offsets[task + 1]]

    def skip_counts(self) -> dict[str, int]:
        """Skipped tasks per reason (only reasons that occurred)."""
        return reason_counts(self.skipped)

    def subset(self, tasks: Sequence[int] | np.ndarray, compact: bool = False) -> TaskCollection:
        """The tasks ``tasks`` (in that order); ``compact`` keeps only the images they use (a copy)."""
        tasks = np.asarray(tasks, dtype=np.int64)
        ways = self.ways[tasks]
        classes = _ranges(self.task_offsets[tasks], ways)
        sizes = self.class_sizes[classes]
        items = _ranges(self.class_offsets[classes], sizes)
        item_image, images = self.item_image[items], self.images
        if compact:
            used, item_image = np.unique(item_image, return_inverse=True)
            images = self.images[used]
        return replace(
            self,
            images=images,
            task_ids=tuple(self.task_ids[t] for t in tasks),
            class_names=tuple(self.class_names[k] for k in classes),
            task_offsets=offsets_of(ways),
            class_offsets=offsets_of(sizes),
            item_image=item_image.astype(np.int64),
            class_truth=None if self.class_truth is None else self.class_truth[classes],
        )

    def fingerprint(self) -> str:
        """A content hash (pixels, structure, names): runs on two different collections never share a name."""
        digest = hashlib.sha1(np.ascontiguousarray(self.images).tobytes())
        for array in (self.task_offsets, self.class_offsets, self.item_image):
            digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        digest.update(json.dumps([self.task_ids, self.class_names]).encode())
        return digest.hexdigest()[:16]

    def summary(self) -> dict:
        """Counts the log and ``mela tasks info`` report."""
        ways, sizes = self.ways, self.class_sizes
        used = np.zeros(len(self.images), dtype=np.int64)
        np.add.at(used, self.item_image, 1)
        out = {
            "tasks": self.n_tasks,
            "task_classes": self.n_classes,
            "items": self.n_items,
            "images": int(len(self.images)),
            "image_shape": list(self.image_shape),
            "ways_min": int(ways.min()), "ways_median": float(np.median(ways)), "ways_max": int(ways.max()),
            "images_per_class_min": int(sizes.min()), "images_per_class_median": float(np.median(sizes)),
            "images_per_class_max": int(sizes.max()),
            "single_image_classes": int((sizes == 1).sum()),
            "images_in_several_tasks": int(_images_in_several_tasks(self)),
            "skipped": self.skip_counts(),
        }
        if self.class_truth is not None:
            out["true_global_classes"] = int(len(np.unique(self.class_truth)))
        return out


def reason_counts(skipped: Iterable[SkippedTask]) -> dict[str, int]:
    """Skipped tasks per reason, in order of first occurrence (only reasons that occurred)."""
    counts: dict[str, int] = {}
    for task in skipped:
        counts[task.reason] = counts.get(task.reason, 0) + 1
    return counts


def offsets_of(counts: np.ndarray) -> np.ndarray:
    """(n,) counts -> (n + 1,) int64 start offsets (the CSR layout of collections and ragged labeler piles)."""
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each (s, n), vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    block_start = offsets_of(lengths)[:-1]
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(np.asarray(starts, np.int64) - block_start,
                                                                     lengths)


def _images_in_several_tasks(collection: TaskCollection) -> int:
    pairs = np.unique(np.stack([collection.item_image, collection.item_task]), axis=1)
    return int((np.bincount(pairs[0], minlength=len(collection.images)) > 1).sum())


def natural_key(name: str) -> list:
    """Sort key putting "job2" before "job10" (text and digit runs alternate, so types always line up)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
