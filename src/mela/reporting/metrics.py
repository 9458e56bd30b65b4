"""Per-run numbers people can plot: ``metrics.csv`` (one row per epoch) and TensorBoard event files.

The CSV is always written (spreadsheets, pandas, ``mela report``); TensorBoard events are
written through the real ``SummaryWriter`` when the optional ``tensorboard`` package is
installed (``pip install mela[tb]``).
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from mela.errors import MelaError
from mela.reporting.progress import parse_auto_flag

METRICS_FILE = "metrics.csv"
TB_DIR = "tb"
LABELER_TB_DIR = "labeler"  # inside TB_DIR
TB_NOTE = "pip install mela[tb] for TensorBoard event files (metrics.csv is written either way)"

_note_shown = False  # the missing-TensorBoard note is shown once per process, not once per step


def _column_rank(key: str) -> tuple[int, float]:
    """Where a column goes: step, epoch, lr, losses, train accuracies, val accuracies by shot count, seconds."""
    fixed = {"step": 0, "epoch": 1, "lr": 2}
    if key in fixed:
        return fixed[key], 0.0
    if key == "seconds":
        return 7, 0.0
    if key.startswith("val_"):
        shots = re.fullmatch(r"val_(\d+)shot", key)
        return 6, float(shots.group(1)) if shots else math.inf
    if "acc" in key:
        return 5, 0.0
    return 4, 0.0


def ordered_columns(keys: Iterable[str]) -> list[str]:
    """The CSV header for ``keys``: fixed groups in a fixed order; first-seen order within a group."""
    unique = list(dict.fromkeys(keys))
    return sorted(unique, key=lambda k: (*_column_rank(k), unique.index(k)))


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same float
    return str(value)


def _tag(key: str) -> str:
    """TensorBoard tag: ``val_1shot`` -> ``val/1shot``, ``loss`` -> ``train/loss``, ``seconds`` -> ``time/...``."""
    if key.startswith("val_"):
        return f"val/{key[4:]}"
    if key == "seconds":
        return "time/epoch_seconds"
    return f"train/{key}"


def tensorboard_writer_class() -> type | None:
    """``torch.utils.tensorboard.SummaryWriter`` when the ``tensorboard`` package is importable, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


def _stderr_note(message: str) -> None:
    print(message, file=sys.stderr)


class MetricsWriter:
    """Appends one row per epoch to ``<run_dir>/metrics.csv`` and mirrors the numbers to TensorBoard.

    Args:
        run_dir: the run's folder.
        step: the step's name, written in every row (so CSVs of several steps concatenate).
        tensorboard: ``auto`` (events when the package is installed), ``true`` (required) or ``false``.
        log: where the one-time "how to get TensorBoard" note goes (default: stderr).

    A resumed run reopens the CSV: rows from the resumed epoch on are replaced, never duplicated.
    """

    def __init__(self, run_dir: Path, step: str, tensorboard: bool | str = "auto",
                 log: Callable[[str], None] | None = None) -> None:
        self.run_dir, self.step = Path(run_dir), step
        self.path = self.run_dir / METRICS_FILE
        self._log = log or _stderr_note
        self.columns, self.rows = self._read_existing()
        wanted = parse_auto_flag("tensorboard", tensorboard)
        self._writer_class = None if wanted is False else tensorboard_writer_class()
        if self._writer_class is None and wanted is True:
            raise MelaError("tensorboard=true needs the tensorboard package: pip install mela[tb], "
                            "or set tensorboard=auto")
        if self._writer_class is None and wanted is None:
            global _note_shown
            if not _note_shown:
                _note_shown = True
                self._log(TB_NOTE)
        self._tb = None

    @property
    def tensorboard_enabled(self) -> bool:
        return self._writer_class is not None

    def _read_existing(self) -> tuple[list[str], list[dict[str, str]]]:
        if not self.path.exists():
            return [], []
        with self.path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = [dict(row) for row in reader]
            return list(reader.fieldnames or []), rows

    def _open_events(self, log_dir: Path, first_step: int):
        """An event writer; where events were written before (a resumed run), those from ``first_step`` on are
        purged, so TensorBoard shows each step once."""
        before = any(log_dir.glob("events.out.tfevents.*"))
        return self._writer_class(log_dir=str(log_dir), purge_step=first_step if before else None)

    def _summary_writer(self, first_step: int):
        """The epoch event writer (``<run>/tb``), opened on first use."""
        if self._tb is None and self._writer_class is not None:
            self._tb = self._open_events(self.run_dir / TB_DIR, first_step)
        return self._tb

    def log_epoch(self, record: Mapping[str, object]) -> None:
        """Write one epoch (the Trainer's record: ``epoch``, ``lr``, losses, ``train_acc``, ``val_<k>shot``,
        ``seconds``) as a CSV row and as TensorBoard scalars at global step ``epoch``."""
        if "epoch" not in record:
            raise MelaError(f"a metrics record needs its epoch, got keys {sorted(record)}")
        epoch = int(record["epoch"])  # type: ignore[arg-type]
        row = {"step": self.step, **{k: _cell(v) for k, v in record.items()}}
        # A resumed run repeats epochs it had logged before its last checkpoint: the new rows win.
        before = len(self.rows)
        self.rows = [r for r in self.rows if not (r.get("step", self.step) == self.step
                                                   and r.get("epoch", "").isdigit() and int(r["epoch"]) >= epoch)]
        replaced = len(self.rows) != before
        self.rows.append(row)
        columns = ordered_columns([*self.columns, *row])
        if columns == self.columns and self.path.exists() and not replaced:
            with self.path.open("a", newline="") as f:  # the file holds every earlier row: append
                csv.DictWriter(f, columns, restval="").writerow(row)
        else:
            self.columns = columns
            self._rewrite()
        writer = self._summary_writer(epoch)
        if writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(_tag(key), float(value), epoch)
            writer.flush()

    def _rewrite(self) -> None:
        """The whole file again (a new column appeared, or a resume replaced rows), atomically."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        tmp = self.path.with_name(f".{METRICS_FILE}.tmp")
        tmp.write_text(buffer.getvalue())
        os.replace(tmp, self.path)

    def log_labeler(self, passes: list[dict], cluster_sizes: np.ndarray) -> None:
        """The labeler's per-pass counts (``labeler/<key>`` at step = pass number) and a histogram of cluster
        sizes (task classes per cluster). TensorBoard only: ``labeler_report.json`` already holds the numbers.

        They go to ``<run>/tb/labeler`` (its own TensorBoard run): in ``<run>/tb`` the training that follows
        would purge them, as a restart at epoch 1 purges every event from step 1 on.
        """
        if self._writer_class is None:
            return
        writer = self._open_events(self.run_dir / TB_DIR / LABELER_TB_DIR, 0)
        try:
            for i, counts in enumerate(passes, start=1):
                for key, value in counts.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        writer.add_scalar(f"labeler/{key}", float(value), i)
            sizes = np.asarray(cluster_sizes, dtype=np.float64)
            if sizes.size:
                writer.add_histogram("labeler/cluster_sizes", sizes, 0)
        finally:
            writer.close()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def read_metrics(path: Path) -> list[dict[str, float | str]]:
    """``metrics.csv`` rows with numbers as floats (``epoch`` as int) and empty cells left out."""
    rows = []
    with Path(path).open(newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, float | str] = {}
            for key, text in raw.items():
                if text in ("", None):
                    continue
                try:
                    row[key] = int(text) if key == "epoch" else float(text)
                except ValueError:
                    row[key] = text
            rows.append(row)
    return rows
