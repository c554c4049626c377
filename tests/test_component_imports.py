"""What the components import when they serve: the modules their `python -m` entry points reach
through module-level imports (read from the source, not by importing) hold neither the demo
model builder (imported only when `--demo` is given) nor the local stack of `make serve`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.servers import REPO_ROOT

COMPONENTS = ("runtime", "transformer", "router")
DEV_ONLY = ("runtime.demo", "devstack")


def source_path(module: str) -> Path | None:
    """The project's file of `module`; None for a module from outside the project."""
    base = REPO_ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_level_imports(module: str, path: Path) -> set[str]:
    """The modules an import of `module` imports in turn: import statements anywhere but inside
    a function body (which runs later, if ever), each with its parent packages."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    imported: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                imported.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(child, package)
                imported.add(base)
                # `from package import name` imports the submodule `name` when there is one.
                imported.update(f"{base}.{alias.name}" for alias in child.names
                                if source_path(f"{base}.{alias.name}") is not None)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {parent for name in imported for parent in _with_parents(name)}


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts) + 1)]


def import_closure(module: str) -> set[str]:
    """Every project module that importing `module` imports, itself included."""
    seen: set[str] = set()
    pending = _with_parents(module)
    while pending:
        name = pending.pop()
        path = source_path(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        pending.extend(module_level_imports(name, path))
    return seen


def dev_only(modules: set[str]) -> list[str]:
    return sorted(name for name in modules if any(name == dev or name.startswith(f"{dev}.") for dev in DEV_ONLY))


@pytest.mark.parametrize("component", COMPONENTS)
def test_a_component_imports_no_dev_only_module(component):
    closure = import_closure(f"{component}.__main__")
    assert {"serving.component", "serving.base_model"} <= closure  # the walk follows the project's imports
    assert dev_only(closure) == []


def test_the_walk_finds_a_dev_only_module_imported_at_module_level():
    """task_models.checkpoint builds its tokenizers with the demo model's helpers."""
    assert dev_only(import_closure("task_models.checkpoint")) == ["runtime.demo"]
    assert "devstack.local_stack" in import_closure("devstack.local_stack")
