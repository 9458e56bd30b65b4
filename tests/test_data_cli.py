"""``mela data ...``: info, check, download, unpack, cifar and build-glyphs on fake workspaces."""

from __future__ import annotations

import io
import json
import pickle
import re
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest

from mela import data_cli
from mela.converters import archives


def _dump(path: Path, blob: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(blob, handle, protocol=2)


def write_mini(workspace: Path) -> None:
    """64/16/20 classes with 3..5 images each (class c of train has 3 + c % 3 images)."""
    rng = np.random.default_rng(0)
    layout = {"train_phase_train": range(0, 64), "val": range(64, 80), "test": range(80, 100)}
    for stem, ids in layout.items():
        labels = np.concatenate([np.full(3 + c % 3, c) for c in ids])
        _dump(
            workspace / "metaL_data" / "miniImageNet" / f"miniImageNet_category_split_{stem}.pickle",
            {"data": rng.integers(0, 256, (len(labels), 4, 4, 3), dtype=np.uint8), "labels": labels},
        )


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = data_cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json_reports_classes_images_and_images_per_class(tmp_path: Path, capsys) -> None:
    write_mini(tmp_path)
    code, out, _ = run(["info", "miniImageNet", "--json", "--workspace", str(tmp_path)], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["name"] == "miniImageNet" and info["image_shape"] == [4, 4, 3]
    train = info["splits"]["train"]
    assert train["classes"] == 64
    assert train["images"] == sum(3 + c % 3 for c in range(64))
    assert train["images_per_class_min"] == 3 and train["images_per_class_median"] == 4.0
    assert info["splits"]["val"]["classes"] == 16 and info["splits"]["test"]["classes"] == 20
    assert info["superclasses"] is None and info["groups"] == []


def test_workspace_comes_from_the_environment_even_with_a_trailing_slash(tmp_path: Path, capsys, monkeypatch) -> None:
    write_mini(tmp_path)
    monkeypatch.setenv("WORKSPACE", str(tmp_path) + "/")
    code, out, _ = run(["info", "miniImageNet"], capsys)
    assert code == 0
    assert "train 64 classes" in out and "test  20 classes" in out


def test_info_on_a_missing_data_set_prints_the_registry_error_and_returns_2(tmp_path: Path, capsys) -> None:
    code, out, err = run(["--workspace", str(tmp_path), "info", "tieredImageNet"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: data set 'tieredImageNet' not found: ")
    assert err.count("\n") == 1


def test_info_of_h_aircraft_lists_items_and_the_three_granularities(tmp_path: Path, capsys) -> None:
    for split, ids in (("train", [0, 1, 2]), ("val", [3, 4]), ("test", [5, 6])):
        labels = np.repeat(ids, 2)
        _dump(
            tmp_path / "metaL_data" / "aircraft" / f"aircraft_{split}.pkl",
            {
                "data": np.zeros((len(labels), 4, 4, 3), np.uint8),
                "labels": labels,
                "family_labels": labels // 2,
                "manufacturer_labels": np.zeros(len(labels), np.int64),
            },
        )
    code, out, _ = run(["info", "h_aircraft", "--json", "--workspace", str(tmp_path)], capsys)
    info = json.loads(out)
    assert code == 0
    assert info["groups"] == ["variant", "family", "manufacturer"]
    assert info["splits"]["train"] == {
        "classes": 3 + 2 + 1,
        "images": 6,
        "images_per_class_min": 2,
        "images_per_class_median": 2.0,
        "items": 18,
    }


def test_check_json_reports_each_split_and_exits_1_when_a_named_data_set_is_missing(tmp_path: Path, capsys) -> None:
    write_mini(tmp_path)
    code, out, _ = run(["check", "miniImageNet", "mini60", "--json", "--workspace", str(tmp_path)], capsys)
    reports = json.loads(out)
    assert code == 1
    assert [(r["dataset"], r["status"]) for r in reports] == [("miniImageNet", "present")] * 3 + [
        ("mini60", "missing")
    ] * 3
    code, out, _ = run(["check", "miniImageNet", "--workspace", str(tmp_path)], capsys)
    assert code == 0


def test_check_without_names_exits_0_when_absent_data_sets_are_only_missing_and_1_when_one_is_corrupt(
        tmp_path: Path, capsys) -> None:
    write_mini(tmp_path)
    code, out, _ = run(["check", "--workspace", str(tmp_path)], capsys)
    assert code == 0
    assert re.search(r"^tieredImageNet +train +missing", out, re.M)
    (tmp_path / "metaL_data" / "miniImageNet" / "miniImageNet_category_split_val.pickle").write_bytes(b"x")
    code, out, _ = run(["check", "--workspace", str(tmp_path)], capsys)
    assert code == 1
    assert re.search(r"^miniImageNet +val +corrupt +.*miniImageNet_category_split_val.pickle is unreadable", out, re.M)
    code, _, _ = run(["check", "miniImageNet", "--workspace", str(tmp_path)], capsys)
    assert code == 1


def test_a_failed_download_prints_one_error_line_and_returns_2(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(archives.ARCHIVE_URLS, "mini60", (tmp_path / "absent.tar").as_uri())
    code, _, err = run(["download", "mini60", "--no-progress", "--workspace", str(tmp_path)], capsys)
    assert code == 2
    assert err.startswith("error: download of mini60 from file://")
    assert err.rstrip().endswith(
        f"download it by hand to {tmp_path / 'archives' / 'mini60.tar'} and run make unpack_datasets"
    )


def test_unpack_all_extracts_downloaded_archives_and_skips_them_the_second_time(tmp_path: Path, capsys) -> None:
    tar_path = tmp_path / "archives" / "mini60.tar"
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo("x60ImageNet/train_labels.npy")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    code, out, _ = run(["unpack", "--workspace", str(tmp_path)], capsys)
    assert code == 0 and out == f"mini60: unpacked {tmp_path / 'metaL_data' / 'x60ImageNet'}\n"
    code, out, _ = run(["unpack", "all", "--workspace", str(tmp_path)], capsys)
    assert code == 0 and "already unpacked, skipped" in out


def test_build_glyphs_forwards_every_remaining_argument(capsys, monkeypatch) -> None:
    seen = []
    fake = types.ModuleType("mela_glyph_builder")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setattr(data_cli, "load_glyph_builder", lambda: fake)
    assert data_cli.main(["build-glyphs", "--out", "x", "--jobs", "2", "-v"]) == 0
    assert seen == [["--out", "x", "--jobs", "2", "-v"]]


def test_build_glyphs_from_the_source_checkout_names_every_required_input(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        data_cli.main(["build-glyphs"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--latin-packages" in err and "required" in err


def test_build_glyphs_outside_a_source_checkout_says_where_the_builder_lives(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(data_cli, "GLYPH_BUILDER", tmp_path / "tools" / "glyph_builder.py")
    monkeypatch.setattr(data_cli.load_glyph_builder, "__defaults__", (tmp_path / "tools" / "glyph_builder.py",))
    code, _, err = run(["build-glyphs", "--out", "x"], capsys)
    assert code == 2 and "ships with mela's source checkout" in err and "\n" not in err.strip()


def test_an_unknown_sub_command_is_an_argparse_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        data_cli.main(["frobnicate"])
    assert info.value.code == 2


def test_pack_writes_the_built_in_glyphs_and_loading_them_maps_the_pack(tmp_path: Path, capsys) -> None:
    from mela.data import glyphs
    from mela.data.registry import load_split

    code, out, err = run(["pack", "glyphs", "--workspace", str(tmp_path)], capsys)
    assert code == 0 and err == ""
    folder = tmp_path / "metaL_data" / "packed" / "glyphs"
    assert out.splitlines()[0] == (f"glyphs train: 14200 images of 32x32x1, 14200 items -> {folder}/train.images.npy "
                                   "(13.9 MiB)")
    for split in ("train", "val", "test"):
        packed, original = load_split("glyphs", split, tmp_path / "metaL_data"), glyphs.load(Path("."), split)
        assert isinstance(packed.images, np.memmap) and np.array_equal(packed.images, original.images)
        assert np.array_equal(packed.labels, original.labels) and packed.class_names == original.class_names
        assert np.array_equal(packed.superclass, original.superclass)


def test_pack_of_an_unknown_data_set_is_one_line_listing_the_valid_names(tmp_path: Path, capsys) -> None:
    code, out, err = run(["pack", "miniImageNett", "--workspace", str(tmp_path)], capsys)
    assert code == 2 and out == ""
    assert re.fullmatch(r"error: cannot pack 'miniImageNett': not a workspace data set; valid names: .*miniImageNet"
                        r".*\n", err)
    assert not (tmp_path / "metaL_data").exists()
