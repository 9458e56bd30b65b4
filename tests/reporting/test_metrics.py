"""metrics.csv (one row per epoch, late columns, resume) and the TensorBoard events, with and without tensorboard."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest

from mela.errors import MelaError
from mela.reporting import metrics
from mela.reporting.metrics import METRICS_FILE, MetricsWriter, ordered_columns, read_metrics
from mela.reporting.progress import format_epoch_line

# What the Trainer records for a learn_labeler run whose validation starts at the first lr decay (epoch 2).
RECORDS = [
    {"epoch": 1, "lr": 0.05, "loss": 1.5127183130809239, "train_acc": 26.428571428571427, "seconds": 1.25},
    {"epoch": 2, "lr": 0.005000000000000001, "loss": 1.3586169345038277, "train_acc": 30.714285714285715,
     "val_1shot": 46.25, "val_5shot": 61.25, "seconds": 2.5},
    {"epoch": 3, "lr": 0.0005, "loss": 1.2, "train_acc": 33.0, "val_1shot": 50.0, "val_5shot": 64.5,
     "seconds": 2.0},
]


def csv_rows(run_dir):
    with (run_dir / METRICS_FILE).open(newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.fixture()
def no_tensorboard(monkeypatch):
    """Make ``import tensorboard`` fail as it does when the package is not installed."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setattr(metrics, "_note_shown", False)


def test_columns_go_step_epoch_lr_losses_train_accuracy_validation_by_shots_then_seconds():
    keys = ["seconds", "val_5shot", "train_acc", "epoch", "hinge", "val_1shot", "mse", "lr", "val_20shot", "step"]
    assert ordered_columns(keys) == ["step", "epoch", "lr", "hinge", "mse", "train_acc", "val_1shot", "val_5shot",
                                     "val_20shot", "seconds"]


def test_the_csv_holds_the_numbers_the_log_printed_and_grows_a_column_when_validation_starts(tmp_path,
                                                                                           no_tensorboard):
    with MetricsWriter(tmp_path, "learn_labeler", tensorboard="auto", log=lambda _m: None) as writer:
        writer.log_epoch(RECORDS[0])
        header, rows = csv_rows(tmp_path)
        assert header == ["step", "epoch", "lr", "loss", "train_acc", "seconds"]
        for record in RECORDS[1:]:
            writer.log_epoch(record)
    header, rows = csv_rows(tmp_path)
    assert header == ["step", "epoch", "lr", "loss", "train_acc", "val_1shot", "val_5shot", "seconds"]
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["val_1shot"] == "" and rows[0]["step"] == "learn_labeler"
    for record, row in zip(RECORDS, read_metrics(tmp_path / METRICS_FILE), strict=True):
        assert row == {"step": "learn_labeler", **record}  # exact floats, not rounded
        # The log line and the CSV agree on what they show.
        printed = format_epoch_line(record["epoch"], 3, record["seconds"], record)
        assert printed == format_epoch_line(int(row["epoch"]), 3, row["seconds"], row)


def test_a_resumed_run_appends_without_duplicating_epochs(tmp_path, no_tensorboard):
    with MetricsWriter(tmp_path, "sup_baseline", tensorboard=False) as writer:
        writer.log_epoch(RECORDS[0])
        writer.log_epoch(RECORDS[1])
    # The process died after logging epoch 2 but before its checkpoint: the resume restarts at epoch 2.
    redo = {**RECORDS[1], "loss": 1.3, "seconds": 2.75}
    with MetricsWriter(tmp_path, "sup_baseline", tensorboard=False) as writer:
        writer.log_epoch(redo)
        writer.log_epoch(RECORDS[2])
    rows = read_metrics(tmp_path / METRICS_FILE)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[1]["loss"] == 1.3 and rows[1]["seconds"] == 2.75
    # A clean resume (last checkpoint = last row) only appends.
    with MetricsWriter(tmp_path, "sup_baseline", tensorboard=False) as writer:
        writer.log_epoch({**RECORDS[2], "epoch": 4})
    assert [r["epoch"] for r in read_metrics(tmp_path / METRICS_FILE)] == [1, 2, 3, 4]


