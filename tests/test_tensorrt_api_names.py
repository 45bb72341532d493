"""API conformance: every TensorRT attribute buildgraph uses exists, on the class or enum it is
used on, in the real bindings of the version it targets.

No machine here can import TensorRT, so the check runs against tables that
``tools/trt_api_names.py`` makes from two public sources (see its docstring):

* ``tensorrt_api_members.txt``: ``Owner.member`` for every pybind11 binding in NVIDIA's
  ``python/src`` at the TensorRT 11.1 release (``IBuilderConfig.set_flag``,
  ``BuilderFlag.REFIT``, ``tensorrt.Builder`` for module-level names), kept where the
  ``tensorrt-cu12-bindings`` 11.4.0.106 wheel's ``tensorrt.so`` still holds the member's name;
  ``_10``: the same for 10.16.1 (sources and wheel), for the TensorRT <= 10 paths (functions with
  ``legacy`` in their name, and ``legacy_precision_flags``);
* ``tensorrt_api_names.txt`` (``_10``): the identifiers that ``.so`` holds as whole strings.

A used attribute passes when ``Owner.member`` is an entry of the members table AND ``member`` is
a whole entry of the names table: ``BuilderFlag.INT8`` fails on 11 although ``DataType.INT8``
exists and "UINT8" ends with "INT8"; ``context.execute_async`` fails although
``IPluginV2.execute_async`` exists. The owner comes from the attribute chain (``trt.BuilderFlag
.REFIT``: BuilderFlag), from ``_enum(trt, ENUM, MEMBER)``, from the spec tables whose values name
enum members (``MEMORY_POOLS``: MemoryPoolType...), and, for a variable holding a TensorRT
object, from :data:`OWNERS` (``config``: IBuilderConfig). That last map is declared here, not
derived: a return type is C++, and the bindings' strings do not say it; a variable the map does
not know fails :func:`test_every_trt_object_variable_is_known`.

What this does not prove: that arguments have the right types and order, that return values are
used as TensorRT returns them (the fake module, tests/fakes/trt_fake.py, models that), or that a
member bound in 11.1 is still there in 11.4 when its name survives in the ``.so`` for another
owner.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from typing import Dict, List, Optional, Set, Tuple

import pytest

from conftest import REPO

DATA = REPO / "tests" / "data"
TRT = REPO / "buildgraph" / "backends" / "tensorrt"
SOURCES = [TRT / "builder.py", TRT / "build.py", TRT / "refit.py", TRT / "runtime.py",
           TRT / "plugins.py", TRT / "trt_logging.py", TRT / "timing_cache.py"]
SPEC = TRT / "build_params.py"

# The class of the TensorRT object each variable holds in those files (``tensorrt``: the module).
OWNERS: Dict[str, str] = {
    "trt": "tensorrt", "self.trt": "tensorrt",
    "builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser",
    "config": "IBuilderConfig", "profile": "IOptimizationProfile", "registry": "IPluginRegistry",
    "cache": "ITimingCache", "after": "ITimingCache", "merged": "ITimingCache",
    "incoming": "ITimingCache", "err": "ParserError", "serialized": "IHostMemory",
    "runtime": "Runtime", "self.runtime": "Runtime", "engine": "ICudaEngine",
    "self.engine": "ICudaEngine", "inspector": "EngineInspector", "refitter": "Refitter",
    "parser_refitter": "OnnxParserRefitter", "context": "IExecutionContext",
    "self.context": "IExecutionContext", "sev": "ILogger.Severity", "dtype": "DataType",
    "creator": "IPluginCreator",
}
# Where a file gives a name another class.
FILE_OWNERS: Dict[str, Dict[str, str]] = {"refit.py": {"config": "ISerializationConfig"}}
# Attributes that are Python's or pybind11's, not TensorRT's, and torch's on the runtime's stream.
NOT_TRT = {"__init__", "name", "append", "items", "cuda_stream", "synchronize"}


def table(name: str) -> Set[str]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return {line for line in lines if line and not line.startswith("#")}


NAMES = {False: table("tensorrt_api_names.txt"), True: table("tensorrt_api_names_10.txt")}
MEMBERS = {False: table("tensorrt_api_members.txt"), True: table("tensorrt_api_members_10.txt")}
VERSION = {False: "11.4", True: "10.16"}


def exists(owner: str, member: str, legacy: bool) -> bool:
    """``owner.member`` is bound, and the wheel holds ``member`` as a whole string."""
    return f"{owner}.{member}" in MEMBERS[legacy] and member in NAMES[legacy]


def _chain(node: ast.AST) -> List[str]:
    """``self.engine.get_tensor_name`` -> ["self", "engine", "get_tensor_name"]; [] when the
    chain starts at a call or subscript."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return []
    parts.append(node.id)
    return parts[::-1]


