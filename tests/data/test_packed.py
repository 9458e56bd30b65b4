"""Packed data sets: written once from the original files, memory-mapped read-only, ignored when stale."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mela.data import glyphs
from mela.data.base import ImageSplit
from mela.data.pack import pack_dataset
from mela.data.packed import packed_folder
from mela.data.registry import _load, get_dataset_spec, load_split
from mela.device import place_images
from mela.errors import MelaError

GLYPHS = glyphs.load(Path("."), "train")


def _dump(path: Path, blob: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(blob, handle, protocol=2)


def _glyph_classes(first: int, count: int, per_class: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` glyph images of classes first..first+count-1 of the shipped train split, grey (N, 32, 32)."""
    rows = np.concatenate([np.flatnonzero(GLYPHS.labels == c)[:per_class] for c in range(first, first + count)])
    return GLYPHS.images[rows, :, :, 0], GLYPHS.labels[rows]


def write_fc100(data_dir: Path) -> None:
    """FC100's pickles (as `mela data cifar` writes them) holding glyphs: fine and coarse labels with names."""
    names = list(GLYPHS.class_names)
    for split, first in (("train", 0), ("val", 8), ("test", 12)):
        images, labels = _glyph_classes(first, 4 if split != "train" else 8)
        _dump(data_dir / "FC100" / f"{split}.pickle", {
            "data": images, "labels": labels, "coarse_labels": GLYPHS.superclass[labels],
            "fine_names": names, "coarse_names": list(GLYPHS.superclass_names)})


def write_aircraft(data_dir: Path) -> None:
    """The aircraft pickles h_aircraft reads (variant, family and manufacturer labels), holding glyphs."""
    for split, first in (("train", 20), ("val", 30), ("test", 34)):
        images, labels = _glyph_classes(first, 4 if split != "train" else 6, per_class=3)
        _dump(data_dir / "aircraft" / f"aircraft_{split}.pkl", {
            "data": images, "labels": labels, "family_labels": labels // 2, "manufacturer_labels": labels // 3})


def assert_same_split(packed: ImageSplit, original: ImageSplit) -> None:
    for field in dataclasses.fields(ImageSplit):
        got, want = getattr(packed, field.name), getattr(original, field.name)
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype and np.array_equal(got, want), field.name
        elif field.name == "label_sets" and want is not None:
            assert list(got) == list(want), field.name
            assert all(np.array_equal(got[k], want[k]) for k in want), field.name
        else:
            assert got == want, field.name


@pytest.mark.parametrize(("name", "write"), [("fc100", write_fc100), ("h_aircraft", write_aircraft)])
def test_a_packed_data_set_loads_array_for_array_as_read_only_memory_maps(name, write, tmp_path: Path) -> None:
    write(tmp_path)
    spec = get_dataset_spec(name)
    originals = {split: _load(spec, split, tmp_path, use_pack=False) for split in spec.splits}
    assert all(not isinstance(s.images, np.memmap) for s in originals.values())
    files = pack_dataset(name, tmp_path, log=lambda _line: None)
    assert {f.name for f in files} == {f"{s}.{kind}" for s in spec.splits for kind in ("images.npy", "arrays.npz",
                                                                                       "json")}
    for split, original in originals.items():
        packed = load_split(name, split, tmp_path)
        assert isinstance(packed.images, np.memmap) and packed.images.mode == "r"
        assert not packed.images.flags.writeable
        assert_same_split(packed, original)


def test_a_pack_whose_source_changed_is_ignored_with_one_note(tmp_path: Path, capsys) -> None:
    write_fc100(tmp_path)
    pack_dataset("fc100", tmp_path, log=lambda _line: None)
    source = tmp_path / "FC100" / "val.pickle"
    blob = pickle.loads(source.read_bytes())
    blob["data"] = 255 - blob["data"]  # same size: only the modification time tells
    _dump(source, blob)
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 5_000_000_000))
    first, second = load_split("fc100", "val", tmp_path), load_split("fc100", "val", tmp_path)
    for split in (first, second):  # the new pixels, read from the pickle
        assert not isinstance(split.images, np.memmap) and np.array_equal(split.images[..., 0], blob["data"])
    err = capsys.readouterr().err.splitlines()
    assert err == [f"note: ignoring the packed val split of fc100 in {packed_folder(tmp_path, 'fc100')}: "
                   "FC100/val.pickle changed since it was packed; reading the original files (run `mela data pack "
                   "fc100` to pack them again)"]
    assert isinstance(load_split("fc100", "train", tmp_path).images, np.memmap)  # the other splits are still good


