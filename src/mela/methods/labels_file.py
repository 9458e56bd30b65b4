"""``global_labels.csv``: the inferred global class of every task class, written for people and read back.

One row per task class: ``task, local_label, global_class, distance, inferred, collection``. A user corrects
the labels by editing ``global_class`` (the same value is the same class: merge by renaming, split by giving
new values, empty leaves the task class out) and gives the file back (``global_labels=FILE``);
:func:`read_labels_file` validates it against the pile it is meant for. ``inferred`` keeps the labeler's
answer, so the run can count the rows a person changed; ``collection`` is the pile's fingerprint, so a file
of another pile is refused.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mela.data.tasks.collection import natural_key
from mela.errors import MelaError
from mela.jsonio import replaced_atomically

COLUMNS = ("task", "local_label", "global_class", "distance", "inferred", "collection")
REQUIRED = ("task", "local_label", "global_class")


@dataclass(frozen=True)
class ClassIndex:
    """The task classes of a pile, as a labels file names them.

    ``task_ids``: (T,) task names; ``class_names``: (K,) local name of each task class; ``task_offsets``:
    (T + 1,) task t owns classes ``task_offsets[t]:task_offsets[t + 1]``; ``fingerprint``: a short hash of
    the pile (its tasks and classes, and for a sampled pile its items).
    """

    task_ids: tuple[str, ...]
    class_names: tuple[str, ...]
    task_offsets: np.ndarray
    fingerprint: str

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_task(self) -> np.ndarray:
        """(K,) task index of each task class."""
        return np.repeat(np.arange(len(self.task_ids)), np.diff(self.task_offsets))

    @classmethod
    def from_names(cls, task_ids: tuple[str, ...], class_names: tuple[str, ...], task_offsets: np.ndarray,
                   extra: bytes = b"") -> ClassIndex:
        digest = hashlib.sha256()
        for t, task in enumerate(task_ids):
            names = class_names[int(task_offsets[t]) : int(task_offsets[t + 1])]
            digest.update(("\x1f".join([task, *names]) + "\x1e").encode("utf-8"))
        digest.update(extra)
        return cls(tuple(task_ids), tuple(class_names), np.asarray(task_offsets, dtype=np.int64),
                   digest.hexdigest()[:16])

    @classmethod
    def from_pile(cls, tasks: np.ndarray, identity: str = "") -> ClassIndex:
        """A sampled (T, n_ways, m) pile of item indices: tasks ``0..T-1``, local classes ``0..n_ways-1``; its
        fingerprint covers the items, so another seed or data set gives another one."""
        t, n = tasks.shape[:2]
        extra = identity.encode("utf-8") + np.ascontiguousarray(tasks, dtype=np.int64).tobytes()
        return cls.from_names(tuple(str(i) for i in range(t)), tuple(str(w) for _ in range(t) for w in range(n)),
                              np.arange(t + 1, dtype=np.int64) * n, extra)


def cluster_names(assigned: np.ndarray) -> np.ndarray:
    """(K,) ``g0``, ``g1``, ... for each task class's cluster, numbered in the order of the cluster indices ("" if
    none): the numbering the training labels have always had (``np.unique``), so that reading the names back
    with :func:`training_labels` trains exactly what the clustering trained."""
    flat = np.asarray(assigned).reshape(-1)
    out = np.full(len(flat), "", dtype=object)
    kept = flat >= 0
    out[kept] = [f"g{rank}" for rank in np.unique(flat[kept], return_inverse=True)[1].tolist()]
    return out


def training_labels(names: np.ndarray) -> np.ndarray:
    """(K,) int64 training label of each task class: its global class's place among the names in natural order
    (g2 before g10), -1 for "" (left out). Inferred and file labels go through this one numbering, so an
    unedited file trains the same labels as the clustering that wrote it."""
    order = {name: i for i, name in enumerate(sorted({n for n in names.tolist() if n}, key=natural_key))}
    return np.array([order.get(name, -1) if name else -1 for name in names.tolist()], dtype=np.int64)


def write_labels_file(path: Path, index: ClassIndex, names: np.ndarray, distances: np.ndarray,
                      inferred: np.ndarray | None = None) -> Path:
    """Write ``global_labels.csv`` atomically (``inferred`` defaults to ``names``)."""
    inferred = names if inferred is None else inferred
    task_of = index.class_task
    with replaced_atomically(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for k in range(index.n_classes):
            distance = "" if not np.isfinite(distances[k]) else f"{distances[k]:.6g}"
            writer.writerow([index.task_ids[task_of[k]], index.class_names[k], names[k], distance, inferred[k],
                             index.fingerprint])
    return path


@dataclass(frozen=True)
class LabelsFile:
    """A validated labels file: ``names`` (K,) the global class of each task class ("" = left out), where it
    came from (``path``, ``sha256``), and counts: ``rows`` read, ``left_out`` task classes (empty or absent),
    ``absent`` task classes with no row, ``changed`` rows whose class differs from the ``inferred`` column
    (None without it)."""

    names: np.ndarray
    inferred: np.ndarray
    path: str
    sha256: str
    rows: int
    left_out: int
    absent: int
    changed: int | None

    def record(self) -> dict:
        """What ``labeler_report.json`` says about the file."""
        return {"file": self.path, "sha256": self.sha256, "rows": self.rows, "changed": self.changed,
                "left_out": self.left_out, "absent": self.absent}


def changed_rows(names: np.ndarray, inferred: np.ndarray) -> int:
    """Rows whose class is not the inferred one, classes matched one to one by shared rows (largest first):
    renaming a class changes nothing, moving one task class into another class changes one row."""
    both = [(n, i) for n, i in zip(names.tolist(), inferred.tolist(), strict=True) if n or i]
    counts = Counter(both)
    used_new, used_old, matched = set(), set(), set()
    for (new, old), _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if new and old and new not in used_new and old not in used_old:
            used_new.add(new)
            used_old.add(old)
            matched.add((new, old))
    return sum(c for pair, c in counts.items() if pair not in matched)


def read_labels_file(path: Path | str, index: ClassIndex, allow_shared: bool = False) -> LabelsFile:
    """Read and check an edited ``global_labels.csv`` against the pile ``index``; one line on any problem."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MelaError(f"global_labels={path}: no such file; give the global_labels.csv of a learn_labeler run, "
                        "edited")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MelaError(f"{path} is not UTF-8 text ({exc.reason}); save it as CSV (UTF-8)") from exc
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise MelaError(f"{path} has no {', '.join(missing)} column (it has {', '.join(header) or 'no header'}); "
                        f"keep the header line {','.join(COLUMNS)}")
    rows = list(reader)
    fingerprints = {r.get("collection") for r in rows if r.get("collection")}
    if fingerprints and fingerprints != {index.fingerprint}:
        raise MelaError(f"{path} is for another task collection (fingerprint {sorted(fingerprints)[0]}, this one is "
                        f"{index.fingerprint}): use the global_labels.csv of a run on the same tasks, data set, seed")
    position = {(index.task_ids[t], index.class_names[k]): k
                for t in range(len(index.task_ids))
                for k in range(int(index.task_offsets[t]), int(index.task_offsets[t + 1]))}
    known_tasks = set(index.task_ids)
    if rows and not fingerprints and sum((r["task"], r["local_label"]) in position for r in rows) < len(rows) / 2:
        raise MelaError(f"{path} is for another task collection: fewer than half of its {len(rows)} rows name a task "
                        "class of this one; use the global_labels.csv of a run on the same tasks, data set and seed")
    names = np.full(index.n_classes, "", dtype=object)
    inferred = np.full(index.n_classes, "", dtype=object)
    seen = np.zeros(index.n_classes, dtype=bool)
    for line, row in enumerate(rows, start=2):
        if row.get("global_class") is None:
            raise MelaError(f"{path} line {line}: the row has no global_class column; give every row "
                            f"{','.join(REQUIRED)} (an empty global_class leaves the task class out)")
        task, local = row["task"], row["local_label"]
        if task not in known_tasks:
            raise MelaError(f"{path} line {line}: unknown task '{task}' (not a training task of this collection); "
                            "delete the row or fix the task name")
        k = position.get((task, local))
        if k is None:
            raise MelaError(f"{path} line {line}: task '{task}' has no local class '{local}'; delete the row or fix "
                            "the local label")
        if seen[k]:
            raise MelaError(f"{path} line {line}: task '{task}' local class '{local}' appears twice; keep one row")
        seen[k] = True
        names[k] = row["global_class"].strip()
        inferred[k] = (row.get("inferred") or "").strip()
    if not allow_shared:
        task_of = index.class_task
        for t in np.unique(task_of[names != ""]).tolist():
            given = [n for n in names[index.task_offsets[t] : index.task_offsets[t + 1]].tolist() if n]
            twice = [n for n, c in Counter(given).items() if c > 1]
            if twice:
                raise MelaError(f"{path}: task '{index.task_ids[t]}' gives two of its local classes the global class "
                                f"'{twice[0]}' (a task's classes are different classes); fix one of them, or set "
                                "global_labels_allow_shared=true")
    if not (names != "").any():
        raise MelaError(f"{path}: no task class has a global class; fill the global_class column")
    has_inferred = bool(rows) and all(r.get("inferred") for r in rows)
    changed = changed_rows(names[seen], inferred[seen]) if has_inferred else None
    return LabelsFile(names, inferred, str(path), hashlib.sha256(raw).hexdigest(), len(rows),
                      int((names == "").sum()), int((~seen).sum()), changed)
