"""Few-shot prediction on new tasks given as files: one task from folders, or many from a manifest.

A task is a support set (``<class name>/<image files>``, or manifest rows with role ``support``) and queries.
Every distinct image file is decoded and embedded once, however many tasks use it; the head is then fit
inside each task on its own support. The result is one row per query: the task, the file, the predicted
class with its probability and the top-k classes.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mela.data.images import is_image_file
from mela.errors import MelaError
from mela.inference.classifier import decode, features_of, fit_head, prepare_features
from mela.inference.model_io import TrainedModel
from mela.jsonio import replaced_atomically

Note = Callable[[str], None]
MANIFEST_COLUMNS = ("task", "role", "path", "label")
ROLES = ("support", "query")


@dataclass
class FileTask:
    """One task as files: support (path, class name) pairs and query paths (with a true label when known)."""

    name: str
    support: list[tuple[Path, str]] = field(default_factory=list)
    queries: list[tuple[Path, str | None]] = field(default_factory=list)


@dataclass(frozen=True)
class Prediction:
    task: str
    path: Path
    predicted: str
    probability: float
    top: list[tuple[str, float]]
    label: str | None = None


@dataclass
class PredictionRun:
    """The predictions, and what was left out: ``skipped`` files (path, reason) and ``tasks_skipped``."""

    predictions: list[Prediction]
    skipped: list[tuple[Path, str]]
    tasks_skipped: list[tuple[str, str]]

    def accuracy(self) -> tuple[float, int] | None:
        """Accuracy (%) over the queries that came with a label, and how many; None when none did."""
        known = [p for p in self.predictions if p.label not in (None, "")]
        if not known:
            return None
        return 100.0 * float(np.mean([p.predicted == p.label for p in known])), len(known)


def images_in(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively), in a stable order."""
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


def task_from_folders(support: str | Path, queries: Sequence[str | Path]) -> FileTask:
    """A task from a support folder of class folders and query files or folders."""
    root = Path(support).expanduser()
    if not root.is_dir():
        raise MelaError(f"--support {root} is not a folder; give a folder of class folders (<class>/<images>)")
    task = FileTask("task")
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = images_in(class_dir)
        if not files:
            raise MelaError(f"support class folder {class_dir} holds no image file; add images or remove it")
        task.support += [(f, class_dir.name) for f in files]
    loose = [p for p in root.iterdir() if is_image_file(p)]
    if loose:
        raise MelaError(f"{loose[0]} lies directly in --support {root}; support images go in class folders "
                        "(<class name>/<images>)")
    for query in queries:
        path = Path(query).expanduser()
        if path.is_dir():
            found = images_in(path)
            if not found:
                raise MelaError(f"query folder {path} holds no image file")
            task.queries += [(f, None) for f in found]
        elif path.exists():
            task.queries.append((path, None))
        else:
            raise MelaError(f"query {path} does not exist; give image files or folders")
    if not task.queries:
        raise MelaError("no query images: give --query FILE_OR_FOLDER ...")
    return task


