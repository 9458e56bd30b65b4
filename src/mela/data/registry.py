"""Named base data sets: look one up, check its files, load a split."""

from __future__ import annotations

import importlib
from pathlib import Path

from mela.data.base import DatasetSpec, ImageSplit
from mela.errors import MelaError

_DATASETS: dict[str, DatasetSpec] = {}

# Modules whose import registers the built-in data sets.
_BUILTIN_MODULES = ("mela.data.glyphs", "mela.data.seed_datasets")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Make ``spec`` loadable by its name; a second registration of a name is a bug."""
    if spec.name in _DATASETS and _DATASETS[spec.name] is not spec:
        raise ValueError(f"data set '{spec.name}' is registered twice")
    _DATASETS[spec.name] = spec
    return spec


def _ensure_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def available_datasets() -> list[str]:
    """Names of every registered data set, sorted."""
    _ensure_builtins()
    return sorted(_DATASETS)


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec of data set ``name``; an unknown name lists the valid ones."""
    _ensure_builtins()
    if name not in _DATASETS:
        raise MelaError(f"unknown data set '{name}'; valid names: {', '.join(sorted(_DATASETS))}")
    return _DATASETS[name]


def missing_files(name: str, split: str, data_dir: Path) -> list[Path]:
    """Files that data set ``name`` needs for ``split`` and that are not there."""
    spec = get_dataset_spec(name)
    return [path for path in spec.required_files(Path(data_dir), split) if not path.exists()]


def load_split(name: str, split: str, data_dir: Path) -> ImageSplit:
    """Load ``split`` of data set ``name`` from ``data_dir`` (``$WORKSPACE/metaL_data``).

    Raises a one-line :class:`MelaError` naming the first missing file and how to
    obtain it, instead of a deep ``FileNotFoundError``.
    """
    spec = get_dataset_spec(name)
    if split not in spec.splits:
        raise MelaError(f"data set '{name}' has no split '{split}'; it has {', '.join(spec.splits)}")
    missing = missing_files(name, split, data_dir)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MelaError(
            f"data set '{name}' not found: {missing[0]} is missing{more}; put the files there, or {spec.how_to_get}"
        )
    return spec.load(Path(data_dir), split)
