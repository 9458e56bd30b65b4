"""H-Aircraft labels from FGVC-Aircraft annotation files, attached to the aircraft pickles."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from mela.converters.fgvc import attach_hierarchy, read_hierarchy
from mela.data.seed_datasets import load_h_aircraft, mixed_source_path
from mela.errors import MelaError

VARIANTS = ["707-320", "727-200", "A300B4", "A310", "DC-3", "DC-6"]
FAMILY = {
    "707-320": "Boeing 707",
    "727-200": "Boeing 727",
    "A300B4": "A300",
    "A310": "A310",
    "DC-3": "DC-3",
    "DC-6": "DC-6",
}
MAKER = {
    "Boeing 707": "Boeing",
    "Boeing 727": "Boeing",
    "A300": "Airbus",
    "A310": "Airbus",
    "DC-3": "Douglas Aircraft Company",
    "DC-6": "Douglas Aircraft Company",
}
FAMILIES = sorted(set(FAMILY.values()))  # A300, A310, Boeing 707, Boeing 727, DC-3, DC-6
MAKERS = sorted(set(MAKER.values()))  # Airbus, Boeing, Douglas Aircraft Company


def write_fgvc(root: Path, family_of: dict[str, str] | None = None) -> Path:
    """A fake fgvc-aircraft-2013b/data folder: name lists plus per-image lists, two images per variant."""
    family_of = family_of or FAMILY
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(VARIANTS) + "\n")
    (data / "families.txt").write_text("\n".join(FAMILIES) + "\n")
    (data / "manufacturers.txt").write_text("\n".join(MAKERS) + "\n")
    lines = {
        "variant": {"trainval": [], "test": []},
        "family": {"trainval": [], "test": []},
        "manufacturer": {"trainval": [], "test": []},
    }
    for i, variant in enumerate(VARIANTS):
        for j, split in enumerate(("trainval", "test")):
            image = f"{1000000 + 10 * i + j:07d}"
            family = family_of[image] if image in family_of else FAMILY[variant]
            lines["variant"][split].append(f"{image} {variant}")
            lines["family"][split].append(f"{image} {family}")
            lines["manufacturer"][split].append(f"{image} {MAKER[FAMILY[variant]]}")
    for level, per_split in lines.items():
        for split, rows in per_split.items():
            (data / f"images_{level}_{split}.txt").write_text("\n".join(rows) + "\n")
    return data.parent


def write_aircraft(data_dir: Path, ids: dict[str, list[int]], names: dict[str, list[str]] | None = None) -> None:
    rng = np.random.default_rng(0)
    for split, classes in ids.items():
        labels = np.repeat(classes, 2)
        blob = {"data": rng.integers(0, 256, (len(labels), 4, 4, 3), dtype=np.uint8), "labels": labels}
        if names:
            blob["class_names"] = names[split]
        path = mixed_source_path(data_dir, "aircraft", split)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            pickle.dump(blob, handle)


def test_the_hierarchy_is_derived_from_the_per_image_lists(tmp_path: Path) -> None:
    hierarchy = read_hierarchy(write_fgvc(tmp_path))
    assert hierarchy.variants == tuple(VARIANTS)
    assert hierarchy.family_of("A310") == "A310"
    assert hierarchy.manufacturer_of("DC-6") == "Douglas Aircraft Company"
    assert hierarchy.manufacturer_of("727-200") == "Boeing"


def test_a_variant_listed_under_two_families_is_rejected_by_name(tmp_path: Path) -> None:
    fgvc = write_fgvc(tmp_path, family_of={"1000031": "A300"})  # second image of A310 says family A300
    with pytest.raises(MelaError, match=r"variant 'A310' belongs to 2 family names \(A300, A310\)"):
        read_hierarchy(fgvc)


def test_attached_labels_give_consistent_variant_family_and_manufacturer_sets(tmp_path: Path) -> None:
    data_dir = tmp_path / "metaL_data"
    write_aircraft(data_dir, {"train": [0, 1, 2], "val": [3], "test": [4, 5]})
    summary = attach_hierarchy(data_dir, write_fgvc(tmp_path))
    assert summary["train"] == {"variant": 3, "family": 3, "manufacturer": 2}
    assert summary["test"] == {"variant": 2, "family": 2, "manufacturer": 1}
    with open(mixed_source_path(data_dir, "aircraft", "train"), "rb") as handle:
        train = pickle.load(handle)
    assert [FAMILIES[f] for f in train["family_labels"]] == ["Boeing 707"] * 2 + ["Boeing 727"] * 2 + ["A300"] * 2
    assert [MAKERS[m] for m in train["manufacturer_labels"]] == ["Boeing"] * 4 + ["Airbus"] * 2
    split = load_h_aircraft(data_dir, "train")
    assert split.label_sets["variant"].tolist() == [0, 0, 1, 1, 2, 2]
    assert split.label_sets["family"].tolist() == [1, 1, 2, 2, 0, 0]
    assert split.label_sets["manufacturer"].tolist() == [1, 1, 1, 1, 0, 0]
    # every variant maps to exactly one family and every family to one manufacturer
    pairs = set(zip(split.label_sets["variant"].tolist(), split.label_sets["family"].tolist(), strict=True))
    assert len(pairs) == 3


def test_stored_class_names_override_the_variants_txt_order(tmp_path: Path) -> None:
    data_dir = tmp_path / "metaL_data"
    names = {"train": ["DC-6", "A310", "707-320"], "val": ["DC-3"], "test": ["A300B4", "727-200"]}
    write_aircraft(data_dir, {"train": [0, 1, 2], "val": [3], "test": [4, 5]}, names)
    attach_hierarchy(data_dir, write_fgvc(tmp_path))
    with open(mixed_source_path(data_dir, "aircraft", "train"), "rb") as handle:
        train = pickle.load(handle)
    assert [MAKERS[m] for m in train["manufacturer_labels"][::2]] == ["Douglas Aircraft Company", "Airbus", "Boeing"]


def test_splits_numbered_from_zero_each_are_offset_in_train_val_test_order(tmp_path: Path) -> None:
    data_dir = tmp_path / "metaL_data"
    write_aircraft(data_dir, {"train": [0, 1, 2], "val": [0], "test": [0, 1]})
    attach_hierarchy(data_dir, write_fgvc(tmp_path))
    with open(mixed_source_path(data_dir, "aircraft", "test"), "rb") as handle:
        test = pickle.load(handle)
    assert [FAMILIES[f] for f in test["family_labels"][::2]] == ["DC-3", "DC-6"]


def test_attaching_without_the_aircraft_pickles_says_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(MelaError, match=r"aircraft_train.pkl is missing; get the aircraft pickles first"):
        attach_hierarchy(tmp_path / "metaL_data", write_fgvc(tmp_path))


def test_a_folder_without_fgvc_annotations_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(MelaError, match=r"no variants.txt under"):
        read_hierarchy(tmp_path)
