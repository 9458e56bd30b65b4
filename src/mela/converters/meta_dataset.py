"""Meta-Dataset TFRecords -> the 84x84 pickles the ``mixed`` / ``h_aircraft`` loaders read.

Does what the reference's ``tfrecords_to_pickle.py`` does, without TensorFlow:
read ``$WORKSPACE/metaL_data/<source>/<class_id>.tfrecords`` (one file per class,
each record holding an encoded ``image`` and its int64 ``label``), resize every
image to 84x84 with nearest-neighbour sampling (as the reference did), and write
``aircraft/aircraft_{split}.pkl`` (likewise ``cu_birds/cub_*``, ``vgg_flower/vgg_*``),
each a dict with ``data`` (N,84,84,3) uint8, ``labels`` (N,) int64 Meta-Dataset class
ids and ``class_names`` (names of the split's classes in label order, when known).

Meta-Dataset numbers classes across splits: train classes first, then valid, then
test. The split sizes come from the source's ``dataset_spec.json``
(``classes_per_split``) when present, else from the published splits below.

The conversion is resumable: each finished class is cached as ``<source>/.convert_parts/<id>.npz``;
a rerun skips those, and the parts are removed once the pickles are written.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mela.converters.tfrecord import read_examples
from mela.data.seed_datasets import MIXED_FILES, mixed_source_path
from mela.errors import MelaError

# Published Meta-Dataset class splits (train, valid, test) by class id order.
CLASSES_PER_SPLIT = {"aircraft": (70, 15, 15), "cu_birds": (140, 30, 30), "vgg_flower": (71, 15, 16)}
SPLIT_KEYS = {"train": "TRAIN", "val": "VALID", "test": "TEST"}
PARTS_DIRNAME = ".convert_parts"


def read_dataset_spec(records_dir: Path) -> dict | None:
    """Meta-Dataset's ``dataset_spec.json`` of a source, or None when it is absent."""
    path = Path(records_dir) / "dataset_spec.json"
    if not path.exists():
        return None
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        message = f"{path} is not valid JSON ({exc}); restore it, or delete it to use the published splits"
        raise MelaError(message) from exc
    if not isinstance(spec, dict):
        raise MelaError(f"{path} should hold a JSON object; restore it or delete it to use the published splits")
    return spec


def _split_counts(source: str, spec: dict | None, path: Path) -> tuple[int, int, int]:
    if spec is None or "classes_per_split" not in spec:
        return CLASSES_PER_SPLIT[source]
    raw = spec["classes_per_split"]
    normalised = {str(key).split(".")[-1].upper(): value for key, value in raw.items()}
    try:
        return tuple(int(normalised[SPLIT_KEYS[split]]) for split in ("train", "val", "test"))  # type: ignore[return-value]
    except (KeyError, TypeError, ValueError) as exc:
        raise MelaError(f"{path}: classes_per_split should give TRAIN, VALID and TEST counts, found {raw}") from exc


def class_splits(source: str, records_dir: Path) -> dict[str, list[int]]:
    """Class ids of each split: Meta-Dataset numbers train, then valid, then test classes."""
    if source not in CLASSES_PER_SPLIT:
        raise MelaError(f"unknown Meta-Dataset source '{source}'; choose one of {', '.join(CLASSES_PER_SPLIT)}")
    spec = read_dataset_spec(records_dir)
    n_train, n_val, n_test = _split_counts(source, spec, Path(records_dir) / "dataset_spec.json")
    return {
        "train": list(range(n_train)),
        "val": list(range(n_train, n_train + n_val)),
        "test": list(range(n_train + n_val, n_train + n_val + n_test)),
    }


def class_names(records_dir: Path) -> dict[int, str]:
    """Class id -> name from ``dataset_spec.json`` (empty when unknown)."""
    spec = read_dataset_spec(records_dir) or {}
    names = spec.get("class_names") or {}
    try:
        return {int(key): str(value) for key, value in names.items()}
    except (AttributeError, ValueError):
        return {}


