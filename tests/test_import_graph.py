"""The import graph of the packages setup.cfg ships, read from the source with `ast` (nothing is
imported): no two modules import each other, directly or round a longer circle, and the engine
imports neither KServe nor FastAPI, not even through another module of ours.

Every `import` counts, at module level or inside a function (or under TYPE_CHECKING): a
function-local import hides a cycle from the interpreter, not from a reader."""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = "runtime.engine"
ENGINE_FORBIDDEN_IMPORTS = ("kserve", "fastapi")


def shipped_packages() -> list[str]:
    """The top-level packages of setup.cfg's `[options.packages.find] include`."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    include = config["options.packages.find"]["include"].split()
    return sorted(name for name in include if "." not in name)


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the shipped packages."""
    modules = {}
    for package in shipped_packages():
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _package_of(module: str, path: Path) -> str:
    """The package a relative import in `module` starts from."""
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imported_modules(module: str, path: Path, files: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(the modules of ours that `module` imports, the names of the other modules it imports),
    relative imports resolved. `from package import name` imports the submodule package.name
    where there is one, else `package` itself; `import a.b.c` imports a.b.c."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = _package_of(module, path).split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.extend(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names)
    ours = {name for name in names if name in files and name != module}
    return ours, {name for name in names if name not in files}


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> the modules of ours it imports, module -> the other modules it imports)."""
    files = module_files()
    ours, others = {}, {}
    for module, path in files.items():
        ours[module], others[module] = _imported_modules(module, path, files)
    return ours, others


def strongly_connected_components(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm, iterative; only the components of more than one module (cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(frozenset(component))
    return components


def a_cycle(graph: dict[str, set[str]], component: frozenset[str]) -> list[str]:
    """One circle of imports through the component's first module, as a -> b -> ... -> a."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for successor in sorted(graph[node] & component):
            if successor == start:
                return paths[node] + [start]
            if successor not in paths:
                paths[successor] = paths[node] + [successor]
                frontier.append(successor)
    raise AssertionError(f"{sorted(component)} is not a cycle")


def test_the_shipped_packages_are_found() -> None:
    modules = module_files()
    assert {"runtime", "transformer", "router", "serving", "task_models"} <= set(shipped_packages())
    assert {"runtime.engine.engine", "runtime.model", "serving"} <= set(modules)


def test_no_import_cycles() -> None:
    ours, _ = import_graph()
    cycles = strongly_connected_components(ours)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(a_cycle(ours, cycle)) for cycle in cycles)


def test_the_engine_imports_neither_kserve_nor_fastapi() -> None:
    """Not directly, and not through another module of ours that it imports."""
    ours, others = import_graph()
    reached = {module for module in ours if module == ENGINE or module.startswith(f"{ENGINE}.")}
    frontier = list(reached)
    while frontier:
        for imported in ours[frontier.pop()] - reached:
            reached.add(imported)
            frontier.append(imported)
    offending = sorted(
        f"{module} imports {name}"
        for module in reached
        for name in others[module]
        if name.split(".")[0] in ENGINE_FORBIDDEN_IMPORTS
    )
    assert not offending, offending
