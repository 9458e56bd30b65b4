"""``check_workspace``: present / missing / corrupt per data set and split, with paths and how to get them."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from mela.converters.check import CORRUPT, MISSING, PRESENT, Report, check_workspace, exit_status, format_reports
from mela.data import registry
from mela.data.base import DatasetSpec, ImageSplit


def write_mini(data_dir: Path) -> None:
    rng = np.random.default_rng(0)
    for stem, ids in (("train_phase_train", [0, 1, 2]), ("val", [64, 65]), ("test", [80, 81])):
        path = data_dir / "miniImageNet" / f"miniImageNet_category_split_{stem}.pickle"
        path.parent.mkdir(parents=True, exist_ok=True)
        labels = np.repeat(ids, 2)
        images = rng.integers(0, 256, (len(labels), 5, 5, 3), dtype=np.uint8)
        with open(path, "wb") as handle:
            pickle.dump({"data": images, "labels": labels}, handle)


def write_mini60(data_dir: Path) -> None:
    root = data_dir / "x60ImageNet"
    root.mkdir(parents=True)
    for stem in ("train", "valid", "test"):
        np.save(root / f"{stem}_images.npy", np.zeros((4, 5, 5, 3), np.uint8))
        np.save(root / f"{stem}_labels.npy", np.array([0, 0, 1, 1]))


def _by_key(reports) -> dict:
    return {(r.dataset, r.split): r for r in reports}


def test_present_missing_and_corrupt_splits_are_told_apart(tmp_path: Path) -> None:
    write_mini(tmp_path)
    write_mini60(tmp_path)
    np.save(tmp_path / "x60ImageNet" / "valid_labels.npy", np.array([0, 1, 2]))  # 3 labels for 4 images
    (tmp_path / "x60ImageNet" / "test_images.npy").write_bytes(b"not an npy file")
    reports = _by_key(check_workspace(tmp_path))
    assert {r.status for r in reports.values()} <= {PRESENT, MISSING, CORRUPT}
    mini_val = reports[("miniImageNet", "val")]
    assert mini_val.status == PRESENT and mini_val.detail == "2 classes, 4 images of 5x5x3"
    assert reports[("mini60", "train")].status == PRESENT
    valid = reports[("mini60", "val")]
    assert valid.status == CORRUPT and valid.path == tmp_path / "x60ImageNet" / "valid_labels.npy"
    assert "3 labels for 4 images" in valid.detail
    test = reports[("mini60", "test")]
    assert test.status == CORRUPT and test.path == tmp_path / "x60ImageNet" / "test_images.npy"
    tiered = reports[("tieredImageNet", "train")]
    assert tiered.status == MISSING and tiered.path == tmp_path / "tieredImageNet" / "train_images.npz"
    assert "make download_all" in tiered.how_to_get
    mixed = reports[("mixed", "test")]
    assert mixed.status == MISSING and mixed.detail.endswith("is missing (and 2 more)")


def test_an_unreadable_pickle_is_corrupt_and_the_table_hints_once_per_data_set(tmp_path: Path) -> None:
    write_mini(tmp_path)
    broken = tmp_path / "miniImageNet" / "miniImageNet_category_split_test.pickle"
    broken.write_bytes(b"\x80\x04garbage")
    reports = check_workspace(tmp_path, names=["miniImageNet", "cifar_fs"])
    assert [(r.dataset, r.split, r.status) for r in reports] == [
        ("miniImageNet", "train", PRESENT),
        ("miniImageNet", "val", PRESENT),
        ("miniImageNet", "test", CORRUPT),
        ("cifar_fs", "train", MISSING),
        ("cifar_fs", "val", MISSING),
        ("cifar_fs", "test", MISSING),
    ]
    assert reports[2].path == broken
    table = format_reports(reports)
    assert table.count("to get it:") == 2
    assert "mela data cifar --archive" in table


def test_quick_mode_only_looks_at_file_presence(tmp_path: Path) -> None:
    write_mini(tmp_path)
    (tmp_path / "miniImageNet" / "miniImageNet_category_split_test.pickle").write_bytes(b"junk")
    reports = check_workspace(tmp_path, names=["miniImageNet"], load=False)
    assert [r.status for r in reports] == [PRESENT] * 3


def test_a_data_set_without_required_files_is_reported_as_built_in(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))
    registry.register_dataset(
        DatasetSpec(
            name="tiny_builtin",
            load=lambda d, s: ImageSplit(images=np.zeros((1, 2, 2, 1), np.uint8), labels=np.zeros(1, np.int64)),
            required_files=lambda d, s: [],
            mean=(0.5,),
            std=(0.5,),
            how_to_get="it ships with mela",
        )
    )
    reports = check_workspace(tmp_path, names=["tiny_builtin"])
    assert [(r.status, r.detail) for r in reports] == [(PRESENT, "built in")] * 3


@pytest.mark.parametrize("name", ["h_aircraft", "fc100"])
def test_every_split_of_an_absent_data_set_is_missing(tmp_path: Path, name: str) -> None:
    reports = check_workspace(tmp_path, names=[name])
    assert [r.status for r in reports] == [MISSING] * 3


def _register_failing(monkeypatch, error: BaseException) -> str:
    """A data set whose file exists but whose loader raises ``error``."""
    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))

    def load(data_dir: Path, split: str) -> ImageSplit:
        raise error

    registry.register_dataset(
        DatasetSpec(name="failing", load=load, required_files=lambda d, s: [Path(d) / "failing.bin"],
                    mean=(0.5,), std=(0.5,), how_to_get="nowhere")
    )
    return "failing"


@pytest.mark.parametrize("error", [MemoryError(), AttributeError("'NoneType' object has no attribute 'shape'"),
                                   KeyError("labels"), RecursionError()])
def test_a_memory_error_or_a_bug_in_a_loader_propagates_instead_of_passing_for_a_corrupt_file(
        tmp_path: Path, monkeypatch, error: BaseException) -> None:
    (tmp_path / "failing.bin").write_bytes(b"x")
    name = _register_failing(monkeypatch, error)
    with pytest.raises(type(error)):
        check_workspace(tmp_path, names=[name])


@pytest.mark.parametrize("error", [OSError("cannot identify image file"), ValueError("cannot reshape array"),
                                   EOFError(), pickle.UnpicklingError("invalid load key")])
def test_errors_about_the_files_bytes_are_reported_as_corrupt(tmp_path: Path, monkeypatch,
                                                              error: BaseException) -> None:
    (tmp_path / "failing.bin").write_bytes(b"x")
    name = _register_failing(monkeypatch, error)
    reports = check_workspace(tmp_path, names=[name])
    assert [(r.status, r.path) for r in reports] == [(CORRUPT, tmp_path / "failing.bin")] * 3
    assert reports[0].detail == f"{type(error).__name__}: {error}"


def test_read_pickle_lets_a_memory_error_through_rather_than_calling_the_file_corrupt(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    from mela.data import seed_datasets

    write_mini(tmp_path)

    def out_of_memory(handle, encoding):
        raise MemoryError

    monkeypatch.setattr(seed_datasets, "safe_load", out_of_memory)
    with pytest.raises(MemoryError):
        check_workspace(tmp_path, names=["miniImageNet"])


def test_exit_status_fails_on_corrupt_always_and_on_missing_only_for_named_data_sets() -> None:
    def report(status: str) -> Report:
        return Report("d", "train", status, None, "", "")

    assert exit_status([report(PRESENT), report(MISSING)], named=False) == 0
    assert exit_status([report(PRESENT), report(MISSING)], named=True) == 1
    assert exit_status([report(PRESENT), report(CORRUPT)], named=False) == 1
    assert exit_status([report(PRESENT)], named=True) == 0
