"""JSON files that are always valid JSON, and files of any kind that are never torn.

Python's json module writes ``NaN`` and ``Infinity`` by default, which no strict
JSON reader accepts (a 1-task evaluation has a NaN confidence interval). Here
non-finite floats become ``null``, files are replaced atomically (:func:`replaced_atomically`,
also for CSV, NPZ and HTML outputs), and OS errors or a damaged file are one line naming the path.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mela.errors import MelaError


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf floats as None, numpy scalars and arrays as Python values, paths as strings."""
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {key if isinstance(key, str) else str(json_safe(key)): json_safe(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(value) for value in obj]
    return obj


def dumps(obj: Any, indent: int | None = 1) -> str:
    """Strict JSON text of ``obj`` (see :func:`json_safe`); a TypeError names anything not representable."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


@contextlib.contextmanager
def replaced_atomically(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that add one, like ``np.savez``, keep it);
    when the block ends it replaces ``path`` in one rename. On any error the temporary file is removed and
    ``path`` is untouched; an OS error (full disk, unwritable folder) is one line naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise MelaError(f"cannot write {path} ({exc.strerror or exc}); check free disk space and that "
                            f"{path.parent} is a writable folder") from exc
        raise


def write_json_atomic(path: Path | str, obj: Any, indent: int | None = 1) -> None:
    """Write ``obj`` as strict JSON to ``path`` via a temporary file + rename; the temporary file never stays."""
    text = dumps(obj, indent) + "\n"
    with replaced_atomically(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def read_json(path: Path | str) -> Any:
    """Parse the JSON file at ``path``; missing, unreadable or damaged files are one-line MelaErrors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise MelaError(f"{path} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise MelaError(f"{path} is not valid JSON (not UTF-8 text); it is damaged: delete it or rerun the step "
                        "that writes it") from exc
    except OSError as exc:
        raise MelaError(f"cannot read {path} ({exc.strerror or exc}); check that it is a readable file") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MelaError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); it is "
                        "damaged: delete it or rerun the step that writes it") from exc
