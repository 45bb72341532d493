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
from typing import Dict, Iterator, Set, Tuple

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
        if rel.parts[0] == "html_report" or rel.as_posix() == "cli.py":
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
