"""The README's "Use a trained model" section runs as written: its Python block, then its commands."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import numpy as np

from mela.cli import main
from mela.workspace import saves_dir

README = Path(__file__).resolve().parents[2] / "README.md"


def section() -> str:
    text = README.read_text()
    start = text.index("## Use a trained model")
    return text[start:text.index("\n## ", start + 10)]


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", section(), flags=re.DOTALL)


def test_the_readme_section_runs_from_python_and_the_command_line(trained_model_file, workspace, tmp_path,
                                                                  monkeypatch, capsys):
    training, commands = blocks("bash")
    assert training.strip().startswith("mela learn-meta-repr dataset=glyphs") and "run_name=quick" in training
    # The training command is a plain step (tested with the steps); a model trained by the tests stands in for
    # its run (16 px synthetic images: the glyphs are resized for it, with a note).
    run = saves_dir(workspace) / "learn_meta_repr" / "quick"
    run.mkdir(parents=True)
    shutil.copy(trained_model_file, run / "model.pt")
    (run / "done.json").write_text('{"finished": "now", "dataset": "glyphs", "backbone": "convnet4"}')
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks("python")[0], "README.md", "exec"), {})  # noqa: S102 - our own README
    printed = capsys.readouterr().out
    assert "(75, 64)" in printed and "accuracy" in printed
    assert sorted(p.name for p in (tmp_path / "glyph-model").iterdir()) == ["mela_model.json", "model.onnx",
                                                                           "model.safetensors"]
    for line in commands.strip().splitlines():
        argv = shlex.split(line.split("  #")[0])
        assert argv[0] == "mela"
        if argv[1] == "meta-eval":
            argv += ["n_queries=5", "progress=false"]  # the README's evaluation, smaller
        assert main(argv[1:]) == 0, line
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 75 and rows[0].startswith("task,path,predicted,probability,top1")
    features = np.load(tmp_path / "features.npz")
    assert features["features"].shape == (75, 64) and len(features["paths"]) == 75
    assert (tmp_path / "glyph-model" / "model.torchscript.pt").is_file()