def tasks_from_manifest(path: str | Path) -> list[FileTask]:
    """Tasks from a CSV with columns task,role,path,label (paths relative to the manifest; label empty for
    queries, or their true class to score the predictions)."""
    manifest = Path(path).expanduser()
    if not manifest.is_file():
        raise MelaError(f"manifest {manifest} does not exist")
    tasks: dict[str, FileTask] = {}
    with open(manifest, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise MelaError(f"{manifest} lacks column '{missing[0]}'; its header must be task,role,path,label")
        for line, row in enumerate(reader, start=2):
            task_id, role = (row["task"] or "").strip(), (row["role"] or "").strip().lower()
            file, label = (row["path"] or "").strip(), (row["label"] or "").strip()
            if not task_id or not file:
                raise MelaError(f"{manifest} line {line}: empty task or path")
            if role not in ROLES:
                raise MelaError(f"{manifest} line {line}: unknown role '{row['role']}'; valid roles: support, query")
            image = Path(file).expanduser()
            image = image if image.is_absolute() else manifest.parent / image
            task = tasks.setdefault(task_id, FileTask(task_id))
            if role == "support":
                if not label:
                    raise MelaError(f"{manifest} line {line}: a support row needs its label (task {task_id})")
                task.support.append((image, label))
            else:
                task.queries.append((image, label or None))
    if not tasks:
        raise MelaError(f"{manifest} has no rows")
    for task in tasks.values():
        if not task.support:
            raise MelaError(f"{manifest}: task '{task.name}' has no support rows; give each task its labelled images")
        if not task.queries:
            raise MelaError(f"{manifest}: task '{task.name}' has no query rows")
    return list(tasks.values())


def predict_tasks(trained: TrainedModel, tasks: Sequence[FileTask], head: str = "logistic", top_k: int = 3,
                  skip_bad: bool = False, batch_size: int = 256, progress: bool = False, note: Note | None = None,
                  C: float = 1.0, lam: float = 1e-3) -> PredictionRun:
    """Embed every distinct file once, then fit ``head`` inside each task and predict its queries."""
    files = list(dict.fromkeys(p.resolve() for task in tasks for p, _ in [*task.support, *task.queries]))
    decoded = decode(trained, files, note, skip_bad, progress)
    skipped = [(files[i], reason) for i, reason in decoded.bad]
    row_of = {files[i]: r for r, i in enumerate(decoded.kept)}
    features = prepare_features(features_of(trained, decoded.pixels, batch_size, progress))
    predictions, tasks_skipped = [], []
    for task in tasks:
        support = [(row_of[p.resolve()], label) for p, label in task.support if p.resolve() in row_of]
        queries = [(p, row_of[p.resolve()], label) for p, label in task.queries if p.resolve() in row_of]
        classes = sorted({label for _, label in support})
        lost = sorted({label for _, label in task.support} - set(classes))
        if lost or len(classes) < 2:
            reason = (f"support class '{lost[0]}' has no readable image" if lost else
                      f"it has {len(classes)} support class{'es' if len(classes) != 1 else ''}; a few-shot task "
                      "needs at least two")
            if not skip_bad or not lost:
                raise MelaError(f"task '{task.name}': {reason}")
            tasks_skipped.append((task.name, reason))
            continue
        if not queries:
            tasks_skipped.append((task.name, "no readable query image"))
            continue
        index = {c: i for i, c in enumerate(classes)}
        fitted = fit_head(head, features[[r for r, _ in support]], np.array([index[c] for _, c in support]),
                          len(classes), C, lam)
        query_features = features[[r for _, r, _ in queries]][None]
        proba = fitted.predict_proba(query_features)[0].cpu().numpy()
        predicted = fitted.predict(query_features)[0].cpu().numpy()
        for (path, _, label), p, choice in zip(queries, proba, predicted, strict=True):
            order = [int(choice)] + [int(i) for i in np.argsort(-p, kind="stable") if i != choice]
            top = [(classes[i], float(p[i])) for i in order[:top_k]]
            predictions.append(Prediction(task.name, path, classes[int(choice)], float(p[int(choice)]), top, label))
    return PredictionRun(predictions, skipped, tasks_skipped)


def prediction_rows(run: PredictionRun, top_k: int) -> tuple[list[str], list[list[str]]]:
    """The predictions as CSV columns and rows (task, path, predicted, probability, top-k, label when given)."""
    with_labels = any(p.label not in (None, "") for p in run.predictions)
    header = ["task", "path", "predicted", "probability"]
    for k in range(1, top_k + 1):
        header += [f"top{k}", f"top{k}_probability"]
    header += ["label", "correct"] if with_labels else []
    rows = []
    for p in run.predictions:
        row = [p.task, str(p.path), p.predicted, f"{p.probability:.6f}"]
        for k in range(top_k):
            row += [p.top[k][0], f"{p.top[k][1]:.6f}"] if k < len(p.top) else ["", ""]
        if with_labels:
            row += [p.label or "", "" if not p.label else str(int(p.label == p.predicted))]
        rows.append(row)
    return header, rows


def write_csv_atomic(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """The CSV written through a temporary file and renamed: a killed run leaves the old file or none."""
    with replaced_atomically(Path(path).expanduser()) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
