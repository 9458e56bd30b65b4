"""Live progress: a bar with rate and time left on a terminal, plain lines elsewhere.

``progress=auto`` (the default) shows bars only when stderr is a terminal, so CI logs,
pipes and ``log.txt`` get one readable line per epoch instead of carriage-return soup.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, TypeVar

from tqdm import tqdm

from mela.errors import MelaError

T = TypeVar("T")

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def parse_auto_flag(name: str, setting: bool | str | None) -> bool | None:
    """``true``/``false`` (bool or text) -> bool, ``auto`` -> None; anything else is a one-line MelaError."""
    if isinstance(setting, bool):
        return setting
    if isinstance(setting, str):
        text = setting.strip().lower()
        if text == "auto":
            return None
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise MelaError(f"{name} must be auto, true or false, got {setting!r}")


def resolve_progress(setting: bool | str, stream: IO[str] | None = None) -> bool:
    """Whether to draw progress bars: ``auto`` means stderr (or ``stream``) is an interactive terminal."""
    flag = parse_auto_flag("progress", setting)
    if flag is not None:
        return flag
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(iterable: Iterable[T], enabled: bool, desc: str, total: int | None = None,
                 unit: str = "it", mininterval: float = 0.1) -> Iterator[T]:
    """Iterate ``iterable``, drawing a bar with rate and time left when ``enabled``; the bar vanishes when done.

    Off, it is a plain pass-through (no tqdm object touches the stream), so logs stay clean.
    """
    if not enabled:
        yield from iterable
        return
    bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"
    # A terminal that reports no size (some ptys, `docker run -t`) gets no bar at all from tqdm: assume 80 x 24.
    size = {"dynamic_ncols": True} if terminal_columns(sys.stderr) else {"ncols": 80, "nrows": 24}
    with tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, bar_format=bar_format,
              mininterval=mininterval, miniters=1 if mininterval == 0 else None, **size) as bar:
        yield from bar


def terminal_columns(stream: IO[str]) -> int:
    """The width of the terminal behind ``stream``; 0 when it is not one or reports no size."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def format_duration(seconds: float) -> str:
    """``12.4 s``, ``3 min 05 s``, ``2 h 07 min``: short enough for a log line, precise where it matters."""
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {seconds}")
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def time_left(durations: list[float], epochs_done: int, epochs_total: int) -> float | None:
    """Seconds left, from the mean of the epoch durations seen in this process; None before the first one.

    Only this process's epochs count: a resumed run has no durations for the epochs it skipped.
    """
    if not durations or epochs_done >= epochs_total:
        return None if not durations else 0.0
    return sum(durations) / len(durations) * (epochs_total - epochs_done)


def _format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_epoch_line(epoch: int, epochs: int, seconds: float, record: Mapping[str, object],
                      eta: float | None = None) -> str:
    """One line per epoch: ``epoch 3/8 12.4 s (1 min 02 s left) lr=0.05 loss=1.234 val_1shot=48.75``.

    ``record`` is the Trainer's epoch record; its ``epoch`` and ``seconds`` keys are shown in front, not repeated.
    """
    head = f"epoch {epoch}/{epochs} {format_duration(seconds)}"
    if eta is not None and epoch < epochs:
        head += f" ({format_duration(eta)} left)"
    body = " ".join(f"{k}={_format_value(v)}" for k, v in record.items() if k not in ("epoch", "seconds", "step"))
    return f"{head} {body}".rstrip()
