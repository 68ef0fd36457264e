"""Layers point down, and no module imports itself back through others (lazy imports inside functions count).

    cli  >  flows  >  tasks  >  trainer  >  model, storage  >  kiln

A package may import its own modules and those of any layer below it. `model` and
`storage` are peers that know nothing of each other. Only `tasks` and `flows` may
import Prefect (STYLE.md, conventions 1 and 12); `model`, `trainer` and `storage`
must run on a GPU machine without Prefect or Dask.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

LAYER = {"kiln": 0, "model": 1, "storage": 1, "trainer": 2, "tasks": 3, "flows": 4, "cli": 5}
NO_PREFECT_OR_DASK = ("kiln", "model", "storage", "trainer", "cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every module of ours -> every module it imports, at any depth of the file."""
    graph: dict[str, set[str]] = defaultdict(set)
    for package in LAYER:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            name = module_name(path)
            graph[name]  # a module that imports nothing still counts
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    graph[name].add(node.module)
                    graph[name].update(f"{node.module}.{a.name}" for a in node.names)
                elif isinstance(node, ast.Import):
                    graph[name].update(a.name for a in node.names)
    ours = set(graph)
    return {m: {t for t in targets if t in ours and t != m} | {t for t in targets if t not in ours}
            for m, targets in graph.items()}


GRAPH = imports()


def test_the_graph_covers_every_package() -> None:
    assert {m.split(".")[0] for m in GRAPH} == set(LAYER)
    assert len(GRAPH) > 60  # the walk found the tree, not an empty directory


@pytest.mark.parametrize("package", sorted(LAYER))
def test_imports_point_down(package: str) -> None:
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items() if module.split(".")[0] == package
        for target in targets
        if (top := target.split(".")[0]) in LAYER and top != package
        and LAYER[top] >= LAYER[package]
    )
    assert upward == []


@pytest.mark.parametrize("package", NO_PREFECT_OR_DASK)
def test_lower_layers_import_neither_prefect_nor_dask(package: str) -> None:
    found = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items() if module.split(".")[0] == package
        for target in targets if target.split(".")[0] in ("prefect", "prefect_dask", "dask", "distributed")
    )
    assert found == []


def test_no_import_cycles() -> None:
    ours = {m: {t for t in targets if t in GRAPH} for m, targets in GRAPH.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1  # on the current path
        for nxt in sorted(ours[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2  # done

    for module in sorted(ours):
        if module not in state:
            visit(module, [module])
    assert cycles == []
