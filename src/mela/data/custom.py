"""A user's own image collection as a base data set (``dataset=custom``).

Two inputs are accepted:

- a folder with one sub-folder of images per class (the sub-folder name is the class name);
- an ``.npz`` file with ``images`` (N,H,W[,C]) uint8 and ``labels`` (N,) (the class names
  are the labels as text).

Images are resized (bilinear, no cropping: non-square images are stretched) to
``image_size`` x ``image_size``; they stay single-channel only when every image is
greyscale, otherwise all become RGB. Classes are split by a JSON file
``{"train": [...], "val": [...], "test": [...]}`` (classes named in no split are
left out), or else 64/16/20 % of the sorted class names, shuffled with ``seed``.
The normalisation statistics are measured on the train split, so a custom data
set needs no hand-typed mean/std.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from mela.data.base import SPLITS, DatasetSpec, ImageSplit
from mela.data.images import GREY_MODES, IMAGE_SUFFIXES, image_mode, read_image, resize_image
from mela.data.registry import DatasetRef, register_dataset_factory
from mela.errors import MelaError

SPLIT_FRACTIONS = (0.64, 0.16, 0.20)


def _read_folder(root: Path, size: int) -> tuple[np.ndarray, list[str], list[str]]:
    """Images, class name per image and sorted class names of a class-per-sub-folder collection."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise MelaError(f"{root} has no class sub-folders; put each class's images in its own sub-folder")
    files: list[tuple[Path, str]] = []
    for name in classes:
        found = sorted(
            p
            for p in (root / name).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not found:
            raise MelaError(f"class folder {root / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files.extend((p, name) for p in found)
    grey = all(image_mode(path) in GREY_MODES for path, _ in files)
    images = np.empty((len(files), size, size, 1 if grey else 3), dtype=np.uint8)
    for row, (path, _) in enumerate(files):
        images[row] = read_image(path, grey, size)
    return images, [name for _, name in files], classes


def _read_npz(path: Path, size: int) -> tuple[np.ndarray, list[str], list[str]]:
    """Images, class name per image and sorted class names of an ``images`` / ``labels`` .npz."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            if "images" not in stored.files or "labels" not in stored.files:
                raise MelaError(f"{path} must hold arrays 'images' and 'labels' (found {', '.join(stored.files)})")
            images, labels = stored["images"], stored["labels"]
    except MelaError:
        raise
    except (OSError, ValueError) as exc:
        raise MelaError(f"{path} is not a readable .npz file ({exc})") from exc
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise MelaError(f"{path}: 'images' must be (N, H, W[, 1 or 3]) uint8, found {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise MelaError(f"{path}: 'labels' must be (N,) with N = {len(images)} images, found shape {labels.shape}")
    resized = np.stack([resize_image(image, size) for image in images]) if len(images) else images
    names = [str(v) for v in labels.tolist()]
    unique = np.unique(labels)
    return resized, names, [str(v) for v in unique.tolist()]


def seeded_class_split(classes: list[str], seed: int = 0) -> dict[str, list[str]]:
    """64/16/20 % of the sorted class names, shuffled by ``seed``: the same split every run."""
    ordered = sorted(classes)
    order = np.random.default_rng(seed).permutation(len(ordered))
    n_train = round(SPLIT_FRACTIONS[0] * len(ordered))
    n_val = round(SPLIT_FRACTIONS[1] * len(ordered))
    shuffled = [ordered[i] for i in order]
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }


def read_split_file(path: Path, classes: list[str]) -> dict[str, list[str]]:
    """A JSON class split, checked: every named class exists, none is in two splits."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise MelaError(f"split file {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise MelaError(f"split file {path} is not valid JSON ({exc})") from exc
    if not isinstance(raw, dict) or any(not isinstance(raw.get(s), list) for s in SPLITS):
        raise MelaError(f'split file {path} must be {{"train": [...], "val": [...], "test": [...]}} of class names')
    known, owner = set(classes), {}
    splits = {}
    for split in SPLITS:
        names = [str(v) for v in raw[split]]
        for name in names:
            if name not in known:
                raise MelaError(f"split file {path} names class '{name}' ({split}), which is not in the data set")
            if name in owner and owner[name] != split:
                raise MelaError(f"class '{name}' is in both {owner[name]} and {split} in {path}; keep it in one split")
            owner[name] = split
        splits[split] = list(dict.fromkeys(names))
    return splits


def _measure(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, accumulated in float64 without copying all pixels."""
    channels = images.shape[-1]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    count = 0
    for start in range(0, len(images), 1024):
        block = images[start : start + 1024].reshape(-1, channels).astype(np.float64) / 255.0
        total += block.sum(0)
        squares += (block**2).sum(0)
        count += len(block)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def custom_dataset_spec(
    path: str | Path, split_file: str | Path | None = None, image_size: int = 84, seed: int = 0
) -> DatasetSpec:
    """Read a user's images once and describe them as data set ``custom`` (not registered globally).

    The returned spec's ``load`` ignores the workspace folder: the data come from ``path``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise MelaError(f"custom data set {path} does not exist; pass a folder of class sub-folders or an .npz file")
    if image_size < 1:
        raise MelaError(f"image_size must be positive, got {image_size}")
    if path.is_dir():
        images, item_classes, classes = _read_folder(path, image_size)
    elif path.suffix == ".npz":
        images, item_classes, classes = _read_npz(path, image_size)
    else:
        raise MelaError(f"custom data set {path} is neither a folder nor an .npz file")
    splits = read_split_file(Path(split_file), classes) if split_file else seeded_class_split(classes, seed)
    for split, names in splits.items():
        if len(names) < 2:
            raise MelaError(
                f"custom data set split '{split}' has {len(names)} class(es); every split needs at least 2 "
                f"({len(classes)} classes in all)"
            )
    item_classes_arr = np.asarray(item_classes)
    parts: dict[str, ImageSplit] = {}
    for split, names in splits.items():
        index = {name: i for i, name in enumerate(names)}
        rows = np.flatnonzero(np.isin(item_classes_arr, names))
        labels = np.array([index[item_classes[r]] for r in rows], dtype=np.int64)
        parts[split] = ImageSplit(images=images[rows], labels=labels, class_names=tuple(names))
    mean, std = _measure(parts["train"].images)
    digest = hashlib.sha1(images.tobytes())
    digest.update(json.dumps({"classes": item_classes, "splits": splits}, sort_keys=True).encode())

    def load(_data_dir: Path, split: str) -> ImageSplit:
        return parts[split]

    return DatasetSpec(
        name="custom",
        load=load,
        required_files=lambda _data_dir, _split: [path],
        mean=mean,
        std=std,
        how_to_get=f"check the path {path}",
        description=f"custom: {len(classes)} classes from {path}, {image_size}x{image_size}",
        fingerprint=f"{path.resolve()}#{digest.hexdigest()[:16]}",
    )


def _custom_from_ref(ref: DatasetRef) -> DatasetSpec:
    if not ref.path:
        raise MelaError("dataset=custom needs custom_path=<folder of class folders or .npz file>")
    return custom_dataset_spec(ref.path, ref.split_file, ref.options.image_size or 84, ref.seed)


register_dataset_factory("custom", _custom_from_ref)
