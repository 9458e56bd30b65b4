"""A user's own data set: a class-per-folder tree or an .npz, split by file or by seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mela.data.custom import custom_dataset_spec, seeded_class_split
from mela.errors import MelaError


def write_folder(root: Path, n_classes: int = 10, per_class: int = 3, grey: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for c in range(n_classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            shape = (12, 16) if grey else (12, 16, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_a_folder_tree_is_resized_and_split_64_16_20_by_seed(tmp_path: Path) -> None:
    spec = custom_dataset_spec(write_folder(tmp_path / "data", n_classes=25), image_size=20)
    assert spec.name == "custom"
    sizes = {}
    for split in ("train", "val", "test"):
        loaded = spec.load(tmp_path, split)
        assert loaded.images.shape[1:] == (20, 20, 3)
        assert np.bincount(loaded.labels).tolist() == [3] * loaded.n_classes
        assert list(loaded.class_names) == sorted(loaded.class_names)
        sizes[split] = loaded.n_classes
    assert sizes == {"train": 16, "val": 4, "test": 5}


def test_the_seeded_split_is_fixed_by_the_seed_and_changes_with_it() -> None:
    classes = [f"c{i}" for i in range(50)]
    first = seeded_class_split(classes, seed=3)
    assert first == seeded_class_split(list(reversed(classes)), seed=3)
    assert first != seeded_class_split(classes, seed=4)
    assert [len(first[s]) for s in ("train", "val", "test")] == [32, 8, 10]


def test_a_split_file_naming_an_unknown_class_or_one_class_twice_is_rejected(tmp_path: Path) -> None:
    images = np.zeros((8, 4, 4, 3), np.uint8)
    images[:4] = 255  # classes a, b: white; c, d: black
    labels = np.array(["a", "a", "b", "b", "c", "c", "d", "d"])
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    (tmp_path / "split.json").write_text(json.dumps({"train": ["a", "b", "c"], "val": ["a2"], "test": []}))
    with pytest.raises(MelaError, match=r"names class 'a2' \(val\), which is not in the data set"):
        custom_dataset_spec(tmp_path / "d.npz", tmp_path / "split.json", image_size=4)
    (tmp_path / "split.json").write_text(json.dumps({"train": ["a", "b", "c", "d"], "val": ["a", "b"], "test": []}))
    with pytest.raises(MelaError, match=r"class 'a' is in both train and val"):
        custom_dataset_spec(tmp_path / "d.npz", tmp_path / "split.json", image_size=4)


def test_an_npz_with_a_split_file_gives_labels_in_file_order_and_train_statistics(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 8, 8), dtype=np.uint8)
    images[:6] = 51  # the train classes 0, 1, 2 are flat grey 0.2
    np.savez(tmp_path / "d.npz", images=images, labels=np.repeat([0, 1, 2, 3, 4, 5, 6], [2, 2, 2, 2, 2, 1, 1]))
    (tmp_path / "split.json").write_text(json.dumps({"train": ["2", "0", "1"], "val": ["3", "4"], "test": ["5", "6"]}))
    spec = custom_dataset_spec(tmp_path / "d.npz", tmp_path / "split.json", image_size=8)
    train = spec.load(tmp_path, "train")
    assert train.class_names == ("2", "0", "1")
    assert train.labels.tolist() == [1, 1, 2, 2, 0, 0]
    assert train.images.shape == (6, 8, 8, 1)
    assert spec.mean == pytest.approx((0.2,)) and spec.std == pytest.approx((0.0,), abs=1e-5)


def test_grey_images_stay_single_channel_only_when_all_are_grey(tmp_path: Path) -> None:
    spec = custom_dataset_spec(write_folder(tmp_path / "grey", grey=True), image_size=10)
    assert spec.load(tmp_path, "train").images.shape[-1] == 1
    root = write_folder(tmp_path / "mixed", grey=True)
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "class_00" / "colour.png")
    spec = custom_dataset_spec(root, image_size=10)
    assert spec.load(tmp_path, "train").images.shape[-1] == 3


def test_user_mistakes_are_reported_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(MelaError, match=r"custom data set .*missing does not exist"):
        custom_dataset_spec(tmp_path / "missing")
    root = write_folder(tmp_path / "data", n_classes=10)
    (root / "class_99").mkdir()
    with pytest.raises(MelaError, match=r"class folder .*class_99 holds no images"):
        custom_dataset_spec(root)
    (root / "class_99").rmdir()
    (tmp_path / "split.json").write_text(
        json.dumps({"train": ["class_00"], "val": ["class_01", "class_02"], "test": ["class_03", "class_04"]})
    )
    with pytest.raises(MelaError, match=r"split 'train' has 1 class\(es\); every split needs at least 2"):
        custom_dataset_spec(root, tmp_path / "split.json")
    small = write_folder(tmp_path / "small", n_classes=4)
    with pytest.raises(MelaError, match=r"needs at least 2"):
        custom_dataset_spec(small)
