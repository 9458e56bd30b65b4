"""ImageNet-derived data sets from an ILSVRC-style folder: class counts, splits, exclusions, loader round trip."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mela.converters.ximagenet import build_ximagenet, plan_ximagenet, read_class_ids, split_sizes
from mela.data.seed_datasets import load_ximagenet
from mela.errors import MelaError

N_FOLDERS = 30


@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 wnid folders of 5 small JPEGs each (one class has only 2)."""
    root = tmp_path_factory.mktemp("ilsvrc") / "train"
    rng = np.random.default_rng(0)
    for c in range(N_FOLDERS):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(2 if c == 29 else 5):
            pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"n{c:08d}_{i}.JPEG", quality=90)
    return root


def test_split_sizes_are_64_16_20_percent_of_the_classes() -> None:
    assert split_sizes(100) == (64, 16, 20)
    assert split_sizes(60) == (38, 10, 12)
    assert split_sizes(780) == (499, 125, 156)


def test_built_data_set_loads_through_the_mini60_loader_with_the_documented_counts(
    ilsvrc: Path, tmp_path: Path
) -> None:
    out = build_ximagenet(ilsvrc, tmp_path, "x60ImageNet", n_classes=25, images_per_class=3, seed=1, progress=False)
    assert out == tmp_path / "x60ImageNet"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["classes.json"] + [f"{s}_{k}.npy" for s in ("train", "valid", "test") for k in ("images", "labels")]
    )
    classes = json.loads((out / "classes.json").read_text())
    for split, expected in zip(("train", "val", "test"), (16, 4, 5), strict=True):
        loaded = load_ximagenet(tmp_path, split, "x60ImageNet")
        assert loaded.n_classes == expected
        assert loaded.images.shape == (expected * 3, 84, 84, 3)
        assert np.bincount(loaded.labels).tolist() == [3] * expected
        assert len(loaded.class_names) == expected
    all_classes = classes["train"] + classes["valid"] + classes["test"]
    assert len(set(all_classes)) == 25 and "n00000029" not in all_classes  # too few images to be chosen


def test_excluded_classes_never_land_in_train_whatever_the_seed(ilsvrc: Path) -> None:
    excluded = [f"n{c:08d}" for c in range(0, 12)]
    for seed in range(8):
        plan = plan_ximagenet(ilsvrc, 20, 3, seed=seed, exclude_from_train=excluded)
        assert not set(plan.splits["train"]) & set(excluded)
        assert [len(plan.splits[s]) for s in ("train", "val", "test")] == [13, 3, 4]


def test_forced_classes_land_in_their_split_and_the_plan_is_reproducible(ilsvrc: Path) -> None:
    plan = plan_ximagenet(ilsvrc, 20, 3, seed=4, force_val=["n00000003"], force_test=["n00000007", "n00000008"])
    assert "n00000003" in plan.splits["val"]
    assert {"n00000007", "n00000008"} <= set(plan.splits["test"])
    again = plan_ximagenet(ilsvrc, 20, 3, seed=4, force_val=["n00000003"], force_test=["n00000007", "n00000008"])
    assert again == plan
    other = plan_ximagenet(ilsvrc, 20, 3, seed=5, force_val=["n00000003"], force_test=["n00000007", "n00000008"])
    assert other.splits != plan.splits


def test_a_class_forced_into_train_and_excluded_from_it_is_refused(ilsvrc: Path) -> None:
    with pytest.raises(MelaError, match=r"class n00000002 is both forced into train and excluded from train"):
        plan_ximagenet(ilsvrc, 20, 3, force_train=["n00000002"], exclude_from_train=["n00000002"])


def test_asking_for_more_classes_than_can_go_to_train_is_refused(ilsvrc: Path) -> None:
    excluded = [f"n{c:08d}" for c in range(20)]
    with pytest.raises(MelaError, match=r"only 9 classes with >= 3 images may go to train, 16 needed"):
        plan_ximagenet(ilsvrc, 25, 3, exclude_from_train=excluded)


def test_class_ids_are_read_from_a_mini_imagenet_pickle_a_classes_json_or_a_text_file(tmp_path: Path) -> None:
    with open(tmp_path / "mini_test.pickle", "wb") as handle:
        pickle.dump(
            {"data": np.zeros((0, 2, 2, 3), np.uint8), "labels": [], "catname2label": {"n02": 81, "n01": 80}}, handle
        )
    assert read_class_ids(tmp_path / "mini_test.pickle") == ["n01", "n02"]
    (tmp_path / "classes.json").write_text(json.dumps({"train": ["a"], "valid": ["b"], "test": ["c", "d"]}))
    assert read_class_ids(tmp_path / "classes.json") == ["c", "d"]
    (tmp_path / "ids.txt").write_text("n03 n04  # comment\n\nn05\n")
    assert read_class_ids(tmp_path / "ids.txt") == ["n03", "n04", "n05"]


def test_an_existing_output_folder_is_not_overwritten_without_force(ilsvrc: Path, tmp_path: Path) -> None:
    (tmp_path / "x60ImageNet").mkdir()
    (tmp_path / "x60ImageNet" / "keep.txt").write_text("mine")
    with pytest.raises(MelaError, match=r"x60ImageNet already exists; delete it or pass --force"):
        build_ximagenet(ilsvrc, tmp_path, "x60ImageNet", 10, 2, progress=False)
