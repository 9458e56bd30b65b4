"""Using a collection for episodes: held-out task splits, support/query splits, which tasks can be scored."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mela.data.tasks.collection import TaskCollection
from mela.errors import MelaError


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
