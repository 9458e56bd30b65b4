"""Few-shot task sampling: which items form each task.

A task is an (n_ways, n_shots + n_queries) array of item indices into an
:class:`~mela.data.base.ImageSplit`; row j holds the images of local class j, the
first n_shots columns are the support set and the rest the queries. Samplers only
produce indices; pixels are gathered (and augmented) on the training device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mela.data.base import ImageSplit
from mela.errors import MelaError


@dataclass(frozen=True)
class TaskShape:
    """How many classes a task has, and how many support and query images per class."""

    n_ways: int
    n_shots: int
    n_queries: int

    def __post_init__(self) -> None:
        if self.n_ways < 2 or self.n_shots < 1 or self.n_queries < 0:
            raise MelaError(
                f"a task needs n_ways >= 2, n_shots >= 1 and n_queries >= 0; got n_ways={self.n_ways}, "
                f"n_shots={self.n_shots}, n_queries={self.n_queries}"
            )

    @property
    def per_class(self) -> int:
        return self.n_shots + self.n_queries


def items_by_class(split: ImageSplit) -> list[dict[int, np.ndarray]]:
    """For each group, a map from class id to that class's item indices (sorted)."""
    groups = split.item_groups()
    result: list[dict[int, np.ndarray]] = []
    for group in range(int(groups.max()) + 1 if len(groups) else 0):
        in_group = np.flatnonzero(groups == group)
        labels = split.labels[in_group]
        order = np.argsort(labels, kind="stable")
        sorted_items, sorted_labels = in_group[order], labels[order]
        classes, starts = np.unique(sorted_labels, return_index=True)
        bounds = list(starts[1:]) + [len(sorted_items)]
        result.append({int(c): sorted_items[s:e] for c, s, e in zip(classes, starts, bounds, strict=True)})
    return result


def _eligible(class_items: dict[int, np.ndarray], per_class: int) -> list[int]:
    return [c for c, items in class_items.items() if len(items) >= per_class]


def draw_task(class_items: dict[int, np.ndarray], shape: TaskShape, rng: np.random.Generator) -> np.ndarray:
    """One task: n_ways distinct classes, per_class distinct items each."""
    eligible = _eligible(class_items, shape.per_class)
    if len(eligible) < shape.n_ways:
        raise MelaError(
            f"only {len(eligible)} classes have at least {shape.per_class} images (n_shots + n_queries), "
            f"fewer than n_ways={shape.n_ways}; lower n_ways, n_shots or n_queries"
        )
    classes = rng.choice(eligible, size=shape.n_ways, replace=False)
    return np.stack([rng.choice(class_items[c], size=shape.per_class, replace=False) for c in classes])


def no_replacement_tasks(class_items: dict[int, np.ndarray], shape: TaskShape, rng: np.random.Generator) -> np.ndarray:
    """The GFSL task pile: every item is used in at most one task.

    Each class's items are shuffled and cut into chunks of n_shots + n_queries;
    tasks take one chunk from each of n_ways distinct classes that still have one,
    until fewer than n_ways classes are left.
    """
    chunks: dict[int, list[np.ndarray]] = {}
    for cls in sorted(class_items):
        items = rng.permutation(class_items[cls])
        n_chunks = len(items) // shape.per_class
        if n_chunks:
            chunks[cls] = [items[i * shape.per_class:(i + 1) * shape.per_class] for i in range(n_chunks)]
    tasks = []
    while len(chunks) >= shape.n_ways:
        classes = rng.choice(sorted(chunks), size=shape.n_ways, replace=False)
        tasks.append(np.stack([chunks[c].pop() for c in classes]))
        for c in classes:
            if not chunks[c]:
                del chunks[c]
    return np.stack(tasks) if tasks else np.zeros((0, shape.n_ways, shape.per_class), dtype=np.int64)


