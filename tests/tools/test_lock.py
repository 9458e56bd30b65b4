"""tools/lock.py turns ``pip freeze`` output into the pins of constraints.txt."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("mela_lock", ROOT / "tools" / "lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)


def test_pin_lines_drop_mela_comments_and_local_labels_and_sort_by_name():
    freeze = ("torch==2.13.0+cpu\n# Editable Git install with no remote (mela==0.3.0)\n-e /work/main\n"
              "numpy==2.4.6\nMela==0.3.0\nJinja2==3.1.6\nabsl-py==2.5.1\n\n")
    assert lock.pin_lines(freeze) == ["absl-py==2.5.1", "Jinja2==3.1.6", "numpy==2.4.6", "torch==2.13.0"]


def test_the_header_says_how_to_refresh_the_file():
    header = lock.HEADER.format(python="CPython 3.11.7, Linux x86_64")
    assert all(line.startswith("# ") for line in header.splitlines())
    assert "make lock" in header and "make test" in header and "CPython 3.11.7" in header