def test_a_pack_stays_usable_when_its_source_files_are_deleted(tmp_path: Path) -> None:
    write_fc100(tmp_path)
    original = load_split("fc100", "test", tmp_path)
    pack_dataset("fc100", tmp_path, log=lambda _line: None)
    (tmp_path / "FC100" / "test.pickle").unlink()
    assert_same_split(load_split("fc100", "test", tmp_path), original)


def test_a_damaged_pack_falls_back_to_the_original_files(tmp_path: Path, capsys) -> None:
    write_fc100(tmp_path)
    pack_dataset("fc100", tmp_path, log=lambda _line: None)
    images = packed_folder(tmp_path, "fc100") / "train.images.npy"
    images.write_bytes(images.read_bytes()[:1000])
    split = load_split("fc100", "train", tmp_path)
    assert not isinstance(split.images, np.memmap) and len(split.images) == 8 * 6
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ignoring the packed train split of fc100" in err and "damaged" in err


def test_packing_a_missing_data_set_names_the_missing_file_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(MelaError, match=r"data set 'fc100' not found: .*FC100/train.pickle is missing"):
        pack_dataset("fc100", tmp_path)
    assert not packed_folder(tmp_path, "fc100").exists()


def test_only_workspace_data_sets_can_be_packed() -> None:
    with pytest.raises(MelaError, match=r"^cannot pack 'custom': not a workspace data set; valid names: .*glyphs"):
        pack_dataset("custom", Path("."))


def test_a_packed_split_goes_to_torch_without_a_copy_or_a_warning(tmp_path: Path) -> None:
    write_fc100(tmp_path)
    pack_dataset("fc100", tmp_path, log=lambda _line: None)
    split = load_split("fc100", "train", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels = place_images(split.images, torch.device("cpu"))
    assert np.shares_memory(pixels.numpy(), split.images)
    assert torch.equal(pixels[[3, 1]], torch.from_numpy(np.array(split.images[[3, 1]])))


def _data_cli(argv: list[str], capsys) -> tuple[int, str]:
    from mela import data_cli

    code = data_cli.main(argv)
    return code, capsys.readouterr().out


def test_data_check_and_info_say_which_splits_are_packed_stale_or_only_held_by_their_pack(tmp_path: Path,
                                                                                          capsys) -> None:
    write_fc100(tmp_path / "metaL_data")
    pack_dataset("fc100", tmp_path / "metaL_data", log=lambda _line: None)
    workspace = ["--workspace", str(tmp_path)]
    code, out = _data_cli(["check", "fc100", *workspace], capsys)
    assert code == 0 and out.count("present  8 classes, 48 images of 32x32x1; packed (memory-mapped)") == 1
    assert out.count("; packed (memory-mapped)") == 3
    code, out = _data_cli(["info", "fc100", *workspace], capsys)
    assert code == 0 and "  packed (memory-mapped): train, val, test" in out.splitlines()

    data = tmp_path / "metaL_data" / "FC100"
    (data / "test.pickle").unlink()  # the pack is now the only copy of test
    blob = pickle.loads((data / "val.pickle").read_bytes())
    _dump(data / "val.pickle", {**blob, "data": 255 - blob["data"]})  # val's pack goes stale
    os.utime(data / "val.pickle", ns=(0, (data / "val.pickle").stat().st_mtime_ns + 5_000_000_000))
    code, out = _data_cli(["check", "fc100", *workspace], capsys)
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("fc100")}
    assert code == 0 and lines["test"].endswith("present  4 classes, 24 images of 32x32x1 (packed copy, source "
                                                "files gone)")
    assert lines["val"].endswith("present  4 classes, 24 images of 32x32x1; its pack is ignored: FC100/val.pickle "
                                 "changed since it was packed (run `mela data pack fc100`)")
    code, out = _data_cli(["check", "fc100", "--quick", *workspace], capsys)
    assert "present  packed copy, source files gone (not loaded)" in out
    code, out = _data_cli(["info", "fc100", *workspace], capsys)
    assert "  packed (memory-mapped): train, test" in out.splitlines()
    assert ("  pack of val ignored, stale: FC100/val.pickle changed since it was packed (run `mela data pack "
            "fc100`)") in out.splitlines()
    code, out = _data_cli(["info", *workspace], capsys)  # the listing counts fc100 as present
    assert "fc100: not present" not in out and "  packed (memory-mapped): train, test" in out

    images = packed_folder(tmp_path / "metaL_data", "fc100") / "test.images.npy"
    images.write_bytes(images.read_bytes()[:1000])  # a damaged pack with no source left: corrupt, exit 1
    code, out = _data_cli(["check", "fc100", *workspace], capsys)
    assert code == 1 and re.search(r"fc100 +test +corrupt +the packed copy is unreadable and the source files are "
                                   r"gone; restore them and run `mela data pack fc100`", out)
