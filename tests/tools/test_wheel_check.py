"""The wheel check's content check (tools/wheel_check.py) against a real wheel built from a copy of this checkout.

One build (a few seconds): the copy's pyproject.toml leaves the configs (``conf/*.yaml``) out of the package data,
so the check must name exactly those files; the wheel is then doctored (the configs put back; ``py.typed``, the glyph
asset or a module taken out; a stray file added) to show each kind of problem on its own. (``py.typed`` cannot be
left out through pyproject.toml: setuptools adds it by itself.) The install-and-run half of the check runs in CI
(``make wheel-check``), not here.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_wheel_check():
    spec = importlib.util.spec_from_file_location("mela_wheel_check", ROOT / "tools" / "wheel_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


wc = _load_wheel_check()


@pytest.fixture(scope="module")
def build_without_configs(tmp_path_factory) -> tuple[Path, Path]:
    """(wheel, package folder) of a copy of the checkout whose package data forgets the configs."""
    pytest.importorskip("build")
    copy = tmp_path_factory.mktemp("checkout")
    shutil.copytree(wc.PACKAGE, copy / "src" / "mela", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("README.md", "LICENSE"):
        shutil.copy2(ROOT / name, copy / name)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert pyproject.count('mela = ["conf/*.yaml", "conf/**/*.yaml", ') == 1
    (copy / "pyproject.toml").write_text(pyproject.replace('"conf/*.yaml", "conf/**/*.yaml", ', ""))
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(copy)], check=True,
                   capture_output=True)
    return next(dist.glob("mela-*.whl")), copy / "src" / "mela"


def _rewrite(wheel: Path, out: Path, drop: set[str] = frozenset(), add: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            if info.filename not in drop:
                target.writestr(info, source.read(info))
        for name, data in (add or {}).items():
            target.writestr(name, data)
    return out


def test_the_expected_files_are_every_module_config_asset_and_py_typed_of_the_package():
    expected = wc.expected_files()
    assert {"mela/__init__.py", "mela/__main__.py", "mela/cli.py", "mela/py.typed", "mela/conf/pipeline.yaml",
            "mela/data/assets/glyphs.npz", "mela/data/assets/NOTICE.md"} <= expected
    assert {f"mela/conf/{p.name}" for p in (wc.PACKAGE / "conf").glob("*.yaml")} <= expected
    modules = {f"mela/{p.relative_to(wc.PACKAGE).as_posix()}" for p in wc.PACKAGE.rglob("*.py")}
    assert modules <= expected and not any("__pycache__" in name for name in expected)


def _configs(package: Path) -> dict[str, bytes]:
    return {f"mela/conf/{path.name}": path.read_bytes() for path in sorted((package / "conf").glob("*.yaml"))}


def test_a_wheel_built_without_the_configs_in_the_package_data_fails_the_check_naming_each_config(
        build_without_configs):
    wheel, package = build_without_configs
    assert len(_configs(package)) >= 8
    assert wc.wheel_problems(wheel, package) == [f"{wheel.name} lacks {name}" for name in _configs(package)]
    assert wc.main(["--contents", str(wheel)]) == 1


def test_the_same_wheel_with_the_configs_put_back_passes_the_check(build_without_configs, tmp_path):
    wheel, package = build_without_configs
    fixed = _rewrite(wheel, tmp_path / wheel.name, add=_configs(package))
    assert wc.wheel_problems(fixed, package) == []


@pytest.mark.parametrize("name", ["mela/py.typed", "mela/data/assets/glyphs.npz", "mela/__main__.py"])
def test_a_wheel_missing_py_typed_the_glyph_asset_or_a_module_fails_the_check(build_without_configs, tmp_path, name):
    wheel, package = build_without_configs
    doctored = _rewrite(wheel, tmp_path / wheel.name, drop={name}, add=_configs(package))
    assert wc.wheel_problems(doctored, package) == [f"{wheel.name} lacks {name}"]


def test_a_wheel_holding_files_that_are_not_in_the_package_fails_the_check(build_without_configs, tmp_path):
    wheel, package = build_without_configs
    doctored = _rewrite(wheel, tmp_path / wheel.name, add={**_configs(package), "tests/test_api.py": b"",
                                                           "mela/__pycache__/cli.cpython-311.pyc": b""})
    problems = wc.wheel_problems(doctored, package)
    assert f"{wheel.name} holds tests/test_api.py, which is not a file of src/mela" in problems
    assert f"{wheel.name} holds byte code mela/__pycache__/cli.cpython-311.pyc" in problems


def test_the_wheels_metadata_carries_the_checkout_version_and_the_mela_command(build_without_configs):
    wheel, _ = build_without_configs
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert f"\nVersion: {wc.source_version()}\n" in meta
    assert "mela = mela.cli:main" in entry_points


def test_an_sdist_missing_the_glyph_asset_fails_the_check(tmp_path):
    package, version = wc.PACKAGE, wc.source_version()
    sdist = tmp_path / f"mela-{version}.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for name in sorted(wc.expected_files(package) - {"mela/data/assets/glyphs.npz"}):
            archive.add(package.parent / name, f"mela-{version}/src/{name}")
        for name in wc.SDIST_FILES:
            archive.add(ROOT / name, f"mela-{version}/{name}")
    assert wc.sdist_problems(sdist, package) == [f"{sdist.name} lacks src/mela/data/assets/glyphs.npz"]


def test_the_readme_import_lines_start_with_import_mela():
    lines = wc.readme_import_lines()
    assert lines[0] == "import mela" and len(lines) == len(set(lines))
    assert all(line.startswith(("import mela", "from mela")) for line in lines)
