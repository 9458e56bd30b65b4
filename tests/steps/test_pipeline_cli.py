"""The whole pipeline through the `mela` command, on a tiny slice of the built-in glyphs."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from mela.cli import main
from mela.data import glyphs
from mela.reporting.metrics import read_metrics
from mela.reporting.progress import format_duration
from mela.steps.pipeline import TRAINING_STEPS

EPOCH_LINE = re.compile(r"\| epoch (\d+)/(\d+) (\d+\.\d s)(?: \((.+) left\))? (.*)$")
PNG = b"\x89PNG\r\n\x1a\n"

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
    saves = results_path.parents[2]
    check_metrics_match_the_log(saves)
    check_every_plot_was_drawn(saves, results_path.parent)
    md_path, html_path = Path(out[-3]), Path(out[-2])  # the report's paths, just before results.json's
    assert (md_path, html_path) == (results_path.parent / "report.md", results_path.parent / "report.html")
    check_the_report_table_matches_the_results(md_path.read_text(), results)
    check_the_page_is_well_formed_and_self_contained(html_path.read_text())

    # Rerunning the same run name reuses every finished step and gives the same table.
    assert main(args) == 0
    again = capsys.readouterr().out
    assert again.count("already finished") == 4
    assert json.loads(results_path.read_text())["rows"] == results["rows"]


def check_metrics_match_the_log(saves: Path) -> None:
    """Every training step's metrics.csv holds, epoch by epoch, the numbers its log.txt printed."""
    for step in TRAINING_STEPS:
        run_dir = saves / step / "tiny"
        logged = [EPOCH_LINE.search(line) for line in (run_dir / "log.txt").read_text().splitlines()]
        logged = [m for m in logged if m]
        rows = read_metrics(run_dir / "metrics.csv")
        assert len(logged) == len(rows) == 1, step  # FAST: one epoch per step
        for match, row in zip(logged, rows, strict=True):
            epoch, epochs, duration, left, body = match.groups()
            assert row["step"] == step and row["epoch"] == int(epoch)
            assert duration == format_duration(row["seconds"])
            assert (left is None) == (epoch == epochs)  # time left on every epoch but the last
            printed = dict(pair.split("=") for pair in body.split())
            assert set(printed) == set(row) - {"step", "epoch", "seconds"}
            assert {k: f"{row[k]:.4g}" for k in printed} == printed
        assert "val_5shot" in rows[-1] and "loss" in rows[-1]


def check_every_plot_was_drawn(saves: Path, pipeline_dir: Path) -> None:
    pngs = [saves / step / "tiny" / "learning_curves.png" for step in TRAINING_STEPS]
    pngs += [saves / "learn_labeler" / "tiny" / f"{name}.png" for name in ("labeler_passes", "cluster_sizes",
                                                                         "contingency")]
    pngs.append(pipeline_dir / "accuracy.png")
    for png in pngs:
        assert png.read_bytes()[:8] == PNG, png
    if (saves / "learn_meta_repr" / "tiny" / "tb").is_dir():  # tensorboard=auto: events when it is installed
        assert list((saves / "learn_labeler" / "tiny" / "tb" / "labeler").glob("events.out.tfevents.*"))


def check_the_report_table_matches_the_results(markdown: str, results: dict) -> None:
    """The pipeline table of report.md: one row per model, ``acc ± ci`` per shot count as in results.json."""
    lines = markdown.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| pipeline | data set |"))
    columns = [c.strip() for c in lines[header].strip("|").split("|")]
    table = {}
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(columns, (c.strip() for c in line.strip("|").split("|")), strict=True))
        table[cells["model"]] = cells
        assert (cells["pipeline"], cells["data set"], cells["backbone"]) == ("tiny", "custom", "convnet4")
    expected = {}
    for r in results["rows"]:
        expected.setdefault(r["model"], {})[f"{r['shots']}-shot acc (95% CI)"] = f"{r['acc']:.2f} ± {r['ci']:.2f}"
    assert {m: {k: v for k, v in cells.items() if "-shot" in k} for m, cells in table.items()} == expected


def check_the_page_is_well_formed_and_self_contained(page: str) -> None:
    root = ET.fromstring(page.split("\n", 1)[1])  # after <!DOCTYPE html>: the page parses as XML
    images = root.findall(".//img")
    plots = [img for img in images if img.get("class") != "strip"]
    assert len(plots) == 8  # four learning curves, three labeler plots, the accuracy plot
    assert len(images) > len(plots)  # and the learn_labeler gallery's thumbnail strips
    assert all(img.get("src", "").startswith("data:image/png;base64,") for img in images)
    assert not [e for e in root.iter() if e.tag in ("script", "link", "iframe")]
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
