"""Install files agree with pyproject.toml: the conda env.yml, the tested-versions constraints.txt, the README, CI.

conda itself cannot be reached from our machines (only PyPI and Debian can), so ``conda env create -f env.yml`` is
never run here: these tests check the file's structure and that it asks for what pyproject.toml asks for, with the
same lower bounds. The built wheel is installed and run by ``make wheel-check`` (tools/wheel_check.py) in CI.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
CONDA_SPEC = re.compile(r"^([A-Za-z0-9_.-]+)\s*(?:>=\s*([0-9][0-9A-Za-z.]*))?$")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _lower_bound(requirement: Requirement) -> str | None:
    bounds = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    return bounds[0] if bounds else None


def _env() -> dict:
    return yaml.safe_load((ROOT / "env.yml").read_text())


def _env_requirements() -> tuple[dict[str, str | None], list[str]]:
    """({name: lower bound} of every conda and pip dependency, the pip lines that are not requirements)."""
    bounds, other = {}, []
    for entry in _env()["dependencies"]:
        if isinstance(entry, dict):
            for line in entry["pip"]:
                if line.startswith("-"):
                    other.append(line)
                else:
                    requirement = Requirement(line)
                    bounds[canonicalize_name(requirement.name)] = _lower_bound(requirement)
            continue
        match = CONDA_SPEC.match(entry)
        assert match, f"env.yml: '{entry}' is not 'name' or 'name>=version'"
        bounds[canonicalize_name(match.group(1))] = match.group(2)
    return bounds, other


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_env_yml_has_the_reference_form_name_channels_python_and_a_pip_section():
    env = _env()
    assert list(env) == ["name", "channels", "dependencies"]
    assert env["name"] == "mela" and env["channels"] == ["conda-forge"]
    assert "pip" in env["dependencies"]
    pip_sections = [entry["pip"] for entry in env["dependencies"] if isinstance(entry, dict)]
    assert len(pip_sections) == 1 and pip_sections[0][-1] == "-e ."  # mela itself, from this checkout


def test_env_yml_installs_torch_with_pip_as_the_package_asks_for_it():
    pip_lines = next(entry["pip"] for entry in _env()["dependencies"] if isinstance(entry, dict))
    torch = next(Requirement(line) for line in pip_lines if line.startswith("torch"))
    asked = next(Requirement(d) for d in _pyproject()["dependencies"] if Requirement(d).name == "torch")
    assert torch.specifier == asked.specifier


def test_env_yml_asks_for_every_core_dependency_of_pyproject_with_the_same_lower_bound():
    bounds, other = _env_requirements()
    assert other == ["-e ."]
    asked = {canonicalize_name(r.name): _lower_bound(r) for r in map(Requirement, _pyproject()["dependencies"])}
    assert all(asked.values()), "every dependency in pyproject.toml has a lower bound"
    python = bounds.pop("python")
    assert bounds.pop("pip") is None
    assert bounds == asked
    assert f">={python}" == _pyproject()["requires-python"]


def test_constraints_pin_every_dependency_and_extra_within_pyprojects_bounds():
    pins, project = _pins(), _pyproject()
    asked = [Requirement(d) for d in project["dependencies"]]
    asked += [Requirement(d) for extra in project["optional-dependencies"].values() for d in extra]
    for requirement in asked:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints.txt does not pin {requirement.name}: run `make lock`"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement}"
    assert "mela" not in pins
    assert all(Version(version).local is None for version in pins.values())


def test_constraints_pin_torch_to_the_makefiles_torch_and_make_test_installs_against_them():
    makefile = (ROOT / "Makefile").read_text()
    torch = re.search(r"^TORCH \?= (\S+)$", makefile, re.MULTILINE).group(1)
    assert torch == "torch==2.13.0" and f"torch=={_pins()['torch']}" == torch
    assert re.search(r"^CONSTRAINTS \?= constraints\.txt$", makefile, re.MULTILINE)
    dev_rule = makefile[makefile.index("$(VENV)/.installed-dev:"):].split("\n\n")[0]
    assert "-c $(CONSTRAINTS)) -e '.[dev]'" in dev_rule and "$(CONSTRAINTS)" in dev_rule.splitlines()[0]


def test_the_readme_names_the_tested_torch_numpy_and_scikit_learn_versions():
    readme, pins = (ROOT / "README.md").read_text(), _pins()
    for name in ("torch", "numpy", "scikit-learn"):
        assert f"{name} {pins[name]}" in readme, f"the README should name the tested {name} {pins[name]}"
    assert "conda env create -f env.yml" in readme and "pip install" in readme
    assert readme.index("pip install") < readme.index("conda env create -f env.yml")


def test_ci_runs_lint_the_tests_and_then_the_wheel_check():
    commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("make ")]
    assert commands == ["make lint", "make test", "make wheel-check"]
    assert "\nwheel-check:" in (ROOT / "Makefile").read_text()


def test_the_changelog_opens_with_this_versions_section():
    version = re.search(r'__version__ = "(.+)"', (ROOT / "src" / "mela" / "_version.py").read_text()).group(1)
    headings = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert headings[0] == version
