"""The in-memory form every base data set is loaded into.

Loaders of every on-disk format return :class:`ImageSplit`; samplers, models and
steps only ever see this type, so adding a data set means writing one loader.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mela.errors import MelaError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageSplit:
    """One split (train / val / test) of a base data set.

    ``images`` holds the pixels once; every *item* (a labelled image) points into
    it through ``image_index``, so one image can carry several label sets (the
    h_aircraft granularities) without being copied.

    Attributes:
        images: (N, H, W, C) uint8 pixels.
        labels: (M,) int64 global class id of each item, contiguous 0..n_classes-1.
        image_index: (M,) row of ``images`` for each item; ``None`` means item i is image i.
        groups: (M,) sub-data set id of each item; tasks never mix groups
            (``mixed``: aircraft / cub / vgg; ``h_aircraft``: the three granularities).
        group_names: name of each group id.
        class_names: name of each class id (optional).
        superclass: (n_classes,) super-class id of each class (optional).
        superclass_names: name of each super-class id (optional).
        label_sets: per-image alternative label arrays, keyed by name, each (N,)
            (h_aircraft: variant / family / manufacturer for the multi-head oracle).
    """

    images: np.ndarray
    labels: np.ndarray
    image_index: np.ndarray | None = None
    groups: np.ndarray | None = None
    group_names: tuple[str, ...] = ("all",)
    class_names: tuple[str, ...] | None = None
    superclass: np.ndarray | None = None
    superclass_names: tuple[str, ...] | None = None
    label_sets: Mapping[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise MelaError(
                f"images must be a (N, H, W, C) uint8 array, got {self.images.dtype} of shape {self.images.shape}"
            )
        n_items = len(self.labels)
        if self.image_index is None and n_items != len(self.images):
            raise MelaError(f"{len(self.images)} images but {n_items} labels: the two must have the same length")
        if self.image_index is not None and len(self.image_index) != n_items:
            raise MelaError(f"image_index has {len(self.image_index)} entries for {n_items} labels")
        if self.groups is not None and len(self.groups) != n_items:
            raise MelaError(f"groups has {len(self.groups)} entries for {n_items} labels")

    @property
    def n_items(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def item_images(self) -> np.ndarray:
        """Row of ``images`` for every item."""
        return np.arange(len(self.images)) if self.image_index is None else self.image_index

    def item_groups(self) -> np.ndarray:
        """Group id of every item (all zero when the data set has one group)."""
        return np.zeros(self.n_items, dtype=np.int64) if self.groups is None else self.groups


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, load and normalise one named base data set.

    Attributes:
        name: the name users pass as ``dataset=...``.
        load: ``load(workspace_data_dir, split) -> ImageSplit``.
        required_files: ``required_files(workspace_data_dir, split) -> [paths]``; what
            must exist for ``load`` to work (used for the "not found" message and
            ``mela data check``).
        mean, std: per-channel normalisation in [0, 1] pixel units.
        how_to_get: one sentence telling the user how to obtain the files.
        description: one line shown by ``mela data info``.
        fingerprint: for data built from the user's files, their path and a hash of their content, so
            runs on two different ``custom`` data sets are never mistaken for each other.
    """

    name: str
    load: Callable[[Path, str], ImageSplit]
    required_files: Callable[[Path, str], list[Path]]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    how_to_get: str
    description: str = ""
    splits: tuple[str, ...] = field(default=SPLITS)
    fingerprint: str = ""

    @property
    def identity(self) -> str:
        """What a run records as its data set: the name, plus the fingerprint where there is one."""
        return f"{self.name}@{self.fingerprint}" if self.fingerprint else self.name
