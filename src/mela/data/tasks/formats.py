"""The input forms: a folder of task folders, a CSV manifest, Python pairs; :func:`load_tasks` picks by kind.

Each form reads its source into a draft for the loading engine (:mod:`mela.data.tasks.build`); the path
forms are chosen from ``LOADERS`` by the kind of the path (:func:`source_kind`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mela.data.images import is_image_file
from mela.data.tasks.build import _ArrayReader, _build, _Draft, _FileReader, _Problems
from mela.data.tasks.collection import TaskCollection
from mela.data.tasks.options import LoadOptions
from mela.data.tasks.truth import TRUTH_FILE, _header_columns, _truth_for
from mela.errors import MelaError

MANIFEST_COLUMNS = ("path", "task", "local_label")
MANIFEST_FILE = "manifest.csv"  # a folder holding one is loaded as a manifest


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


def load_folder(root: str | Path, options: LoadOptions = LoadOptions()) -> TaskCollection:
    """``root/<task_id>/<local_class>/<image files>``; ``root/truth.csv`` is read when present (or
    ``options.truth``)."""
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
    truth_map, truth_where = _truth_for(root / TRUTH_FILE, options.truth)
    return _build(draft, _FileReader(paths), options.image_size, _Problems(options.skip_bad_tasks), truth_map,
                  truth_where)


def load_manifest(path: str | Path, options: LoadOptions = LoadOptions()) -> TaskCollection:
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
    problems = _Problems(options.skip_bad_tasks)
    if not n:
        raise MelaError(f"manifest {path} has a header but no rows; add one row path,task,local_label per image")
    missing = [s for s, name in enumerate(files.names) if not os.path.isfile(name)]
    for r in np.flatnonzero(np.isin(draft.row_source, missing)).tolist():
        t = int(draft.row_task[r])
        problems.add(t, tasks.names[t], "missing_file",
                     f"{path} line {row_line[r]}: task '{tasks.names[t]}' file {files.names[draft.row_source[r]]} "
                     "does not exist; fix the path (relative to the manifest's folder) or remove the row")
    truth_map, truth_where = _truth_for(base / TRUTH_FILE, options.truth)
    return _build(draft, _FileReader(files.names), options.image_size, problems, truth_map, truth_where)


def from_pairs(pairs: Sequence[tuple], *, task_ids: Sequence[str] | None = None,
               options: LoadOptions = LoadOptions()) -> TaskCollection:
    """Tasks from Python: one ``(images, local_labels)`` or ``(images, local_labels, global_labels)`` per task.

    ``images`` is an (n, H, W[, C]) uint8 array or a list of images (arrays or PIL images, any sizes);
    ``local_labels`` n names or ids of the image's class inside the task; optional ``global_labels`` n true
    global classes (one per local class; used to score the labeler only). Task ids default to "0", "1", ...
    ``options.truth`` does not apply here: the global labels come with the pairs.
    """
    if options.truth is not None:
        raise MelaError("tasks given as Python pairs take their true global labels in the pairs "
                        "(images, local_labels, global_labels), not from a truth file; leave truth unset")
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
    return _build(draft, _ArrayReader(arrays, lambda s: where[s]), options.image_size,
                  _Problems(options.skip_bad_tasks), truth or None, "the global labels")


LOADERS: dict[str, Callable[..., TaskCollection]] = {"folder": load_folder, "manifest": load_manifest}


def source_kind(path: Path) -> tuple[str, Path] | None:
    """(kind in ``LOADERS``, the path to load) for an existing path, or None when it is neither form."""
    if path.is_dir() and (path / MANIFEST_FILE).is_file():
        return "manifest", path / MANIFEST_FILE
    if path.is_dir():
        return "folder", path
    if path.suffix.lower() == ".csv":
        return "manifest", path
    return None


def load_tasks(path: str | Path, options: LoadOptions = LoadOptions()) -> TaskCollection:
    """A task collection from a folder of task folders, a ``.csv`` manifest, or a folder holding ``manifest.csv``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MelaError(f"tasks_path {path} does not exist; pass a folder of task folders or a .csv manifest")
    found = source_kind(path)
    if found is None:
        raise MelaError(f"tasks_path {path} is neither a folder of task folders nor a .csv manifest")
    kind, target = found
    return LOADERS[kind](target, options)