def _root(node: ast.AST) -> str:
    return ".".join(_chain(node))


def owner_of(base: List[str], owners: Dict[str, str]) -> Optional[str]:
    """The class an attribute chain's base denotes: its longest known variable prefix, then one
    nesting level per further name (``trt.BuilderFlag`` -> BuilderFlag, ``trt.ILogger.Severity``
    -> ILogger.Severity)."""
    for cut in range(len(base), 0, -1):
        owner = owners.get(".".join(base[:cut]))
        if owner is None:
            continue
        for name in base[cut:]:
            owner = name if owner == "tensorrt" else f"{owner}.{name}"
        return owner
    return None


Use = Tuple[str, str, str, bool]
"""(owner, member, where, legacy)"""


def used_names(source: str, file: str = "<test>") -> List[Use]:
    """Each TensorRT attribute the source uses, with the class or enum it is used on."""
    owners = {**OWNERS, **FILE_OWNERS.get(file, {})}
    tree = ast.parse(source)
    found: List[Use] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.ClassDef)) else func
            where = f"{file} {func}:{getattr(child, 'lineno', '?')}"
            if isinstance(child, ast.Attribute) and child.attr not in NOT_TRT:
                owner = owner_of(_chain(child.value), owners)
                if owner is not None:
                    found.append((owner, child.attr, where, "legacy" in func))
            # getattr(obj, "member", default) / hasattr: a use guarded for older releases is
            # still a use, and must exist in the release the code targets
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Name) and \
                    child.func.id in ("getattr", "hasattr") and len(child.args) >= 2 and \
                    isinstance(child.args[1], ast.Constant) and \
                    isinstance(child.args[1].value, str) and child.args[1].value not in NOT_TRT:
                owner = owner_of(_chain(child.args[0]), owners)
                if owner is not None:
                    found.append((owner, child.args[1].value, where, "legacy" in func))
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Name) and \
                    child.func.id == "_enum" and len(child.args) == 3:
                enum, member = child.args[1], child.args[2]
                if isinstance(enum, ast.Constant) and isinstance(enum.value, str):
                    found.append(("tensorrt", enum.value, where, "legacy" in func))
                    if isinstance(member, ast.Constant) and isinstance(member.value, str):
                        found.append((enum.value, member.value, where, "legacy" in func))
            visit(child, name)

    visit(tree, "<module>")
    return found


