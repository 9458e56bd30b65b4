"""The run store: finished runs, model references and ``latest``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mela.errors import MelaError
from mela.runs.store import DONE_FILE, MODEL_FILE, RunStore
from mela.workspace import saves_dir


def _finished_run(root: Path, step: str, name: str, dataset: str, finished: str) -> Path:
    run_dir = saves_dir(root) / step / name
    run_dir.mkdir(parents=True)
    (run_dir / MODEL_FILE).write_bytes(b"x")
    (run_dir / DONE_FILE).write_text(json.dumps({"dataset": dataset, "finished": finished}))
    return run_dir


def test_latest_finds_the_newest_finished_run_on_the_same_data_set(tmp_path):
    _finished_run(tmp_path, "learn_meta_repr", "old", "glyphs", "2026-01-01T00:00:00")
    newest = _finished_run(tmp_path, "learn_meta_repr", "new", "glyphs", "2026-02-01T00:00:00")
    _finished_run(tmp_path, "learn_meta_repr", "other", "miniImageNet", "2026-03-01T00:00:00")
    unfinished = saves_dir(tmp_path) / "learn_meta_repr" / "running"
    unfinished.mkdir()
    assert RunStore(tmp_path).find_model("latest", ("learn_meta_repr",), "glyphs") == newest / MODEL_FILE
    assert RunStore(tmp_path).find_model("old", ("learn_meta_repr",), None).parent.name == "old"
    assert RunStore(tmp_path).find_model(False, ("learn_meta_repr",), None) is None
    with pytest.raises(MelaError, match="did not finish"):
        RunStore(tmp_path).find_model(str(unfinished), ("learn_meta_repr",), None)
    with pytest.raises(MelaError, match="no finished learn_labeler run on dataset glyphs"):
        RunStore(tmp_path).find_model("latest", ("learn_labeler",), "glyphs")
    with pytest.raises(MelaError, match="neither a file, a run folder"):
        RunStore(tmp_path).find_model("nope", ("learn_meta_repr",), None)
