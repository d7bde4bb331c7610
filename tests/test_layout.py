"""The layout's promises, checked on the source: no import cycles, no Prefect in the plain
modules, no module a reader cannot take in at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tasks", "flows", "benchmarks")
MOST_LINES = 350
# A group's Prefect tasks, the wrappers' logger and the report's Prefect artifacts: the
# only modules under tasks/ that import Prefect.
PREFECT_MODULES = {"tasks.core.runtime", "tasks.evaluation.report.artifacts"}


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


def imported_modules(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `path` imports, TYPE_CHECKING blocks and function bodies
    included; `from package import module` counts as importing the module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            found |= submodules & known.keys() or {node.module}
    return found & known.keys()


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, as the modules around it, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                return [*stack[stack.index(other) :], other]
            if other not in state and (cycle := visit(other)):
                return cycle
        state[module] = "done"
        stack.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_imports_itself_through_others():
    files = module_files()
    graph = {name: imported_modules(path, files) - {name} for name, path in files.items()}
    assert find_cycle(graph) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_reads_in_one_sitting(package):
    long = {
        str(path.relative_to(REPO)): lines
        for path in (REPO / package).rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MOST_LINES
    }
    assert long == {}


def test_only_the_stage_wrappers_import_prefect():
    files = module_files()
    importing = {
        name
        for name, path in files.items()
        if name.startswith("tasks.")
        and any(
            isinstance(node, ast.Import | ast.ImportFrom)
            and any(
                module == "prefect" or module.startswith("prefect.")
                for module in (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
            )
            for node in ast.walk(ast.parse(path.read_text()))
        )
    }
    assert importing - PREFECT_MODULES == {
        name for name in files if name.startswith("tasks.") and name.endswith(".stages")
    }