class TaskSource:
    """The training tasks of one run, epoch by epoch.

    - ``no_replacement``: one fixed pile of tasks (GFSL), drawn once from ``seed``;
      each epoch visits it in a new seeded order.
    - ``fixed_db``: ``train_db_size`` tasks, task i always drawn from seed (seed, i).
    - otherwise: ``train_db_size`` fresh tasks per epoch, seeded by (seed, epoch).

    Tasks never mix groups (sub-data sets); a random task picks its group with
    probability proportional to the group's item count.
    """

    def __init__(
        self,
        split: ImageSplit,
        shape: TaskShape,
        no_replacement: bool = True,
        fixed_db: bool = True,
        train_db_size: int = 2800,
        seed: int = 0,
    ) -> None:
        self.split, self.shape, self.seed = split, shape, seed
        self.no_replacement, self.fixed_db, self.train_db_size = no_replacement, fixed_db, train_db_size
        self.class_items = items_by_class(split)
        # Random tasks come from groups that can form one, in proportion to their size.
        sizes = np.array([sum(len(v) for v in g.values()) if len(_eligible(g, shape.per_class)) >= shape.n_ways
                          else 0 for g in self.class_items], dtype=float)
        self.group_weights = sizes / sizes.sum() if sizes.sum() else np.full(len(sizes), 1.0 / max(len(sizes), 1))
        self._pile: np.ndarray | None = None
        if no_replacement:
            rng = np.random.default_rng([seed, 0x6F5])
            piles = [no_replacement_tasks(g, shape, rng) for g in self.class_items]
            self._pile = np.concatenate(piles)
            if len(self._pile) == 0:
                raise MelaError(
                    f"no task can be formed without replacement: fewer than n_ways={shape.n_ways} classes have "
                    f"{shape.per_class} images (n_shots + n_queries); lower them or set no_replacement=false"
                )

    def __len__(self) -> int:
        return len(self._pile) if self._pile is not None else self.train_db_size

    def pile(self) -> np.ndarray:
        """The fixed task pile (no_replacement only), in its drawn order."""
        if self._pile is None:
            raise MelaError("this task source draws tasks at random: set no_replacement=true for a fixed pile")
        return self._pile

    def _random_task(self, rng: np.random.Generator) -> np.ndarray:
        group = int(rng.choice(len(self.class_items), p=self.group_weights))
        return draw_task(self.class_items[group], self.shape, rng)

    def epoch_tasks(self, epoch: int) -> np.ndarray:
        """(T, n_ways, per_class) item indices for ``epoch``, reproducible from the seed."""
        if self._pile is not None:
            order = np.random.default_rng([self.seed, 0xE90C, epoch]).permutation(len(self._pile))
            return self._pile[order]
        if self.fixed_db:
            return np.stack([self._random_task(np.random.default_rng([self.seed, i])) for i in range(len(self))])
        rng = np.random.default_rng([self.seed, 0xE90C, epoch])
        return np.stack([self._random_task(rng) for _ in range(len(self))])


def labeling_pile(split: ImageSplit, shape: TaskShape, no_replacement: bool = True, train_db_size: int = 2800,
                  seed: int = 0) -> np.ndarray:
    """The fixed task pile the labeler sees: the no-replacement pile, or ``train_db_size`` seeded tasks."""
    source = TaskSource(split, shape, no_replacement, True, train_db_size, seed)
    return source.pile() if no_replacement else source.epoch_tasks(0)


def check_can_sample(split: ImageSplit, shape: TaskShape, what: str) -> None:
    """Refuse, before any work, a split that cannot give ``what`` its ``shape`` of tasks.

    Tasks never mix groups, so some group needs ``n_ways`` classes with ``n_shots + n_queries``
    images each. ``what`` names the use and the split, e.g. "meta_eval tasks on the test split of custom".
    """
    best = max((len(_eligible(g, shape.per_class)) for g in items_by_class(split)), default=0)
    if best < shape.n_ways:
        raise MelaError(
            f"{what} need {shape.n_ways} classes with at least {shape.per_class} images each "
            f"({shape.n_shots} shots + {shape.n_queries} queries), but only {best} of {split.n_classes} classes have "
            f"that many; lower n_shots / n_queries / n_ways for this step, or add images")


def evaluation_tasks(split: ImageSplit, shape: TaskShape, n_tasks: int) -> list[tuple[str, np.ndarray]]:
    """Per group: ``n_tasks`` evaluation tasks, task i drawn from seed i.

    Seeding by task index makes every model see exactly the same test tasks,
    whatever ran before.
    """
    result = []
    for group, class_items in enumerate(items_by_class(split)):
        if len(_eligible(class_items, shape.per_class)) < shape.n_ways:
            continue  # e.g. h_aircraft's manufacturer level may have fewer test classes than n_ways
        tasks = np.stack([draw_task(class_items, shape, np.random.default_rng(i)) for i in range(n_tasks)])
        result.append((split.group_names[group] if group < len(split.group_names) else str(group), tasks))
    if not result:
        draw_task(items_by_class(split)[0] if split.n_items else {}, shape, np.random.default_rng(0))
    return result


def split_support_query(tasks: np.ndarray, n_shots: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Support and query items of (T, n_ways, per_class) tasks, with local labels.

    Returns (support (T, n_ways*n_shots), support labels, query (T, n_ways*n_queries),
    query labels); samples are class-major, labels 0..n_ways-1.
    """
    n_tasks, n_ways, per_class = tasks.shape
    local = np.arange(n_ways)
    support = tasks[:, :, :n_shots].reshape(n_tasks, -1)
    query = tasks[:, :, n_shots:].reshape(n_tasks, -1)
    support_labels = np.broadcast_to(np.repeat(local, n_shots), support.shape)
    query_labels = np.broadcast_to(np.repeat(local, per_class - n_shots), query.shape)
    return support, support_labels, query, query_labels
