"""H-Aircraft: attach FGVC-Aircraft family and manufacturer labels to the aircraft pickles.

FGVC-Aircraft ships, in its ``data/`` folder, ``variants.txt``, ``families.txt``,
``manufacturers.txt`` (one name per line) and per-image lists
``images_{variant,family,manufacturer}_{train,val,test,trainval}.txt`` whose lines
read ``IMAGEID NAME`` (the name may contain spaces). The variant -> family ->
manufacturer hierarchy is derived from those per-image lists and checked for
consistency.

The result is stored *in* the aircraft pickles (``aircraft/aircraft_{split}.pkl``)
as two extra keys, ``family_labels`` and ``manufacturer_labels``: (N,) int64, each
the index of the image's family in ``families.txt`` / manufacturer in
``manufacturers.txt``; plus ``family_names`` and ``manufacturer_names`` (the two
lists). The ``h_aircraft`` loader reads them.

Matching Meta-Dataset's aircraft classes to FGVC variants: by name when the pickle
carries ``class_names`` (``mela data convert-tfrecords`` stores Meta-Dataset's);
otherwise we ASSUME Meta-Dataset's aircraft class i is the i-th variant of
``variants.txt``.
"""

from __future__ import annotations

import os
import pickle
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mela.data.seed_datasets import as_labels, dict_field, mixed_source_path, read_pickle
from mela.errors import MelaError

LEVELS = ("variant", "family", "manufacturer")
NAME_FILES = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}
LIST_SPLITS = ("train", "val", "test", "trainval")
SPLIT_ORDER = ("train", "val", "test")


@dataclass(frozen=True)
class AircraftHierarchy:
    """FGVC-Aircraft's label hierarchy: name lists and the variant -> family -> manufacturer maps."""

    variants: tuple[str, ...]
    families: tuple[str, ...]
    manufacturers: tuple[str, ...]
    variant_family: dict[str, str]
    family_manufacturer: dict[str, str]

    def family_of(self, variant: str) -> str:
        return self.variant_family[variant]

    def manufacturer_of(self, variant: str) -> str:
        return self.family_manufacturer[self.variant_family[variant]]


def _annotation_dir(fgvc_dir: str | Path) -> Path:
    """Accept the FGVC root (``fgvc-aircraft-2013b``) or its ``data`` folder."""
    root = Path(fgvc_dir)
    for candidate in (root / "data", root):
        if (candidate / "variants.txt").exists():
            return candidate
    raise MelaError(f"no variants.txt under {root} or {root / 'data'}; pass the unpacked fgvc-aircraft-2013b folder")


def _read_names(path: Path) -> tuple[str, ...]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise MelaError(f"cannot read {path}: {exc.strerror or exc}; is the FGVC-Aircraft folder complete?") from exc
    return tuple(line.strip() for line in lines if line.strip())


def read_image_labels(path: Path) -> dict[str, str]:
    """``IMAGEID NAME`` lines -> {image id: name}."""
    labels = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise MelaError(f"{path}, line {number}: expected 'IMAGEID NAME', found '{line.strip()}'")
        labels[parts[0]] = parts[1].strip()
    return labels


def _per_image(folder: Path, level: str) -> dict[str, str]:
    merged: dict[str, str] = {}
    for split in LIST_SPLITS:
        path = folder / f"images_{level}_{split}.txt"
        if not path.exists():
            continue
        for image, name in read_image_labels(path).items():
            if merged.get(image, name) != name:
                raise MelaError(f"{path}: image {image} is labelled '{name}' here and '{merged[image]}' elsewhere")
            merged[image] = name
    if not merged:
        raise MelaError(f"no images_{level}_*.txt under {folder}; pass the unpacked fgvc-aircraft-2013b folder")
    return merged


def _unique_parent(pairs: dict[str, set[str]], child: str, parent: str) -> dict[str, str]:
    """Collapse child -> {parents}; a child with two parents breaks the hierarchy and is named."""
    mapping = {}
    for name, parents in sorted(pairs.items()):
        if len(parents) != 1:
            raise MelaError(
                f"inconsistent FGVC annotations: {child} '{name}' belongs to {len(parents)} {parent} names "
                f"({', '.join(sorted(parents))}); fix the annotation files"
            )
        mapping[name] = next(iter(parents))
    return mapping


