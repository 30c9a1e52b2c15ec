"""The package's layering (issue 14), checked on the import graph.

The one source of truth is the import-linter contract in pyproject.toml (`[tool.importlinter]`):
its `layers` list and its `ignore_imports`. These tests read that contract and check that
(a) no import cycle exists among sat modules, counting imports inside functions, once the
    contract's `ignore_imports` edges are removed;
(b) the contract is kept (the same check as `lint-imports` in `make lint`);
(c) the contract names every top-level package and module of sat, so a new one cannot sit
    outside the layers unnoticed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "sat"


def _contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert config["root_package"] == PACKAGE
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return contract


def _layer_modules(layer: str) -> list[str]:
    """The module names of one `layers` entry: `a | b` (independent) or `a : b`, optional `(a)`."""
    separator = "|" if "|" in layer else ":"
    return [name.strip().strip("()").strip() for name in layer.split(separator)]


def _graph_without_ignored_imports() -> tuple[grimp.ImportGraph, list[tuple[str, str]]]:
    """The import graph of sat (function-level imports included) minus the contract's
    `ignore_imports`, resolved with grimp's own matching (the one import-linter uses)."""
    graph = grimp.build_graph(PACKAGE, cache_dir=None)
    removed = []
    for expression in _contract().get("ignore_imports", []):
        for edge in graph.find_matching_direct_imports(expression):
            graph.remove_import(importer=edge["importer"], imported=edge["imported"])
            removed.append((edge["importer"], edge["imported"]))
    return graph, removed


def _strongly_connected_components(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm (iterative); returns the components that contain a cycle."""
    successors = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in successors:
        if start in index:
            continue
        work = [(start, iter(successors[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in successors[node]:
                    components.append(sorted(component))
    return sorted(components)


def _describe_edge(graph: grimp.ImportGraph, importer: str, imported: str) -> str:
    details = graph.get_import_details(importer=importer, imported=imported)
    where = "; ".join(f"l.{d['line_number']}: {d['line_contents']}" for d in details)
    return f"{importer} -> {imported}" + (f"  ({where})" if where else "")


def _describe_cycle(graph: grimp.ImportGraph, component: list[str]) -> str:
    members = set(component)
    first = component[0]
    # The shortest cycle through the component's first module, as a readable chain.
    cycle = None
    for successor in sorted(graph.find_modules_directly_imported_by(first) & members):
        if successor == first:
            candidate = [first, first]
        else:
            candidate = [first, *graph.find_shortest_chain(importer=successor, imported=first)]
        if cycle is None or len(candidate) < len(cycle):
            cycle = candidate
    lines = [f"cycle among {len(component)} modules: {', '.join(component)}"]
    lines.append("  e.g. " + " -> ".join(cycle))
    lines.append("  edges inside it (removing enough of them breaks it; [upward]/[sibling] = against the layers):")
    rank = {name: i for i, layer in enumerate(_contract()["layers"]) for name in _layer_modules(layer)}
    for importer in component:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            tops = [".".join(m.split(".")[:2]) for m in (importer, imported)]
            ranks = [rank.get(top) for top in tops]
            tag = ""
            if None not in ranks and ranks[0] > ranks[1]:
                tag = "[upward] "
            elif None not in ranks and ranks[0] == ranks[1] and tops[0] != tops[1]:
                tag = "[sibling] "
            lines.append("    " + tag + _describe_edge(graph, importer, imported))
    return "\n".join(lines)


def test_no_import_cycle_once_the_contract_ignores_are_removed():
    graph, _ = _graph_without_ignored_imports()
    components = _strongly_connected_components(graph)
    assert not components, "import cycles in sat (function-level imports count):\n" + "\n".join(
        _describe_cycle(graph, c) for c in components
    )


def test_cycle_finder_reports_a_planted_cycle():
    """The cycle test must be able to fail: three modules importing in a ring are found, a DAG is not."""
    graph = grimp.ImportGraph()
    for name in ("p", "p.a", "p.b", "p.c", "p.d"):
        graph.add_module(name)
    graph.add_import(importer="p.a", imported="p.b", line_number=3, line_contents="from p import b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.d")
    assert _strongly_connected_components(graph) == []
    graph.add_import(importer="p.c", imported="p.a", line_number=7, line_contents="import p.a")
    assert _strongly_connected_components(graph) == [["p.a", "p.b", "p.c"]]
    report = _describe_cycle(graph, ["p.a", "p.b", "p.c"])
    assert "p.a -> p.b -> p.c -> p.a" in report
    assert "p.c -> p.a  (l.7: import p.a)" in report


def test_ignore_imports_are_removed_from_the_cycle_graph():
    """Exactly the contract's ignore_imports edges are dropped, and each of them exists."""
    contract = _contract()
    full = grimp.build_graph(PACKAGE, cache_dir=None)
    graph, removed = _graph_without_ignored_imports()
    for expression in contract.get("ignore_imports", []):
        matches = full.find_matching_direct_imports(expression)
        assert matches, f"ignore_imports entry {expression!r} matches no import in sat: remove it from pyproject.toml"
    assert full.count_imports() - graph.count_imports() == len(removed) == len(set(removed))


def test_import_linter_contract_is_kept():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.exists(), f"{lint_imports} is missing: install requirements-dev.txt"
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb"}
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"lint-imports reports a broken layer contract:\n{output}"
    assert "Contracts: 1 kept, 0 broken." in output, output


def _top_level_names() -> set[str]:
    """sat's top-level packages (directories holding Python files) and modules, from the filesystem."""
    names = set()
    for entry in (ROOT / PACKAGE).iterdir():
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_dir() and any(entry.glob("*.py")):
            names.add(f"{PACKAGE}.{entry.name}")
        elif entry.is_file() and entry.suffix == ".py":
            names.add(f"{PACKAGE}.{entry.stem}")
    return names


def test_contract_lists_every_top_level_package_and_module():
    listed = [name for layer in _contract()["layers"] for name in _layer_modules(layer)]
    assert len(listed) == len(set(listed)), f"a module is listed in two layers: {sorted(listed)}"
    existing = _top_level_names()
    assert {"sat.model", "sat.helpers", "sat.training"} <= existing  # the scan itself works
    unlisted = sorted(existing - set(listed))
    assert not unlisted, (
        f"{unlisted} exist under sat/ but are in no layer of [tool.importlinter] in pyproject.toml: "
        "add each to the layer it belongs to (see the layering in the contract's comment)"
    )


@pytest.mark.parametrize(
    "layer, expected",
    [("sat.hf | sat.generation", ["sat.hf", "sat.generation"]), ("(sat.x) : sat.y", ["sat.x", "sat.y"])],
)
def test_layer_entries_are_parsed_like_import_linter(layer, expected):
    assert _layer_modules(layer) == expected


def _moved_name_tables() -> dict[str, dict[str, str]]:
    """``{old module: {name: new module}}`` from every ``__getattr__ = moved_names(__name__, {...})``."""
    import ast

    tables = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "moved_names":
                module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                tables[module] = ast.literal_eval(node.args[1])
    return tables


def test_nothing_inside_sat_imports_a_moved_name_from_its_old_module():
    import ast
    import importlib

    tables = _moved_name_tables()
    assert {"sat.helpers", "sat.mpu.reshard", "sat.model.base_model"} <= set(tables)
    for old, moved in tables.items():  # each old path still gives the object at the new home
        for name, new in moved.items():
            assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)
    offenders = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in tables:
                offenders += [
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name in tables[node.module]
                ]
    assert not offenders, "import these from their new home:\n" + "\n".join(offenders)
