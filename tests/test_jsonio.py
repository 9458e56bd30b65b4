"""Strict JSON outputs: NaN/inf as null, atomic replacement, one-line errors for OS trouble and damaged files."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from mela import jsonio
from mela.errors import MelaError
from mela.jsonio import dumps, json_safe, read_json, write_json_atomic


def test_non_finite_floats_are_written_as_null_and_the_file_is_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    results = {"1shot": {"acc": 55.0, "ci95": float("nan")}, "loss": [float("inf"), -float("inf"), 1.5],
               "np": np.float32("nan"), "count": np.int64(3), "ok": np.bool_(True), "arr": np.array([1.0, np.nan])}
    write_json_atomic(path, results)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    parsed = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard constant {name}"))
    assert parsed == {"1shot": {"acc": 55.0, "ci95": None}, "loss": [None, None, 1.5], "np": None, "count": 3,
                      "ok": True, "arr": [1.0, None]}
    assert read_json(path) == parsed
    json.dumps(parsed, allow_nan=False)


def test_json_safe_keeps_finite_values_and_converts_keys_and_paths() -> None:
    assert json_safe({1: Path("/a/b"), "t": (1, 2.5, None, "x")}) == {"1": "/a/b", "t": [1, 2.5, None, "x"]}
    assert dumps({"a": 1}, indent=None) == '{"a": 1}'


def test_an_unrepresentable_object_raises_before_the_old_file_is_touched(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"v": object()})
    assert read_json(path) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_full_disk_is_one_line_naming_the_path_and_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "results.json"
    write_json_atomic(path, {"old": True})

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(jsonio.os, "fsync", full_disk)
    with pytest.raises(MelaError) as caught:
        write_json_atomic(path, {"old": False})
    assert str(caught.value) == (f"cannot write {path} (No space left on device); check free disk space and that "
                                 f"{tmp_path} is a writable folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    monkeypatch.undo()
    assert read_json(path) == {"old": True}


def test_writing_under_a_file_where_a_folder_should_be_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "ws").write_text("a file")
    with pytest.raises(MelaError, match=r"cannot write .*ws/runs/done.json \((File exists|Not a directory)\)"):
        write_json_atomic(tmp_path / "ws" / "runs" / "done.json", {})


@pytest.mark.parametrize(("content", "detail"), [
    (b'{"a": 1', "Expecting ',' delimiter at line 1 column 8"),
    (b"", "Expecting value at line 1 column 1"),
    (b"\xff\xfe", "not UTF-8 text"),
])
def test_a_damaged_json_file_is_one_line_naming_it(tmp_path: Path, content: bytes, detail: str) -> None:
    path = tmp_path / "done.json"
    path.write_bytes(content)
    with pytest.raises(MelaError) as caught:
        read_json(path)
    assert str(caught.value).startswith(f"{path} is not valid JSON ({detail})")
    assert "\n" not in str(caught.value)


def test_read_json_still_reads_the_bare_nan_of_files_written_before_this_module(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text('{"ci95": NaN}')
    assert np.isnan(read_json(tmp_path / "results.json")["ci95"])


def test_a_missing_or_unreadable_json_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(MelaError, match=r"done.json does not exist$"):
        read_json(tmp_path / "done.json")
    with pytest.raises(MelaError, match=r"cannot read .* \(Is a directory\)"):
        read_json(tmp_path)
