"""mela embed and mela export from the command line: what they write, and one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mela
from mela.cli import main

from .conftest import write_png


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    for i in range(5):
        write_png(folder / ("sub" if i % 2 else "") / f"{i}.png", rng.integers(0, 256, (16, 16, 1), dtype=np.uint8))
    return folder


def test_embed_writes_paths_features_and_the_model_description_equal_to_the_python_api(trained_model_file, images,
                                                                                       tmp_path, capsys):
    out = tmp_path / "features.npz"
    assert main(["embed", str(trained_model_file), str(images), "--out", str(out), "--batch-size", "2"]) == 0
    saved = np.load(out)
    paths = [str(p) for p in sorted(images.rglob("*.png"))]
    assert list(saved["paths"]) == paths
    assert saved["features"].dtype == np.float32 and saved["features"].shape == (5, 64)
    np.testing.assert_allclose(saved["features"], mela.embed(trained_model_file, paths), rtol=0, atol=1e-6)
    assert json.loads(str(saved["model"]))["architecture"]["backbone"] == "convnet4"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_embed_refuses_a_wrong_output_suffix_a_missing_input_and_skips_bad_files_only_when_told(
        trained_model_file, images, tmp_path, capsys, monkeypatch):
    assert ".npz" in _one_line_error(capsys, ["embed", str(trained_model_file), str(images), "--out",
                                              str(tmp_path / "f.csv")])
    assert "does not exist" in _one_line_error(capsys, ["embed", str(trained_model_file), str(tmp_path / "none"),
                                                        "--out", str(tmp_path / "f.npz")])
    (images / "bad.png").write_bytes(b"\x89PNG broken")
    assert "bad.png" in _one_line_error(capsys, ["embed", str(trained_model_file), str(images), "--out",
                                                 str(tmp_path / "f.npz")])
    assert not (tmp_path / "f.npz").exists()
    assert main(["embed", str(trained_model_file), str(images), "--out", str(tmp_path / "f.npz"), "--skip-bad"]) == 0
    assert len(np.load(tmp_path / "f.npz")["paths"]) == 5 and "1 skipped" in capsys.readouterr().out
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)
    assert "pyarrow" in _one_line_error(capsys, ["embed", str(trained_model_file), str(images), "--out",
                                                 str(tmp_path / "f.parquet")])


def test_export_lists_what_it_wrote_and_keeps_an_occupied_folder(trained_model_file, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(trained_model_file), "--out", str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(out / "mela_model.json"), str(out / "model.safetensors")]
    assert "exists and is not empty" in _one_line_error(capsys, ["export", str(trained_model_file), "--out",
                                                                 str(out)])
    from safetensors.torch import load_file

    first = load_file(str(out / "model.safetensors"))
    assert main(["export", str(out), "--out", str(out), "--force"]) == 0  # loaded first, then replaced whole
    again = tmp_path / "again"
    assert main(["export", str(out), "--out", str(again)]) == 0  # an export re-exports to the same weights
    for folder in (out, again):
        weights = load_file(str(folder / "model.safetensors"))
        assert weights.keys() == first.keys() and all(weights[k].equal(first[k]) for k in first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "exported"]  # no staging folder left