def test_without_tensorboard_the_csv_is_written_and_the_note_shows_once(tmp_path, no_tensorboard):
    notes: list[str] = []
    for step in ("learn_meta_repr", "learn_labeler"):
        with MetricsWriter(tmp_path / step, step, log=notes.append) as writer:
            (tmp_path / step).mkdir()
            assert not writer.tensorboard_enabled
            writer.log_epoch(RECORDS[0])
            writer.log_labeler([{"centroids_after": 4}], np.array([3, 4]))
        assert (tmp_path / step / METRICS_FILE).exists()
        assert not (tmp_path / step / "tb").exists()
    assert notes == ["pip install mela[tb] for TensorBoard event files (metrics.csv is written either way)"]


def test_asking_for_tensorboard_without_the_package_is_one_clear_error(tmp_path, no_tensorboard):
    with pytest.raises(MelaError, match=r"tensorboard=true needs the tensorboard package: pip install mela\[tb\]"):
        MetricsWriter(tmp_path, "fine_tune", tensorboard=True)


def test_tensorboard_false_writes_no_events_even_when_the_package_is_there(tmp_path):
    with MetricsWriter(tmp_path, "fine_tune", tensorboard="false") as writer:
        writer.log_epoch(RECORDS[0])
    assert not (tmp_path / "tb").exists()


def test_the_event_file_holds_the_epoch_scalars_and_the_labeler_counts(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    passes = [{"centroids_before": 40, "spawned": 2, "pruned": 30, "merged": 1, "centroids_after": 11,
               "clustering_rate": 0.9},
              {"centroids_before": 11, "spawned": 0, "pruned": 0, "merged": 0, "centroids_after": 11,
               "clustering_rate": 1.0}]
    sizes = np.array([5, 9, 9, 12, 30])
    with MetricsWriter(tmp_path, "learn_labeler", tensorboard=True) as writer:
        for record in RECORDS:
            writer.log_epoch(record)
        writer.log_labeler(passes, sizes)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    assert {"train/lr", "train/loss", "train/train_acc", "val/1shot", "val/5shot",
            "time/epoch_seconds"} <= set(events.Tags()["scalars"])
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in RECORDS])
    assert [(e.step, e.value) for e in events.Scalars("val/1shot")] == [(2, 46.25), (3, 50.0)]
    labeler = EventAccumulator(str(tmp_path / "tb" / "labeler"), size_guidance={"scalars": 0, "histograms": 0})
    labeler.Reload()
    assert {"labeler/centroids_after", "labeler/pruned"} <= set(labeler.Tags()["scalars"])
    assert [(e.step, e.value) for e in labeler.Scalars("labeler/pruned")] == [(1, 30.0), (2, 0.0)]
    histogram = labeler.Histograms("labeler/cluster_sizes")[0].histogram_value
    assert (histogram.num, histogram.min, histogram.max, histogram.sum) == (5, 5, 30, 65)


def test_the_labeler_counts_survive_the_training_that_follows_in_a_new_writer(tmp_path):
    """learn_labeler's order: the counts first, then a fresh writer for the epochs (whose epoch 1 would purge
    every earlier event at step 1 and above if both shared one TensorBoard run)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsWriter(tmp_path, "learn_labeler", tensorboard=True) as writer:
        writer.log_labeler([{"pruned": 30}, {"pruned": 2}], np.array([3, 4]))
    with MetricsWriter(tmp_path, "learn_labeler", tensorboard=True) as writer:
        for record in RECORDS:
            writer.log_epoch(record)
    labeler = EventAccumulator(str(tmp_path / "tb" / "labeler"))
    labeler.Reload()
    assert [(e.step, e.value) for e in labeler.Scalars("labeler/pruned")] == [(1, 30.0), (2, 2.0)]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]


def test_a_resumed_run_purges_the_events_of_the_epochs_it_repeats(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsWriter(tmp_path, "sup_baseline", tensorboard=True) as writer:
        writer.log_epoch(RECORDS[0])
        writer.log_epoch(RECORDS[1])
    with MetricsWriter(tmp_path, "sup_baseline", tensorboard=True) as writer:
        writer.log_epoch({**RECORDS[1], "loss": 0.25})
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, pytest.approx(RECORDS[0]["loss"])),
                                                                         (2, 0.25)]
