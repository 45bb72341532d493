"""API conformance: every TensorRT name buildgraph uses exists in the real bindings.

``tests/data/tensorrt_api_names.txt`` is the name table of the ``tensorrt-cu12-bindings``
11.4.0.106 wheel's ``tensorrt.so`` (``tools/trt_api_names.py`` regenerates it; the wheel cannot
be imported without TensorRT's libraries, which no machine here can install).
``tensorrt_api_names_10.txt`` is 10.16's, for the names only the TensorRT <= 10 paths use
(functions with ``legacy`` in their name). A misspelt or removed API (the FP16 builder flag,
gone in 11) fails here.

The names used are found by reading the source (ast): attribute accesses on the ``trt`` module
and on the TensorRT objects the code holds (builder, network, parser, config...), the literal
enum members passed to ``_enum(trt, ENUM, MEMBER)``, and the enum members the build description
can name (the tables and flag literals of :mod:`buildgraph.backends.tensorrt.spec`).
"""

from __future__ import annotations

import ast
from typing import List, Set, Tuple

import pytest

from conftest import REPO

DATA = REPO / "tests" / "data"
TRT = REPO / "buildgraph" / "backends" / "tensorrt"
SOURCES = [TRT / "build.py", TRT / "refit.py", TRT / "runtime.py"]
SPEC = TRT / "spec.py"

# Variables that hold TensorRT objects in those files (the test fails if one is renamed away
# from this list: see test_every_trt_object_variable_is_known).
TRT_OBJECTS = {"trt", "builder", "network", "parser", "config", "profile", "cache", "after",
               "merged", "incoming", "registry", "err", "runtime", "engine", "inspector",
               "refitter", "parser_refitter", "context", "serialized", "sev", "dtype",
               "self.trt", "self.runtime", "self.engine", "self.context"}
# Attributes that are Python's or ours, not TensorRT's.
NOT_TRT = {"__init__", "name", "append", "items", "cuda_stream", "synchronize"}


def table(name: str) -> Set[str]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return {line for line in lines if line and not line.startswith("#")}


TRT11 = table("tensorrt_api_names.txt")
TRT10 = table("tensorrt_api_names_10.txt")


def present(name: str, names: Set[str]) -> bool:
    """In the table, or the tail of an entry (the linker stores "serialize" inside
    "get_fields_to_serialize")."""
    return name in names or any(entry.endswith(name) for entry in names)


