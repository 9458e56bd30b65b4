"""``dataset=tasks``: a locally labelled task collection as the data set every step runs on.

A base data set has train / val / test splits of globally labelled images, from which the steps sample
tasks. A task collection has only tasks. :class:`TaskDataset` splits the *tasks* three ways, from the seed:

- ``test``: ``tasks_holdout`` of the tasks (default 10 %), evaluated by meta_eval inside each task;
- ``val``: ``tasks_val`` of the rest (default 5 %, at least one task), validated the same way during
  training (this picks ``model.pt``, as the val split does for base data sets);
- ``train``: everything else: the tasks learn_meta_repr and fine_tune train on as given, and the pile
  learn_labeler clusters.

Each part is a :class:`~mela.data.tasks.TaskCollection` sharing the one image array. ``truth.csv``, when
present, gives true global classes: the labeler is scored against them and sup_baseline trains on them.
Pixels are normalised with the per-channel mean and standard deviation of the collection's images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from mela.data.tasks import LoadOptions, TaskCollection, load_tasks, tasks_holdout
from mela.errors import MelaError

TASKS = "tasks"
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class TaskSplitSettings:
    """How the collection's tasks are shared out (fractions of the tasks) and from which seed."""

    holdout: float = 0.1
    val: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout < 1.0:
            raise MelaError(f"tasks_holdout must be in [0, 1), got {self.holdout}")
        if not 0.0 < self.val < 1.0:
            raise MelaError(f"tasks_val must be in (0, 1): validation picks the model, got {self.val}")


def split_tasks(n_tasks: int, settings: TaskSplitSettings) -> dict[str, np.ndarray]:
    """Sorted task indices of each part; depends only on (n_tasks, fractions, seed)."""
    kept, test = tasks_holdout(n_tasks, settings.holdout, settings.seed)
    if len(kept) < 2:
        raise MelaError(f"{n_tasks} tasks leave {len(kept)} for training and validation; add tasks or lower "
                        "tasks_holdout")
    train_pos, val_pos = tasks_holdout(len(kept), settings.val, settings.seed + 7919)
    return {"train": kept[train_pos], "val": kept[val_pos], "test": test}


def pixel_statistics(images: np.ndarray, max_images: int = 20000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation in [0, 1] units (on a seeded sample of at most ``max_images``)."""
    if len(images) > max_images:
        images = images[np.sort(np.random.default_rng(0).choice(len(images), max_images, replace=False))]
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    std = np.maximum(pixels.std(axis=0), 1e-3)
    return tuple(float(v) for v in pixels.mean(axis=0)), tuple(float(v) for v in std)


@dataclass
class TaskDataset:
    """A task collection opened for the steps: its three task parts, statistics and identity.

    ``collection`` holds every loaded task; ``tasks(part)`` the tasks of ``train``, ``val`` or ``test``.
    """

    collection: TaskCollection
    settings: TaskSplitSettings = field(default_factory=TaskSplitSettings)
    _parts: dict[str, TaskCollection] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.indices = split_tasks(self.collection.n_tasks, self.settings)
        self.mean, self.std = pixel_statistics(self.collection.images)

    name = TASKS

    @property
    def identity(self) -> str:
        """``tasks@<hash>`` of the collection's content and how its tasks are split, so that runs on another
        collection, or on another share of the same one, are never mistaken for each other."""
        digest = hashlib.sha1(self.collection.fingerprint().encode())
        digest.update(repr((self.settings.holdout, self.settings.val, self.settings.seed)).encode())
        return f"{TASKS}@{digest.hexdigest()[:16]}"

    @property
    def has_truth(self) -> bool:
        return self.collection.class_truth is not None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.collection.image_shape

    def tasks(self, part: str) -> TaskCollection:
        """The tasks of ``part`` (train / val / test), sharing the collection's image array."""
        if part not in PARTS:
            raise MelaError(f"a task collection has the parts {', '.join(PARTS)}, not '{part}'")
        if part not in self._parts:
            self._parts[part] = self.collection.subset(self.indices[part])
        return self._parts[part]

    def episode_data(self, part: str) -> TaskCollection:
        """What episodic training and validation draw from: the tasks of ``part``, as given."""
        return self.tasks(part)

    def split(self, name: str) -> TaskCollection:
        """Refused: a collection has tasks, not a split of globally labelled images to sample tasks from."""
        raise MelaError(f"a task collection has no '{name}' split of labelled images to sample tasks from: use "
                        f"its tasks (.tasks('{name}')), mela.evaluate_tasks, or eval_dataset=NAME for k-shot tasks")

    def describe(self) -> str:
        """One line for the log: counts per part, and what was skipped."""
        s = self.collection.summary()
        parts = ", ".join(f"{p} {len(self.indices[p])}" for p in PARTS)
        skipped = "" if not s["skipped"] else " (skipped: " + ", ".join(
            f"{k} {v}" for k, v in s["skipped"].items()) + ")"
        truth = f", {s['true_global_classes']} true global classes" if "true_global_classes" in s else ""
        return (f"task collection {self.collection.source}: {s['tasks']} tasks{skipped} ({parts}), "
                f"{s['task_classes']} task classes, {s['images']} images {tuple(s['image_shape'])}, ways "
                f"{s['ways_min']}-{s['ways_max']}, images per class {s['images_per_class_min']}-"
                f"{s['images_per_class_max']}{truth}")


def open_task_dataset(path: str | None, *, options: LoadOptions = LoadOptions(),
                      settings: TaskSplitSettings | None = None) -> TaskDataset:
    """Load the collection at ``path`` (folder or manifest) and split its tasks."""
    if not path:
        raise MelaError("dataset=tasks needs tasks_path=DIR (a folder of task folders, or a manifest .csv); "
                        "make one with `mela tasks make --from glyphs --out DIR`")
    collection = load_tasks(path, options)
    return TaskDataset(collection, settings or TaskSplitSettings())
