"""Packed data sets: a base data set's splits written once as memory-mapped uint8 arrays (``mela data pack``).

Why: pickles and archives are read whole into every process's memory, so N training processes hold N copies
and a data set bigger than RAM cannot be used at all. A packed split is an ``.npy`` file opened with
``mmap_mode="r"``: pages are read on demand and every process on the machine shares the same page-cache pages.

Layout, under the workspace's data folder (``$WORKSPACE/metaL_data/packed/<name>/``), per split:

- ``<split>.images.npy``: (N, H, W, C) uint8 pixels;
- ``<split>.arrays.npz``: labels and the other per-item arrays of :class:`ImageSplit`;
- ``<split>.json``: names, shapes and the *stamp* of the files the split was packed from (their sizes and
  modification times, and the data set's identity). Written last, so a split without it is not used.

Loading a data set uses its packed split when one exists and is consistent with the stamp. A pack whose source
files changed since (another size or modification time) is stale: it is ignored with one note on stderr and
the original files are read. Source files deleted after packing do not make it stale: the pack is then the copy.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mela.data.base import DatasetSpec, ImageSplit
from mela.data.npy import read_npy
from mela.errors import MelaError
from mela.jsonio import write_json_atomic

FORMAT_VERSION = 1
PACKED_SUBDIR = "packed"
_noted: set[tuple[str, str, str]] = set()


def packed_folder(data_dir: Path, name: str) -> Path:
    """Where data set ``name``'s packed splits live: ``<data_dir>/packed/<name>``."""
    return Path(data_dir) / PACKED_SUBDIR / name


def split_paths(folder: Path, split: str) -> tuple[Path, Path, Path]:
    """The images ``.npy``, the arrays ``.npz`` and the ``.json`` of one packed split."""
    return folder / f"{split}.images.npy", folder / f"{split}.arrays.npz", folder / f"{split}.json"


