"""The layering of the packages: every module imports, no module imports itself back, scoring/ stays below.

``scoring`` is the ground floor (the stages); ``streams``, ``training`` and ``bench`` build on it and
each other, never the other way round. The graph is read from the source (``ast``), so an import inside
a function counts as much as one at the top: it runs the first time that function is called, and a cycle
through it (as ``streams.cli`` ↔ ``streams.demo`` once was) only shows up then. Imports under
``if TYPE_CHECKING:`` never run, so they do not make cycles — but they still may not point upwards from
``scoring``.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("scoring", "streams", "training", "bench")
# What each package may import of the others. scoring/ imports none of them. The stream roles that close
# the loop (selector, oracle worker, annotator service) use training's label store and oracle client, so
# streams may import training — never the reverse: training runs without Faust.
ALLOWED = {"scoring": set(), "streams": {"scoring", "training"}, "training": {"scoring"},
           "bench": {"scoring", "streams", "training"}}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    type_checking: bool


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (``scoring.records.RecordKey`` -> the module)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _edges(modules: dict[str, Path]) -> list[Edge]:
    edges: list[Edge] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        typing_only = _type_checking_lines(tree)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(tree):  # every level: module, class and function bodies alike
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
                names = [f"{base}.{alias.name}" for alias in node.names]
            for name in names:
                target = _resolve(name, modules)
                if target is not None and target != module:
                    edges.append(Edge(module, target, node.lineno, node.lineno in typing_only))
    return edges


MODULES = _modules()
EDGES = _edges(MODULES)


def _cycle(edges: list[Edge]) -> list[str] | None:
    graph: dict[str, list[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, []).append(edge.target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_every_package_and_function_local_imports() -> None:
    assert {m.split(".")[0] for m in MODULES} == set(PACKAGES)
    # A known function-local import (the worker command loads the worker only when it runs).
    assert any(e.source == "streams.cli" and e.target == "streams.worker" for e in EDGES)


def test_no_import_cycle() -> None:
    cycle = _cycle([e for e in EDGES if not e.type_checking])
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_one() -> None:
    edges = [Edge("a", "b", 1, False), Edge("b", "c", 1, False), Edge("c", "a", 1, False), Edge("c", "d", 1, False)]
    assert _cycle(edges) == ["a", "b", "c", "a"]
    assert _cycle(edges[1:]) is None


def test_packages_import_only_what_lies_below_them() -> None:
    wrong = [f"{MODULES[e.source].relative_to(REPO)}:{e.line} imports {e.target}" for e in EDGES
             if e.target.split(".")[0] != e.source.split(".")[0]
             and e.target.split(".")[0] not in ALLOWED[e.source.split(".")[0]]]
    assert not wrong, "\n".join(wrong)


def test_no_library_module_imports_a_command_module() -> None:
    commands = {"scoring.cli", "scoring.entry", "streams.cli", "streams.__main__", "training.cli",
                "training.evolve.cli", "bench.__main__"}
    # A command module may use another's pieces (the entry point loads each package's commands).
    wrong = [f"{e.source} imports {e.target}" for e in EDGES
             if e.target in commands and e.source not in commands]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.endswith("__main__")))
def test_every_module_imports(module: str) -> None:
    importlib.import_module(module)
