"""Loaders for the reference's base data sets, in the exact files it reads.

A workspace prepared for the reference code (``$WORKSPACE/metaL_data``) works
unchanged: every loader reads the reference's file names and keys. Labels are
remapped to 0..n-1 within each split, because the files keep global ids
(miniImageNet's val labels are 64..79, Meta-Dataset's class ids run across splits).

On-disk formats (paths relative to ``metaL_data``):

- miniImageNet: ``miniImageNet/miniImageNet_category_split_{train_phase_train,val,test}.pickle``,
  latin1 pickles with ``data`` (N,84,84,3) uint8 and ``labels``; an optional
  ``catname2label`` (wnid -> label) gives class names.
- tieredImageNet: ``tieredImageNet/{split}_images.npz`` (key ``images``) and
  ``{split}_labels.pkl`` (key ``labels``; optional ``label_general`` super-class per
  image, ``label_specific_str`` / ``label_general_str`` names).
- mini60 / tiered780: ``x60ImageNet/`` / ``x780ImageNet/`` with ``{train,valid,test}_images.npy``
  and ``_labels.npy`` (``valid`` is our ``val``); an optional ``classes.json``
  (written by ``mela data ximagenet``) names the classes.
- mixed: ``aircraft/aircraft_{split}.pkl``, ``cu_birds/cub_{split}.pkl``, ``vgg_flower/vgg_{split}.pkl``,
  dicts with ``data`` (N,84,84,3) uint8 and ``labels``.
- h_aircraft: the aircraft pickles, which must also carry ``family_labels`` and
  ``manufacturer_labels`` (N,) (attached by ``mela data h-aircraft --fgvc-dir DIR``).
- cifar_fs / fc100: ``CIFAR-FS/{split}.pickle`` / ``FC100/{split}.pickle`` (written by
  ``mela data cifar``): ``data`` (N,32,32,3) uint8, ``labels`` (CIFAR-100 fine ids),
  ``coarse_labels`` (CIFAR-100 super-class ids), ``fine_names``, ``coarse_names``.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mela.data.base import DatasetSpec, ImageSplit
from mela.data.npy import read_npy
from mela.data.registry import register_dataset
from mela.data.safe_pickle import UnsafePickleError, safe_load
from mela.errors import MelaError

IMAGENET_MEAN = (120.39586422 / 255.0, 115.59361427 / 255.0, 104.54012653 / 255.0)
IMAGENET_STD = (70.68188272 / 255.0, 68.27635443 / 255.0, 72.54505529 / 255.0)
HALF = (0.5, 0.5, 0.5)
# CIFAR-100 statistics as the few-shot literature (MetaOptNet, RFS) uses them.
CIFAR100_MEAN = (129.37731888 / 255.0, 124.10583864 / 255.0, 112.47758569 / 255.0)
CIFAR100_STD = (68.20947949 / 255.0, 65.43124043 / 255.0, 70.45866994 / 255.0)

MIXED_SOURCES = ("aircraft", "cu_birds", "vgg_flower")
H_AIRCRAFT_LEVELS = ("variant", "family", "manufacturer")
AIRCRAFT_EXTRA_KEYS = {"family": "family_labels", "manufacturer": "manufacturer_labels"}

# What unpickling damaged bytes raises (truncation, garbage, a numpy array whose header and data disagree).
# MemoryError, RecursionError and bugs are not among them: they propagate instead of passing as a corrupt file.
_PICKLE_DAMAGE = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, OverflowError)

_DOWNLOAD_HINT = (
    "run `make download_all && make unpack_datasets` (or `mela data download {name} && mela data unpack {name}`)"
)


# --------------------------------------------------------------------------- file readers


def read_pickle(path: Path) -> Any:
    """Unpickle ``path`` with latin1 (the reference's Python-2 pickles), allowing only data (numpy arrays, builtins).

    A file that names anything else is refused before it can run code; damaged or
    unreadable files are one line naming the file.
    """
    try:
        with open(path, "rb") as handle:
            return safe_load(handle, encoding="latin1")
    except FileNotFoundError as exc:
        raise MelaError(f"{path} is missing") from exc
    except UnsafePickleError as exc:
        raise MelaError(f"{path} {exc}; mela refuses to load it (a pickle can run code): get the file again "
                        "from its source") from None
    except IsADirectoryError as exc:
        raise MelaError(f"{path} is a folder, not a pickle file; get the file again") from exc
    except OSError as exc:
        raise MelaError(f"cannot read {path} ({exc.strerror or exc}); check its permissions") from exc
    except _PICKLE_DAMAGE as exc:
        raise MelaError(f"{path} is unreadable or corrupt ({type(exc).__name__}: {exc}); get the file again") from exc


def dict_field(obj: Any, key: str, path: Path) -> Any:
    """``obj[key]`` of a loaded pickle, or a MelaError naming the file and the missing key."""
    if not isinstance(obj, Mapping):
        raise MelaError(f"{path} should hold a dict with '{key}', found {type(obj).__name__}")
    if key not in obj:
        raise MelaError(f"{path} has no '{key}' entry (keys: {', '.join(map(str, obj))})")
    return obj[key]


def as_images(array: Any, path: Path) -> np.ndarray:
    """Check pixels are (N,H,W,C) or (N,H,W) uint8 with 1 or 3 channels; grey (N,H,W) gains a channel axis."""
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise MelaError(f"{path}: images should have shape (N, H, W, 3), found {array.shape}; the file is corrupt")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.integer) and len(array) and (array.min() < 0 or array.max() > 255):
            raise MelaError(f"{path}: pixel values outside 0..255 ({array.dtype}); the file is corrupt")
        if not np.issubdtype(array.dtype, np.integer):
            raise MelaError(f"{path}: images should be uint8, found {array.dtype}; the file is corrupt")
        array = array.astype(np.uint8)
    return array


def as_labels(array: Any, n_images: int, path: Path) -> np.ndarray:
    """Check labels are a flat integer array with one entry per image."""
    labels = np.asarray(array)
    if labels.ndim != 1 or (len(labels) and not np.issubdtype(labels.dtype, np.integer)):
        raise MelaError(f"{path}: labels should be a flat integer array, found {labels.dtype} of shape {labels.shape}")
    if len(labels) != n_images:
        raise MelaError(f"{path}: {len(labels)} labels for {n_images} images; the file is corrupt")
    return labels.astype(np.int64)


def contiguous(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remap labels to 0..n-1 in sorted order; also return the original id of each new label."""
    originals, remapped = np.unique(labels, return_inverse=True)
    return remapped.astype(np.int64).reshape(-1), originals


# --------------------------------------------------------------------------- miniImageNet / tieredImageNet / x-ImageNet


_MINI_FILES = {"train": "train_phase_train", "val": "val", "test": "test"}


def _mini_path(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / "miniImageNet" / f"miniImageNet_category_split_{_MINI_FILES[split]}.pickle"


def load_mini_imagenet(data_dir: Path, split: str) -> ImageSplit:
    """miniImageNet in the MetaOptNet/RFS pickles the reference reads."""
    path = _mini_path(data_dir, split)
    blob = read_pickle(path)
    images = as_images(dict_field(blob, "data", path), path)
    raw = as_labels(dict_field(blob, "labels", path), len(images), path)
    labels, originals = contiguous(raw)
    names = None
    catname2label = blob.get("catname2label")
    if isinstance(catname2label, Mapping):
        by_label = {int(v): str(k) for k, v in catname2label.items()}
        if all(int(o) in by_label for o in originals):
            names = tuple(by_label[int(o)] for o in originals)
    return ImageSplit(images=images, labels=labels, class_names=names)


def _tiered_paths(data_dir: Path, split: str) -> list[Path]:
    root = Path(data_dir) / "tieredImageNet"
    return [root / f"{split}_images.npz", root / f"{split}_labels.pkl"]


def _names(values: Any, count: int) -> tuple[str, ...] | None:
    """Class names from a stored list, when it covers every label id."""
    if values is None:
        return None
    values = [v.decode() if isinstance(v, bytes) else str(v) for v in list(values)]
    return tuple(values) if len(values) >= count else None


def load_tiered_imagenet(data_dir: Path, split: str) -> ImageSplit:
    """tieredImageNet as images .npz + labels pickle; super-classes kept when the pickle has them."""
    image_path, label_path = _tiered_paths(data_dir, split)
    images = as_images(read_npy(image_path, "images"), image_path)
    blob = read_pickle(label_path)
    raw = as_labels(dict_field(blob, "labels", label_path), len(images), label_path)
    labels, originals = contiguous(raw)
    specific_names = _names(blob.get("label_specific_str"), int(raw.max()) + 1 if len(raw) else 0)
    class_names = tuple(specific_names[o] for o in originals) if specific_names else None
    superclass = superclass_names = None
    general = blob.get("label_general")
    if general is not None:
        general = as_labels(general, len(images), label_path)
        per_class = np.zeros(len(originals), dtype=np.int64)
        per_class[labels] = general
        superclass, super_originals = contiguous(per_class)
        general_names = _names(blob.get("label_general_str"), int(general.max()) + 1 if len(general) else 0)
        superclass_names = tuple(general_names[o] for o in super_originals) if general_names else None
    return ImageSplit(
        images=images,
        labels=labels,
        class_names=class_names,
        superclass=superclass,
        superclass_names=superclass_names,
    )


XIMAGENET_SPLIT_FILES = {"train": "train", "val": "valid", "test": "test"}


def ximagenet_paths(data_dir: Path, folder: str, split: str) -> list[Path]:
    """The two .npy files of one split of an x-ImageNet folder (``valid`` stands for our ``val``)."""
    stem = XIMAGENET_SPLIT_FILES[split]
    root = Path(data_dir) / folder
    return [root / f"{stem}_images.npy", root / f"{stem}_labels.npy"]


def load_ximagenet(data_dir: Path, split: str, folder: str) -> ImageSplit:
    """mini60 / tiered780 (``x60ImageNet`` / ``x780ImageNet``) in the ximagenet-tools .npy layout."""
    image_path, label_path = ximagenet_paths(data_dir, folder, split)
    images = as_images(read_npy(image_path, mmap=True), image_path)
    raw = as_labels(read_npy(label_path), len(images), label_path)
    labels, originals = contiguous(raw)
    class_names = None
    classes_file = Path(data_dir) / folder / "classes.json"
    if classes_file.exists():
        try:
            stored = json.loads(classes_file.read_text()).get(XIMAGENET_SPLIT_FILES[split])
        except (OSError, ValueError, AttributeError) as exc:
            raise MelaError(f"{classes_file} is unreadable ({exc}); delete it or build the data set again") from exc
        if isinstance(stored, list) and len(stored) > int(originals.max(initial=-1)):
            class_names = tuple(str(stored[o]) for o in originals)
    return ImageSplit(images=images, labels=labels, class_names=class_names)


# --------------------------------------------------------------------------- mixed / h_aircraft


MIXED_FILES = {
    "aircraft": ("aircraft", "aircraft"),
    "cu_birds": ("cu_birds", "cub"),
    "vgg_flower": ("vgg_flower", "vgg"),
}


def mixed_source_path(data_dir: Path, source: str, split: str) -> Path:
    """Where the converted pickle of one Meta-Dataset source lives, e.g. ``cu_birds/cub_train.pkl``."""
    folder, stem = MIXED_FILES[source]
    return Path(data_dir) / folder / f"{stem}_{split}.pkl"


def _read_source(path: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    blob = read_pickle(path)
    images = as_images(dict_field(blob, "data", path), path)
    labels = as_labels(dict_field(blob, "labels", path), len(images), path)
    return blob, images, labels


def load_mixed(data_dir: Path, split: str) -> ImageSplit:
    """Aircraft + CUB + VGG Flower, label ranges stacked, one group per source so tasks never mix them."""
    all_images, all_labels, all_groups = [], [], []
    offset = 0
    shape = None
    for group, source in enumerate(MIXED_SOURCES):
        path = mixed_source_path(data_dir, source, split)
        _, images, raw = _read_source(path)
        if shape is not None and images.shape[1:] != shape:
            raise MelaError(f"{path}: images are {images.shape[1:]}, the other sources {shape}; convert it again")
        shape = images.shape[1:]
        labels, _ = contiguous(raw)
        all_images.append(images)
        all_labels.append(labels + offset)
        all_groups.append(np.full(len(labels), group, dtype=np.int64))
        offset += int(labels.max()) + 1 if len(labels) else 0
    return ImageSplit(
        images=np.concatenate(all_images),
        labels=np.concatenate(all_labels),
        groups=np.concatenate(all_groups),
        group_names=MIXED_SOURCES,
    )


def load_h_aircraft(data_dir: Path, split: str) -> ImageSplit:
    """Aircraft images once, each seen as three items: its variant, family and manufacturer.

    Labels of the three granularities are stacked (variant ids first, then family,
    then manufacturer) so every class id is unique in the split; ``groups`` keeps
    tasks within one granularity, and ``label_sets`` gives the multi-head oracle the
    three per-image labels.
    """
    path = mixed_source_path(data_dir, "aircraft", split)
    blob, images, variant_raw = _read_source(path)
    per_level = {"variant": contiguous(variant_raw)[0]}
    for level, key in AIRCRAFT_EXTRA_KEYS.items():
        if not isinstance(blob, Mapping) or key not in blob:
            raise MelaError(
                f"{path} has no '{key}': h_aircraft needs the FGVC family/manufacturer labels; "
                "run `mela data h-aircraft --fgvc-dir DIR` with the FGVC-Aircraft folder"
            )
        per_level[level] = contiguous(as_labels(blob[key], len(images), path))[0]
    n = len(images)
    labels, offset = [], 0
    for level in H_AIRCRAFT_LEVELS:
        labels.append(per_level[level] + offset)
        offset += int(per_level[level].max()) + 1 if n else 0
    return ImageSplit(
        images=images,
        labels=np.concatenate(labels),
        image_index=np.tile(np.arange(n, dtype=np.int64), len(H_AIRCRAFT_LEVELS)),
        groups=np.repeat(np.arange(len(H_AIRCRAFT_LEVELS), dtype=np.int64), n),
        group_names=H_AIRCRAFT_LEVELS,
        label_sets=per_level,
    )


# --------------------------------------------------------------------------- CIFAR-FS / FC100


CIFAR_FOLDERS = {"cifar_fs": "CIFAR-FS", "fc100": "FC100"}


def cifar_split_path(data_dir: Path, name: str, split: str) -> Path:
    """The pickle ``mela data cifar`` writes for one split of cifar_fs / fc100."""
    return Path(data_dir) / CIFAR_FOLDERS[name] / f"{split}.pickle"


def load_cifar(data_dir: Path, split: str, name: str, with_superclasses: bool) -> ImageSplit:
    """CIFAR-FS / FC100 from the pickles of ``mela data cifar``; FC100 also reports its super-classes."""
    path = cifar_split_path(data_dir, name, split)
    blob = read_pickle(path)
    images = as_images(dict_field(blob, "data", path), path)
    raw = as_labels(dict_field(blob, "labels", path), len(images), path)
    labels, originals = contiguous(raw)
    fine_names = blob.get("fine_names")
    class_names = tuple(str(fine_names[o]) for o in originals) if fine_names is not None else None
    superclass = superclass_names = None
    if with_superclasses and "coarse_labels" in blob:
        coarse = as_labels(blob["coarse_labels"], len(images), path)
        per_class = np.zeros(len(originals), dtype=np.int64)
        per_class[labels] = coarse
        superclass, super_originals = contiguous(per_class)
        coarse_names = blob.get("coarse_names")
        if coarse_names is not None:
            superclass_names = tuple(str(coarse_names[o]) for o in super_originals)
    return ImageSplit(
        images=images,
        labels=labels,
        class_names=class_names,
        superclass=superclass,
        superclass_names=superclass_names,
    )


# --------------------------------------------------------------------------- registration


def _spec(
    name: str,
    load: Callable[[Path, str], ImageSplit],
    files: Callable[[Path, str], list[Path]],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    how_to_get: str,
    description: str,
) -> DatasetSpec:
    return register_dataset(
        DatasetSpec(
            name=name,
            load=load,
            required_files=files,
            mean=mean,
            std=std,
            how_to_get=how_to_get,
            description=description,
        )
    )


_MIXED_HOW = (
    "run `make download_aircraft download_cu_birds download_vgg_flower && make unpack_datasets`, or convert "
    "Meta-Dataset records with `mela data convert-tfrecords --dataset aircraft` (likewise cu_birds, vgg_flower)"
)

_spec(
    "miniImageNet",
    load_mini_imagenet,
    lambda d, s: [_mini_path(d, s)],
    IMAGENET_MEAN,
    IMAGENET_STD,
    _DOWNLOAD_HINT.format(name="miniImageNet"),
    "miniImageNet: 64/16/20 ImageNet classes, 600 images of 84x84 each",
)
_spec(
    "tieredImageNet",
    load_tiered_imagenet,
    _tiered_paths,
    IMAGENET_MEAN,
    IMAGENET_STD,
    _DOWNLOAD_HINT.format(name="tieredImageNet"),
    "tieredImageNet: 351/97/160 ImageNet classes under 34 super-classes, 84x84",
)
# The ImageNet-derived sets differ only in their folder and which test classes they avoid.
for _name, _folder, _avoids in (("mini60", "x60ImageNet", "miniImageNet"),
                                ("tiered780", "x780ImageNet", "tieredImageNet")):
    _spec(
        _name,
        lambda d, s, folder=_folder: load_ximagenet(d, s, folder),
        lambda d, s, folder=_folder: ximagenet_paths(d, folder, s),
        IMAGENET_MEAN,
        IMAGENET_STD,
        _DOWNLOAD_HINT.format(name=_name) + f", or build it with `mela data ximagenet --name {_folder} ...`",
        f"{_name}: ImageNet-derived, train classes disjoint from the {_avoids} test classes, 84x84",
    )
_spec(
    "mixed",
    load_mixed,
    lambda d, s: [mixed_source_path(d, src, s) for src in MIXED_SOURCES],
    HALF,
    HALF,
    _MIXED_HOW,
    "mixed: Aircraft + CUB + VGG Flower (Meta-Dataset splits), 84x84, tasks never mix the three",
)
_spec(
    "h_aircraft",
    load_h_aircraft,
    lambda d, s: [mixed_source_path(d, "aircraft", s)],
    HALF,
    HALF,
    "get the aircraft pickles (`make download_aircraft && make unpack_datasets`, or "
    "`mela data convert-tfrecords --dataset aircraft`), then add the FGVC labels with "
    "`mela data h-aircraft --fgvc-dir DIR`",
    "H-Aircraft: the aircraft images labelled at variant / family / manufacturer granularity",
)
# CIFAR-FS and FC100 share the CIFAR-100 pickles' layout; FC100 also reports its super-classes.
for _name, _superclasses, _about in (
    ("cifar_fs", False, "CIFAR-FS: CIFAR-100 with the 64/16/20 class split of Bertinetto et al., 32x32"),
    ("fc100", True, "FC100: CIFAR-100 split by super-class 12/4/4 (Oreshkin et al.), 32x32"),
):
    _spec(
        _name,
        lambda d, s, name=_name, sup=_superclasses: load_cifar(d, s, name, with_superclasses=sup),
        lambda d, s, name=_name: [cifar_split_path(d, name, s)],
        CIFAR100_MEAN,
        CIFAR100_STD,
        "download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/ and run "
        "`mela data cifar --archive cifar-100-python.tar.gz`",
        _about,
    )
