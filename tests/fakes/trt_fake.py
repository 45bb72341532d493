"""A fake ``tensorrt`` module for tests on machines without TensorRT or a GPU.

It implements the part of the TensorRT Python API that buildgraph calls, as strictly as the real
bindings: the same names on the same classes (tests/test_tensorrt_fake.py checks every public
name here against the bindings' tables), no attribute the real classes lack (``__slots__``),
enums that are their own types (a ``MemoryPoolType`` where a ``BuilderFlag`` belongs is a
``TypeError``, as pybind11 raises), and the real return conventions, read in NVIDIA's bindings
(python/src/infer/pyCore.cpp, python/src/parsers/pyOnnx.cpp) and Polygraphy
(polygraphy/backend/trt/loader.py, profile.py):

* ``IOptimizationProfile.set_shape`` raises ``RuntimeError`` when opt or max is inconsistent
  with the shapes set before it; ``bool(profile)`` is ``isValid()`` (False when empty or partly
  set, Polygraphy's ``check_profile``); ``IBuilderConfig.add_optimization_profile`` returns the
  profile's index, or -1 for an invalid profile;
* ``Builder.build_serialized_network`` logs an error and returns None for what the builder
  refuses (dynamic inputs without a profile, a profile that misses or misnames an input, a timing
  cache miss under ERROR_ON_TIMING_CACHE_MISS, precision flags on a strongly typed network,
  EXCLUDE_LEAN_RUNTIME without VERSION_COMPATIBLE, a DLA core the device lacks);
* ``OnnxParser.parse_from_file`` returns False and keeps ``ParserError`` s (node by node for
  unsupported ops; TensorRT 9 also wants an EXPLICIT_BATCH network); ``get_error`` past the end
  returns None;
* ``IBuilderConfig.create_timing_cache`` returns None for a blob it cannot read;
  ``set_timing_cache`` and ``ITimingCache.combine`` return False for another device or version;
* ``Runtime.deserialize_cuda_engine`` returns None for another version's engine, and for a
  version-compatible one unless ``engine_host_code_allowed`` is set (it runs the embedded lean
  runtime); ``ICudaEngine.create_execution_context`` returns None for a weight-stripped engine
  not yet refitted;
* ``IExecutionContext.set_input_shape``, ``set_tensor_address``,
  ``set_optimization_profile_async`` and ``execute_async_v3`` return False when TensorRT would;
* ``Refitter(engine, logger)`` raises ``TypeError`` on an engine built without REFIT (the factory
  returns nullptr); ``OnnxParserRefitter.refit_from_file`` returns False, with errors, for weights
  the engine does not have or of another shape; ``Refitter.refit_cuda_engine`` returns False
  while weights are missing; ``ICudaEngine.create_serialization_config`` starts from the engine's
  own flags (EXCLUDE_WEIGHTS for a STRIP_PLAN engine).

Engines are JSON that say ``"fake": true`` and embed the parsed ONNX model: the execution context
runs it with onnxruntime, on host memory (:class:`HostBuffers` stands in for CUDA memory in
``TensorRTRuntime.buffers``), so a refit that put the wrong weights in gives wrong numbers.
Nothing here imports buildgraph: the fake decides network identity, refittable weights and
timing-cache keys by its own rules, so that tests do not agree with the product by construction.

Process-wide state, as in the real library (reloading this module stands for a new process):

* **one logger** (NVIDIA/TensorRT issue 1475): while any Builder, Runtime or Refitter is alive,
  a new one made with another logger gets the existing logger instead, with TensorRT's warning;
  all their messages go there;
* **plugin registries**: ``get_plugin_registry()`` is the process's global registry, where
  ``init_libnvinfer_plugins`` puts TensorRT's own plugins and where a library that uses
  ``REGISTER_TENSORRT_PLUGIN`` registers itself when anything loads it into the process
  (``ctypes.CDLL``: the fake finds such libraries in ``/proc/self/maps``); each Builder and
  Runtime has its own registry whose parent is the global one (searched when a plugin is not
  found locally, TensorRT's default). ``IPluginRegistry.load_library`` is dynamic registration:
  the library must export ``getCreators``, else it returns None; it also returns None when one
  of the library's plugins is already registered (NvInferRuntimeCommon.h). Whether a builder's
  registry is visible to a separate Runtime is not documented; the fake says no (the safe side);
* TensorRT's plugin layers: the parser turns InstanceNormalization into the
  ``InstanceNormalization_TRT`` plugin when NATIVE_INSTANCENORM (on by default) is cleared, and
  an op it has no importer for into the plugin of that name when a registry it sees has one;
  an engine with plugin layers deserializes only where those plugins are registered.

Test plugin libraries (:func:`make_plugin_library`, a C compiler) say which plugins they hold
and, for the fake's execution, which ONNX op each computes (``MyRelu=Relu``).

Select it with ``BUILDGRAPH_TENSORRT_MODULE=trt_fake``; ``BUILDGRAPH_FAKE_TRT_VERSION`` picks the
version (11.x by default; 10.x has the builder-flag precisions, 9.x wants EXPLICIT_BATCH). The
names a release added or removed follow NVIDIA's sources (:data:`_SINCE`, checked against
tests/data/tensorrt_api_since.txt): ``10.7`` has no ``ITimingCache.queryKeys``, ``10.8`` no
``SAME_COMPUTE_CAPABILITY``, ``10.13`` no ``SerializationFlag.INCLUDE_REFIT``. TensorRT 11.3's
documented known issue, REFIT engines losing a GEMM bias, is reproduced on 11.3.
Every API call is recorded in :data:`CALLS`.
"""

from __future__ import annotations

import base64
import ctypes
import enum
import hashlib
import json
import os
import weakref
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

__version__ = os.environ.get("BUILDGRAPH_FAKE_TRT_VERSION", "11.4.0.106")
_MAJOR = int(__version__.split(".")[0])
_V = tuple(int(p) for p in (__version__.split(".") + ["0"])[:2])

# Names added to (first) or removed from (last) the bindings after TensorRT 10.0, by release:
# read in python/src of NVIDIA's release tags (tests/test_tensorrt_fake.py compares this with
# tests/data/tensorrt_api_since.txt). The fake has a name only in the releases that have it.
_SINCE: Dict[str, Tuple[Tuple[int, int], Optional[Tuple[int, int]]]] = {
    "ITimingCache.queryKeys": ((10, 8), None),
    "tensorrt.TimingCacheKey": ((10, 8), None),
    "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY": ((10, 9), None),
    "SerializationFlag.INCLUDE_REFIT": ((10, 14), None),
    "IPluginRegistry.all_creators_recursive": ((10, 10), None),
    "BuilderFlag.INT4": ((10, 1), (10, 16)),
    "BuilderFlag.REFIT_INDIVIDUAL": ((10, 2), None),
    "BuilderFlag.MONITOR_MEMORY": ((10, 6), None),
    "BuilderFlag.STRICT_NANS": ((10, 6), None),
    "BuilderFlag.EDITABLE_TIMING_CACHE": ((10, 8), None),
    "BuilderFlag.FP4": ((10, 8), (10, 16)),
    "BuilderFlag.DISTRIBUTIVE_INDEPENDENCE": ((10, 12), None),
    "NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS": ((10, 9), None),
    "NetworkDefinitionCreationFlag.PREFER_JIT_PYTHON_PLUGINS": ((10, 9), None),
}
# what 10.0 added to 9.x (the fake's 9.x is only there for EXPLICIT_BATCH)
_SINCE_10 = {"BuilderFlag.STRIP_PLAN", "BuilderFlag.REFIT_IDENTICAL", "BuilderFlag.WEIGHT_STREAMING",
             "MemoryPoolType.TACTIC_SHARED_MEMORY", "tensorrt.OnnxParserRefitter",
             "IPluginRegistry.all_creators", "IPluginRegistry.get_creator"}


def _has(name: str) -> bool:
    """Does this release bind ``Owner.member``?"""
    if name in _SINCE_10 and _V < (10, 0):
        return False
    first, last = _SINCE.get(name, ((0, 0), None))
    return _V >= first and (last is None or _V <= last)

# what this module adds to the real API (tests/test_tensorrt_fake.py leaves these out of its
# comparison with the bindings)
FAKE_CUDA = "12.9"
FAKE_GPUS = [] if os.environ.get("BUILDGRAPH_FAKE_TRT_NO_GPU") else [
    {"name": "Fake GPU", "compute_capability": "8.9", "driver": "0.0", "memory_mib": 24576}]
