"""CIFAR-FS and FC100 from a tiny archive in the real cifar-100-python.tar.gz format."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mela.converters.cifar import CIFAR100_HIERARCHY, convert_cifar, read_cifar100
from mela.data.seed_datasets import load_cifar
from mela.errors import MelaError

FINE = sorted(f for fines in CIFAR100_HIERARCHY.values() for f in fines)
COARSE = sorted(CIFAR100_HIERARCHY)
COARSE_OF = {f: COARSE.index(c) for c, fines in CIFAR100_HIERARCHY.items() for f in fines}


def _part(per_class: int, rng: np.random.Generator) -> dict:
    fine = np.repeat(np.arange(100), per_class)
    rng.shuffle(fine)
    return {
        b"filenames": [b"x.png"] * len(fine),
        b"batch_label": b"batch",
        b"fine_labels": fine.tolist(),
        b"coarse_labels": [COARSE_OF[FINE[f]] for f in fine],
        # pixel 0 of the red plane carries the fine label so the conversion can be traced
        b"data": np.concatenate([fine[:, None], rng.integers(0, 256, (len(fine), 3071))], axis=1).astype(np.uint8),
    }


def write_archive(path: Path, train_per_class: int = 2, test_per_class: int = 1) -> Path:
    rng = np.random.default_rng(0)
    members = {
        "train": _part(train_per_class, rng),
        "test": _part(test_per_class, rng),
        "meta": {b"fine_label_names": [f.encode() for f in FINE], b"coarse_label_names": [c.encode() for c in COARSE]},
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            payload = pickle.dumps(blob, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_the_archive_is_pooled_into_hwc_images_with_both_label_sets(tmp_path: Path) -> None:
    pooled = read_cifar100(write_archive(tmp_path / "cifar-100-python.tar.gz"))
    assert pooled["images"].shape == (300, 32, 32, 3)
    assert (pooled["images"][:, 0, 0, 0] == pooled["fine"]).all()
    assert pooled["fine_names"] == FINE and pooled["coarse_names"] == COARSE
    assert np.bincount(pooled["fine"]).tolist() == [3] * 100


def test_cifar_fs_has_64_16_20_classes_and_fc100_has_12_4_4_super_classes(tmp_path: Path) -> None:
    summary = convert_cifar(write_archive(tmp_path / "c.tar.gz"), tmp_path)
    assert summary == {"cifar_fs": {"train": 64, "val": 16, "test": 20}, "fc100": {"train": 60, "val": 20, "test": 20}}
    for split, n_classes in (("train", 64), ("val", 16), ("test", 20)):
        loaded = load_cifar(tmp_path, split, "cifar_fs", with_superclasses=False)
        assert loaded.n_classes == n_classes and loaded.images.shape == (3 * n_classes, 32, 32, 3)
    test = load_cifar(tmp_path, "test", "cifar_fs", with_superclasses=False)
    assert "chimpanzee" in test.class_names and "wardrobe" in test.class_names
    for split, n_super in (("train", 12), ("val", 4), ("test", 4)):
        loaded = load_cifar(tmp_path, split, "fc100", with_superclasses=True)
        assert loaded.n_classes == 5 * n_super
        assert np.bincount(loaded.superclass).tolist() == [5] * n_super
    fc_test = load_cifar(tmp_path, "test", "fc100", with_superclasses=True)
    assert fc_test.superclass_names == ("aquatic_mammals", "insects", "medium_mammals", "people")
    assert fc_test.class_names[fc_test.labels[0]] == FINE[fc_test.images[0, 0, 0, 0]]


def test_the_cifar_fs_and_fc100_splits_partition_the_100_classes() -> None:
    from mela.converters.cifar import FC100_SPLITS, cifar_fs_splits

    fs = cifar_fs_splits()
    assert sorted(fs["train"] + fs["val"] + fs["test"]) == FINE
    supers = [s for split in FC100_SPLITS.values() for s in split]
    assert sorted(supers) == COARSE


def test_an_archive_without_the_cifar_members_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(MelaError, match=r"has no cifar-100-python/train; is this cifar-100-python.tar.gz\?"):
        read_cifar100(path)


def test_a_truncated_archive_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "c.tar.gz")
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(MelaError, match=r"c.tar.gz is unreadable or corrupt"):
        read_cifar100(path)