def _root(node: ast.AST) -> str:
    """Dotted root of an attribute chain's base: ``trt``, ``self.engine``..."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        parts.reverse()
        return ".".join(parts)
    return ""


def used_names(source: str) -> List[Tuple[str, str, bool]]:
    """(name, where, legacy) for each TensorRT name the source uses."""
    tree = ast.parse(source)
    found: List[Tuple[str, str, bool]] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.ClassDef)) else func
            if isinstance(child, ast.Attribute):
                base = _root(child.value)
                if base in TRT_OBJECTS or base.split(".")[0] == "trt":
                    if child.attr not in NOT_TRT:
                        found.append((child.attr, f"{func}:{child.lineno}", "legacy" in func))
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Name) and \
                    child.func.id == "_enum":
                for arg in child.args[1:]:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        found.append((arg.value, f"{func}:{child.lineno}", "legacy" in func))
            visit(child, name)

    visit(tree, "<module>")
    return found


def description_members() -> List[Tuple[str, bool]]:
    """Enum members a BuildDescription can name: (member, legacy only)."""
    from buildgraph.backends.tensorrt import spec as trt_spec

    out: List[Tuple[str, bool]] = []
    for mapping in (trt_spec.MEMORY_POOLS, trt_spec.HARDWARE_COMPATIBILITY,
                    trt_spec.PROFILING_VERBOSITY, trt_spec.LOG_SEVERITY):
        out.extend((m, False) for m in mapping.values())
    out.extend((m, True) for m in trt_spec.LEGACY_PRECISIONS.values())
    tree = ast.parse(SPEC.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "describe_build":
            for call in ast.walk(node):
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and \
                        call.func.attr == "append" and call.args and \
                        isinstance(call.args[0], ast.Constant) and \
                        isinstance(call.args[0].value, str):
                    out.append((call.args[0].value, False))
                if isinstance(call, ast.Tuple) and len(call.elts) == 2 and \
                        isinstance(call.elts[0], ast.Constant) and \
                        isinstance(call.elts[0].value, str) and \
                        call.elts[0].value.isupper():
                    out.append((call.elts[0].value, False))  # parser flags
    return out


def all_used() -> List[Tuple[str, str, bool]]:
    names = []
    for path in SOURCES:
        for name, where, legacy in used_names(path.read_text(encoding="utf-8")):
            names.append((name, f"{path.name} {where}", legacy))
    names += [(m, "trt_spec.py", legacy) for m, legacy in description_members()]
    return names


def test_tables_are_the_real_bindings():
    for names in (TRT11, TRT10):
        assert len(names) > 5000
        for name in ("Builder", "OnnxParser", "build_serialized_network", "ITimingCache",
                     "create_optimization_profile"):
            assert present(name, names), name
    # what makes the 11.x table worth having: the weak-typing API is gone from it
    for gone in ("FP16", "EXPLICIT_BATCH", "int8_calibrator"):
        assert not present(gone, TRT11), gone
        assert present(gone, TRT10), gone


def test_the_source_scan_finds_the_calls():
    names = {n for n, _, _ in all_used()}
    assert {"Builder", "OnnxParser", "create_network", "parse_from_file", "num_errors",
            "node_operator", "create_builder_config", "set_flag", "set_memory_pool_limit",
            "create_optimization_profile", "set_shape", "add_optimization_profile",
            "build_serialized_network", "create_timing_cache", "set_timing_cache",
            "get_timing_cache", "combine", "queryKeys", "serialize", "create_engine_inspector",
            "get_engine_information", "Refitter", "OnnxParserRefitter", "refit_from_file",
            "refit_cuda_engine", "execute_async_v3", "set_tensor_address",
            "STRONGLY_TYPED", "WORKSPACE", "AMPERE_PLUS", "DETAILED", "REFIT", "FP16",
            "EXPLICIT_BATCH", "NATIVE_INSTANCENORM"} <= names


@pytest.mark.parametrize("name,where,legacy", sorted(set(all_used())))
def test_name_exists_in_tensorrt(name, where, legacy):
    names = TRT10 if legacy else TRT11
    version = "10.16" if legacy else "11.4"
    assert present(name, names), f"{where}: '{name}' is not in TensorRT {version}'s bindings"


def test_a_removed_api_would_fail():
    bad = "def build(trt, config):\n    config.set_flag(trt.BuilderFlag.FP16)\n"
    missing = [n for n, _, legacy in used_names(bad) if not present(n, TRT11)]
    assert missing == ["FP16"]
    legacy = "def legacy_build(trt, config):\n    config.set_flag(trt.BuilderFlag.FP16)\n"
    assert all(present(n, TRT10) for n, _, lg in used_names(legacy) if lg)


def test_every_trt_object_variable_is_known():
    """A TensorRT object kept in a variable this test does not scan would escape the check:
    every variable assigned from a call on a TensorRT object is scanned, or holds plain data
    (a bool, a number, a string) listed here."""
    plain = {"ok", "mode", "name", "shape", "key", "status", "names", "loaded", "engine_bytes",
             "issues", "missing", "after_keys", "blob_after", "inspector_json", "refitted",
             "layers", "text", "shapes", "self.inputs", "self.outputs", "outcome"}
    unscanned = set()
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Assign, ast.AnnAssign)):
                continue
            value = node.value
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            calls_trt = value is not None and any(
                isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and
                (_root(sub.func.value) in TRT_OBJECTS or
                 _root(sub.func.value).split(".")[0] == "trt")
                for sub in ast.walk(value))
            if not calls_trt:
                continue
            for target in targets:
                name = _root(target) if isinstance(target, ast.Attribute) else \
                    target.id if isinstance(target, ast.Name) else ""
                if name and name not in TRT_OBJECTS and name not in plain:
                    unscanned.add(f"{path.name}:{node.lineno}: {name}")
    assert not unscanned, "TensorRT objects in variables the name check does not scan: " + \
        ", ".join(sorted(unscanned))