UNSUPPORTED_OPS = {"NonZeroFake", "FakeUnsupported"}
CALLS: List[Tuple[str, Any]] = []
FAKE_ONLY = {"FAKE_CUDA", "FAKE_GPUS", "UNSUPPORTED_OPS", "CALLS", "FAKE_ONLY", "HostBuffers",
             "make_test_onnx", "make_plugin_library", "PLUGIN_SOURCE", "TRT_PLUGINS"}


def _record(name: str, *args: Any) -> None:
    CALLS.append((name, args if len(args) != 1 else args[0]))


def _check(value: Any, kind: Any, where: str) -> None:
    """pybind11's refusal of an argument of the wrong type."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        want = getattr(kind, "__name__", str(kind))
        raise TypeError(f"{where}(): incompatible function arguments: expected {want}, got "
                        f"{type(value).__name__} ({value!r})")


# --------------------------------------------------------------------------------------------
# enums: members and values from include/NvInfer*.h of the release (11.1 / 10.16.1)
# --------------------------------------------------------------------------------------------

class _Enum(enum.IntEnum):
    """A pybind11 enum: its own type, ``.name``, ``int()``; no conversion from int."""

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


def _enum(name: str, members: Dict[str, int]) -> Any:
    return _Enum(name, {m: v for m, v in members.items() if _has(f"{name}.{m}")})


if _MAJOR >= 11:
    BuilderFlag = _enum("BuilderFlag", {
        "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6,
        "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8, "DIRECT_IO": 11, "VERSION_COMPATIBLE": 12,
        "EXCLUDE_LEAN_RUNTIME": 13, "ERROR_ON_TIMING_CACHE_MISS": 15,
        "DISABLE_COMPILATION_CACHE": 17, "STRIP_PLAN": 18, "REFIT_IDENTICAL": 19,
        "WEIGHT_STREAMING": 20, "REFIT_INDIVIDUAL": 22, "STRICT_NANS": 23, "MONITOR_MEMORY": 24,
        "EDITABLE_TIMING_CACHE": 26, "DISTRIBUTIVE_INDEPENDENCE": 27})
    NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", {
        "STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2})
else:
    BuilderFlag = _enum("BuilderFlag", {
        "FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4,
        "DISABLE_TIMING_CACHE": 5, "TF32": 6, "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8,
        "OBEY_PRECISION_CONSTRAINTS": 9, "PREFER_PRECISION_CONSTRAINTS": 10, "DIRECT_IO": 11,
        "REJECT_EMPTY_ALGORITHMS": 12, "VERSION_COMPATIBLE": 13, "EXCLUDE_LEAN_RUNTIME": 14,
        "FP8": 15, "ERROR_ON_TIMING_CACHE_MISS": 16, "BF16": 17, "DISABLE_COMPILATION_CACHE": 18,
        "STRIP_PLAN": 19, "REFIT_IDENTICAL": 20, "WEIGHT_STREAMING": 21, "INT4": 22,
        "REFIT_INDIVIDUAL": 23, "STRICT_NANS": 24, "MONITOR_MEMORY": 25, "FP4": 26,
        "EDITABLE_TIMING_CACHE": 27, "DISTRIBUTIVE_INDEPENDENCE": 28})
    NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", {
        "EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_JIT_PYTHON_PLUGINS": 2,
        "PREFER_AOT_PYTHON_PLUGINS": 3})
MemoryPoolType = _enum("MemoryPoolType", {
    "WORKSPACE": 0, "DLA_MANAGED_SRAM": 1, "DLA_LOCAL_DRAM": 2, "DLA_GLOBAL_DRAM": 3,
    "TACTIC_DRAM": 4, "TACTIC_SHARED_MEMORY": 5})
HardwareCompatibilityLevel = _enum("HardwareCompatibilityLevel", {
    "NONE": 0, "AMPERE_PLUS": 1, "SAME_COMPUTE_CAPABILITY": 2})
DeviceType = _enum("DeviceType", {"GPU": 0, "DLA": 1})
ProfilingVerbosity = _enum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1,
                                                  "DETAILED": 2})
LayerInformationFormat = _enum("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})
TensorIOMode = _enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
DataType = _enum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4,
                              "UINT8": 5, "FP8": 6, "BF16": 7, "INT64": 8, "INT4": 9, "FP4": 10,
                              "E8M0": 11})
SerializationFlag = _enum("SerializationFlag", {"EXCLUDE_WEIGHTS": 0, "EXCLUDE_LEAN_RUNTIME": 1,
                                                "INCLUDE_REFIT": 2})
OnnxParserFlag = _enum("OnnxParserFlag", {
    "NATIVE_INSTANCENORM": 0, "ENABLE_UINT8_AND_ASYMMETRIC_QUANTIZATION_DLA": 1,
    "REPORT_CAPABILITY_DLA": 2, "ENABLE_PLUGIN_OVERRIDE": 3, "ADJUST_FOR_DLA": 4})
ErrorCode = _enum("ErrorCode", {
    "SUCCESS": 0, "INTERNAL_ERROR": 1, "MEM_ALLOC_FAILED": 2, "MODEL_DESERIALIZE_FAILED": 3,
    "INVALID_VALUE": 4, "INVALID_GRAPH": 5, "INVALID_NODE": 6, "UNSUPPORTED_GRAPH": 7,
    "UNSUPPORTED_NODE": 8, "UNSUPPORTED_NODE_ATTR": 9, "UNSUPPORTED_NODE_INPUT": 10,
    "UNSUPPORTED_NODE_DATATYPE": 11, "UNSUPPORTED_NODE_DYNAMIC": 12,
    "UNSUPPORTED_NODE_SHAPE": 13, "REFIT_FAILED": 14})

# ONNX element type -> (DataType member, numpy dtype)
_ONNX_TYPES = {1: ("FLOAT", "float32"), 10: ("HALF", "float16"), 16: ("BF16", "float32"),
               3: ("INT8", "int8"), 2: ("UINT8", "uint8"), 6: ("INT32", "int32"),
               7: ("INT64", "int64"), 9: ("BOOL", "bool")}
_NUMPY = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "UINT8": "uint8",
          "INT32": "int32", "INT64": "int64", "BOOL": "bool"}
_PRECISION_FLAGS = {"FP16", "BF16", "INT8", "FP8", "INT4", "FP4"}
# flags about the build process, not the engine: the plan does not record them
_PROCESS_FLAGS = {"ERROR_ON_TIMING_CACHE_MISS", "DISABLE_TIMING_CACHE", "EDITABLE_TIMING_CACHE",
                  "DISABLE_COMPILATION_CACHE", "MONITOR_MEMORY"}
# the fake's own notion of what changes which tactics are timed (its timing-cache keys)
_TACTIC_FLAGS = _PRECISION_FLAGS | {"TF32", "SPARSE_WEIGHTS", "STRIP_PLAN", "REFIT",
                                    "VERSION_COMPATIBLE", "DIRECT_IO"}


# --------------------------------------------------------------------------------------------
# logging, plugins
# --------------------------------------------------------------------------------------------

class _Severity(_Enum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


_Severity.__name__ = "Severity"


class ILogger:
    """Subclass it and call ``ILogger.__init__``: an object whose base was not initialised is
    refused where a logger is expected (pybind11's "__init__() must be called")."""

    __slots__ = ("_trt_init", "__dict__")
    Severity = _Severity
    INTERNAL_ERROR = _Severity.INTERNAL_ERROR  # export_values()
    ERROR = _Severity.ERROR
    WARNING = _Severity.WARNING
    INFO = _Severity.INFO
    VERBOSE = _Severity.VERBOSE

    def __init__(self) -> None:
        self._trt_init = True

    def log(self, severity: Any, msg: str) -> None:
        raise RuntimeError("Tried to call pure virtual function \"ILogger::log\"")


class Logger(ILogger):
    __slots__ = ("min_severity",)

    def __init__(self, min_severity: Any = _Severity.WARNING) -> None:
        _check(min_severity, _Severity, "Logger.__init__")
        ILogger.__init__(self)
        self.min_severity = min_severity

    def log(self, severity: Any, msg: str) -> None:
        if severity <= self.min_severity:
            print(f"[TRT] [{severity.name[0]}] {msg}")


def _logger(logger: Any, where: str) -> Any:
    _check(logger, ILogger, where)
    if not getattr(logger, "_trt_init", False):
        raise TypeError(f"{where}(): ILogger.__init__() must be called when overriding "
                        "__init__")
    return logger


def _log(logger: Any, severity: _Severity, msg: str) -> None:
    if logger is not None:
        logger.log(severity, msg)


# TensorRT keeps one logger pointer while any builder, runtime or refitter exists
# (NvInferRuntime.h: getLogger; NVIDIA/TensorRT issue 1475)
_GLOBAL_LOGGER: Any = None
_HOLDERS: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _adopt(obj: Any, logger: Any, where: str) -> Any:
    """The logger ``obj`` (a Builder, Runtime or Refitter) will use: the one already held while
    another such object is alive, whatever was passed."""
    global _GLOBAL_LOGGER
    _logger(logger, where)
    if len(_HOLDERS) and _GLOBAL_LOGGER is not None and logger is not _GLOBAL_LOGGER:
        _log(_GLOBAL_LOGGER, _Severity.WARNING,
             f"[fake] The logger passed into {where.split('.')[0]} differs from one already "
             "provided for an existing builder, runtime, or refitter. TensorRT maintains only "
             "a single logger pointer at any given time, so the existing value, which can be "
             "retrieved with getLogger(), will be used instead. In order to use a new logger, "
             "first destroy all existing builder, runner or refitter objects.")
        logger = _GLOBAL_LOGGER
    else:
        _GLOBAL_LOGGER = logger
    _HOLDERS.add(obj)
    return logger


# --------------------------------------------------------------------------------------------
# plugins: creators, registries, libraries
# --------------------------------------------------------------------------------------------

TRT_PLUGINS = {"InstanceNormalization_TRT": "InstanceNormalization"}
"""TensorRT's own plugins (libnvinfer_plugin) the fake knows: name -> the ONNX op it computes."""


class IPluginCreator:
    __slots__ = ("_name", "_version", "_namespace", "_op")

    def __init__(self, name: str, version: str, namespace: str, op: str):
        self._name, self._version, self._namespace, self._op = name, version, namespace, op

    @property
    def name(self) -> str:
        return self._name

    @property
    def plugin_version(self) -> str:
        return self._version

    @property
    def plugin_namespace(self) -> str:
        return self._namespace


def _creators_text(text: str) -> List[IPluginCreator]:
    """``MyRelu=Relu;Other=Sigmoid`` (a test library's declaration) -> creators, version 1."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(";"))):
        name, _, op = item.partition("=")
        out.append(IPluginCreator(name, "1", "", op or name))
    return out


def _symbol_text(lib: Any, symbol: str) -> Optional[str]:
    try:
        value = ctypes.c_char_p.in_dll(lib, symbol).value
    except ValueError:
        return None
    return value.decode() if value is not None else ""


class IPluginRegistry:
    __slots__ = ("_creators", "_parent", "_search_parent", "__weakref__")

    def __init__(self, parent: Optional["IPluginRegistry"] = None):
        self._creators: List[IPluginCreator] = []
        self._parent = parent
        self._search_parent = True

    def _own(self) -> List[IPluginCreator]:
        if self is _GLOBAL_REGISTRY:
            _sync_static()
        return self._creators

    @property
    def all_creators(self) -> List[IPluginCreator]:
        return list(self._own())

    @property
    def all_creators_recursive(self) -> List[IPluginCreator]:
        return self._all()

    def _all(self) -> List[IPluginCreator]:
        return list(self._own()) + (self._parent._all() if self._parent is not None else [])

    @property
    def parent_search_enabled(self) -> bool:
        return self._search_parent

    @parent_search_enabled.setter
    def parent_search_enabled(self, value: bool) -> None:
        _check(value, bool, "IPluginRegistry.parent_search_enabled")
        self._search_parent = value

    def get_creator(self, type: str, version: str, plugin_namespace: str = ""  # noqa: A002
                    ) -> Optional[IPluginCreator]:
        _check(type, str, "IPluginRegistry.get_creator")
        _check(version, str, "IPluginRegistry.get_creator")
        return self._find(type, version, plugin_namespace)

    def _find(self, name: str, version: str, namespace: str) -> Optional[IPluginCreator]:
        for c in self._own():
            if (c.name, c.plugin_version, c.plugin_namespace) == (name, version, namespace):
                return c
        if self._parent is not None and self._search_parent:
            return self._parent._find(name, version, namespace)
        return None

    def load_library(self, plugin_path: str) -> Any:
        """Dynamic registration: ``getCreators`` must be exported; None when it is not, when
        the library cannot be opened, or when one of its plugins is already registered."""
        _check(plugin_path, str, "IPluginRegistry.load_library")
        _record("load_library", plugin_path)
        try:
            lib = ctypes.CDLL(plugin_path)
        except OSError as exc:
            _log(_GLOBAL_LOGGER, _Severity.ERROR, f"[fake] IPluginRegistry::loadLibrary: "
                                                  f"cannot load {plugin_path}: {exc}")
            return None
        if not hasattr(lib, "getCreators"):
            _log(_GLOBAL_LOGGER, _Severity.ERROR, f"[fake] IPluginRegistry::loadLibrary: "
                                                  f"{plugin_path} has no symbol getCreators")
            return None
        creators = _creators_text(_symbol_text(lib, "trt_fake_creators") or "")
        for c in creators:
            if self._find(c.name, c.plugin_version, c.plugin_namespace) is not None:
                _log(_GLOBAL_LOGGER, _Severity.ERROR,
                     f"[fake] IPluginRegistry::loadLibrary: plugin {c.name} (version "
                     f"{c.plugin_version}) is already registered")
                return None
        self._creators.extend(creators)
        return _LibraryHandle(plugin_path)


class _LibraryHandle:
    """What ``load_library`` returns (an opaque handle)."""

    __slots__ = ("path",)

    def __init__(self, path: str):
        self.path = path


_GLOBAL_REGISTRY = IPluginRegistry()
_STATIC_SEEN: Dict[Tuple[str, int], bool] = {}


def _sync_static() -> None:
    """REGISTER_TENSORRT_PLUGIN: a library's static registrar runs when the library is loaded
    into the process, by whatever loads it; the fake looks for such libraries (a marker symbol)
    among the files mapped into this process."""
    try:
        maps = open("/proc/self/maps", encoding="utf-8", errors="replace").read()
    except OSError:
        return
    for line in maps.splitlines():
        parts = line.split(None, 5)
        path = parts[5] if len(parts) == 6 else ""
        if ".so" not in path or not path.startswith("/"):
            continue
        try:
            stat = os.stat(path)
        except OSError:
            continue
        key = (path, stat.st_ino)
        if key in _STATIC_SEEN:
            continue
        _STATIC_SEEN[key] = False
        if stat.st_size > 1 << 20:
            continue
        try:
            with open(path, "rb") as fh:
                if b"trt_fake_static_creators" not in fh.read():
                    continue
        except OSError:
            continue
        _STATIC_SEEN[key] = True
        text = _symbol_text(ctypes.CDLL(path), "trt_fake_static_creators") or ""
        _GLOBAL_REGISTRY._creators.extend(_creators_text(text))


def get_plugin_registry() -> IPluginRegistry:
    return _GLOBAL_REGISTRY


def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
    _logger(logger, "init_libnvinfer_plugins")
    _check(namespace, str, "init_libnvinfer_plugins")
    _record("init_libnvinfer_plugins", namespace)
    for name, op in TRT_PLUGINS.items():
        if _GLOBAL_REGISTRY._find(name, "1", namespace) is None:
            _GLOBAL_REGISTRY._creators.append(IPluginCreator(name, "1", namespace, op))
    return True


class IHostMemory(bytes):
    """Serialized data; ``bytes(memory)`` copies it out, as the buffer protocol does."""

    @property
    def nbytes(self) -> int:
        return len(self)

    @property
    def dtype(self) -> Any:
        return DataType.UINT8


class Dims(tuple):
    """A shape; -1 marks a dimension not known yet."""


# --------------------------------------------------------------------------------------------
# the fake's own reading of an ONNX model
# --------------------------------------------------------------------------------------------

def _dims(shape: Any) -> List[Any]:
    out: List[Any] = []
    for d in shape.dim:
        out.append(int(d.dim_value) if d.HasField("dim_value") else
                   (d.dim_param or None))
    return out


def _io(model: Any) -> List[Dict[str, Any]]:
    inits = {i.name for i in model.graph.initializer}
    out = []
    for mode, values in (("INPUT", model.graph.input), ("OUTPUT", model.graph.output)):
        for v in values:
            if v.name in inits:
                continue
            t = v.type.tensor_type
            out.append({"name": v.name, "mode": mode,
                        "dtype": _ONNX_TYPES.get(t.elem_type, ("FLOAT", ""))[0],
                        "dims": _dims(t.shape)})
    return out


def _refittable(model: Any) -> Dict[str, List[int]]:
    """Float initializers: what a REFIT engine lets a Refitter replace (name -> shape)."""
    return {i.name: list(i.dims) for i in model.graph.initializer
            if i.data_type in (1, 10, 11, 16)}


def _output_types(model: Any) -> List[str]:
    """Each node's first output type (DataType member), by ONNX type inference: what a strongly
    typed network computes each layer in."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - an uninferable graph: say FLOAT
        inferred = model
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.output)}
    return [_ONNX_TYPES.get(types.get(n.output[0], 1), ("FLOAT", ""))[0] if n.output else "FLOAT"
            for n in model.graph.node]


