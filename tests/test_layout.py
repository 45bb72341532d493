"""The package's layering, pinned by reading every import (module-level and lazy ones).

* the engine imports neither ``recipe/`` nor ``backends/``: it reaches step kinds and runtimes
  only through their ``"module:Class"`` strings;
* ``recipe/`` imports the engine, never a backend;
* backends import each other only along the data flow: torch -> onnx (and generic), tensorrt
  -> onnx, tensorflow -> onnx (and generic), evaluate -> the runtimes of every backend.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "buildgraph"

ALLOWED_BACKEND_EDGES: Dict[str, Set[str]] = {
    "generic": set(),
    "onnx": set(),
    "torch": {"onnx", "generic"},
    "tvm": {"onnx"},
    "tensorrt": {"onnx"},
    "tensorflow": {"onnx", "generic"},
    "evaluate": {"torch", "onnx", "tvm", "tensorrt", "tensorflow", "generic"},
    "cpp": {"evaluate", "generic"},
}


def imports(path: Path) -> Iterator[Tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # "from buildgraph.backends import torch"
                yield node.lineno, f"{module}.{alias.name}"


def modules(sub: str) -> Iterator[Path]:
    return (p for p in sorted((PACKAGE / sub).rglob("*.py")))


def test_the_layout_exists():
    for sub in ("engine", "recipe", "backends/generic", "backends/torch", "backends/onnx",
                "backends/tvm", "backends/tensorrt", "backends/tensorflow",
                "backends/evaluate", "backends/cpp"):
        assert (PACKAGE / sub / "__init__.py").is_file(), sub
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 9, top  # cli, api, errors, report, explain and the package files


@pytest.mark.parametrize("path", list(modules("engine")), ids=lambda p: p.name)
def test_engine_imports_neither_recipe_nor_backends(path):
    bad = [(line, m) for line, m in imports(path)
           if m.startswith(("buildgraph.recipe", "buildgraph.backends"))]
    assert not bad, f"{path.relative_to(PACKAGE)}: {bad}"


@pytest.mark.parametrize("path", list(modules("recipe")), ids=lambda p: p.name)
def test_recipe_imports_no_backend(path):
    bad = [(line, m) for line, m in imports(path) if m.startswith("buildgraph.backends")]
    assert not bad, f"{path.relative_to(PACKAGE)}: {bad}"


@pytest.mark.parametrize("path", list(modules("backends")), ids=lambda p: str(p.parent.name + "/" + p.name))
def test_backends_import_each_other_only_along_the_data_flow(path):
    backend = path.relative_to(PACKAGE / "backends").parts[0]
    if backend == "__init__.py":
        return
    bad = []
    for line, module in imports(path):
        parts = module.split(".")
        if module.startswith("buildgraph.recipe"):
            bad.append((line, module))
        elif module.startswith("buildgraph.backends.") and len(parts) > 2:
            other = parts[2]
            if other != backend and other not in ALLOWED_BACKEND_EDGES[backend]:
                bad.append((line, module))
    assert not bad, f"{path.relative_to(PACKAGE)} ({backend}): {bad}"


def test_only_the_cli_reaches_the_report_package():
    """``buildgraph.html_report`` is a front end: the report command's implementation. The
    engine, recipe and backends never import it, nor does anything on the run path."""
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("html_report", "cli"):
            continue
        bad += [(rel.as_posix(), line, m) for line, m in imports(path)
                if m.startswith("buildgraph.html_report")]
    assert not bad
    for path in sorted((PACKAGE / "html_report").rglob("*.py")):
        assert not [m for _, m in imports(path) if m.startswith("buildgraph.backends")], path


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The rule above must be able to fail: an import inside a function is found."""
    probe = PACKAGE / "engine" / "_probe_for_test.py"
    try:
        probe.write_text("def f():\n    from buildgraph.backends.torch import model\n"
                         "    from ..recipe import load\n")
        found = {m for _, m in imports(probe)}
        assert "buildgraph.backends.torch.model" in found
        assert "buildgraph.recipe.load" in found
    finally:
        probe.unlink()


# --- no import cycles, no private names across modules -------------------------------------------

def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the package's modules it imports, at any depth (lazy and ``TYPE_CHECKING``
    imports included: each is a dependency a reader must follow). A package's ``__init__`` is
    left out as a target: importing ``a.b`` runs ``a/__init__`` first whoever asks."""
    paths = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph: Dict[str, Set[str]] = {m: set() for m in paths}
    for module, path in paths.items():
        for _, target in imports(path):
            if target in paths and target != module and not module.startswith(target + ".") \
                    and paths[target].name != "__init__.py":
                graph[module].add(target)
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    on_stack: Set[str] = set()
    stack: List[str] = []
    found: List[List[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


KNOWN_CYCLES: List[List[str]] = []
"""Cycles tolerated for now (none): each entry would say why, and when it goes."""


def test_no_import_cycles():
    """A circle, even one held apart by a lazy import, means neither side can be read (or
    moved) without the other: what both need belongs in a module of its own."""
    found = [c for c in cycles(import_graph()) if c not in KNOWN_CYCLES]
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_check_can_fail():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def private_imports(path: Path) -> Iterator[Tuple[int, str]]:
    """``from M import _name`` where ``M`` is another module of the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = _module_name(path)
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if not module.startswith("buildgraph") or module == own:
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                yield node.lineno, f"{module}.{alias.name}"


KNOWN_PRIVATE_IMPORTS: Dict[str, Set[str]] = {}
"""Module -> private names it may import from another module for now (none)."""


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_private_name_is_imported_across_modules(path):
    """A leading underscore says "only this module uses it": a name another module needs is
    public (and documented as such)."""
    rel = path.relative_to(PACKAGE).as_posix()
    bad = [(line, name) for line, name in private_imports(path)
           if name not in KNOWN_PRIVATE_IMPORTS.get(rel, set())]
    assert not bad, f"{rel}: {bad}"


def test_the_private_import_check_can_fail():
    probe = PACKAGE / "engine" / "_probe_private.py"
    try:
        probe.write_text("def f():\n    from buildgraph.engine.store.cache import _alive\n"
                         "    from .store.cache import _exchange\n")
        found = [name for _, name in private_imports(probe)]
        assert found == ["buildgraph.engine.store.cache._alive",
                         "buildgraph.engine.store.cache._exchange"]
    finally:
        probe.unlink()
