"""Record the versions the tests pass with: ``constraints.txt``, which ``make test`` installs against (``make lock``).

    python tools/lock.py [--torch torch==2.13.0] [--out constraints.txt]

Creates a fresh virtual environment in a temporary folder, installs ``--torch`` first (the Makefile's ``TORCH``),
then ``-e .[dev]`` from this checkout with nothing pinned (as ``make test`` installs it, editable: no
``build/`` folder is left in the checkout), and writes what pip installed (less mela itself) as
``name==version`` lines. Local version labels are dropped (``torch==2.13.0+cpu`` is written ``torch==2.13.0``,
which pip matches with any build of that release). Only the standard library is used: it runs with any Python
that can create a virtual environment. Run ``make test`` afterwards and commit the file when the suite passes.
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = """# What `make test` and CI install (pip install -c constraints.txt -e '.[dev]'), and the suite passed with.
# Written by `make lock` (tools/lock.py) on {python}. No hand edits: rerun `make lock`, then `make test`.
"""


def pin_lines(freeze_output: str) -> list[str]:
    """``pip freeze`` lines as sorted ``name==version`` pins: no mela, no local version labels, no comments."""
    pins = {}
    for line in freeze_output.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-e ")) or "==" not in line:
            continue
        name, version = line.split("==", 1)
        if re.sub(r"[-_.]+", "-", name).lower() == "mela":
            continue
        pins[name] = version.split("+", 1)[0]
    return [f"{name}=={pins[name]}" for name in sorted(pins, key=str.lower)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", default="torch==2.13.0", help="the torch requirement installed first")
    parser.add_argument("--out", type=Path, default=ROOT / "constraints.txt")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mela-lock-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
        subprocess.run([*pip, "install", "--quiet", args.torch], check=True)
        subprocess.run([*pip, "install", "--quiet", "-e", f"{ROOT}[dev]"], check=True)
        freeze = subprocess.run([*pip, "freeze"], check=True, capture_output=True, text=True).stdout
    python = f"CPython {platform.python_version()}, {platform.system()} {platform.machine()}"
    args.out.write_text(HEADER.format(python=python) + "\n".join(pin_lines(freeze)) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