def source_stamp(spec: DatasetSpec, data_dir: Path, split: str) -> dict:
    """What a pack is checked against: the data set's identity and each source file's size and mtime.

    Paths inside ``data_dir`` are stored relative to it, so moving the whole workspace keeps its packs valid.
    A missing file is recorded with size None.
    """
    files = []
    for path in spec.required_files(Path(data_dir), split):
        path = Path(path)
        try:
            name = str(path.relative_to(data_dir))
        except ValueError:
            name = str(path)
        try:
            stat = path.stat()
            files.append({"path": name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
        except OSError:
            files.append({"path": name, "size": None, "mtime_ns": None})
    return {"format": FORMAT_VERSION, "identity": spec.identity, "files": files}


def stale_reason(packed: dict, current: dict) -> str | None:
    """Why a pack made from ``packed`` (a stamp) no longer stands for the files stamped as ``current``; None if it does.

    A source file that no longer exists does not count: the pack is then the only copy.
    """
    if packed.get("format") != FORMAT_VERSION:
        return f"it has pack format {packed.get('format')}, this mela reads format {FORMAT_VERSION}"
    if packed.get("identity") != current["identity"]:
        return f"it was packed from data set {packed.get('identity')}, not {current['identity']}"
    before = {f["path"]: f for f in packed.get("files", [])}
    now = {f["path"]: f for f in current["files"]}
    if set(before) != set(now):
        return "the data set reads other files than the ones it was packed from"
    for path, stat in now.items():
        if stat["size"] is not None and (stat["size"], stat["mtime_ns"]) != (before[path]["size"],
                                                                             before[path]["mtime_ns"]):
            return f"{path} changed since it was packed"
    return None


def _note(spec: DatasetSpec, split: str, folder: Path, why: str) -> None:
    """One line on stderr per pack and split and process: the pack is not used, and how to refresh it."""
    key = (str(folder), split, why)
    if key in _noted:
        return
    _noted.add(key)
    print(f"note: ignoring the packed {split} split of {spec.name} in {folder}: {why}; reading the original files "
          f"(run `mela data pack {spec.name}` to pack them again)", file=sys.stderr)


def load_packed(spec: DatasetSpec, split: str, data_dir: Path) -> ImageSplit | None:
    """The packed ``split`` of ``spec`` with its images memory-mapped read-only, or None when there is no
    consistent pack (a stale or damaged one is noted once on stderr)."""
    folder = packed_folder(data_dir, spec.name)
    images_path, arrays_path, _ = split_paths(folder, split)
    state, why, meta = _read_stamp(spec, split, data_dir)
    if state != "current":
        if state != "absent":
            _note(spec, split, folder, why if state == "stale" else f"it is unreadable or damaged ({why})")
        return None
    try:
        images = read_npy(images_path, mmap=True, read_only=True)
        if list(images.shape) != meta["images_shape"] or images.dtype != np.uint8:
            raise ValueError(f"{images_path.name} holds {images.dtype} {list(images.shape)}, the pack says uint8 "
                             f"{meta['images_shape']}")
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        label_sets = meta.get("label_sets")
        return ImageSplit(
            images=images,
            labels=arrays["labels"],
            image_index=arrays.get("image_index"),
            groups=arrays.get("groups"),
            group_names=tuple(meta["group_names"]),
            class_names=_names(meta.get("class_names")),
            superclass=arrays.get("superclass"),
            superclass_names=_names(meta.get("superclass_names")),
            label_sets=None if label_sets is None else {n: arrays[f"label_set_{i}"] for i, n in enumerate(label_sets)},
        )
    except (OSError, ValueError, KeyError, TypeError, MelaError) as exc:
        _note(spec, split, folder, f"it is unreadable or damaged ({exc})")
        return None


def pack_state(spec: DatasetSpec, split: str, data_dir: Path) -> tuple[str, str | None]:
    """Whether ``split`` of ``spec`` has a pack loading would use, without loading it: ``("absent", None)``,
    ``("current", None)``, ``("stale", why)`` or ``("damaged", why)`` (its stamp cannot be read). A current pack can
    still prove damaged when its arrays are read (:func:`load_packed` then notes it and reads the files)."""
    state, why, _ = _read_stamp(spec, split, data_dir)
    if state == "damaged":
        return state, f"its {split_paths(packed_folder(data_dir, spec.name), split)[2].name} is unreadable ({why})"
    return state, why


def _read_stamp(spec: DatasetSpec, split: str, data_dir: Path) -> tuple[str, str | None, dict | None]:
    """The pack's ``.json`` and its state against the source files: (state, why, meta); ``why`` of a damaged
    stamp is the read error."""
    meta_path = split_paths(packed_folder(data_dir, spec.name), split)[2]
    if not meta_path.is_file():
        return "absent", None, None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        why = stale_reason(meta["source"], source_stamp(spec, data_dir, split))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, MelaError) as exc:
        return "damaged", str(exc), None
    return ("current" if why is None else "stale"), why, meta


def _names(values: list | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(str(v) for v in values)


def write_split(folder: Path, split: str, data: ImageSplit, stamp: dict) -> list[Path]:
    """Write one split's three files (the ``.json`` last, each through a temporary file); returns their paths."""
    images_path, arrays_path, meta_path = split_paths(folder, split)
    meta_path.unlink(missing_ok=True)  # until the .json is written again, the split is not used
    arrays = {"labels": np.asarray(data.labels, dtype=np.int64)}
    for key in ("image_index", "groups", "superclass"):
        value = getattr(data, key)
        if value is not None:
            arrays[key] = np.asarray(value, dtype=np.int64)
    label_sets = list(data.label_sets) if data.label_sets else None
    for i, name in enumerate(label_sets or []):
        arrays[f"label_set_{i}"] = np.asarray(data.label_sets[name], dtype=np.int64)
    _write_atomic(images_path, lambda handle: np.save(handle, np.ascontiguousarray(data.images)))
    _write_atomic(arrays_path, lambda handle: np.savez(handle, **arrays))
    write_json_atomic(meta_path, {
        "source": stamp, "split": split, "images_shape": list(data.images.shape), "group_names": list(data.group_names),
        "class_names": None if data.class_names is None else list(data.class_names),
        "superclass_names": None if data.superclass_names is None else list(data.superclass_names),
        "label_sets": label_sets})
    return [images_path, arrays_path, meta_path]


def _write_atomic(path: Path, write: Callable) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MelaError(f"cannot write {path} ({exc.strerror or exc}); check free disk space and that {path.parent} "
                        "is a writable folder") from exc