def description_members() -> List[Use]:
    """Enum members a BuildDescription can name, with their enum."""
    from buildgraph.backends.tensorrt import build_params as trt_spec

    out: List[Use] = []
    for enum, mapping in (("MemoryPoolType", trt_spec.MEMORY_POOLS),
                          ("HardwareCompatibilityLevel", trt_spec.HARDWARE_COMPATIBILITY),
                          ("ProfilingVerbosity", trt_spec.PROFILING_VERBOSITY),
                          ("ILogger.Severity", trt_spec.LOG_SEVERITY)):
        out.extend((enum, m, f"spec.py {enum}", False) for m in mapping.values())
    out.extend(("BuilderFlag", m, "spec.py LEGACY_PRECISIONS", True)
               for m in trt_spec.LEGACY_PRECISIONS.values())
    tree = ast.parse(SPEC.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if not (isinstance(node, ast.FunctionDef) and node.name == "describe_build"):
            continue
        for call in ast.walk(node):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and \
                    call.func.attr == "append" and _root(call.func.value) in ("flags", "cleared") \
                    and call.args and isinstance(call.args[0], ast.Constant):
                out.append(("BuilderFlag", call.args[0].value, f"spec.py:{call.lineno}", False))
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and \
                    call.func.attr == "append" and _root(call.func.value) == "parser_flags" \
                    and call.args and isinstance(call.args[0], ast.Tuple):
                first = call.args[0].elts[0]
                if isinstance(first, ast.Constant):
                    out.append(("OnnxParserFlag", first.value, f"spec.py:{call.lineno}", False))
    return out


def all_used() -> List[Use]:
    names: List[Use] = []
    for path in SOURCES:
        names += used_names(path.read_text(encoding="utf-8"), path.name)
    return names + description_members()


def test_tables_are_the_real_bindings():
    for legacy in (False, True):
        assert len(NAMES[legacy]) > 2000 and len(MEMBERS[legacy]) > 1200
        for owner, member in (("tensorrt", "Builder"), ("tensorrt", "OnnxParser"),
                              ("Builder", "build_serialized_network"),
                              ("IBuilderConfig", "create_timing_cache"),
                              ("Builder", "create_optimization_profile"),
                              ("ICudaEngine", "serialize"), ("DataType", "INT8")):
            assert exists(owner, member, legacy), (owner, member, legacy)
    # what makes the 11.x tables worth having: the weak-typing API is gone from them
    for owner, member in (("BuilderFlag", "FP16"), ("BuilderFlag", "INT8"),
                          ("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH"),
                          ("IBuilderConfig", "int8_calibrator")):
        assert not exists(owner, member, False), (owner, member)
        assert exists(owner, member, True), (owner, member)


def test_the_source_scan_finds_the_calls_and_their_owners():
    used = {(o, m) for o, m, _, _ in all_used()}
    assert {("tensorrt", "Builder"), ("tensorrt", "OnnxParser"), ("Builder", "create_network"),
            ("OnnxParser", "parse_from_file"), ("OnnxParser", "num_errors"),
            ("ParserError", "node_operator"), ("Builder", "create_builder_config"),
            ("IBuilderConfig", "set_flag"), ("IBuilderConfig", "set_memory_pool_limit"),
            ("Builder", "create_optimization_profile"), ("IOptimizationProfile", "set_shape"),
            ("IBuilderConfig", "add_optimization_profile"),
            ("Builder", "build_serialized_network"), ("IBuilderConfig", "create_timing_cache"),
            ("IBuilderConfig", "set_timing_cache"), ("IBuilderConfig", "get_timing_cache"),
            ("ITimingCache", "combine"), ("ITimingCache", "queryKeys"),
            ("ITimingCache", "serialize"), ("ICudaEngine", "create_engine_inspector"),
            ("EngineInspector", "get_engine_information"), ("tensorrt", "Refitter"),
            ("tensorrt", "OnnxParserRefitter"), ("OnnxParserRefitter", "refit_from_file"),
            ("Refitter", "refit_cuda_engine"), ("ICudaEngine", "create_serialization_config"),
            ("ISerializationConfig", "clear_flag"), ("SerializationFlag", "EXCLUDE_WEIGHTS"),
            ("SerializationFlag", "INCLUDE_REFIT"), ("ISerializationConfig", "set_flag"),
            ("tensorrt", "init_libnvinfer_plugins"), ("Runtime", "get_plugin_registry"),
            ("IPluginRegistry", "load_library"), ("IPluginRegistry", "get_creator"),
            ("IPluginRegistry", "all_creators"), ("IPluginCreator", "plugin_version"),
            ("IExecutionContext", "execute_async_v3"),
            ("IExecutionContext", "set_tensor_address"),
            ("Runtime", "engine_host_code_allowed"),
            ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED"), ("MemoryPoolType", "WORKSPACE"),
            ("HardwareCompatibilityLevel", "AMPERE_PLUS"), ("ProfilingVerbosity", "DETAILED"),
            ("BuilderFlag", "REFIT"), ("BuilderFlag", "FP16"),
            ("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH"),
            ("OnnxParserFlag", "NATIVE_INSTANCENORM"), ("ILogger.Severity", "VERBOSE")} <= used


@pytest.mark.parametrize("owner,member,where,legacy", sorted(set(all_used())))
def test_name_exists_on_its_owner(owner, member, where, legacy):
    assert exists(owner, member, legacy), \
        f"{where}: '{owner}.{member}' is not in TensorRT {VERSION[legacy]}'s bindings"


def missing(source: str, legacy: bool = False) -> List[str]:
    return [f"{o}.{m}" for o, m, _, lg in used_names(source) if not exists(o, m, legacy or lg)]


def test_a_removed_or_misowned_api_fails():
    assert missing("def build(trt, config):\n    config.set_flag(trt.BuilderFlag.FP16)\n") \
        == ["BuilderFlag.FP16"]
    # 'INT8' is a real name (DataType.INT8) and the tail of 'UINT8': neither saves the flag
    assert missing("def build(trt, config):\n    config.set_flag(trt.BuilderFlag.INT8)\n") \
        == ["BuilderFlag.INT8"]
    # IPluginV2.execute_async exists; the execution context's is execute_async_v3
    assert missing("def run(context, s):\n    context.execute_async(s)\n") == \
        ["IExecutionContext.execute_async"]
    assert missing("def run(context, s):\n    context.execute_async_v3(s)\n") == []
    # serialize is an engine's and a timing cache's, not a builder config's
    assert missing("def f(config):\n    config.serialize()\n") == ["IBuilderConfig.serialize"]
    assert missing("def f(trt):\n    trt._enum_that_is_not_there\n") == \
        ["tensorrt._enum_that_is_not_there"]
    assert missing("def f(trt, c):\n    _enum(trt, 'BuilderFlag', 'UINT8')\n") == \
        ["BuilderFlag.UINT8"]
    legacy = "def legacy_build(trt, config):\n    config.set_flag(trt.BuilderFlag.FP16)\n"
    assert missing(legacy) == []
    # a use guarded by getattr/hasattr is checked too
    assert missing("def f(cache):\n    getattr(cache, 'query_keys', None)\n") == \
        ["ITimingCache.query_keys"]
    assert missing("def f(trt):\n    hasattr(trt.SerializationFlag, 'INCLUDE_REFIT')\n") == []


def test_every_trt_object_variable_is_known():
    """A TensorRT object kept in a variable this test does not map to a class would escape the
    check: every variable assigned from a call on a TensorRT object is mapped, or holds plain
    data (a bool, a number, a string) listed here."""
    plain = {"ok", "mode", "name", "shape", "key", "status", "names", "loaded", "engine_bytes",
             "issues", "missing", "after_keys", "blob_after", "inspector_json", "refitted",
             "layers", "text", "shapes", "self.inputs", "self.outputs", "outcome", "index",
             "handle", "keys"}
    unscanned = set()
    for path in SOURCES:
        owners = {**OWNERS, **FILE_OWNERS.get(path.name, {})}
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Assign, ast.AnnAssign)):
                continue
            value = node.value
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            calls_trt = value is not None and any(
                isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and
                owner_of(_chain(sub.func.value), owners) is not None
                for sub in ast.walk(value))
            if not calls_trt:
                continue
            for target in targets:
                name = _root(target)
                if name and name not in owners and name not in plain:
                    unscanned.add(f"{path.name}:{node.lineno}: {name}")
    assert not unscanned, "TensorRT objects in variables the name check does not scan: " + \
        ", ".join(sorted(unscanned))


