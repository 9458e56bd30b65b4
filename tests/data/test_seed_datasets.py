"""The reference's six data sets (plus CIFAR-FS / FC100), read from small files in their exact on-disk formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from mela.data import seed_datasets
from mela.data.registry import get_dataset_spec, load_split
from mela.errors import MelaError

SEED_NAMES = ["miniImageNet", "tieredImageNet", "mini60", "tiered780", "mixed", "h_aircraft", "cifar_fs", "fc100"]


def _images(rng: np.random.Generator, n: int, size: int = 6) -> np.ndarray:
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _dump(path: Path, blob: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(blob, handle, protocol=2)


def write_mini(data_dir: Path, per_class: int = 3) -> None:
    """miniImageNet pickles with global labels (train 0..3, val 64..65, test 80..82) as MetaOptNet ships them."""
    rng = np.random.default_rng(0)
    for stem, ids in (("train_phase_train", [0, 1, 2, 3]), ("val", [64, 65]), ("test", [80, 81, 82])):
        labels = np.repeat(ids, per_class).tolist()
        names = {f"n{1000 + i:08d}": i for i in ids}
        _dump(
            data_dir / "miniImageNet" / f"miniImageNet_category_split_{stem}.pickle",
            {"data": _images(rng, len(labels)), "labels": labels, "catname2label": names},
        )


def write_mixed(data_dir: Path, with_hierarchy: bool = False) -> dict[str, np.ndarray]:
    """Aircraft / CUB / VGG pickles with Meta-Dataset class ids; returns the aircraft train labels."""
    rng = np.random.default_rng(1)
    counts = {"aircraft": (4, 2, 2), "cu_birds": (3, 2, 2), "vgg_flower": (2, 2, 3)}
    written = {}
    for source, (n_train, n_val, n_test) in counts.items():
        start = 0
        for split, n_cls in (("train", n_train), ("val", n_val), ("test", n_test)):
            labels = np.repeat(np.arange(start, start + n_cls), 2)
            start += n_cls
            blob = {"data": _images(rng, len(labels)), "labels": labels}
            if with_hierarchy and source == "aircraft":
                blob["family_labels"] = (labels // 2) * 3 + 10
                blob["manufacturer_labels"] = np.full(len(labels), 7) if split != "train" else labels // 3
            written[(source, split)] = labels
            _dump(seed_datasets.mixed_source_path(data_dir, source, split), blob)
    return written


def test_mini_imagenet_loads_each_split_with_contiguous_labels_and_wnid_class_names(tmp_path: Path) -> None:
    write_mini(tmp_path)
    val = load_split("miniImageNet", "val", tmp_path)
    assert val.images.shape == (6, 6, 6, 3) and val.images.dtype == np.uint8
    assert val.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert val.class_names == ("n00001064", "n00001065")
    assert load_split("miniImageNet", "train", tmp_path).n_classes == 4
    assert load_split("miniImageNet", "test", tmp_path).n_classes == 3


def test_tiered_imagenet_reads_npz_images_and_label_pickle_with_super_classes(tmp_path: Path) -> None:
    root = tmp_path / "tieredImageNet"
    root.mkdir()
    rng = np.random.default_rng(2)
    labels = np.array([5, 5, 7, 7, 9, 9])
    np.savez(root / "train_images.npz", images=_images(rng, 6))
    _dump(
        root / "train_labels.pkl",
        {
            "labels": labels,
            "label_general": np.array([1, 1, 1, 1, 3, 3]),
            "label_general_str": ["a", "b", "c", "d"],
            "label_specific_str": [f"c{i}" for i in range(10)],
        },
    )
    split = load_split("tieredImageNet", "train", tmp_path)
    assert split.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert split.superclass.tolist() == [0, 0, 1]
    assert split.superclass_names == ("b", "d")
    assert split.class_names == ("c5", "c7", "c9")


@pytest.mark.parametrize(("name", "folder"), [("mini60", "x60ImageNet"), ("tiered780", "x780ImageNet")])
def test_ximagenet_layouts_map_the_valid_files_to_the_val_split(tmp_path: Path, name: str, folder: str) -> None:
    root = tmp_path / folder
    root.mkdir()
    rng = np.random.default_rng(3)
    np.save(root / "valid_images.npy", _images(rng, 4))
    np.save(root / "valid_labels.npy", np.array([3, 1, 3, 1]))
    split = load_split(name, "val", tmp_path)
    assert split.labels.tolist() == [1, 0, 1, 0]
    assert split.image_shape == (6, 6, 3)


def test_mixed_stacks_the_three_sources_with_label_offsets_and_one_group_each(tmp_path: Path) -> None:
    write_mixed(tmp_path)
    split = load_split("mixed", "train", tmp_path)
    assert split.n_classes == 4 + 3 + 2
    assert split.group_names == ("aircraft", "cu_birds", "vgg_flower")
    assert np.bincount(split.groups).tolist() == [8, 6, 4]
    assert sorted(set(split.labels[split.groups == 1].tolist())) == [4, 5, 6]
    assert sorted(set(split.labels[split.groups == 2].tolist())) == [7, 8]
    test = load_split("mixed", "test", tmp_path)
    assert test.n_classes == 2 + 2 + 3 and len(test.images) == 14


def test_h_aircraft_keeps_images_once_and_gives_three_granularities_with_unique_labels(tmp_path: Path) -> None:
    labels = write_mixed(tmp_path, with_hierarchy=True)[("aircraft", "train")]
    split = load_split("h_aircraft", "train", tmp_path)
    n = len(labels)
    assert len(split.images) == n and split.n_items == 3 * n
    assert split.image_index.tolist() == list(range(n)) * 3
    assert split.group_names == ("variant", "family", "manufacturer")
    assert split.groups.tolist() == [0] * n + [1] * n + [2] * n
    variant = split.label_sets["variant"]
    family = split.label_sets["family"]
    maker = split.label_sets["manufacturer"]
    assert variant.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert family.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert maker.tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    assert split.labels.tolist() == variant.tolist() + (family + 4).tolist() + (maker + 6).tolist()
    assert split.n_classes == 4 + 2 + 2


def test_h_aircraft_without_fgvc_labels_says_to_run_the_h_aircraft_converter(tmp_path: Path) -> None:
    write_mixed(tmp_path, with_hierarchy=False)
    with pytest.raises(MelaError, match=r"has no 'family_labels'.*mela data h-aircraft --fgvc-dir"):
        load_split("h_aircraft", "val", tmp_path)


@pytest.mark.parametrize("name", SEED_NAMES)
def test_every_seed_data_set_missing_its_files_gives_the_registry_not_found_message(tmp_path: Path, name: str) -> None:
    with pytest.raises(MelaError) as info:
        load_split(name, "train", tmp_path)
    message = str(info.value)
    assert message.startswith(f"data set '{name}' not found: {tmp_path}")
    assert "put the files there, or" in message
    assert get_dataset_spec(name).how_to_get in message


def test_every_how_to_get_names_a_command_the_user_can_run() -> None:
    for name in ("miniImageNet", "tieredImageNet", "mini60", "tiered780"):
        assert "make download_all && make unpack_datasets" in get_dataset_spec(name).how_to_get
        assert f"mela data download {name}" in get_dataset_spec(name).how_to_get
    assert "mela data convert-tfrecords --dataset aircraft" in get_dataset_spec("mixed").how_to_get
    assert "mela data h-aircraft --fgvc-dir" in get_dataset_spec("h_aircraft").how_to_get
    assert "mela data cifar --archive" in get_dataset_spec("fc100").how_to_get


def test_normalisation_matches_the_reference_per_data_set() -> None:
    assert get_dataset_spec("miniImageNet").mean == pytest.approx((0.4721, 0.4533, 0.4100), abs=1e-4)
    assert get_dataset_spec("tiered780").std == pytest.approx((0.2772, 0.2678, 0.2845), abs=1e-4)
    assert get_dataset_spec("mixed").mean == (0.5, 0.5, 0.5) and get_dataset_spec("h_aircraft").std == (0.5, 0.5, 0.5)
    assert get_dataset_spec("cifar_fs").mean == pytest.approx((0.5074, 0.4867, 0.4411), abs=1e-4)


def test_a_corrupt_pickle_is_reported_with_its_path(tmp_path: Path) -> None:
    write_mini(tmp_path)
    broken = tmp_path / "miniImageNet" / "miniImageNet_category_split_test.pickle"
    broken.write_bytes(b"\x80\x02}q\x00(X\x04")
    with pytest.raises(MelaError, match=rf"{broken} is unreadable or corrupt"):
        load_split("miniImageNet", "test", tmp_path)


def test_wrongly_shaped_images_are_reported_with_their_path(tmp_path: Path) -> None:
    path = tmp_path / "miniImageNet" / "miniImageNet_category_split_val.pickle"
    _dump(path, {"data": np.zeros((4, 6, 6, 5), np.uint8), "labels": [0, 0, 1, 1]})
    with pytest.raises(MelaError, match=rf"{path}: images should have shape \(N, H, W, 3\), found \(4, 6, 6, 5\)"):
        load_split("miniImageNet", "val", tmp_path)


def test_a_label_count_that_does_not_match_the_images_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "x60ImageNet"
    root.mkdir()
    np.save(root / "test_images.npy", np.zeros((5, 6, 6, 3), np.uint8))
    np.save(root / "test_labels.npy", np.array([0, 1, 2]))
    with pytest.raises(MelaError, match=r"test_labels.npy: 3 labels for 5 images"):
        load_split("mini60", "test", tmp_path)


def test_a_truncated_npy_file_is_reported_as_corrupt_with_its_path(tmp_path: Path) -> None:
    root = tmp_path / "x780ImageNet"
    root.mkdir()
    np.save(root / "train_images.npy", np.zeros((5, 6, 6, 3), np.uint8))
    (root / "train_images.npy").write_bytes((root / "train_images.npy").read_bytes()[:150])
    np.save(root / "train_labels.npy", np.arange(5))
    with pytest.raises(MelaError, match=r"train_images.npy is unreadable or corrupt"):
        load_split("tiered780", "train", tmp_path)
