"""The house's rooms (README, Layout): who may import whom, read off the source.

- `common/` is plumbing: it imports nothing else of sact.
- `store/` and `data/` are read by both stages: they import only `common/` (and each other).
- stage 2 (`fewshot/`) never imports stage 1 (`extract/`), directly or through another module,
  and stage 1 never imports stage 2.
- nothing imports in a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.test_packaging import project_files

REPO = Path(__file__).resolve().parents[1]


def sact_modules() -> dict[str, Path]:
    """Every module of the package by its import name (tests and benchmarks are not in it)."""
    modules = {}
    for name in project_files():
        path = Path(name)
        if path.suffix == ".py" and path.parts[0] not in ("tests", "bench", "docs"):
            parts = ["sact", *path.with_suffix("").parts]
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = REPO / path
    return modules


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports anywhere: at the top, inside functions, under
    TYPE_CHECKING (an import of a name from a module counts as an import of that module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found & modules.keys()


MODULES = sact_modules()
GRAPH = {name: imported_modules(path, MODULES) - {name} for name, path in MODULES.items()}


def room(module: str) -> str:
    """``sact.fewshot.model`` -> ``fewshot``; a module at the top (``sact.cli``) is its own room."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sact"


def reachable(start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen: set[str] = set()
    stack = [start]
    while stack:
        for imported in GRAPH[stack.pop()]:
            if imported not in seen:
                seen.add(imported)
                stack.append(imported)
    return seen


def in_room(name: str) -> list[str]:
    return sorted(module for module in MODULES if room(module) == name)


@pytest.mark.parametrize(
    ("importer", "allowed"),
    [
        ("common", {"common"}),
        ("store", {"common", "store", "data"}),
        ("data", {"common", "data"}),
        ("fewshot", {"common", "store", "data", "fewshot"}),
        ("extract", {"common", "store", "data", "extract"}),
    ],
)
def test_each_room_imports_only_the_rooms_below_it(importer: str, allowed: set[str]) -> None:
    modules = in_room(importer)
    assert modules, f"no module in {importer}/"
    wrong = {
        module: sorted(other for other in reachable(module) if room(other) not in allowed)
        for module in modules
    }
    assert {module: others for module, others in wrong.items() if others} == {}


def test_the_package_folder_itself_is_only_lazy_names() -> None:
    """`import sact` and `import sact.fewshot` import no other sact module at run time (their
    names resolve on first use), so importing a room never pulls in the others."""
    for package in ("sact", "sact.fewshot", "sact.store", "sact.common", "sact.extract"):
        tree = ast.parse(MODULES[package].read_text())
        top_level_imports = [
            node.module
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sact")
        ]
        assert top_level_imports == [], package


def test_no_import_cycle_between_modules() -> None:
    assert {"sact", "sact.cli", "sact.store.backends", "sact.fewshot.training"} <= MODULES.keys()
    finished: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in finished:
            return
        for imported in sorted(GRAPH[name]):
            visit(imported, [*path, name])
        finished.add(name)

    for name in sorted(GRAPH):
        visit(name, [])
