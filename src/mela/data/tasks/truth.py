"""``truth.csv``: the true global class of each task class (for scoring the labeler only)."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np

from mela.data.tasks.collection import TaskCollection, natural_key
from mela.errors import MelaError

TRUTH_COLUMNS = ("task", "local_label", "global_label")
TRUTH_FILE = "truth.csv"


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
    ordered = sorted(names, key=natural_key)
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