def read_hierarchy(fgvc_dir: str | Path) -> AircraftHierarchy:
    """Derive and check the variant -> family -> manufacturer maps from FGVC's per-image lists."""
    folder = _annotation_dir(fgvc_dir)
    names = {level: _read_names(folder / NAME_FILES[level]) for level in LEVELS}
    per_image = {level: _per_image(folder, level) for level in LEVELS}
    variant_families: dict[str, set[str]] = defaultdict(set)
    family_makers: dict[str, set[str]] = defaultdict(set)
    for image, variant in per_image["variant"].items():
        family = per_image["family"].get(image)
        maker = per_image["manufacturer"].get(image)
        if family is None or maker is None:
            raise MelaError(f"image {image} has a variant but no family or manufacturer label in {folder}")
        variant_families[variant].add(family)
        family_makers[family].add(maker)
    variant_family = _unique_parent(variant_families, "variant", "family")
    family_maker = _unique_parent(family_makers, "family", "manufacturer")
    for level, found in (("variant", variant_family), ("family", family_maker)):
        unknown = sorted(set(found) - set(names[level]))
        if unknown:
            raise MelaError(f"{level} '{unknown[0]}' of the image lists is not in {folder / NAME_FILES[level]}")
    unknown_makers = sorted(set(family_maker.values()) - set(names["manufacturer"]))
    if unknown_makers:
        raise MelaError(f"manufacturer '{unknown_makers[0]}' is not in {folder / 'manufacturers.txt'}")
    return AircraftHierarchy(
        variants=names["variant"],
        families=names["family"],
        manufacturers=names["manufacturer"],
        variant_family=variant_family,
        family_manufacturer=family_maker,
    )


def _variant_names_of_labels(blobs: dict[str, dict], paths: dict[str, Path], variants: tuple[str, ...]) -> dict:
    """Variant name of every class id of every split pickle.

    With ``class_names`` in the pickle (our converter stores Meta-Dataset's names),
    names are matched directly. Without them we ASSUME Meta-Dataset's aircraft class
    id i is the i-th variant of ``variants.txt``; if the three splits reuse the same
    ids (numbered 0..n-1 per split), the ids are first offset by the class counts of
    the preceding splits (train, val, test order).
    """
    uniques = {}
    for split, blob in blobs.items():
        raw = np.asarray(dict_field(blob, "labels", paths[split]))
        uniques[split] = np.unique(as_labels(raw, len(raw), paths[split]))
    overlapping = any(
        np.intersect1d(uniques[a], uniques[b]).size for i, a in enumerate(SPLIT_ORDER) for b in SPLIT_ORDER[i + 1 :]
    )
    result, offset = {}, 0
    for split in SPLIT_ORDER:
        ids, blob = uniques[split], blobs[split]
        stored = blob.get("class_names")
        if stored is not None and len(stored) == len(ids):
            result[split] = {int(cid): str(name).strip() for cid, name in zip(ids, stored, strict=True)}
        else:
            shifted = ids - ids.min() + offset if overlapping and len(ids) else ids
            if len(ids) and int(shifted.max()) >= len(variants):
                raise MelaError(f"{paths[split]}: class id {int(shifted.max())} has no variant in variants.txt")
            result[split] = {int(cid): variants[int(s)] for cid, s in zip(ids, shifted, strict=True)}
        offset += len(ids)
    return result


def attach_hierarchy(data_dir: str | Path, fgvc_dir: str | Path) -> dict[str, dict[str, int]]:
    """Add ``family_labels`` / ``manufacturer_labels`` to the three aircraft pickles (rewritten atomically).

    Returns, per split, how many variants, families and manufacturers it holds.
    """
    hierarchy = read_hierarchy(fgvc_dir)
    paths = {split: mixed_source_path(Path(data_dir), "aircraft", split) for split in SPLIT_ORDER}
    for path in paths.values():
        if not path.exists():
            raise MelaError(
                f"{path} is missing; get the aircraft pickles first (`make download_aircraft && make unpack_datasets`"
                " or `mela data convert-tfrecords --dataset aircraft`)"
            )
    blobs = {split: read_pickle(path) for split, path in paths.items()}
    names = _variant_names_of_labels(blobs, paths, hierarchy.variants)
    family_index = {name: i for i, name in enumerate(hierarchy.families)}
    maker_index = {name: i for i, name in enumerate(hierarchy.manufacturers)}
    summary = {}
    for split in SPLIT_ORDER:
        blob, by_id = dict(blobs[split]), names[split]
        unknown = sorted(set(by_id.values()) - set(hierarchy.variant_family))
        if unknown:
            raise MelaError(f"{paths[split]}: class '{unknown[0]}' is not an FGVC-Aircraft variant with images")
        labels = np.asarray(blob["labels"], dtype=np.int64)
        family = np.array([family_index[hierarchy.family_of(by_id[int(c)])] for c in labels], dtype=np.int64)
        maker = np.array([maker_index[hierarchy.manufacturer_of(by_id[int(c)])] for c in labels], dtype=np.int64)
        blob.update(
            family_labels=family,
            manufacturer_labels=maker,
            family_names=list(hierarchy.families),
            manufacturer_names=list(hierarchy.manufacturers),
        )
        tmp = paths[split].with_name(paths[split].name + ".tmp")
        with open(tmp, "wb") as handle:
            pickle.dump(blob, handle, protocol=4)
        os.replace(tmp, paths[split])
        summary[split] = {
            "variant": len(by_id),
            "family": len(np.unique(family)),
            "manufacturer": len(np.unique(maker)),
        }
    return summary
