"""Check mela as a user installs it: build the sdist and wheel, check what they hold, install the wheel into a fresh
virtual environment outside the checkout and run the commands a new user runs first (CI: ``make wheel-check``).

    python tools/wheel_check.py                    # build, check, install, run (1.5 min on 2 cores)
    python tools/wheel_check.py --contents DIST/mela-0.3.0-py3-none-any.whl   # only the content check

1. ``python -m build`` writes the sdist, then the wheel built from that sdist (so both are checked).
2. Content check (first, and cheap): every module, ``conf/**/*.yaml``, ``data/assets/*`` and ``py.typed`` of
   ``src/mela`` must be in the wheel and the sdist, the wheel holds nothing that is not in ``src/mela`` (no tests,
   no byte code), its metadata carries this checkout's version and the ``mela`` command.
3. A fresh virtual environment in a temporary folder: ``--torch`` first (``torch==2.13.0``: the CPU wheel on our
   machines), then the built wheel, not editable, against ``constraints.txt``.
4. From a temporary folder (the source tree cannot leak in), ``WORKSPACE`` a temporary folder too: ``mela
   --version``, ``mela -V``, ``python -m mela --version``, ``mela data check glyphs``, a tiny ``mela pipeline``
   (one epoch per step on 20 glyph classes: seconds), then the README's Python import lines, with ``mela`` imported
   from the environment's site-packages and ``dir(mela)`` the public API.

Exits 1 with one line per problem. Only the standard library is used here; ``build`` must be importable by the
Python that runs this (it is in the dev extra).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mela"
SDIST_FILES = ("pyproject.toml", "README.md", "LICENSE")

# The tiny pipeline: 20 glyph classes (12 train, 4 val, 4 test), 16 designs each, one epoch per step.
SLICE = """
import json, sys
from pathlib import Path
import numpy as np
from mela.data import glyphs
folder = Path(sys.argv[1])
train = glyphs.load(folder, "train")
keep = np.concatenate([np.flatnonzero(train.labels == c)[:16] for c in range(20)])
names = np.array([f"c{c:02d}" for c in range(20)])
np.savez(folder / "slice.npz", images=train.images[keep, :, :, 0], labels=names[train.labels[keep]])
split = {"train": names[:12].tolist(), "val": names[12:16].tolist(), "test": names[16:].tolist()}
(folder / "split.json").write_text(json.dumps(split))
"""
TINY = ["learn_meta_repr.epochs=1", "learn_meta_repr.lr_decay_epochs=1", "learn_labeler.epochs=1",
        "learn_labeler.lr_decay_epochs=1", "learn_labeler.K=40", "sup_baseline.epochs=1",
        "sup_baseline.lr_decay_epochs=1", "fine_tune.epochs=1", "n_queries=2", "val_db_size=10",
        "test_db_size=20", "meta_eval.n_queries=5", "n_ways=4", "image_size=32", "run_name=wheel_check"]
# After the README's import lines: mela comes from the environment, and dir(mela) is the public API.
API_CHECK = """
import sys
assert not mela.__file__.startswith(sys.argv[1]), f"mela imported from the checkout: {mela.__file__}"
dunders = {n for n in vars(mela) if n.startswith("__") and n.endswith("__")}
assert set(dir(mela)) == set(mela.__all__) | dunders, sorted(set(dir(mela)) ^ (set(mela.__all__) | dunders))
missing = [n for n in mela.__all__ if getattr(mela, n, None) is None]
assert not missing, missing
print(f"import mela: {len(mela.__all__)} public names from {mela.__file__}")
"""


def source_version(package: Path = PACKAGE) -> str:
    """The version written in ``_version.py`` (read, not imported: the checkout's mela may not be importable)."""
    return re.search(r'__version__ = "([^"]+)"', (package / "_version.py").read_text()).group(1)


def expected_files(package: Path = PACKAGE) -> set[str]:
    """What an install of mela needs, as ``mela/...`` paths: modules, configs, assets and ``py.typed``."""
    found = set()
    for path in package.rglob("*"):
        relative = path.relative_to(package)
        if not path.is_file() or "__pycache__" in relative.parts:
            continue
        parts = relative.parts
        if (path.suffix == ".py" or relative.as_posix() == "py.typed"
                or (parts[0] == "conf" and path.suffix == ".yaml") or parts[:2] == ("data", "assets")):
            found.add(f"mela/{relative.as_posix()}")
    return found


def wheel_problems(wheel: Path, package: Path = PACKAGE) -> list[str]:
    """One line per problem of a built wheel: a needed file missing, a file not from ``src/mela``, bad metadata."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        meta = {Path(n).name: archive.read(n).decode() for n in names
                if n.endswith(".dist-info/METADATA") or n.endswith(".dist-info/entry_points.txt")}
    problems = [f"{wheel.name} lacks {name}" for name in sorted(expected_files(package) - names)]
    problems += [f"{wheel.name} holds {name}, which is not a file of src/mela" for name in sorted(names)
                 if ".dist-info/" not in name and not (package.parent / name).is_file()]
    problems += [f"{wheel.name} holds byte code {name}" for name in sorted(names) if name.endswith(".pyc")]
    version = source_version(package)
    if f"\nVersion: {version}\n" not in meta.get("METADATA", ""):
        problems.append(f"{wheel.name}: METADATA does not say Version: {version}")
    if not re.search(r"^mela\s*=\s*mela\.cli:main$", meta.get("entry_points.txt", ""), re.MULTILINE):
        problems.append(f"{wheel.name}: no console script mela = mela.cli:main")
    return problems


def sdist_problems(sdist: Path, package: Path = PACKAGE) -> list[str]:
    """One line per file of ``src/mela`` (and pyproject, README, LICENSE) that the source archive lacks."""
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    needed = {f"src/{name}" for name in expected_files(package)} | set(SDIST_FILES)
    return [f"{sdist.name} lacks {name}" for name in sorted(needed - names)]


def describe(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        infos = archive.infolist()
    unpacked = sum(info.file_size for info in infos)
    return (f"{wheel.name}: {len(infos)} files, {wheel.stat().st_size / 1e6:.1f} MB "
            f"({unpacked / 1e6:.1f} MB unpacked)")


def run(command: list[str], **kwargs) -> str:
    """Run one command; on failure print its output and raise SystemExit(1). Returns its stdout."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    shown = " ".join("CODE" if "\n" in c else Path(c).name if os.sep in c else c for c in command)
    print(f"{time.perf_counter() - start:6.1f} s  {shown[:110]}", flush=True)
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
        print(f"wheel check: failed ({done.returncode}): {' '.join(command)}", file=sys.stderr)
        raise SystemExit(1)
    return done.stdout


def readme_import_lines(readme: Path = ROOT / "README.md") -> list[str]:
    """The ``import mela`` / ``from mela ...`` lines of the README's Python examples, in order, once each."""
    lines, in_python = [], False
    for line in readme.read_text().splitlines():
        if line.startswith("```"):
            in_python = line.strip() == "```python"
        elif in_python and re.match(r"(import mela\b|from mela\b)", line):
            lines.append(line.split("#", 1)[0].rstrip())
    return list(dict.fromkeys(lines))


def check_install(wheel: Path, tmp: Path, torch: str, constraints: Path | None) -> None:
    venv, work, workspace = tmp / "venv", tmp / "work", tmp / "workspace"
    work.mkdir()
    run([sys.executable, "-m", "venv", str(venv)])
    python, mela = str(venv / "bin" / "python"), str(venv / "bin" / "mela")
    pin = ["-c", str(constraints)] if constraints else []
    # --no-compile: no byte code for all of torch up front (about 20 s); Python writes it for what is imported.
    run([python, "-m", "pip", "install", "--quiet", "--no-compile", torch], cwd=work)
    run([python, "-m", "pip", "install", "--quiet", "--no-compile", *pin, str(wheel)], cwd=work)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env |= {"WORKSPACE": str(workspace), "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"}
    version = source_version()
    for command in ([mela, "--version"], [mela, "-V"], [python, "-m", "mela", "--version"]):
        out = run(command, cwd=work, env=env).strip()
        if not out.startswith(f"mela {version} (torch ") or "device: " not in out:
            print(f"wheel check: {' '.join(command[-2:])} printed {out!r}", file=sys.stderr)
            raise SystemExit(1)
    print("  " + out)
    run([mela, "data", "check", "glyphs"], cwd=work, env=env)
    run([python, "-c", SLICE, str(work)], cwd=work, env=env)
    out = run([mela, "pipeline", "dataset=custom", f"custom_path={work / 'slice.npz'}",
               f"custom_split={work / 'split.json'}", *TINY], cwd=work, env=env)
    results = Path(out.strip().splitlines()[-1])
    if results.name != "results.json" or not results.is_file():
        print(f"wheel check: mela pipeline did not end with its results.json: {out[-2000:]}", file=sys.stderr)
        raise SystemExit(1)
    imports = readme_import_lines()
    if "import mela" not in imports:
        print("wheel check: the README shows no `import mela` line", file=sys.stderr)
        raise SystemExit(1)
    print(run([python, "-c", "\n".join(imports) + API_CHECK, str(ROOT)], cwd=work, env=env).strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contents", type=Path, metavar="WHEEL", help="only check what this built wheel holds")
    parser.add_argument("--torch", default=os.environ.get("TORCH", "torch==2.13.0"),
                        help="installed first in the fresh environment (default: $TORCH or torch==2.13.0)")
    parser.add_argument("--constraints", default=str(ROOT / "constraints.txt"),
                        help="pins for the wheel's dependencies ('' for none)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="copy the built sdist and wheel here")
    args = parser.parse_args(argv)
    if args.contents:
        problems = wheel_problems(args.contents)
        print("\n".join(problems) if problems else describe(args.contents))
        return 1 if problems else 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mela-wheel-check-") as folder:
        tmp = Path(folder)
        dist = tmp / "dist"
        run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], cwd=tmp)
        wheel, sdist = next(dist.glob("mela-*.whl")), next(dist.glob("mela-*.tar.gz"))
        problems = wheel_problems(wheel) + sdist_problems(sdist)
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 1
        print(f"  {describe(wheel)}; {sdist.name}: {sdist.stat().st_size / 1e6:.1f} MB")
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for built in (wheel, sdist):
                shutil.copy2(built, args.keep)
        check_install(wheel, tmp, args.torch, Path(args.constraints).resolve() if args.constraints else None)
        cleanup = time.perf_counter()
    print(f"{time.perf_counter() - cleanup:6.1f} s  removing the temporary folder")
    print(f"wheel check: passed in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
