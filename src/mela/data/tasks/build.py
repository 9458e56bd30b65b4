"""The loading engine every input form shares: a draft of rows, checks, image readers, and :func:`_build`.

An input form turns its source into a :class:`_Draft` (one row per task, local label and image source) and a
:class:`_Reader`; :func:`_build` checks the structure, reads each needed image once (headers first, then
pixels at the chosen size), keeps one image row per distinct pixel content, and lays the collection out in
canonical order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mela.data.images import GREY_MODES, as_image_array, image_header, read_image, resize_image
from mela.data.tasks.collection import SkippedTask, TaskCollection, natural_key, reason_counts
from mela.data.tasks.truth import attach_truth
from mela.errors import MelaError

DEFAULT_IMAGE_SIZE = 84  # the side mixed-size collections are resized to, as for dataset=custom
SKIP_HINT = "; or set skip_bad_tasks to skip such tasks"


def _natural_rank(names: Sequence[str]) -> np.ndarray:
    """(n,) position of each name in natural order (ties: the name itself, so the order is total)."""
    order = sorted(range(len(names)), key=lambda i: (natural_key(names[i]), names[i]))
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
        raise _all_skipped(draft, problems)
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
        raise _all_skipped(draft, problems)
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


def _all_skipped(draft: _Draft, problems: _Problems) -> MelaError:
    """The error for a source all of whose tasks were skipped."""
    counts = reason_counts(problems.bad.values())
    first = next(iter(problems.bad.values()))
    return MelaError(f"every task of {draft.source} was skipped ({', '.join(f'{k}: {v}' for k, v in counts.items())});"
                     f" the first: {first.message}")
