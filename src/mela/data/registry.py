"""Named base data sets: look one up, check its files, load its splits once.

Two kinds of entry live here, and callers never tell them apart:

- a fixed spec (``glyphs``, ``miniImageNet``, ...): files in the workspace;
- a factory (``custom``): a spec built from the user's files and options.

:class:`DatasetRef` names a data set as a user does (name plus, for a factory,
its options); :func:`open_dataset` turns it into a :class:`Dataset` whose splits
are loaded on first use and kept, so a pipeline reads each split once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mela.data.base import DatasetSpec, ImageSplit
from mela.data.packed import load_packed
from mela.data.task_dataset import TASKS, TaskDataset, TaskSplitSettings, open_task_dataset
from mela.data.tasks.options import LoadOptions
from mela.errors import MelaError

_DATASETS: dict[str, DatasetSpec] = {}
_FACTORIES: dict[str, Callable[[DatasetRef], DatasetSpec]] = {}

# Modules whose import registers the built-in data sets.
_BUILTIN_MODULES = ("mela.data.glyphs", "mela.data.seed_datasets", "mela.data.custom")


@dataclass(frozen=True)
class DatasetRef:
    """A data set as the user names it: ``dataset=NAME`` plus the options a factory entry reads.

    Attributes:
        name: the registered name.
        path: the user's files (``custom``: a folder of class folders or an ``.npz``).
        split_file: optional JSON of class names per split (``custom``).
        options: how the user's images are read (:class:`~mela.data.tasks.LoadOptions`: ``image_size`` for
            ``custom`` and ``tasks``; the truth file and ``skip_bad_tasks`` for ``tasks``).
        seed: seed of the class split when no split file is given (``custom``), and of the task shares
            (``tasks``).
        tasks_path, tasks_holdout, tasks_val: ``dataset=tasks`` (a locally labelled task collection; see
            :mod:`mela.data.task_dataset`).
    """

    name: str
    path: str | None = None
    split_file: str | None = None
    options: LoadOptions = LoadOptions()
    seed: int = 0
    tasks_path: str | None = None
    tasks_holdout: float = 0.1
    tasks_val: float = 0.05


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Make ``spec`` loadable by its name; a second registration of a name is a bug."""
    if (spec.name in _DATASETS and _DATASETS[spec.name] is not spec) or spec.name in _FACTORIES:
        raise ValueError(f"data set '{spec.name}' is registered twice")
    _DATASETS[spec.name] = spec
    return spec


def register_dataset_factory(name: str, factory: Callable[[DatasetRef], DatasetSpec]) -> None:
    """Register a data set whose spec is built from a :class:`DatasetRef`'s options (e.g. ``custom``)."""
    if name in _DATASETS or (name in _FACTORIES and _FACTORIES[name] is not factory):
        raise ValueError(f"data set '{name}' is registered twice")
    _FACTORIES[name] = factory


def _ensure_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def available_datasets() -> list[str]:
    """Names of every registered data set, sorted (``tasks``: a locally labelled task collection)."""
    _ensure_builtins()
    return sorted({*_DATASETS, *_FACTORIES, TASKS})


def workspace_datasets() -> list[str]:
    """Names of the data sets whose files live in the workspace (what ``mela data check`` walks), sorted."""
    _ensure_builtins()
    return sorted(_DATASETS)


def get_dataset_spec(name: str | DatasetRef) -> DatasetSpec:
    """The spec of a data set; an unknown name lists the valid ones."""
    ref = name if isinstance(name, DatasetRef) else DatasetRef(str(name))
    _ensure_builtins()
    if ref.name in _FACTORIES:
        return _FACTORIES[ref.name](ref)
    if ref.name == TASKS:
        raise MelaError("dataset=tasks is a task collection, not a data set of labelled images: steps open it "
                        "themselves; `mela tasks info PATH` describes one")
    if ref.name not in _DATASETS:
        raise MelaError(f"unknown data set '{ref.name}'; valid names: {', '.join(available_datasets())}")
    return _DATASETS[ref.name]


def _missing(spec: DatasetSpec, split: str, data_dir: Path) -> list[Path]:
    return [path for path in spec.required_files(Path(data_dir), split) if not path.exists()]


def missing_files(name: str, split: str, data_dir: Path) -> list[Path]:
    """Files that data set ``name`` needs for ``split`` and that are not there."""
    return _missing(get_dataset_spec(name), split, data_dir)


def _load(spec: DatasetSpec, split: str, data_dir: Path, use_pack: bool = True) -> ImageSplit:
    if split not in spec.splits:
        raise MelaError(f"data set '{spec.name}' has no split '{split}'; it has {', '.join(spec.splits)}")
    if use_pack:  # a consistent `mela data pack` copy is memory-mapped instead of reading the files
        packed = load_packed(spec, split, Path(data_dir))
        if packed is not None:
            return packed
    missing = _missing(spec, split, data_dir)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MelaError(
            f"data set '{spec.name}' not found: {missing[0]} is missing{more}; put the files there, "
            f"or {spec.how_to_get}"
        )
    return spec.load(Path(data_dir), split)


@dataclass
class Dataset:
    """One data set opened in one workspace: its spec, and each split loaded once, on first use."""

    spec: DatasetSpec
    data_dir: Path
    ref: DatasetRef | None = None
    _splits: dict[str, ImageSplit] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def identity(self) -> str:
        """The name, plus path and content hash for data built from the user's files (see ``DatasetSpec``)."""
        return self.spec.identity

    @property
    def mean(self) -> tuple[float, ...]:
        return self.spec.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.spec.std

    def split(self, name: str) -> ImageSplit:
        """Split ``name`` (train / val / test); a missing file is a one-line error naming it."""
        if name not in self._splits:
            self._splits[name] = _load(self.spec, name, self.data_dir)
        return self._splits[name]

    def episode_data(self, name: str) -> ImageSplit:
        """What episodic training and validation draw tasks from: split ``name`` (a task collection gives
        its tasks instead; see :class:`mela.data.task_dataset.TaskDataset`)."""
        return self.split(name)

    has_truth = True  # every item of a base data set carries its global class


def open_dataset(ref: str | DatasetRef, data_dir: Path) -> Dataset | TaskDataset:
    """The data set ``ref`` names, with its files under ``data_dir`` (``$WORKSPACE/metaL_data``).

    ``tasks`` opens the task collection at ``ref.tasks_path`` (loaded now, split into train / val / test tasks).
    """
    ref = ref if isinstance(ref, DatasetRef) else DatasetRef(str(ref))
    if ref.name == TASKS:
        return open_task_dataset(ref.tasks_path, options=ref.options,
                                 settings=TaskSplitSettings(ref.tasks_holdout, ref.tasks_val, ref.seed))
    return Dataset(get_dataset_spec(ref), Path(data_dir), ref)


def load_split(name: str, split: str, data_dir: Path) -> ImageSplit:
    """Load ``split`` of data set ``name`` from ``data_dir`` (``$WORKSPACE/metaL_data``).

    Raises a one-line :class:`MelaError` naming the first missing file and how to
    obtain it, instead of a deep ``FileNotFoundError``.
    """
    return _load(get_dataset_spec(name), split, data_dir)
