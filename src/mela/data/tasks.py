"""A collection of tasks labelled only locally: what MeLa users actually have, in one ragged representation.

Each task is a small labelling job with its own few classes and its own class names; names mean nothing
across tasks ("0" in two tasks are two unrelated classes unless ``truth.csv`` says otherwise). Tasks differ
in ways (2 and up) and in images per class (1 and up, unbalanced), so nothing here has a fixed task shape.

Representation (:class:`TaskCollection`), compressed-sparse-row style, three levels:

- ``images`` (N, H, W, C) uint8: every distinct image once. An image used by several tasks (overlapping
  labelling jobs) is one row: file loaders read each distinct file once, and all loaders keep one row per
  distinct pixel content.
- task classes: task ``t`` owns the classes ``task_offsets[t]:task_offsets[t + 1]`` (K classes over all tasks,
  ``class_names[k]`` the local name, ``class_truth[k]`` the true global class when it is known);
- items: class ``k`` owns the items ``class_offsets[k]:class_offsets[k + 1]``, and ``item_image[i]`` is the
  image row of item ``i``.

So a task is a contiguous slice at every level; per-item views (``item_task``, ``item_class``,
``item_local_class``) are derived by ``np.repeat`` when needed. Memory is O(N pixels + M items + K + T),
with no per-task Python objects once loaded.

Three inputs load into it, with the same checks and the same image rules as ``dataset=custom``
(:mod:`mela.data.images`), except that a collection whose images all share one size keeps that size unless
``image_size`` is given:

- :func:`load_folder`: ``TASKS/<task_id>/<local_class>/<image files>``;
- :func:`load_manifest`: a CSV with columns ``path,task,local_label`` (paths relative to the manifest),
  streamed row by row into integer arrays, each distinct file read once;
- :func:`from_pairs`: Python ``(images, local_labels)`` pairs, one per task.

An optional ``truth.csv`` (``task,local_label,global_label``) beside the input gives the true global class of
each task class (for scoring the labeler only). Bad input (a task with fewer than 2 classes, a class with no
image, an unreadable or missing image file, a duplicate row, an image in two classes of one task) is one
:class:`MelaError` line naming the task and file; with ``skip_bad_tasks=True`` such tasks are skipped and
listed in ``collection.skipped`` (counts by reason: :meth:`TaskCollection.skip_counts`), never dropped silently.

Ordering is canonical: tasks and, within a task, classes in natural name order ("job2" before "job10");
items of a class in file-name order (folder), row order (manifest) or given order (pairs); image rows in
order of first use. The same tasks therefore load into the same collection from every form.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mela.data.images import GREY_MODES, as_image_array, image_header, is_image_file, read_image, resize_image
from mela.errors import MelaError

DEFAULT_IMAGE_SIZE = 84  # the side mixed-size collections are resized to, as for dataset=custom
MANIFEST_COLUMNS = ("path", "task", "local_label")
TRUTH_COLUMNS = ("task", "local_label", "global_label")
TRUTH_FILE = "truth.csv"
MANIFEST_FILE = "manifest.csv"  # a folder holding one is loaded as a manifest
SKIP_REASONS = ("too_few_classes", "empty_class", "missing_file", "unreadable_image", "duplicate_row",
                "image_in_two_classes")
SKIP_HINT = "; or set skip_bad_tasks to skip such tasks"


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
        counts: dict[str, int] = {}
        for skipped in self.skipped:
            counts[skipped.reason] = counts.get(skipped.reason, 0) + 1
        return counts

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
            task_offsets=_offsets(ways),
            class_offsets=_offsets(sizes),
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


def _offsets(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each (s, n), vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    block_start = _offsets(lengths)[:-1]
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(np.asarray(starts, np.int64) - block_start,
                                                                     lengths)


def _images_in_several_tasks(collection: TaskCollection) -> int:
    pairs = np.unique(np.stack([collection.item_image, collection.item_task]), axis=1)
    return int((np.bincount(pairs[0], minlength=len(collection.images)) > 1).sum())


# ---------------------------------------------------------------------------- using a collection


def tasks_holdout(n_tasks: int, fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept, held-out) task indices: a seeded ``fraction`` of the tasks, at least one each way.

    ``fraction`` 0 holds nothing out. The split depends only on (n_tasks, fraction, seed).
    """
    if not 0.0 <= fraction < 1.0:
        raise MelaError(f"tasks_holdout must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return np.arange(n_tasks), np.zeros(0, dtype=np.int64)
    if n_tasks < 2:
        raise MelaError(f"holding out tasks needs at least 2 tasks, the collection has {n_tasks}; "
                        "set tasks_holdout=0 or add tasks")
    n_held = min(max(int(round(fraction * n_tasks)), 1), n_tasks - 1)
    order = np.random.default_rng([seed, 0x4E1D]).permutation(n_tasks)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def split_holdout(collection: TaskCollection, fraction: float = 0.1, seed: int = 0
                  ) -> tuple[TaskCollection, TaskCollection]:
    """(training tasks, held-out tasks) as two collections sharing the image array."""
    kept, held = tasks_holdout(collection.n_tasks, fraction, seed)
    return collection.subset(kept), collection.subset(held)


@dataclass(frozen=True)
class SupportQuery:
    """One task split inside each class: image rows and local labels (0..n_ways-1) of support and query.

    ``unscored_classes`` counts classes with a single image: they cannot be scored (no query image), and
    stay in the support (the classifier must still tell them apart) unless asked otherwise.
    """

    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray
    n_ways: int
    unscored_classes: int


def support_query(collection: TaskCollection, task: int, rng: np.random.Generator, shots: int | None = None,
                  keep_unscored: bool = True) -> SupportQuery | None:
    """Split each class of ``task`` into support and query; None when no class can be scored.

    A class of m >= 2 images gives ``min(shots, m - 1)`` support images (``shots`` None: half, at least 1)
    and the rest as query; a class of one image is support only (``keep_unscored``) or left out.
    """
    if shots is not None and shots < 1:
        raise MelaError(f"shots must be at least 1, got {shots}")
    support, support_labels, query, query_labels = [], [], [], []
    unscored = 0
    label = 0
    for rows in collection.task_classes(task):
        rows = rng.permutation(rows)
        if len(rows) == 1:
            unscored += 1
            if not keep_unscored:
                continue
            n_support = 1
        else:
            n_support = min(shots, len(rows) - 1) if shots is not None else max(1, len(rows) // 2)
        support.append(rows[:n_support])
        support_labels.append(np.full(n_support, label))
        query.append(rows[n_support:])
        query_labels.append(np.full(len(rows) - n_support, label))
        label += 1
    n_query = sum(len(q) for q in query)
    if n_query == 0 or label < 2:
        return None
    return SupportQuery(np.concatenate(support), np.concatenate(support_labels).astype(np.int64),
                        np.concatenate(query), np.concatenate(query_labels).astype(np.int64), label, unscored)


def class_means(collection: TaskCollection, image_features: np.ndarray) -> np.ndarray:
    """(K, d) mean feature of each task class (the labeler's keys) from (N, d) per-image features."""
    features = image_features[collection.item_image]
    sums = np.add.reduceat(features, collection.class_offsets[:-1], axis=0)
    return sums / collection.class_sizes[:, None]


# ---------------------------------------------------------------------------- loading: shared machinery


def _natural_key(name: str) -> list:
    """Sort key putting "job2" before "job10" (text and digit runs alternate, so types always line up)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _natural_rank(names: Sequence[str]) -> np.ndarray:
    """(n,) position of each name in natural order (ties: the name itself, so the order is total)."""
    order = sorted(range(len(names)), key=lambda i: (_natural_key(names[i]), names[i]))
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    return rank


class _Problems:
    """Bad tasks found while loading: raised at once, or recorded when ``skip`` is set."""

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.bad: dict[int, SkippedTask] = {}

    def add(self, task: int, name: str, reason: str, message: str) -> None:
        if not self.skip:
            raise MelaError(message + SKIP_HINT)
        self.bad.setdefault(task, SkippedTask(name, reason, message))


@dataclass
class _Draft:
    """A collection before its images are read: one row per (task, local label, image source)."""

    source: str
    task_names: list[str]
    label_names: list[str]
    row_task: np.ndarray
    row_label: np.ndarray
    row_source: np.ndarray
    n_sources: int
    describe_row: Callable[[int], str]  # "manifest.csv line 7" / a path, for messages
    describe_source: Callable[[int], str]
    empty_classes: list[tuple[int, str, str]] = field(default_factory=list)  # (task, label, where)
    notes: list[str] = field(default_factory=list)


class _Reader:
    """Image sources: header (mode is grey, (h, w)) without decoding, then decoding at the chosen size."""

    def header(self, source: int) -> tuple[bool, tuple[int, int]]:
        raise NotImplementedError

    def read(self, source: int, grey: bool, size: tuple[int, int] | None) -> np.ndarray:
        raise NotImplementedError


class _FileReader(_Reader):
    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = paths

    def header(self, source: int) -> tuple[bool, tuple[int, int]]:
        mode, size = image_header(Path(self.paths[source]))
        return mode in GREY_MODES, size

    def read(self, source: int, grey: bool, size: tuple[int, int] | None) -> np.ndarray:
        return read_image(Path(self.paths[source]), grey, size)


class _ArrayReader(_Reader):
    def __init__(self, arrays: Sequence[object], where: Callable[[int], str]) -> None:
        self.arrays, self.where = arrays, where

    def header(self, source: int) -> tuple[bool, tuple[int, int]]:
        array = as_image_array(self.arrays[source], self.where(source))
        return array.shape[2] == 1, array.shape[:2]

    def read(self, source: int, grey: bool, size: tuple[int, int] | None) -> np.ndarray:
        array = as_image_array(self.arrays[source], self.where(source))
        if not grey and array.shape[2] == 1:
            array = np.repeat(array, 3, axis=2)
        return array if size is None else resize_image(array, size)


def _structure_checks(draft: _Draft, problems: _Problems) -> None:
    """Duplicate rows, an image in two classes of one task, empty classes and tasks of fewer than 2 classes."""
    task, label, src = draft.row_task, draft.row_label, draft.row_source
    by_source = np.lexsort((np.arange(len(task)), label, src, task))
    t, s, lab = task[by_source], src[by_source], label[by_source]
    same_ts = (t[1:] == t[:-1]) & (s[1:] == s[:-1])
    for i in np.flatnonzero(same_ts):
        first, second = int(by_source[i]), int(by_source[i + 1])
        name = draft.task_names[t[i]]
        if lab[i] == lab[i + 1]:
            problems.add(int(t[i]), name, "duplicate_row",
                         f"{draft.describe_row(second)}: task '{name}' class '{draft.label_names[lab[i]]}' lists "
                         f"{draft.describe_source(s[i])} again (first at {draft.describe_row(first)}); "
                         "remove the duplicate row")
        else:
            problems.add(int(t[i]), name, "image_in_two_classes",
                         f"{draft.describe_row(second)}: task '{name}' puts {draft.describe_source(s[i])} in class "
                         f"'{draft.label_names[lab[i + 1]]}' and in class '{draft.label_names[lab[i]]}' "
                         f"({draft.describe_row(first)}); keep each image in one class of a task")
    for t_index, label_name, where in draft.empty_classes:
        problems.add(t_index, draft.task_names[t_index], "empty_class",
                     f"task '{draft.task_names[t_index]}' class '{label_name}' has no image ({where}); add images "
                     "or remove the class")
    pairs = np.unique(np.stack([task, label]), axis=1)
    n_classes = np.bincount(pairs[0], minlength=len(draft.task_names))
    for t_index in np.flatnonzero(n_classes < 2):
        if int(t_index) in problems.bad:
            continue
        name = draft.task_names[t_index]
        only = [draft.label_names[lab] for lab in pairs[1][pairs[0] == t_index]]
        what = f"only class '{only[0]}'" if only else "no class with images"
        problems.add(int(t_index), name, "too_few_classes",
                     f"task '{name}' of {draft.source} has {what}; a task needs at least 2 classes: add a class "
                     "or remove the task")


def _choose_size(sizes: set[tuple[int, int]], image_size: int | None, notes: list[str]) -> tuple[int, int] | None:
    """The common (h, w): ``image_size`` when given, the shared size when there is one, else the default."""
    if image_size is not None:
        if image_size < 1:
            raise MelaError(f"image_size must be positive, got {image_size}")
        return (image_size, image_size)
    if len(sizes) == 1:
        return None
    examples = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:3])
    notes.append(f"images of {len(sizes)} sizes ({examples}, ...) were resized to {DEFAULT_IMAGE_SIZE}x"
                 f"{DEFAULT_IMAGE_SIZE}; set image_size to choose the side")
    return (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)


def _rows_of_kept(draft: _Draft, order: np.ndarray, bad: dict[int, SkippedTask]) -> np.ndarray:
    if not bad:
        return order
    return order[~np.isin(draft.row_task[order], np.fromiter(bad, dtype=np.int64))]


def _tasks_of_source(draft: _Draft, rows: np.ndarray, source: int) -> list[int]:
    return sorted(set(draft.row_task[rows[draft.row_source[rows] == source]].tolist()))


def _build(draft: _Draft, reader: _Reader, image_size: int | None, problems: _Problems,
           truth: dict[tuple[str, str], str] | None, truth_where: str = "") -> TaskCollection:
    """Check, read each needed image once, deduplicate pixels, and lay the collection out."""
    if not draft.task_names:
        raise MelaError(f"{draft.source} holds no tasks; it needs tasks of at least 2 classes with images")
    task_rank, label_rank = _natural_rank(draft.task_names), _natural_rank(draft.label_names)
    order = np.lexsort((np.arange(len(draft.row_task)), label_rank[draft.row_label], task_rank[draft.row_task]))
    _structure_checks(draft, problems)

    def fail_source(source: int, rows: np.ndarray, exc: MelaError) -> None:
        tasks = _tasks_of_source(draft, rows, source)
        for t_index in tasks:
            problems.add(t_index, draft.task_names[t_index], "unreadable_image",
                         f"task '{draft.task_names[t_index]}': {exc}")

    # Header pass: grey or not, and sizes, over the images the kept tasks use (each source once).
    rows = _rows_of_kept(draft, order, problems.bad)
    needed = _first_use(draft.row_source[rows])
    headers: dict[int, tuple[bool, tuple[int, int]]] = {}
    for source in needed.tolist():
        try:
            headers[source] = reader.header(source)
        except MelaError as exc:
            fail_source(source, rows, exc)
    rows = _rows_of_kept(draft, order, problems.bad)
    needed = _first_use(draft.row_source[rows])
    if not len(needed):
        return _all_skipped(draft, problems)
    grey = all(headers[s][0] for s in needed.tolist())
    size = _choose_size({headers[s][1] for s in needed.tolist()}, image_size, draft.notes)
    height, width = size if size is not None else headers[int(needed[0])][1]

    # Decode pass: one row per distinct pixel content.
    images = np.empty((len(needed), height, width, 1 if grey else 3), dtype=np.uint8)
    row_of_source = np.full(draft.n_sources, -1, dtype=np.int64)
    seen: dict[bytes, int] = {}
    for source in needed.tolist():
        try:
            pixels = reader.read(source, grey, size)
        except MelaError as exc:
            fail_source(source, rows, exc)
            continue
        digest = hashlib.blake2b(pixels.tobytes(), digest_size=16).digest()
        if digest not in seen:
            seen[digest] = len(seen)
            images[seen[digest]] = pixels
        row_of_source[source] = seen[digest]
    rows = _rows_of_kept(draft, order, problems.bad)
    if not len(rows):
        return _all_skipped(draft, problems)
    item_image = row_of_source[draft.row_source[rows]]
    used = np.unique(item_image)
    if len(used) < len(images):  # duplicates in content, or images only skipped tasks used
        keep = np.zeros(len(images), dtype=bool)
        keep[used] = True
        remap = np.cumsum(keep) - 1
        images, item_image = images[keep], remap[item_image]
        # First-use order is kept: `used` rows were assigned in first-use order.
    task, label = draft.row_task[rows], draft.row_label[rows]
    new_class = np.concatenate([[True], (task[1:] != task[:-1]) | (label[1:] != label[:-1])])
    class_starts = np.flatnonzero(new_class)
    class_task = task[class_starts]
    new_task = np.concatenate([[True], class_task[1:] != class_task[:-1]])
    task_starts = np.flatnonzero(new_task)
    task_ids = tuple(draft.task_names[t] for t in class_task[task_starts].tolist())
    class_names = tuple(draft.label_names[lab] for lab in label[class_starts].tolist())
    skipped = tuple(problems.bad[t] for t in sorted(problems.bad, key=lambda t: task_rank[t]))
    collection = TaskCollection(
        images=images, task_ids=task_ids, class_names=class_names,
        task_offsets=np.append(task_starts, len(class_starts)).astype(np.int64),
        class_offsets=np.append(class_starts, len(rows)).astype(np.int64),
        item_image=item_image.astype(np.int64), source=draft.source, skipped=skipped, notes=tuple(draft.notes),
    )
    return collection if truth is None else attach_truth(collection, truth, truth_where)


def _first_use(sources: np.ndarray) -> np.ndarray:
    """Distinct sources in order of first appearance."""
    _, first = np.unique(sources, return_index=True)
    return sources[np.sort(first)]


def _all_skipped(draft: _Draft, problems: _Problems) -> TaskCollection:
    counts: dict[str, int] = {}
    for skipped in problems.bad.values():
        counts[skipped.reason] = counts.get(skipped.reason, 0) + 1
    first = next(iter(problems.bad.values()))
    raise MelaError(f"every task of {draft.source} was skipped ({', '.join(f'{k}: {v}' for k, v in counts.items())});"
                    f" the first: {first.message}")


# ---------------------------------------------------------------------------- truth


def read_truth(path: str | Path) -> dict[tuple[str, str], str]:
    """``truth.csv`` (task, local_label, global_label) as {(task, local_label): global_label}, checked."""
    path = Path(path)
    truth: dict[tuple[str, str], str] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            columns = _header_columns(next(reader, None), TRUTH_COLUMNS, path)
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) <= max(columns):
                    raise MelaError(f"{path} line {line} has {len(row)} fields; it needs {', '.join(TRUTH_COLUMNS)}")
                key = (row[columns[0]], row[columns[1]])
                value = row[columns[2]]
                if key in truth and truth[key] != value:
                    raise MelaError(f"{path} line {line}: task '{key[0]}' class '{key[1]}' is given global label "
                                    f"'{value}' and earlier '{truth[key]}'; keep one")
                truth[key] = value
    except FileNotFoundError as exc:
        raise MelaError(f"truth file {path} does not exist; give the path of a task,local_label,global_label CSV "
                        "or leave it out") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MelaError(f"cannot read truth file {path} ({exc}); it must be a UTF-8 CSV") from exc
    return truth


def attach_truth(collection: TaskCollection, truth: dict[tuple[str, str], str], where: str = "truth") -> TaskCollection:
    """The collection with ``class_truth`` set from {(task, local_label): global_label}.

    Every task class needs a global label; a truth row naming a task class that is not in the collection is
    an error unless its task was skipped.
    """
    skipped = {s.task for s in collection.skipped}
    names: dict[str, int] = {}
    class_truth = np.empty(collection.n_classes, dtype=np.int64)
    known = set()
    for t in range(collection.n_tasks):
        task = collection.task_ids[t]
        for k in range(collection.task_offsets[t], collection.task_offsets[t + 1]):
            key = (task, collection.class_names[k])
            known.add(key)
            if key not in truth:
                raise MelaError(f"{where} has no global label for task '{task}' class '{key[1]}'; add a row "
                                "task,local_label,global_label for every task class, or leave the truth out")
            class_truth[k] = names.setdefault(truth[key], len(names))
    extra = [key for key in truth if key not in known and key[0] not in skipped]
    if extra:
        raise MelaError(f"{where} names task '{extra[0][0]}' class '{extra[0][1]}', which is not in "
                        f"{collection.source} ({len(extra)} such rows); fix the names or remove the rows")
    ordered = sorted(names, key=_natural_key)
    rank = np.empty(len(names), dtype=np.int64)
    for new, name in enumerate(ordered):
        rank[names[name]] = new
    return replace(collection, class_truth=rank[class_truth], truth_names=tuple(ordered))


def _header_columns(header: list[str] | None, required: tuple[str, ...], path: Path) -> list[int]:
    if header is None:
        raise MelaError(f"{path} is empty; its first line must name the columns {','.join(required)}")
    header = [h.strip().lstrip("\ufeff") for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise MelaError(f"{path} has no '{missing[0]}' column (found: {','.join(header)}); its first line must name "
                        f"the columns {','.join(required)}")
    return [header.index(c) for c in required]


def _truth_for(default: Path, truth: str | Path | None) -> tuple[dict[tuple[str, str], str] | None, str]:
    if truth is not None:
        return read_truth(truth), str(truth)
    return (read_truth(default), str(default)) if default.is_file() else (None, "")


# ---------------------------------------------------------------------------- the three input forms


class _Interner:
    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.names: list[str] = []

    def __call__(self, name: str) -> int:
        found = self.index.get(name)
        if found is None:
            found = self.index[name] = len(self.names)
            self.names.append(name)
        return found


def load_folder(root: str | Path, *, image_size: int | None = None, truth: str | Path | None = None,
                skip_bad_tasks: bool = False) -> TaskCollection:
    """``root/<task_id>/<local_class>/<image files>``; ``root/truth.csv`` is read when present (or ``truth``)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MelaError(f"task folder {root} does not exist; pass a folder of task folders of class folders")
    tasks, labels = _Interner(), _Interner()
    row_task, row_label, paths = [], [], []
    draft = _Draft(str(root), tasks.names, labels.names, np.zeros(0), np.zeros(0), np.zeros(0), 0,
                   lambda r: paths[r], lambda s: paths[s])
    ignored: list[str] = []
    for task_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        t = tasks(task_dir.name)
        for entry in sorted(task_dir.iterdir()):
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                ignored.append(str(entry))
                continue
            files = []
            for path in sorted(entry.iterdir()):
                if is_image_file(path):
                    files.append(str(path))
                elif not path.name.startswith("."):
                    ignored.append(str(path))
            if not files:
                draft.empty_classes.append((t, entry.name, str(entry)))
                continue
            lab = labels(entry.name)
            for path in files:
                row_task.append(t)
                row_label.append(lab)
                paths.append(path)
    if ignored:
        draft.notes.append(f"ignored {len(ignored)} entries that are not class folders or images, e.g. {ignored[0]}")
    draft.row_task = np.asarray(row_task, dtype=np.int64)
    draft.row_label = np.asarray(row_label, dtype=np.int64)
    draft.row_source = np.arange(len(paths), dtype=np.int64)
    draft.n_sources = len(paths)
    truth_map, truth_where = _truth_for(root / TRUTH_FILE, truth)
    return _build(draft, _FileReader(paths), image_size, _Problems(skip_bad_tasks), truth_map, truth_where)


def load_manifest(path: str | Path, *, image_size: int | None = None, truth: str | Path | None = None,
                  skip_bad_tasks: bool = False) -> TaskCollection:
    """A CSV ``path,task,local_label`` (paths relative to its folder), streamed; ``truth.csv`` beside it is read.

    Rows become three integer arrays (task, label, file) with interned names, so memory grows with the rows
    and the distinct names, not with Python objects per row; each distinct file is read once.
    """
    path = Path(path).expanduser()
    base = path.parent
    tasks, labels, files = _Interner(), _Interner(), _Interner()
    row_task = np.zeros(1024, dtype=np.int64)
    row_label, row_source, row_line = np.zeros_like(row_task), np.zeros_like(row_task), np.zeros_like(row_task)
    n = 0
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            col_path, col_task, col_label = _header_columns(next(reader, None), MANIFEST_COLUMNS, path)
            width = max(col_path, col_task, col_label)
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) <= width or not row[col_path].strip():
                    raise MelaError(f"{path} line {line} has no path, task or local_label; every row needs all three")
                if n == len(row_task):
                    row_task, row_label, row_source, row_line = (np.resize(a, 2 * n) for a in
                                                                 (row_task, row_label, row_source, row_line))
                row_task[n] = tasks(row[col_task])
                row_label[n] = labels(row[col_label])
                row_source[n] = files(os.path.normpath(os.path.join(base, row[col_path].strip())))
                row_line[n] = line
                n += 1
    except FileNotFoundError as exc:
        raise MelaError(f"manifest {path} does not exist; pass a CSV with columns path,task,local_label") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MelaError(f"cannot read manifest {path} ({exc}); it must be a UTF-8 CSV") from exc
    row_line = row_line[:n]
    draft = _Draft(str(path), tasks.names, labels.names, row_task[:n].copy(), row_label[:n].copy(),
                   row_source[:n].copy(), len(files.names), lambda r: f"{path} line {row_line[r]}",
                   lambda s: files.names[s])
    problems = _Problems(skip_bad_tasks)
    if not n:
        raise MelaError(f"manifest {path} has a header but no rows; add one row path,task,local_label per image")
    missing = [s for s, name in enumerate(files.names) if not os.path.isfile(name)]
    for r in np.flatnonzero(np.isin(draft.row_source, missing)).tolist():
        t = int(draft.row_task[r])
        problems.add(t, tasks.names[t], "missing_file",
                     f"{path} line {row_line[r]}: task '{tasks.names[t]}' file {files.names[draft.row_source[r]]} "
                     "does not exist; fix the path (relative to the manifest's folder) or remove the row")
    truth_map, truth_where = _truth_for(base / TRUTH_FILE, truth)
    return _build(draft, _FileReader(files.names), image_size, problems, truth_map, truth_where)


def from_pairs(pairs: Sequence[tuple], *, task_ids: Sequence[str] | None = None, image_size: int | None = None,
               skip_bad_tasks: bool = False) -> TaskCollection:
    """Tasks from Python: one ``(images, local_labels)`` or ``(images, local_labels, global_labels)`` per task.

    ``images`` is an (n, H, W[, C]) uint8 array or a list of images (arrays or PIL images, any sizes);
    ``local_labels`` n names or ids of the image's class inside the task; optional ``global_labels`` n true
    global classes (one per local class; used to score the labeler only). Task ids default to "0", "1", ...
    """
    if task_ids is not None and len(task_ids) != len(pairs):
        raise MelaError(f"{len(task_ids)} task ids for {len(pairs)} tasks; give one id per task")
    ids = [str(t) for t in task_ids] if task_ids is not None else [str(i) for i in range(len(pairs))]
    if len(set(ids)) != len(ids):
        raise MelaError("task ids must be distinct; two tasks share one")
    tasks, labels = _Interner(), _Interner()
    row_task, row_label, arrays, where = [], [], [], []
    truth: dict[tuple[str, str], str] = {}
    for t, (task_id, pair) in enumerate(zip(ids, pairs, strict=True)):
        if not isinstance(pair, (tuple, list)) or len(pair) not in (2, 3):
            raise MelaError(f"task {t} must be (images, local_labels) or (images, local_labels, global_labels)")
        images, local = pair[0], list(np.asarray(pair[1]).tolist())
        images = list(images)
        if len(images) != len(local):
            raise MelaError(f"task '{task_id}' has {len(images)} images but {len(local)} local labels; give one "
                            "label per image")
        tasks(task_id)
        for i, (image, name) in enumerate(zip(images, local, strict=True)):
            row_task.append(t)
            row_label.append(labels(str(name)))
            arrays.append(image)
            where.append(f"task '{task_id}' image {i}")
        if len(pair) == 3:
            global_labels = list(np.asarray(pair[2]).tolist())
            if len(global_labels) != len(local):
                raise MelaError(f"task '{task_id}' has {len(local)} local labels but {len(global_labels)} global "
                                "labels; give one per image")
            for name, value in zip(local, global_labels, strict=True):
                key = (task_id, str(name))
                if truth.setdefault(key, str(value)) != str(value):
                    raise MelaError(f"task '{task_id}' class '{name}' has images of two global labels ('{value}' and "
                                    f"'{truth[key]}'); a local class is one global class")
    if truth and len({k[0] for k in truth}) != len(ids):
        raise MelaError("give global labels for every task or for none")
    draft = _Draft("python", tasks.names, labels.names, np.asarray(row_task, dtype=np.int64),
                   np.asarray(row_label, dtype=np.int64), np.arange(len(arrays), dtype=np.int64), len(arrays),
                   lambda r: where[r], lambda s: where[s])
    return _build(draft, _ArrayReader(arrays, lambda s: where[s]), image_size, _Problems(skip_bad_tasks), truth or None,
                  "the global labels")


def load_tasks(path: str | Path, *, image_size: int | None = None, truth: str | Path | None = None,
               skip_bad_tasks: bool = False) -> TaskCollection:
    """A task collection from a folder of task folders, a ``.csv`` manifest, or a folder holding ``manifest.csv``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MelaError(f"tasks_path {path} does not exist; pass a folder of task folders or a .csv manifest")
    options = {"image_size": image_size, "truth": truth, "skip_bad_tasks": skip_bad_tasks}
    if path.is_dir() and (path / MANIFEST_FILE).is_file():
        return load_manifest(path / MANIFEST_FILE, **options)
    if path.is_dir():
        return load_folder(path, **options)
    if path.suffix.lower() == ".csv":
        return load_manifest(path, **options)
    raise MelaError(f"tasks_path {path} is neither a folder of task folders nor a .csv manifest")


def scorable_tasks(collection: TaskCollection) -> np.ndarray:
    """(T,) True for tasks that give an episode: two classes or more, one of them with two images or more."""
    has_two = np.zeros(collection.n_tasks, dtype=np.int64)
    np.add.at(has_two, collection.class_task, collection.class_sizes >= 2)
    return (has_two > 0) & (collection.ways >= 2)


def check_scorable(collection: TaskCollection, what: str) -> int:
    """Refuse a collection none of whose tasks can be split into support and query; returns how many can."""
    n = int(scorable_tasks(collection).sum())
    if n == 0:
        raise MelaError(f"{what}: none of the {collection.n_tasks} tasks has a class with two images, so no task can "
                        "be split into support and query; add images per class or use more tasks (tasks_val / "
                        "tasks_holdout take a share of the tasks)")
    return n
