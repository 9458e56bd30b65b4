"""The shape of mela's import graph: no module imports itself back through others, and no layer imports upwards.

Every module under ``src/mela`` is parsed with :mod:`ast`; every ``import`` and ``from ... import`` counts, at any
depth (inside functions, ``if TYPE_CHECKING:`` blocks, ``try:``), relative ones resolved, and ``from pkg import
name`` counted as an import of ``pkg.name`` where that is a module. Only mela's own modules are nodes.
``importlib.import_module("...")`` with a string (``mela/__init__.py``'s lazy ``_API`` table, the data set
registry's built-in modules) is not an import here.

A module belongs to the layer of its top-level part (``mela.data.packed`` -> ``data``); a package's ``__init__.py``
belongs to its package, and the root ``mela/__init__.py`` (the lazy facade) to the top layer.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

# The layer contract, from low to high. A module may import from its own layer and from lower layers only; the
# entries of one layer are peers (they may import one another, without cycles). An entry names a top-level module
# or subpackage of mela (``data``), or one module in it (``methods.ridge``); a module's layer is that of the
# longest entry it falls under.
LAYERS: list[set[str]] = [
    {"_version", "errors", "jsonio"},
    {"compute", "device", "distributed", "runlock", "workspace"},
    {"data"},
    {"converters"},
    {"models"},
    {"methods"},
    {"reporting"},  # metrics, progress, plots, columns, sections, gallery, report (the aggregate comes from above)
    {"engine"},
    {"runs"},
    {"config", "conf"},
    {"experiments"},  # aggregate, overrides: reading and comparing finished runs
    {"steps"},  # the steps, the pipeline and the sweep (steps/sweep.py) that runs them
    {"inference"},
    {"api"},
    {"mela", "__main__", "cli", "data_cli", "inference_cli", "labels_cli", "tasks_cli"},  # mela: the lazy facade
]

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "mela"


def module_name(path: Path) -> str:
    """``src/mela/data/packed.py`` -> ``mela.data.packed``; ``src/mela/data/__init__.py`` -> ``mela.data``."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """The mela modules that module ``name`` (the file ``path``) imports, at any depth of its code."""
    known = modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def deepest(dotted: str) -> str | None:
        """``dotted`` or its longest prefix that is a mela module."""
        while dotted:
            if dotted in known:
                return dotted
            dotted = dotted.rpartition(".")[0]
        return None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = deepest(alias.name)
                if target:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # ``from mela.data import packed`` imports the module mela.data.packed; ``from mela.data import X``
                # imports the package mela.data (its __init__.py).
                target = f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else deepest(source)
                if target:
                    found.add(target)
    found.discard(name)
    return found


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Module -> the mela modules it imports."""
    return {name: frozenset(imported_modules(name, path)) for name, path in modules().items()}


def cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """One cycle (its modules in import order, the first repeated at the end) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm; the graph is a few hundred nodes, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [cycle_in(graph, set(component)) for component in components]


def cycle_in(graph: dict[str, frozenset[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected ``component`` (breadth-first)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle found in component {sorted(component)}")  # pragma: no cover


def layer_entry(name: str) -> str:
    """The :data:`LAYERS` entry module ``name`` falls under: ``mela.data.packed`` -> ``data``; ``mela`` -> ``mela``."""
    rest = name.split(".")[1:] or ["mela"]
    entries = set().union(*LAYERS)
    for end in range(len(rest), 0, -1):
        if ".".join(rest[:end]) in entries:
            return ".".join(rest[:end])
    raise AssertionError(f"module {name} has no layer: add '{rest[0]}' to LAYERS in tests/test_architecture.py")


def layer_of(name: str) -> int:
    """The index in :data:`LAYERS` of module ``name``'s layer."""
    entry = layer_entry(name)
    return next(level for level, members in enumerate(LAYERS) if entry in members)


def test_the_graph_is_built_from_the_real_package_and_sees_imports_inside_functions_and_type_checking_blocks():
    graph = import_graph()
    assert len(graph) > 50 and "mela.data.registry" in graph and "mela.cli" in graph
    assert "mela.api" in graph["mela"]  # only under ``if TYPE_CHECKING:`` in mela/__init__.py
    assert "mela.errors" in graph["mela.data.registry"]


def test_relative_imports_and_from_package_import_module_resolve_to_the_module_they_name(tmp_path):
    assert module_name(SRC / "mela" / "data" / "__init__.py") == "mela.data"
    assert module_name(SRC / "mela" / "data" / "packed.py") == "mela.data.packed"
    source = tmp_path / "x.py"
    source.write_text("from . import packed\nfrom .base import ImageSplit\nfrom .. import errors\n"
                      "def f():\n    from mela.data import registry\n    import mela.jsonio\n", encoding="utf-8")
    assert imported_modules("mela.data.x", source) == {"mela.data.packed", "mela.data.base", "mela.errors",
                                                       "mela.data.registry", "mela.jsonio"}


def test_the_cycle_finder_reports_a_circle_of_three_modules_in_import_order():
    graph = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a", "d"}), "d": frozenset()}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": frozenset({"b"}), "b": frozenset()}) == []


def test_no_mela_module_imports_itself_back_through_a_circle_of_other_modules():
    found = cycles(import_graph())
    assert not found, "import cycles (each listed in import order):\n" + "\n".join(" -> ".join(c) for c in found)


def test_every_module_belongs_to_a_layer_of_the_declared_contract_and_every_entry_is_declared_once():
    entries = [entry for members in LAYERS for entry in members]
    assert len(entries) == len(set(entries))
    for name in import_graph():
        layer_of(name)
    assert layer_entry("mela.reporting.report") == "reporting"
    assert layer_entry("mela.reporting.plots") == "reporting"
    assert layer_entry("mela") == "mela" and layer_entry("mela.data.packed") == "data"


def test_no_module_imports_a_module_of_a_higher_layer_than_its_own():
    upward = sorted(
        f"{name} (layer {layer_entry(name)}) imports {target} (layer {layer_entry(target)})"
        for name, targets in import_graph().items() for target in targets if layer_of(target) > layer_of(name))
    assert not upward, "imports that run up the layers (low to high: " + " < ".join(
        "/".join(sorted(members)) for members in LAYERS) + "):\n" + "\n".join(upward)


def test_the_report_sits_in_the_reporting_layer_below_the_experiments_it_shows():
    # The report takes the experiments' aggregate as a callable from its callers (cli.py, the pipeline) instead
    # of importing it: no module of the reporting layer may import mela.experiments.
    assert layer_of("mela.reporting.report") < layer_of("mela.experiments.aggregate")
    graph = import_graph()
    assert not {t for n, ts in graph.items() if n.startswith("mela.reporting") for t in ts
                if t.startswith("mela.experiments")}
