"""The package's shape: one folder per concern, each saying what it owns, and an import
graph without cycles, between modules and between concerns."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "onnx_serving"
CONCERNS = ["model", "protocols", "edge", "versions", "offline", "_patches"]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at the top or inside functions)."""
    mods = modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                target = owner(name) if name.startswith("onnx_serving") else None
                if target and target != mod and not mod.startswith(target + "."):
                    graph[mod].add(target)
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph`, if it has any."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node], _ = 2, path.pop()
        return None

    return next(filter(None, (visit(n) for n in sorted(graph) if n not in state)), None)


def concern(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else module


def test_every_concern_is_a_folder_that_says_what_it_owns() -> None:
    for name in CONCERNS:
        init = PACKAGE / name / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), init
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    # Beside the folders: what every concern shares, and the service's start-up.
    assert loose == [
        "__init__.py",
        "__main__.py",
        "config.py",
        "errors.py",
        "metrics.py",
        "startup.py",
    ]


def test_the_unit_tests_mirror_the_package() -> None:
    """tests/unit/<concern>/ for each concern served in-process (offline batch is tested
    against real servers and Spark)."""
    for name in CONCERNS:
        if name != "offline":
            assert list((ROOT / "tests" / "unit" / name).glob("test_*.py")), name


def test_no_module_imports_itself_round_a_cycle() -> None:
    assert cycle(imports()) is None


def test_no_concern_depends_on_another_that_depends_back_on_it() -> None:
    by_concern: dict[str, set[str]] = {}
    for mod, targets in imports().items():
        for target in targets:
            if concern(mod) != concern(target):
                by_concern.setdefault(concern(mod), set()).add(concern(target))
    assert cycle(by_concern) is None


@pytest.mark.parametrize(
    ("graph", "found"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], found: list | None) -> None:
    assert cycle(graph) == found


def test_the_edge_and_the_model_never_reach_up_to_protocols_or_versions() -> None:
    """Data flows one way: the edge and the model know nothing of the wire or of versions."""
    for mod, targets in imports().items():
        if concern(mod) in ("edge", "model"):
            bad = [t for t in targets if concern(t) in ("protocols", "versions", "offline")]
            assert not bad, (mod, bad)
