"""The package's imports point one way: every module imports, no import cycle inside ``attnseg`` (imports inside
functions included), and only the entry module knows both the CLI and the sweep."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import attnseg
from tests.helpers.cli import REPO

PACKAGE = Path(attnseg.__file__).parent


def modules() -> dict[str, Path]:
    """``attnseg.x.y`` -> its file, for every module of the package (``__init__`` files as the package itself)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The ``attnseg`` modules ``name`` imports anywhere in its file (``from a.b import c`` names ``a.b.c`` when that is
    a module, else ``a.b``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {t for t in targets if t in known and t != name}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle as ``[a, b, ..., a]``, or ``[]``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return []

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_no_import_cycle_inside_the_package():
    cycle = find_cycle(graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_only_the_entry_module_knows_both_the_cli_and_the_sweep():
    edges = graph()
    assert {"attnseg.cli", "attnseg.sweep"} <= edges["attnseg.__main__"]
    assert not any("attnseg.__main__" in targets for targets in edges.values())
    assert not [m for m in edges["attnseg.cli"] if m.startswith("attnseg.sweep")]
    # the rooms below the CLI never import it: data, heads, model, task, callbacks, drawing, profiling
    below = [m for m in edges if m not in ("attnseg.__main__", "attnseg.cli") and not m.startswith("attnseg.sweep")]
    assert [m for m in below if "attnseg.cli" in edges[m]] == []
    # the data package stands on its own: it imports only itself, the shared constants and the stop signals' rules
    data = {m for m in edges if m.startswith("attnseg.data")}
    shared = data | {"attnseg.constants", "attnseg.signals"}
    assert {m: edges[m] - shared for m in data if edges[m] - shared} == {}
    assert edges["attnseg.signals"] <= {"attnseg.constants"}


def test_every_package_is_in_the_wheel():
    """setup.cfg lists the packages the wheel ships: a new subpackage left out would import from a checkout only."""
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {
        ".".join(p.parent.relative_to(REPO / "src").parts) for p in (REPO / "src" / "attnseg").rglob("__init__.py")
    }
    assert found <= listed, f"packages missing from setup.cfg [options] packages: {sorted(found - listed)}"
