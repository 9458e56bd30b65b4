"""The whole pipeline through the `mela` command, on a tiny slice of the built-in glyphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mela.cli import main
from mela.data import glyphs

FAST = ["learn_meta_repr.epochs=1", "learn_meta_repr.lr_decay_epochs=1", "learn_labeler.epochs=1",
        "learn_labeler.lr_decay_epochs=1", "learn_labeler.K=40", "sup_baseline.epochs=1",
        "sup_baseline.lr_decay_epochs=1", "fine_tune.epochs=1", "n_queries=2", "val_db_size=10",
        "test_db_size=20", "meta_eval.n_queries=5", "n_ways=4"]


def write_glyph_slice(folder: Path, n_classes: int = 20, designs: int = 16) -> tuple[Path, Path]:
    """An .npz of the first ``n_classes`` train glyph classes and a JSON class split (12 / 4 / 4)."""
    train = glyphs.load(Path("."), "train")
    keep = np.concatenate([np.flatnonzero(train.labels == c)[:designs] for c in range(n_classes)])
    names = [f"c{c:02d}" for c in range(n_classes)]
    npz = folder / "slice.npz"
    np.savez(npz, images=train.images[keep, :, :, 0], labels=np.array(names)[train.labels[keep]])
    split = folder / "split.json"
    split.write_text(json.dumps({"train": names[:12], "val": names[12:16], "test": names[16:]}))
    return npz, split


def test_the_pipeline_runs_end_to_end_from_the_cli_and_resumes(tmp_path, workspace, capsys):
    npz, split = write_glyph_slice(tmp_path)
    args = ["pipeline", "dataset=custom", f"custom_path={npz}", f"custom_split={split}", "image_size=32",
            "run_name=tiny", *FAST]
    assert main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    results_path = Path(out[-1])
    assert results_path.name == "results.json" and results_path.exists()
    results = json.loads(results_path.read_text())
    assert {(r["model"], r["shots"]) for r in results["rows"]} == {
        (m, k) for m in ("meta_repr", "mela", "mela_finetune", "oracle") for k in (1, 5)}
    assert all(set(r) == {"model", "shots", "acc", "ci"} for r in results["rows"])
    assert all(25.0 < r["acc"] <= 100.0 for r in results["rows"])  # 4-way chance is 25 %
    labeler = results["labeler"]
    assert 8 <= labeler["true_classes"] <= 12  # classes that made it into the no-replacement task pile
    assert labeler["tasks_kept"] > 0 and 0.0 < labeler["clustering_accuracy"] <= 1.0
    assert {"clusters", "true_classes", "clustering_accuracy", "tasks_kept"} <= set(labeler)
    assert any(line.startswith("oracle") for line in out)

    # Rerunning the same run name reuses every finished step and gives the same table.
    assert main(args) == 0
    again = capsys.readouterr().out
    assert again.count("already finished") == 4
    assert json.loads(results_path.read_text())["rows"] == results["rows"]