def decode_image(encoded: bytes, size: int = 84) -> np.ndarray:
    """Encoded JPEG/PNG -> (size, size, 3) uint8 RGB, nearest-neighbour resize as the reference did."""
    with Image.open(io.BytesIO(encoded)) as image:
        rgb = image.convert("RGB")
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.NEAREST)
        return np.asarray(rgb, dtype=np.uint8)


def convert_class(record_file: Path, class_id: int, size: int = 84) -> np.ndarray:
    """All images of one per-class TFRecord file, decoded and resized; stray labels are an error."""
    images = []
    for index, example in enumerate(read_examples(record_file)):
        if "image" not in example:
            raise MelaError(f"{record_file}: record {index} has no 'image' feature; is this a Meta-Dataset file?")
        label = example.get("label")
        if label and int(label[0]) != class_id:
            raise MelaError(f"{record_file}: record {index} has label {label[0]}, expected class {class_id}")
        try:
            images.append(decode_image(example["image"][0], size))  # type: ignore[arg-type]
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise MelaError(f"{record_file}: record {index} holds an undecodable image ({exc})") from exc
    return np.stack(images) if images else np.zeros((0, size, size, 3), dtype=np.uint8)


def _save_atomic(path: Path, writer: Callable[[Path], None]) -> None:
    """Write through a temporary sibling and rename, so an interrupted run never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    writer(tmp)
    os.replace(tmp, path)


def _write_npz(path: Path, images: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, images=images)


def _write_pickle(path: Path, blob: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(blob, handle, protocol=4)


def convert_source(source: str, data_dir: str | Path, size: int = 84, progress: bool = True) -> list[Path]:
    """Convert one Meta-Dataset source (aircraft / cu_birds / vgg_flower) to the three split pickles.

    Returns the written pickle paths. Already converted classes (part files) are
    reused, so an interrupted conversion continues where it stopped.
    """
    from tqdm import tqdm

    data_dir = Path(data_dir)
    if source not in MIXED_FILES:
        raise MelaError(f"unknown Meta-Dataset source '{source}'; choose one of {', '.join(MIXED_FILES)}")
    records_dir = data_dir / MIXED_FILES[source][0]
    splits = class_splits(source, records_dir)
    all_ids = [cid for ids in splits.values() for cid in ids]
    missing = [records_dir / f"{cid}.tfrecords" for cid in all_ids if not (records_dir / f"{cid}.tfrecords").exists()]
    if missing:
        raise MelaError(
            f"{missing[0]} is missing ({len(missing)} of {len(all_ids)} class files); generate the '{source}' "
            f"records with Meta-Dataset's conversion and move them to {records_dir}"
        )
    parts = records_dir / PARTS_DIRNAME
    parts.mkdir(exist_ok=True)
    for cid in tqdm(all_ids, desc=f"converting {source}", unit="class", disable=not progress):
        part = parts / f"{cid}.npz"
        if part.exists():
            continue
        images = convert_class(records_dir / f"{cid}.tfrecords", cid, size)
        _save_atomic(part, lambda tmp, images=images: _write_npz(tmp, images))
    names = class_names(records_dir)
    written = []
    for split, ids in splits.items():
        chunks, labels = [], []
        for cid in ids:
            part = parts / f"{cid}.npz"
            try:
                with np.load(part) as stored:
                    images = stored["images"]
            except (OSError, ValueError, KeyError) as exc:
                part.unlink(missing_ok=True)
                raise MelaError(f"{part} is corrupt and was removed; run the conversion again") from exc
            chunks.append(images)
            labels.append(np.full(len(images), cid, dtype=np.int64))
        blob = {
            "data": np.concatenate(chunks) if chunks else np.zeros((0, size, size, 3), np.uint8),
            "labels": np.concatenate(labels) if labels else np.zeros(0, np.int64),
        }
        if names:
            blob["class_names"] = [names.get(cid, str(cid)) for cid in ids]
        out = mixed_source_path(data_dir, source, split)
        _save_atomic(out, lambda tmp, blob=blob: _write_pickle(tmp, blob))
        written.append(out)
    shutil.rmtree(parts, ignore_errors=True)
    return written
