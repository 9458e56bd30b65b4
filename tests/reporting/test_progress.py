"""progress=auto/true/false, the per-epoch line and the time-left estimate."""

from __future__ import annotations

import io
import os
import sys

import pytest

from mela.errors import MelaError
from mela.reporting.progress import (
    format_duration,
    format_epoch_line,
    parse_auto_flag,
    progress_bar,
    resolve_progress,
    terminal_columns,
    time_left,
)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_progress_follows_whether_the_stream_is_a_terminal():
    assert resolve_progress("auto", FakeTerminal()) is True
    assert resolve_progress("auto", io.StringIO()) is False
    assert resolve_progress("AUTO ", FakeTerminal()) is True


def test_explicit_true_and_false_win_over_the_terminal_check():
    assert resolve_progress(True, io.StringIO()) is True
    assert resolve_progress("true", io.StringIO()) is True
    assert resolve_progress(False, FakeTerminal()) is False
    assert resolve_progress("false", FakeTerminal()) is False


@pytest.mark.parametrize("bad", ["sometimes", "", 2, None, 1.0])
def test_a_setting_that_is_not_auto_true_or_false_is_one_clear_error(bad):
    with pytest.raises(MelaError, match=r"progress must be auto, true or false, got") as info:
        resolve_progress(bad)
    assert "\n" not in str(info.value)


def test_the_auto_flag_parser_names_the_setting_it_checks():
    assert parse_auto_flag("tensorboard", "auto") is None
    with pytest.raises(MelaError, match="^tensorboard must be"):
        parse_auto_flag("tensorboard", "maybe")


def test_a_disabled_progress_bar_passes_items_through_without_drawing(capsys):
    assert list(progress_bar(range(5), enabled=False, desc="epoch 1")) == [0, 1, 2, 3, 4]
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_an_enabled_progress_bar_shows_the_rate_and_the_time_left(capsys):
    assert list(progress_bar(iter(range(4)), enabled=True, desc="epoch 2", total=4, unit="task",
                             mininterval=0)) == [0, 1, 2, 3]
    err = capsys.readouterr().err
    assert "epoch 2:" in err and "4/4" in err
    assert "task/s" in err or "s/task" in err  # the rate
    assert "00:00<00:00" in err  # elapsed<remaining, once the rate is known


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_a_terminal_that_reports_no_size_still_gets_an_80_column_bar(monkeypatch):
    """A fresh pty (as under `script` or `docker run -t`) is 0 x 0: tqdm alone would draw nothing there."""
    leader, follower = os.openpty()
    with os.fdopen(follower, "w", buffering=1) as terminal:
        assert terminal_columns(terminal) == 0
        monkeypatch.setattr(sys, "stderr", terminal)
        assert list(progress_bar(range(3), enabled=True, desc="epoch 1", total=3, unit="step",
                                 mininterval=0)) == [0, 1, 2]
        drawn = os.read(leader, 65536).decode()
    os.close(leader)
    frames = [f for f in drawn.replace("\n", "").split("\r") if f.strip()]
    assert any("epoch 1:" in f and "3/3" in f for f in frames)
    assert max(len(f.rstrip()) for f in frames) == 80


@pytest.mark.parametrize(("seconds", "text"), [(0.04, "0.0 s"), (12.44, "12.4 s"), (59.94, "59.9 s"),
                                               (65, "1 min 05 s"), (3599.4, "59 min 59 s"), (7625, "2 h 07 min")])
def test_durations_read_naturally_at_every_scale(seconds, text):
    assert format_duration(seconds) == text


def test_time_left_is_the_mean_epoch_duration_times_the_epochs_to_go():
    assert time_left([], 0, 8) is None
    assert time_left([10.0, 14.0], 2, 8) == pytest.approx(72.0)
    # A resumed run only knows the epochs it ran itself: 2 timed epochs after resuming at epoch 5.
    assert time_left([3.0, 5.0], 7, 10) == pytest.approx(12.0)
    assert time_left([3.0], 10, 10) == 0.0


def test_the_epoch_line_shows_the_duration_time_left_and_every_metric_once():
    record = {"epoch": 3, "lr": 0.05, "loss": 1.23456, "train_acc": 26.428571, "val_1shot": 48.75, "seconds": 12.4}
    line = format_epoch_line(3, 8, 12.4, record, eta=62.0)
    assert line == "epoch 3/8 12.4 s (1 min 02 s left) lr=0.05 loss=1.235 train_acc=26.43 val_1shot=48.75"


def test_the_last_epoch_line_has_no_time_left():
    assert format_epoch_line(8, 8, 3.0, {"loss": 0.5}, eta=0.0) == "epoch 8/8 3.0 s loss=0.5"