# --- the table maker ------------------------------------------------------------------------

def _tool():
    spec = importlib.util.spec_from_file_location("trt_api_names",
                                                  REPO / "tools" / "trt_api_names.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules.setdefault("trt_api_names", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


BINDINGS = r'''
namespace tensorrt {
namespace lambdas {
static auto const f = [](IBuilder& self) { int x = 0; return x; };  // a ';' inside braces
}
void bindCore(py::module& m)
{
    py::class_<ILogger, PyLogger> base{m, "ILogger", ILoggerDoc::descr, py::module_local()};
    py::enum_<ILogger::Severity>(base, "Severity", py::arithmetic())
        .value("ERROR", ILogger::Severity::kERROR)
        .value("INFO", ILogger::Severity::kINFO)
        .export_values();
    base.def(py::init<>()).def("log", &ILogger::log, "severity"_a, "msg"_a);
#if EXPORT_ALL_BINDINGS
    py::class_<IBuilderConfig>(m, "IBuilderConfig", IBuilderConfigDoc::descr)
        .def_property("flags", &IBuilderConfig::getFlags, &IBuilderConfig::setFlags)
        .def("set_flag", [](IBuilderConfig& self, BuilderFlag f) { self.setFlag(f); return true; },
             "flag"_a)
        /* .def("commented_out", ...) */
        .def_property_readonly("num_optimization_profiles", &IBuilderConfig::getNb);
#endif
    py::enum_<BuilderFlag>(m, "BuilderFlag", py::arithmetic{})
        .value("TF32", BuilderFlag::kTF32, "the ; in a \"string\"")
        .value("REFIT", BuilderFlag::kREFIT);
    m.def(
        "init_libnvinfer_plugins", &initLibNvInferPlugins, "logger"_a, "namespace"_a);
    m.attr("float32") = DataType::kFLOAT;
}
}
'''


def test_the_table_maker_reads_pybind11_bindings():
    members = _tool().binding_members({"pyCore.cpp": BINDINGS})
    assert members == {
        "tensorrt.ILogger", "ILogger.Severity", "ILogger.Severity.ERROR", "ILogger.Severity.INFO",
        "ILogger.ERROR", "ILogger.INFO", "ILogger.log", "tensorrt.IBuilderConfig",
        "IBuilderConfig.flags", "IBuilderConfig.set_flag",
        "IBuilderConfig.num_optimization_profiles", "tensorrt.BuilderFlag", "BuilderFlag.TF32",
        "BuilderFlag.REFIT", "tensorrt.init_libnvinfer_plugins", "tensorrt.float32"}


def test_the_table_maker_reads_tails_and_trtexec_options():
    tool = _tool()
    strings = tool.WheelStrings("w", {"UINT8", "get_fields_to_serialize"},
                                {"UINT8", "get_fields_to_serialize"})
    assert strings.holds("INT8") and strings.holds("serialize") and not strings.holds("FP16")
    assert list(tool.nul_strings(b"\x01ab\x00set_flag\x00x\x00tail")) == ["ab", "set_flag"]
    options = tool.trtexec_options(r'''
void BaseModelOptions::parse(Arguments& arguments) { getAndDelOption(arguments, "--onnx", model); }
void BuildOptions::parse(Arguments& arguments)
{
    getAndDelOption(arguments, "--refit", refittable);
    std::string level;
    getAndDelOption(arguments, "--hardwareCompatibilityLevel", level);
    if (level == "none") {} else if (samplesCommon::toLower(level) == "ampere+") {}
    else { throw std::invalid_argument("Unknown hardwareCompatibilityLevel: --nope"); }
    getAndDelOption(arguments, "--memPoolSize", memPoolSizes);
    if (memPoolName == "workspace") {} else if (memPoolName == "dlaSRAM") {}
}
bool parseHelp(Arguments& arguments) { return getAndDelOption(arguments, "--help", h); }
''')
    assert options == {"--onnx": set(), "--refit": set(), "--help": set(),
                       "--hardwareCompatibilityLevel": {"none", "~ampere+"},
                       "--memPoolSize": {"workspace:*", "dlaSRAM:*"}}