def _network_digest(model: Any) -> str:
    """Identity of a network for refit: nodes, attributes, tensors, initializer names, types and
    shapes; values only of initializers a refit cannot replace."""
    from onnx import numpy_helper

    refittable = _refittable(model)
    h = hashlib.sha256(b"trt-fake-network-1")
    for node in model.graph.node:
        h.update(repr((node.op_type, node.domain, list(node.input), list(node.output),
                       sorted((a.name, a.SerializeToString(deterministic=True))
                              for a in node.attribute))).encode())
    for io in _io(model):
        h.update(repr(sorted(io.items())).encode())
    for init in sorted(model.graph.initializer, key=lambda i: i.name):
        h.update(repr((init.name, init.data_type, list(init.dims))).encode())
        if init.name not in refittable:
            h.update(numpy_helper.to_array(init).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# network and parser
# --------------------------------------------------------------------------------------------

class ITensor:
    __slots__ = ("_name", "_shape", "_dtype")

    def __init__(self, name: str, shape: Sequence[int], dtype: Any):
        self._name, self._shape, self._dtype = name, Dims(shape), dtype

    @property
    def name(self) -> str:
        return self._name

    @property
    def shape(self) -> Dims:
        return self._shape

    @property
    def dtype(self) -> Any:
        return self._dtype


class INetworkDefinition:
    __slots__ = ("_flags", "_model", "_io", "_layers", "_types", "_registry", "_plugins")

    def __init__(self, flags: int, registry: IPluginRegistry):
        self._flags = flags
        self._model: Any = None
        self._io: List[Dict[str, Any]] = []
        self._layers: List[Tuple[str, str]] = []
        self._types: List[str] = []
        self._registry = registry
        self._plugins: List[Tuple[str, str, str, str]] = []
        """Plugin layers: (node op type, plugin name, version, namespace)."""

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    @property
    def num_inputs(self) -> int:
        return len([t for t in self._io if t["mode"] == "INPUT"])

    @property
    def num_outputs(self) -> int:
        return len([t for t in self._io if t["mode"] == "OUTPUT"])

    def get_input(self, index: int) -> Optional[ITensor]:
        inputs = [t for t in self._io if t["mode"] == "INPUT"]
        if not 0 <= index < len(inputs):
            return None
        t = inputs[index]
        return ITensor(t["name"], [d if isinstance(d, int) else -1 for d in t["dims"]],
                       DataType[t["dtype"]])

    def _has(self, flag: str) -> bool:
        member = getattr(NetworkDefinitionCreationFlag, flag, None)
        return member is not None and bool(self._flags & (1 << int(member)))

    @property
    def _strongly_typed(self) -> bool:
        return _MAJOR >= 11 or self._has("STRONGLY_TYPED")


class ParserError:
    __slots__ = ("_node", "_name", "_op", "_desc", "_code")

    def __init__(self, node: int, name: str, op: str, desc: str, code: Any):
        self._node, self._name, self._op, self._desc, self._code = node, name, op, desc, code

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._op

    def desc(self) -> str:
        return self._desc

    def code(self) -> Any:
        return self._code

    def __str__(self) -> str:
        return f"In node {self._node} with name: {self._name} and operator: {self._op} " \
               f"({self._code.name}): {self._desc}"


class _Errors:
    __slots__ = ()
    _errors: List[ParserError]

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> Optional[ParserError]:
        _check(index, int, f"{type(self).__name__}.get_error")
        return self._errors[index] if 0 <= index < len(self._errors) else None

    def clear_errors(self) -> None:
        self._errors = []


class OnnxParser(_Errors):
    __slots__ = ("_network", "_logger", "_errors", "_flags")

    def __init__(self, network: INetworkDefinition, logger: ILogger):
        _check(network, INetworkDefinition, "OnnxParser.__init__")
        self._logger = _logger(logger, "OnnxParser.__init__")
        _record("OnnxParser")
        self._network = network
        self._errors: List[ParserError] = []
        self._flags = 1 << int(OnnxParserFlag.NATIVE_INSTANCENORM)  # on by default

    @property
    def flags(self) -> int:
        return self._flags

    def set_flag(self, flag: Any) -> None:
        _check(flag, OnnxParserFlag, "OnnxParser.set_flag")
        _record("parser.set_flag", flag.name)
        self._flags |= 1 << int(flag)

    def clear_flag(self, flag: Any) -> None:
        _check(flag, OnnxParserFlag, "OnnxParser.clear_flag")
        _record("parser.clear_flag", flag.name)
        self._flags &= ~(1 << int(flag))

    def get_flag(self, flag: Any) -> bool:
        _check(flag, OnnxParserFlag, "OnnxParser.get_flag")
        return bool(self._flags & (1 << int(flag)))

    def parse_from_file(self, model: str) -> bool:
        import onnx

        _check(model, str, "OnnxParser.parse_from_file")
        _record("parse_from_file", os.path.basename(model))
        try:
            proto = onnx.load(model)  # external weights too, relative to the file
        except Exception as exc:  # noqa: BLE001
            self._errors.append(ParserError(-1, "", "", f"Failed to parse ONNX model from file: "
                                            f"{model}: {exc}", ErrorCode.MODEL_DESERIALIZE_FAILED))
            return False
        if _MAJOR < 10 and not self._network._has("EXPLICIT_BATCH"):
            self._errors.append(ParserError(-1, "", "", "the network must be created with "
                                            "EXPLICIT_BATCH to parse ONNX",
                                            ErrorCode.INVALID_GRAPH))
            return False
        registry = self._network._registry
        plugins: List[Tuple[str, str, str, str]] = []
        for i, node in enumerate(proto.graph.node):
            attrs = {a.name: a.s.decode() for a in node.attribute if a.s}
            if node.op_type == "InstanceNormalization" and not self.get_flag(
                    OnnxParserFlag.NATIVE_INSTANCENORM):
                if registry._find("InstanceNormalization_TRT", "1", "") is None:
                    self._errors.append(ParserError(
                        i, node.name, node.op_type, "Plugin not found, are the plugin name, "
                        "version, and namespace correct?", ErrorCode.UNSUPPORTED_NODE))
                    continue
                plugins.append((node.op_type, "InstanceNormalization_TRT", "1", ""))
            elif node.op_type in UNSUPPORTED_OPS or node.domain not in ("", "ai.onnx"):
                # the fallback importer: a registered plugin of the op's name
                version = attrs.get("plugin_version", "1")
                namespace = attrs.get("plugin_namespace", "")
                if registry._find(node.op_type, version, namespace) is None:
                    self._errors.append(ParserError(
                        i, node.name, node.op_type, f"No importer registered for op: "
                        f"{node.op_type}", ErrorCode.UNSUPPORTED_NODE))
                    continue
                plugins.append((node.op_type, node.op_type, version, namespace))
        if self._errors:
            return False
        net = self._network
        net._plugins = plugins
        net._model = proto
        net._io = _io(proto)
        net._layers = [(n.name or f"node{i}", n.op_type) for i, n in enumerate(proto.graph.node)]
        net._types = _output_types(proto)
        return True


# --------------------------------------------------------------------------------------------
# profiles, timing caches, builder config
# --------------------------------------------------------------------------------------------

def _shape(value: Any, where: str) -> Tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise TypeError(f"{where}(): incompatible function arguments: a shape is a list or tuple "
                        f"of ints, got {value!r}")
    return tuple(value)


class IOptimizationProfile:
    __slots__ = ("_shapes",)

    def __init__(self) -> None:
        self._shapes: Dict[str, List[Optional[Tuple[int, ...]]]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002
        _check(input, str, "IOptimizationProfile.set_shape")
        shapes = [_shape(s, "IOptimizationProfile.set_shape") for s in (min, opt, max)]
        entry = self._shapes.setdefault(input, [None, None, None])
        for i, (label, dims) in enumerate(zip(("min", "opt", "max"), shapes)):
            lower = entry[i - 1] if i else None
            if any(d < 0 for d in dims) or (lower is not None and (
                    len(lower) != len(dims) or any(a > b for a, b in zip(lower, dims)))):
                raise RuntimeError(f"Shape provided for {label} is inconsistent with other "
                                   "shapes.")
            entry[i] = dims

    def get_shape(self, input: str) -> List[Dims]:  # noqa: A002
        entry = self._shapes.get(input)
        return [Dims(s) for s in entry] if entry and all(entry) else []

    def __bool__(self) -> bool:
        return bool(self._shapes) and all(all(e) for e in self._shapes.values())


class TimingCacheKey:
    __slots__ = ("_text",)

    def __init__(self, text: str):
        self._text = text

    def __str__(self) -> str:
        return self._text

    @staticmethod
    def parse(text: str) -> "TimingCacheKey":
        return TimingCacheKey(text)


class ITimingCache:
    __slots__ = ("_header", "_entries")

    def __init__(self, header: Dict[str, Any], entries: Dict[str, str]):
        self._header = header
        self._entries = dict(entries)

    def queryKeys(self) -> List[TimingCacheKey]:  # noqa: N802 - TensorRT's spelling
        return [TimingCacheKey(k) for k in sorted(self._entries)]

    def combine(self, input_cache: "ITimingCache", ignore_mismatch: bool) -> bool:
        _check(input_cache, ITimingCache, "ITimingCache.combine")
        _check(ignore_mismatch, bool, "ITimingCache.combine")
        _record("combine", ignore_mismatch)
        if input_cache._header != self._header and not ignore_mismatch:
            return False
        for k, v in input_cache._entries.items():
            self._entries.setdefault(k, v)
        return True

    def reset(self) -> bool:
        self._entries = {}
        return True

    def serialize(self) -> IHostMemory:
        return IHostMemory(json.dumps({"trt_fake_timing_cache": 1, "header": self._header,
                                       "entries": self._entries}, sort_keys=True).encode())


def _device_header() -> Dict[str, Any]:
    gpu = FAKE_GPUS[0] if FAKE_GPUS else {}
    return {"gpu": gpu.get("name", ""), "compute_capability": gpu.get("compute_capability", ""),
            "tensorrt": __version__}


class IBuilderConfig:
    __slots__ = ("_builder", "_flags", "_pools", "_profiles", "_level", "_hwcompat", "_device",
                 "_dla_core", "_aux_streams", "_verbosity", "_cache")

    def __init__(self, builder: "Builder") -> None:
        self._builder = builder
        self._flags = {BuilderFlag.TF32}
        self._pools: Dict[str, int] = {}
        self._profiles: List[IOptimizationProfile] = []
        self._level = 3
        self._hwcompat = HardwareCompatibilityLevel.NONE
        self._device = DeviceType.GPU
        self._dla_core = -1
        self._aux_streams = -1
        self._verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        self._cache: Optional[ITimingCache] = None

    # properties that take a typed value
    def _typed(name: str, kind: Any, where: str) -> Any:  # type: ignore[misc]
        def get(self: "IBuilderConfig") -> Any:
            return getattr(self, name)

        def put(self: "IBuilderConfig", value: Any) -> None:
            _check(value, kind, f"IBuilderConfig.{where}")
            setattr(self, name, value)

        return property(get, put)

    builder_optimization_level = _typed("_level", int, "builder_optimization_level")
    hardware_compatibility_level = _typed("_hwcompat", HardwareCompatibilityLevel,
                                          "hardware_compatibility_level")
    default_device_type = _typed("_device", DeviceType, "default_device_type")
    DLA_core = _typed("_dla_core", int, "DLA_core")
    max_aux_streams = _typed("_aux_streams", int, "max_aux_streams")
    profiling_verbosity = _typed("_verbosity", ProfilingVerbosity, "profiling_verbosity")
    del _typed

    @property
    def flags(self) -> int:
        return sum(1 << int(f) for f in self._flags)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    def set_flag(self, flag: Any) -> None:
        _check(flag, BuilderFlag, "IBuilderConfig.set_flag")
        _record("set_flag", flag.name)
        self._flags.add(flag)

    def clear_flag(self, flag: Any) -> None:
        _check(flag, BuilderFlag, "IBuilderConfig.clear_flag")
        _record("clear_flag", flag.name)
        self._flags.discard(flag)

    def get_flag(self, flag: Any) -> bool:
        _check(flag, BuilderFlag, "IBuilderConfig.get_flag")
        return flag in self._flags

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        _check(pool, MemoryPoolType, "IBuilderConfig.set_memory_pool_limit")
        _check(pool_size, int, "IBuilderConfig.set_memory_pool_limit")
        _record("set_memory_pool_limit", pool.name, pool_size)
        self._pools[pool.name] = pool_size

    def get_memory_pool_limit(self, pool: Any) -> int:
        _check(pool, MemoryPoolType, "IBuilderConfig.get_memory_pool_limit")
        return self._pools.get(pool.name, 24576 * 2 ** 20)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        _check(profile, IOptimizationProfile, "IBuilderConfig.add_optimization_profile")
        _record("add_optimization_profile",
                {n: [list(s) for s in e if s] for n, e in profile._shapes.items()})
        if not profile:
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> Optional[ITimingCache]:
        _check(serialized_timing_cache, (bytes, bytearray, memoryview),
               "IBuilderConfig.create_timing_cache")
        blob = bytes(serialized_timing_cache)
        if not blob:
            return ITimingCache(_device_header(), {})
        try:
            data = json.loads(blob.decode())
            assert data.get("trt_fake_timing_cache") == 1
            return ITimingCache(data["header"], data["entries"])
        except Exception:  # noqa: BLE001 - TensorRT logs and returns nullptr
            _log(self._builder._logger, _Severity.ERROR,
                 "[fake] ITimingCache: the serialized timing cache is invalid")
            return None

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        _check(cache, ITimingCache, "IBuilderConfig.set_timing_cache")
        _check(ignore_mismatch, bool, "IBuilderConfig.set_timing_cache")
        _record("set_timing_cache", len(cache._entries))
        if cache._header != _device_header() and not ignore_mismatch:
            return False
        self._cache = cache
        return True

    def get_timing_cache(self) -> Optional[ITimingCache]:
        return self._cache


# --------------------------------------------------------------------------------------------
# builder
# --------------------------------------------------------------------------------------------

class Builder:
    __slots__ = ("_logger", "_registry", "__weakref__")

    def __init__(self, logger: ILogger):
        self._logger = _adopt(self, logger, "Builder.__init__")
        self._registry = IPluginRegistry(_GLOBAL_REGISTRY)
        _record("Builder")

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802 - TensorRT's spelling
        return 0

    def get_plugin_registry(self) -> IPluginRegistry:
        return self._registry

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        _check(flags, int, "Builder.create_network")
        _record("create_network", flags)
        return INetworkDefinition(flags, self._registry)

    def create_builder_config(self) -> IBuilderConfig:
        _record("create_builder_config")
        return IBuilderConfig(self)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def _refuse(self, network: INetworkDefinition, config: IBuilderConfig) -> Optional[str]:
        """What the builder would refuse, as the error it logs."""
        flags = {f.name for f in config._flags}
        if network._model is None:
            return "Network must have at least one output"
        if network._strongly_typed and flags & _PRECISION_FLAGS:
            return (f"Setting builder flags {sorted(flags & _PRECISION_FLAGS)} is not allowed "
                    "on a strongly typed network")
        if "EXCLUDE_LEAN_RUNTIME" in flags and "VERSION_COMPATIBLE" not in flags:
            return "EXCLUDE_LEAN_RUNTIME needs VERSION_COMPATIBLE"
        if config._device == DeviceType.DLA and not 0 <= config._dla_core < self.num_DLA_cores:
            return f"DLA core {config._dla_core} requested; the device has no DLA"
        if config._hwcompat == HardwareCompatibilityLevel.AMPERE_PLUS and FAKE_GPUS and \
                float(FAKE_GPUS[0]["compute_capability"]) < 8.0:
            return "hardware compatibility AMPERE_PLUS needs an Ampere or later GPU"
        inputs = [t for t in network._io if t["mode"] == "INPUT"]
        dynamic = [t for t in inputs if any(not isinstance(d, int) for d in t["dims"])]
        if dynamic and not config._profiles:
            return ("Network has dynamic or shape inputs, but no optimization profile has "
                    "been defined.")
        names = {t["name"]: t for t in inputs}
        for i, profile in enumerate(config._profiles):
            for name, shapes in profile._shapes.items():
                tensor = names.get(name)
                if tensor is None:
                    return f"Optimization profile {i}: the network has no input '{name}'"
                for dims in shapes:
                    assert dims is not None
                    if len(dims) != len(tensor["dims"]) or any(
                            isinstance(d, int) and d != x for d, x in zip(tensor["dims"], dims)):
                        return (f"Optimization profile {i}: shape {list(dims)} of input "
                                f"'{name}' does not fit its dimensions {tensor['dims']}")
            for tensor in dynamic:
                if tensor["name"] not in profile._shapes:
                    return (f"Optimization profile {i} is missing values for dynamic input "
                            f"'{tensor['name']}'")
        if (config._hwcompat != HardwareCompatibilityLevel.NONE or "VERSION_COMPATIBLE" in flags) \
                and any(p[1] == "InstanceNormalization_TRT" for p in network._plugins):
            return "InstanceNormalization as a plugin cannot go into a compatible engine"
        return None

    def build_serialized_network(self, network: INetworkDefinition,
                                 config: IBuilderConfig) -> Optional[IHostMemory]:
        _check(network, INetworkDefinition, "Builder.build_serialized_network")
        _check(config, IBuilderConfig, "Builder.build_serialized_network")
        _record("build_serialized_network")
        problem = self._refuse(network, config)
        if problem:
            _log(self._logger, _Severity.ERROR, f"[fake] {problem}")
            return None
        _log(self._logger, _Severity.INFO, f"[fake] building {network.num_layers} layers")
        flags = {f.name for f in config._flags}
        cache = config._cache if "DISABLE_TIMING_CACHE" not in flags else None
        if cache is None:
            cache = ITimingCache(_device_header(), {})
        tactic = sorted(flags & _TACTIC_FLAGS) + [config._hwcompat.name, config._device.name]
        for layer in network._layers:
            key = hashlib.sha256(json.dumps([list(layer), tactic]).encode()).hexdigest()[:16]
            if key in cache._entries:
                _log(self._logger, _Severity.VERBOSE, f"[fake] {layer[0]}: tactic from timing "
                                                      "cache")
            elif "ERROR_ON_TIMING_CACHE_MISS" in flags:
                _log(self._logger, _Severity.ERROR, f"[fake] timing cache miss for {layer[0]}")
                return None
            else:
                _log(self._logger, _Severity.VERBOSE, f"[fake] {layer[0]}: timing tactics")
                cache._entries[key] = "tactic-" + key[:6]
        model = network._model
        stripped = "STRIP_PLAN" in flags
        refittable = "REFIT" in flags or "REFIT_IDENTICAL" in flags
        engine = {
            "fake": True, "tensorrt": __version__, "digest": _network_digest(model),
            "strongly_typed": network._strongly_typed, "flags": sorted(flags - _PROCESS_FLAGS),
            "profiles": [{n: [list(s) for s in e] for n, e in p._shapes.items()}
                         for p in config._profiles],
            "pools": dict(config._pools), "optimization_level": config._level,
            "hardware_compatibility": config._hwcompat.name, "device": config._device.name,
            "dla_core": config._dla_core, "verbosity": config._verbosity.name,
            "layers": [list(layer) for layer in network._layers], "io": network._io,
            "layer_types": network._types,
            "refittable": _refittable(model) if refittable else {},
            "model": base64.b64encode(model.SerializeToString()).decode(),
            "weights_missing": sorted(_refittable(model)) if stripped and refittable else [],
            "plugins": sorted({tuple(p[1:]) for p in network._plugins}),
            "plugin_ops": {p[0]: _plugin_op(network._registry, p) for p in network._plugins},
        }
        if engine["weights_missing"]:
            engine["model"] = base64.b64encode(_without(model, engine["weights_missing"])
                                               .SerializeToString()).decode()
        return IHostMemory(json.dumps(engine, sort_keys=True).encode())


def _plugin_op(registry: IPluginRegistry, plugin: Tuple[str, str, str, str]) -> str:
    """The ONNX op the fake's execution runs for a plugin layer."""
    creator = registry._find(plugin[1], plugin[2], plugin[3])
    return creator._op if creator is not None else plugin[0]


def _without(model: Any, names: Iterable[str]) -> Any:
    """``model`` with the data of initializers ``names`` left out (a weight-stripped plan)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    gone = set(names)
    for init in copy.graph.initializer:
        if init.name in gone:
            for f in ("raw_data", "float_data", "double_data", "int32_data"):
                init.ClearField(f)
    return copy


# --------------------------------------------------------------------------------------------
# runtime, engine, execution context, inspector
# --------------------------------------------------------------------------------------------

class Runtime:
    __slots__ = ("_logger", "_host_code", "_registry", "__weakref__")

    def __init__(self, logger: ILogger):
        self._logger = _adopt(self, logger, "Runtime.__init__")
        self._host_code = False
        self._registry = IPluginRegistry(_GLOBAL_REGISTRY)
        _record("Runtime")

    def get_plugin_registry(self) -> IPluginRegistry:
        return self._registry

    @property
    def engine_host_code_allowed(self) -> bool:
        return self._host_code

    @engine_host_code_allowed.setter
    def engine_host_code_allowed(self, value: bool) -> None:
        _check(value, bool, "Runtime.engine_host_code_allowed")
        self._host_code = value

    def deserialize_cuda_engine(self, serialized_engine: Any) -> Optional["ICudaEngine"]:
        _check(serialized_engine, (bytes, bytearray, memoryview),
               "Runtime.deserialize_cuda_engine")
        _record("deserialize_cuda_engine")
        try:
            data = json.loads(bytes(serialized_engine).decode())
            assert data.get("fake") is True
        except Exception:  # noqa: BLE001
            _log(self._logger, _Severity.ERROR, "[fake] Serialization: the data is not a "
                                                "serialized engine")
            return None
        compatible = "VERSION_COMPATIBLE" in data["flags"]
        built = tuple(int(p) for p in data["tensorrt"].split(".")[:2])
        here = tuple(int(p) for p in __version__.split(".")[:2])
        if built != here and not (compatible and built < here):
            _log(self._logger, _Severity.ERROR,
                 f"[fake] Serialization: the engine was built by TensorRT {data['tensorrt']}; "
                 f"this is {__version__}")
            return None
        if compatible and not self._host_code:
            _log(self._logger, _Severity.ERROR,
                 "[fake] Serialization: the engine is version-compatible: it holds host code "
                 "(the lean runtime), and Runtime.engine_host_code_allowed is False")
            return None
        for name, version, namespace in data.get("plugins", []):
            if self._registry._find(name, version, namespace) is None:
                _log(self._logger, _Severity.ERROR,
                     f"[fake] IPluginRegistry::getCreator: Error Code 4: API Usage Error "
                     f"(Cannot find plugin: {name}, version: {version}, namespace:{namespace}.)")
                return None
        return ICudaEngine(data, self._logger)


class ISerializationConfig:
    __slots__ = ("_flags",)

    def __init__(self, flags: Iterable[Any]):
        self._flags = set(flags)

    @property
    def flags(self) -> int:
        return sum(1 << int(f) for f in self._flags)

    def set_flag(self, flag: Any) -> bool:
        _check(flag, SerializationFlag, "ISerializationConfig.set_flag")
        self._flags.add(flag)
        return True

    def clear_flag(self, flag: Any) -> bool:
        _check(flag, SerializationFlag, "ISerializationConfig.clear_flag")
        self._flags.discard(flag)
        return True

    def get_flag(self, flag: Any) -> bool:
        _check(flag, SerializationFlag, "ISerializationConfig.get_flag")
        return flag in self._flags


class ICudaEngine:
    __slots__ = ("_data", "_logger")

    def __init__(self, data: Dict[str, Any], logger: Any):
        self._data = data
        self._logger = logger

    def _tensor(self, name: str) -> Optional[Dict[str, Any]]:
        return next((t for t in self._data["io"] if t["name"] == name), None)

    @property
    def num_io_tensors(self) -> int:
        return len(self._data["io"])

    @property
    def num_layers(self) -> int:
        return len(self._data["layers"])

    @property
    def num_optimization_profiles(self) -> int:
        return max(1, len(self._data["profiles"]))

    @property
    def refittable(self) -> bool:
        return bool(self._data["refittable"])

    @property
    def name(self) -> str:
        return "fake engine"

    def get_tensor_name(self, index: int) -> Optional[str]:
        _check(index, int, "ICudaEngine.get_tensor_name")
        io = self._data["io"]
        return io[index]["name"] if 0 <= index < len(io) else None

    def get_tensor_mode(self, name: str) -> Any:
        tensor = self._tensor(name)
        return TensorIOMode[tensor["mode"]] if tensor else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> Any:
        tensor = self._tensor(name)
        return DataType[tensor["dtype"]] if tensor else DataType.FLOAT

    def get_tensor_shape(self, name: str) -> Dims:
        tensor = self._tensor(name)
        if tensor is None:
            return Dims(())
        return Dims(d if isinstance(d, int) else -1 for d in tensor["dims"])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> List[Dims]:
        _check(profile_index, int, "ICudaEngine.get_tensor_profile_shape")
        tensor = self._tensor(name)
        profiles = self._data["profiles"]
        if tensor is None or tensor["mode"] != "INPUT" or not 0 <= profile_index < len(
                profiles) or name not in profiles[profile_index]:
            if tensor is not None and not profiles and tensor["mode"] == "INPUT":
                static = self.get_tensor_shape(name)
                return [static, static, static]
            _log(self._logger, _Severity.ERROR, f"[fake] getProfileShape: no profile "
                                                f"{profile_index} for tensor '{name}'")
            return [Dims(()), Dims(()), Dims(())]
        return [Dims(s) for s in profiles[profile_index][name]]

    def create_execution_context(self) -> Optional["IExecutionContext"]:
        _record("create_execution_context")
        if self._data["weights_missing"]:
            _log(self._logger, _Severity.ERROR,
                 "[fake] the engine's weights were stripped (STRIP_PLAN): refit it before "
                 "creating an execution context")
            return None
        return IExecutionContext(self)

    def create_engine_inspector(self) -> "EngineInspector":
        return EngineInspector(self)

    def serialize(self) -> IHostMemory:
        return IHostMemory(json.dumps(self._data, sort_keys=True).encode())

    def _build_flags(self) -> List[Any]:
        out = []
        if "STRIP_PLAN" in self._data["flags"]:
            out.append(SerializationFlag.EXCLUDE_WEIGHTS)
        if "EXCLUDE_LEAN_RUNTIME" in self._data["flags"]:
            out.append(SerializationFlag.EXCLUDE_LEAN_RUNTIME)
        return out

    def create_serialization_config(self) -> ISerializationConfig:
        _record("create_serialization_config")
        return ISerializationConfig(self._build_flags())

    def serialize_with_config(self, config: ISerializationConfig) -> IHostMemory:
        _check(config, ISerializationConfig, "ICudaEngine.serialize_with_config")
        _record("serialize_with_config", sorted(f.name for f in config._flags))
        data = dict(self._data)
        if SerializationFlag.EXCLUDE_WEIGHTS in config._flags and data["refittable"]:
            model = _model(data)
            data["weights_missing"] = sorted(data["refittable"])
            data["model"] = base64.b64encode(_without(model, data["weights_missing"])
                                             .SerializeToString()).decode()
        elif getattr(SerializationFlag, "INCLUDE_REFIT", None) not in config._flags:
            # "INCLUDE_REFIT: remain refittable if originally so": without it (before 10.14 it
            # does not exist) the fake's plan is no longer refittable. Whether TensorRT's is, is
            # an open question (docs/tensorrt.md); a GPU test answers it.
            data["refittable"] = {}
        return IHostMemory(json.dumps(data, sort_keys=True).encode())


def _model(data: Dict[str, Any]) -> Any:
    import onnx

    model = onnx.ModelProto()
    model.ParseFromString(base64.b64decode(data["model"]))
    return model


class IExecutionContext:
    """Runs the engine's ONNX model with onnxruntime on host memory: the addresses given to
    ``set_tensor_address`` must be host addresses (:class:`HostBuffers`)."""

    __slots__ = ("_engine", "_profile", "_shapes", "_addresses", "_session")

    def __init__(self, engine: ICudaEngine):
        self._engine = engine
        self._profile = 0
        self._shapes: Dict[str, Tuple[int, ...]] = {}
        self._addresses: Dict[str, int] = {}
        self._session: Any = None

    @property
    def engine(self) -> ICudaEngine:
        return self._engine

    @property
    def active_optimization_profile(self) -> int:
        return self._profile

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        _check(profile_index, int, "IExecutionContext.set_optimization_profile_async")
        _check(stream_handle, int, "IExecutionContext.set_optimization_profile_async")
        if not 0 <= profile_index < self._engine.num_optimization_profiles:
            _log(self._engine._logger, _Severity.ERROR,
                 f"[fake] no optimization profile {profile_index}")
            return False
        self._profile = profile_index
        self._shapes = {}
        return True

    def set_input_shape(self, name: str, shape: Any) -> bool:
        _check(name, str, "IExecutionContext.set_input_shape")
        dims = _shape(list(shape), "IExecutionContext.set_input_shape")
        tensor = self._engine._tensor(name)
        if tensor is None or tensor["mode"] != "INPUT":
            _log(self._engine._logger, _Severity.ERROR, f"[fake] '{name}' is not an input")
            return False
        lo, _, hi = self._engine.get_tensor_profile_shape(name, self._profile)
        if len(dims) != len(lo) or any(not a <= d <= b for a, d, b in zip(lo, dims, hi)):
            _log(self._engine._logger, _Severity.ERROR,
                 f"[fake] setInputShape: {list(dims)} is outside profile {self._profile} of "
                 f"'{name}' ({list(lo)} .. {list(hi)})")
            return False
        self._shapes[name] = dims
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        _check(name, str, "IExecutionContext.get_tensor_shape")
        tensor = self._engine._tensor(name)
        if tensor is None:
            return Dims(())
        if tensor["mode"] == "INPUT" and name in self._shapes:
            return Dims(self._shapes[name])
        bound: Dict[str, int] = {}
        for t in self._engine._data["io"]:
            if t["mode"] == "INPUT" and t["name"] in self._shapes:
                for d, v in zip(t["dims"], self._shapes[t["name"]]):
                    if isinstance(d, str):
                        bound[d] = v
        return Dims(d if isinstance(d, int) else bound.get(d, -1) if d else -1
                    for d in tensor["dims"])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        _check(name, str, "IExecutionContext.set_tensor_address")
        _check(memory, int, "IExecutionContext.set_tensor_address")
        if self._engine._tensor(name) is None:
            _log(self._engine._logger, _Severity.ERROR, f"[fake] no tensor '{name}'")
            return False
        self._addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        import numpy as np

        _check(stream_handle, int, "IExecutionContext.execute_async_v3")
        _record("execute_async_v3")
        logger = self._engine._logger
        io = self._engine._data["io"]
        feed = {}
        for t in io:
            if t["name"] not in self._addresses:
                _log(logger, _Severity.ERROR, f"[fake] enqueueV3: no address for '{t['name']}'")
                return False
            if t["mode"] == "INPUT":
                if t["name"] not in self._shapes:
                    _log(logger, _Severity.ERROR,
                         f"[fake] enqueueV3: the shape of input '{t['name']}' is not set")
                    return False
                feed[t["name"]] = _read(self._addresses[t["name"]], self._shapes[t["name"]],
                                        _NUMPY[t["dtype"]])
        if self._session is None:
            import onnxruntime as ort

            model = _model(self._engine._data)
            ops = self._engine._data.get("plugin_ops", {})
            for node in model.graph.node:
                if node.op_type in ops and ops[node.op_type] != node.op_type:
                    node.op_type, node.domain = ops[node.op_type], ""
                    del node.attribute[:]
            self._session = ort.InferenceSession(model.SerializeToString(),
                                                 providers=["CPUExecutionProvider"])
        outputs = self._session.run(None, feed)
        for t, value in zip([t for t in io if t["mode"] == "OUTPUT"], outputs):
            want = tuple(self.get_tensor_shape(t["name"]))
            if tuple(value.shape) != want:
                _log(logger, _Severity.ERROR, f"[fake] output '{t['name']}' is {value.shape}, "
                                              f"the context said {want}")
                return False
            value = np.ascontiguousarray(value, dtype=_NUMPY[t["dtype"]])
            ctypes.memmove(self._addresses[t["name"]], value.ctypes.data, value.nbytes)
        return True


def _read(address: int, shape: Tuple[int, ...], dtype: str) -> Any:
    import numpy as np

    count = int(np.prod(shape)) if shape else 1
    nbytes = count * np.dtype(dtype).itemsize
    raw = (ctypes.c_char * nbytes).from_address(address)
    return np.frombuffer(bytes(raw), dtype=dtype).reshape(shape)


class EngineInspector:
    __slots__ = ("_engine",)

    def __init__(self, engine: ICudaEngine):
        self._engine = engine

    def get_engine_information(self, format: Any) -> str:  # noqa: A002
        _check(format, LayerInformationFormat, "EngineInspector.get_engine_information")
        data = self._engine._data
        if data["verbosity"] == "NONE":
            layers: List[Any] = []
        elif data["verbosity"] == "LAYER_NAMES_ONLY":
            layers = [name for name, _ in data["layers"]]
        else:
            names = {"FLOAT": "Float", "HALF": "Half", "BF16": "BFloat16", "INT8": "Int8",
                     "INT32": "Int32", "INT64": "Int64", "BOOL": "Bool", "UINT8": "UInt8"}
            layers = [{"Name": n, "LayerType": op, "Outputs": [
                {"Format/Datatype": f"Row major linear {names.get(t, 'Float')} format"}]}
                for (n, op), t in zip(data["layers"], data["layer_types"])]
        if format == LayerInformationFormat.ONELINE:
            return "\n".join(str(layer) for layer in layers)
        return json.dumps({"Layers": layers, "Bindings": [t["name"] for t in data["io"]]})


# --------------------------------------------------------------------------------------------
# refit
# --------------------------------------------------------------------------------------------

class Refitter:
    __slots__ = ("_engine", "_logger", "_new", "__weakref__")

    def __init__(self, engine: ICudaEngine, logger: ILogger):
        _check(engine, ICudaEngine, "Refitter.__init__")
        self._logger = _adopt(self, logger, "Refitter.__init__")
        _record("Refitter")
        if not engine.refittable:
            _log(self._logger, _Severity.ERROR, "[fake] the engine was not built refittable")
            raise TypeError("pybind11::init(): factory function returned nullptr")
        self._engine = engine
        self._new: Dict[str, Any] = {}

    def get_missing_weights(self) -> List[str]:
        """Weights refit_cuda_engine still needs: every refittable one once any is set (the
        fake refits whole networks), all stripped ones of a STRIP_PLAN engine."""
        data = self._engine._data
        if not self._new and not data["weights_missing"]:
            return []
        return sorted(set(data["refittable"]) - set(self._new))

    def get_all_weights(self) -> List[str]:
        return sorted(self._engine._data["refittable"])

    def refit_cuda_engine(self) -> bool:
        _record("refit_cuda_engine")
        missing = self.get_missing_weights()
        if missing:
            _log(self._logger, _Severity.ERROR, f"[fake] refit: missing weights {missing}")
            return False
        data = self._engine._data
        model = _model(data)
        for init in model.graph.initializer:
            if init.name in self._new:
                init.CopyFrom(self._new[init.name])
        if _V == (11, 3):  # the release notes' known issue: REFIT engines may lose a GEMM bias
            biases = {n.input[2] for n in model.graph.node if n.op_type == "Gemm"
                      and len(n.input) > 2}
            for init in model.graph.initializer:
                if init.name in biases and init.name in self._new:
                    import numpy as np
                    from onnx import numpy_helper

                    zero = np.zeros_like(numpy_helper.to_array(init))
                    init.CopyFrom(numpy_helper.from_array(zero, init.name))
        data["model"] = base64.b64encode(model.SerializeToString()).decode()
        data["weights_missing"] = []
        data["weights"] = hashlib.sha256(b"".join(
            self._new[n].SerializeToString() for n in sorted(self._new))).hexdigest()
        self._new = {}
        return True


class OnnxParserRefitter(_Errors):
    __slots__ = ("_refitter", "_logger", "_errors")

    def __init__(self, refitter: Refitter, logger: ILogger):
        _check(refitter, Refitter, "OnnxParserRefitter.__init__")
        self._logger = _logger(logger, "OnnxParserRefitter.__init__")
        self._refitter = refitter
        self._errors: List[ParserError] = []

    def refit_from_file(self, model: str) -> bool:
        import onnx

        _check(model, str, "OnnxParserRefitter.refit_from_file")
        _record("refit_from_file", os.path.basename(model))
        try:
            proto = onnx.load(model)
        except Exception as exc:  # noqa: BLE001
            self._errors.append(ParserError(-1, "", "", f"cannot read {model}: {exc}",
                                            ErrorCode.MODEL_DESERIALIZE_FAILED))
            return False
        wanted = self._refitter._engine._data["refittable"]
        found = {i.name: i for i in proto.graph.initializer if i.name in wanted}
        for init in proto.graph.initializer:
            if init.name in wanted and list(init.dims) != wanted[init.name]:
                self._errors.append(ParserError(
                    -1, init.name, "", f"weights '{init.name}' have shape {list(init.dims)}; "
                    f"the engine's have {wanted[init.name]}", ErrorCode.REFIT_FAILED))
        if self._errors:
            return False
        self._refitter._new.update(found)
        return True


# --------------------------------------------------------------------------------------------
# what this release does not bind (enums are filtered where they are made)
# --------------------------------------------------------------------------------------------

for _name in sorted(set(_SINCE) | _SINCE_10):
    _owner, _, _member = _name.partition(".")
    if _has(_name):
        continue
    if _owner == "tensorrt":
        globals().pop(_member, None)
        continue
    _cls = globals().get(_owner)
    if isinstance(_cls, type) and not isinstance(_cls, enum.EnumMeta) and _member in vars(_cls):
        delattr(_cls, _member)


# --------------------------------------------------------------------------------------------
# test helpers (not TensorRT's)
# --------------------------------------------------------------------------------------------

class HostBuffers:
    """Host memory in place of CUDA memory for ``TensorRTRuntime.buffers``: the fake execution
    context reads and writes these addresses."""

    def __init__(self) -> None:
        self.stream = 0

    def upload(self, array: Any, dtype: str) -> Tuple[int, Any]:
        import numpy as np

        host = np.ascontiguousarray(np.asarray(array), dtype=dtype)
        return host.ctypes.data, host

    def empty(self, shape: Sequence[int], dtype: str) -> Tuple[int, Any]:
        import numpy as np

        host = np.full(tuple(shape), np.nan if np.dtype(dtype).kind == "f" else 0, dtype=dtype)
        return host.ctypes.data, host

    def download(self, handle: Any) -> Any:
        return handle.copy()

    def synchronize(self) -> None:
        pass


def make_test_onnx(path: Any, channels: Tuple[int, int] = (32, 64), classes: int = 10,
                   size: int = 16, seed: int = 0, dynamic_batch: bool = True,
                   extra_op: Optional[str] = None, opset: int = 17,
                   instance_norm: bool = False, plugin_op: Optional[str] = None) -> Any:
    """A small CNN as ONNX (Conv-Relu-Conv-Relu-GlobalAveragePool-Flatten-Gemm), input ``x``
    [batch, 3, size, size], output ``y`` [batch, classes]; weights from ``seed``.
    ``extra_op`` appends a node of that (unsupported) op type, for parser-error tests;
    ``instance_norm`` puts an InstanceNormalization after the first Conv; ``plugin_op`` makes the
    first Relu a node of that op type in the domain ``trt.plugins`` (a plugin layer)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c1, c2 = channels

    def init(name: str, shape: Tuple[int, ...], scale: float) -> Any:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale)
                                       .astype(np.float32), name)

    inits = [init("w1", (c1, 3, 3, 3), (2 / 27) ** 0.5), init("b1", (c1,), 0.1),
             init("w2", (c2, c1, 3, 3), (2 / (9 * c1)) ** 0.5), init("b2", (c2,), 0.1),
             init("w3", (classes, c2), (1 / c2) ** 0.5), init("b3", (classes,), 0.1)]
    first = "c1"
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4)]
    if instance_norm:
        inits += [numpy_helper.from_array((1 + 0.1 * rng.standard_normal(c1)).astype(np.float32),
                                          "in_scale"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(c1)).astype(np.float32),
                                          "in_bias")]
        nodes.append(helper.make_node("InstanceNormalization", ["c1", "in_scale", "in_bias"],
                                      ["n1"], name="norm1", epsilon=1e-5))
        first = "n1"
    if plugin_op:
        nodes.append(helper.make_node(plugin_op, [first], ["r1"], name="plugin1",
                                      domain="trt.plugins"))
    else:
        nodes.append(helper.make_node("Relu", [first], ["r1"], name="relu1"))
    nodes += [helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1] * 4,
                               strides=[2, 2]),
              helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
              helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="pool"),
              helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "w3", "b3"], ["y" if not extra_op else "y0"],
                               name="fc", transB=1)]
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["y0"], ["y"], name="odd", domain=""))
    batch: Any = "batch" if dynamic_batch else 1
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                      [batch, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])], inits)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("trt.plugins", 1)]
                                                 if plugin_op else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="buildgraph-test")
    model.ir_version = 8
    onnx.save(model, str(path))
    return model


PLUGIN_SOURCE = {
    # dynamic registration: what IPluginRegistry.load_library and trtexec --dynamicPlugins want
    "dynamic": """
const char *trt_fake_creators = "%s";
void *getCreators(int *count) { *count = 0; return 0; }
""",
    # static registration (REGISTER_TENSORRT_PLUGIN): registers itself when loaded
    "static": """
const char *trt_fake_static_creators = "%s";
""",
}


def make_plugin_library(path: Any, kind: str, creators: str) -> Any:
    """Compile a test plugin library (``cc -shared``): ``kind`` dynamic (exports getCreators)
    or static (registers when loaded); ``creators`` like ``MyRelu=Relu`` (plugin name = the
    ONNX op the fake runs for it). Returns the path."""
    import subprocess
    import tempfile

    path = os.fspath(path)
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "plugin.c")
        with open(source, "w", encoding="utf-8") as fh:
            fh.write(PLUGIN_SOURCE[kind] % creators)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", path, source], check=True,
                       capture_output=True)
    return path
