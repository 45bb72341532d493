"""A fake ``tensorrt`` module for tests on machines without TensorRT or a GPU.

It implements the part of the TensorRT 11 Python API that buildgraph calls, with the same names
(the conformance test checks those names against the real bindings' table), and records every
call in :data:`CALLS`, so tests can check what the executor asked for and in which order. It
"parses" ONNX with the onnx package (ops in :data:`UNSUPPORTED_OPS` or in a custom domain are
parser errors, node by node), "builds" a JSON engine that names its flags, profiles and
network, and keeps a JSON timing cache with one key per layer configuration.

Select it with ``BUILDGRAPH_TENSORRT_MODULE=trt_fake``. Nothing it makes runs on a
GPU: it exists so that the layer between a recipe and the real API is exercised here, not to
pretend a build happened (its engines say ``"fake": true``).
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Tuple

__version__ = os.environ.get("BUILDGRAPH_FAKE_TRT_VERSION", "11.4.0.106")
FAKE_CUDA = "12.9"
FAKE_GPUS = [] if os.environ.get("BUILDGRAPH_FAKE_TRT_NO_GPU") else [
    {"name": "Fake GPU", "compute_capability": "8.9", "driver": "0.0", "memory_mib": 24576}]
UNSUPPORTED_OPS = {"NonZeroFake", "FakeUnsupported"}

CALLS: List[Tuple[str, Any]] = []


def _record(name: str, *args: Any) -> None:
    CALLS.append((name, args if len(args) != 1 else args[0]))


def _major() -> int:
    return int(__version__.split(".")[0])


class _Enum(enum.IntEnum):
    pass


class _Severity(_Enum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = _Severity

    def __init__(self) -> None:
        pass

    def log(self, severity: Any, msg: str) -> None:  # pragma: no cover - overridden
        pass


class Logger(ILogger):
    def __init__(self, min_severity: Any = _Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity


Logger.Severity = _Severity


def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
    _record("init_libnvinfer_plugins", namespace)
    return True


def _flag_enum(name: str, members: List[str]) -> Any:
    return _Enum(name, {m: i for i, m in enumerate(members)})


_builder_flags = ["TF32", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE",
                  "EDITABLE_TIMING_CACHE", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME",
                  "SPARSE_WEIGHTS", "SAFETY_SCOPE", "STRIP_PLAN", "REFIT_IDENTICAL",
                  "WEIGHT_STREAMING", "REFIT_INDIVIDUAL", "DIRECT_IO",
                  "ERROR_ON_TIMING_CACHE_MISS", "DISABLE_COMPILATION_CACHE"]
if _major() <= 10:
    _builder_flags += ["FP16", "BF16", "INT8", "FP8", "OBEY_PRECISION_CONSTRAINTS"]
BuilderFlag = _flag_enum("BuilderFlag", _builder_flags)
NetworkDefinitionCreationFlag = _flag_enum(
    "NetworkDefinitionCreationFlag",
    ["STRONGLY_TYPED"] + (["EXPLICIT_BATCH"] if _major() <= 10 else []))
MemoryPoolType = _flag_enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM",
                                               "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM",
                                               "TACTIC_DRAM", "TACTIC_SHARED_MEMORY"])
HardwareCompatibilityLevel = _flag_enum("HardwareCompatibilityLevel",
                                        ["NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"])
DeviceType = _flag_enum("DeviceType", ["GPU", "DLA"])
ProfilingVerbosity = _flag_enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"])
LayerInformationFormat = _flag_enum("LayerInformationFormat", ["ONELINE", "JSON"])
OnnxParserFlag = _flag_enum("OnnxParserFlag", ["NATIVE_INSTANCENORM"])
ErrorCode = _flag_enum("ErrorCode", ["SUCCESS", "INTERNAL_ERROR", "MEM_ALLOC_FAILED",
                                     "MODEL_DESERIALIZE_FAILED", "INVALID_VALUE", "INVALID_GRAPH",
                                     "INVALID_NODE", "UNSUPPORTED_GRAPH", "UNSUPPORTED_NODE"])


class IPluginRegistry:
    def load_library(self, path: str) -> Any:
        _record("load_library", path)
        if not os.path.exists(path):
            return None
        return object()


class Builder:
    def __init__(self, logger: ILogger):
        _record("Builder")
        self.logger = logger

    def get_plugin_registry(self) -> IPluginRegistry:
        return IPluginRegistry()

    def create_network(self, flags: int = 0) -> "INetworkDefinition":
        _record("create_network", flags)
        return INetworkDefinition(flags)

    def create_builder_config(self) -> "IBuilderConfig":
        _record("create_builder_config")
        return IBuilderConfig()

    def create_optimization_profile(self) -> "IOptimizationProfile":
        return IOptimizationProfile()

    def build_serialized_network(self, network: "INetworkDefinition",
                                 config: "IBuilderConfig") -> Optional["IHostMemory"]:
        _record("build_serialized_network")
        log = self.logger.log
        if network.model is None:
            log(_Severity.ERROR, "network is empty")
            return None
        dynamic = [i for i in network.inputs if any(not isinstance(d, int) or d < 0
                                                    for d in i[1])]
        if dynamic and not config.profiles:
            log(_Severity.ERROR, f"Network has dynamic or shape inputs, but no optimization "
                                 f"profile has been defined.")
            return None
        log(_Severity.INFO, f"[fake] building {len(network.layers)} layers")
        cache = config.cache or ITimingCache({"header": config.header(), "entries": {}})
        for layer in network.layers:
            from buildgraph.backends.tensorrt.spec import TACTIC_FLAGS

            tactic = sorted(f.name for f in config.flags if f.name in TACTIC_FLAGS)
            key = hashlib.sha256(json.dumps([layer, tactic]).encode()).hexdigest()[:16]
            if key in cache.entries:
                log(_Severity.VERBOSE, f"[fake] {layer[0]}: tactic from timing cache")
            else:
                if BuilderFlag.ERROR_ON_TIMING_CACHE_MISS in config.flags:
                    log(_Severity.ERROR, f"[fake] timing cache miss for {layer[0]}")
                    return None
                log(_Severity.VERBOSE, f"[fake] {layer[0]}: timing tactics")
                cache.entries[key] = "tactic-" + key[:6]
        engine = {"fake": True, "tensorrt": __version__, "digest": network.digest,
                  "strongly_typed": network.strongly_typed,
                  "flags": sorted(f.name for f in config.flags),
                  "profiles": config.profiles, "pools": config.pools,
                  "optimization_level": config.builder_optimization_level,
                  "hardware_compatibility": config.hardware_compatibility_level.name,
                  "device": config.default_device_type.name, "dla_core": config.DLA_core,
                  "layers": [list(layer) for layer in network.layers]}
        return IHostMemory(json.dumps(engine, sort_keys=True).encode())


class IHostMemory(bytes):
    @property
    def nbytes(self) -> int:
        return len(self)


class INetworkDefinition:
    def __init__(self, flags: int):
        self.flags = flags
        self.strongly_typed = bool(flags & (1 << int(NetworkDefinitionCreationFlag
                                                     .STRONGLY_TYPED)))
        self.model: Any = None
        self.layers: List[Tuple[str, str]] = []
        self.inputs: List[Tuple[str, List[Any]]] = []
        self.digest = ""

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)


class ParserError:
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


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger):
        _record("OnnxParser")
        self.network = network
        self.errors: List[ParserError] = []
        self.flags = 0

    def set_flag(self, flag: Any) -> None:
        _record("parser.set_flag", flag.name)

    def clear_flag(self, flag: Any) -> None:
        _record("parser.clear_flag", flag.name)

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> ParserError:
        return self.errors[index]

    def clear_errors(self) -> None:
        self.errors = []

    def parse_from_file(self, path: str) -> bool:
        import onnx

        _record("parse_from_file", os.path.basename(path))
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as exc:  # noqa: BLE001
            self.errors.append(ParserError(-1, "", "", f"cannot read {path}: {exc}",
                                           ErrorCode.MODEL_DESERIALIZE_FAILED))
            return False
        for i, node in enumerate(model.graph.node):
            if node.op_type in UNSUPPORTED_OPS or node.domain not in ("", "ai.onnx"):
                self.errors.append(ParserError(
                    i, node.name, node.op_type,
                    f"No importer registered for op: {node.op_type}",
                    ErrorCode.UNSUPPORTED_NODE))
        if self.errors:
            return False
        from buildgraph.backends.tensorrt.spec import onnx_model_inputs
        from buildgraph.backends.tensorrt.structure import structure_digest

        self.network.model = model
        self.network.digest = structure_digest(model)
        self.network.inputs = [(s.name, list(s.dims)) for s in onnx_model_inputs(model).values()]
        self.network.layers = [(n.name or f"node{i}", n.op_type)
                               for i, n in enumerate(model.graph.node)]
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: Dict[str, List[List[int]]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002
        self.shapes[input] = [list(min), list(opt), list(max)]


class TimingCacheKey:
    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text

    @staticmethod
    def parse(text: str) -> "TimingCacheKey":
        return TimingCacheKey(text)


class ITimingCache:
    def __init__(self, data: Dict[str, Any]):
        self.header = data["header"]
        self.entries: Dict[str, str] = dict(data["entries"])

    def queryKeys(self) -> List[TimingCacheKey]:  # noqa: N802 - TensorRT's spelling
        return [TimingCacheKey(k) for k in sorted(self.entries)]

    def combine(self, input_cache: "ITimingCache", ignore_mismatch: bool) -> bool:
        _record("combine", ignore_mismatch)
        if input_cache.header != self.header and not ignore_mismatch:
            return False
        for k, v in input_cache.entries.items():
            self.entries.setdefault(k, v)
        return True

    def reset(self) -> bool:
        self.entries = {}
        return True

    def serialize(self) -> IHostMemory:
        return IHostMemory(json.dumps({"header": self.header, "entries": self.entries},
                                      sort_keys=True).encode())


class IBuilderConfig:
    def __init__(self) -> None:
        self.flags = {BuilderFlag.TF32}
        self.pools: Dict[str, int] = {}
        self.profiles: List[Dict[str, List[List[int]]]] = []
        self.builder_optimization_level = 3
        self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.max_aux_streams = -1
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        self.cache: Optional[ITimingCache] = None

    def header(self) -> Dict[str, Any]:
        return {"gpu": FAKE_GPUS[0]["name"] if FAKE_GPUS else "", "tensorrt": __version__}

    def set_flag(self, flag: Any) -> None:
        _record("set_flag", flag.name)
        self.flags.add(flag)

    def clear_flag(self, flag: Any) -> None:
        _record("clear_flag", flag.name)
        self.flags.discard(flag)

    def get_flag(self, flag: Any) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        _record("set_memory_pool_limit", pool.name, pool_size)
        self.pools[pool.name] = pool_size

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        _record("add_optimization_profile", profile.shapes)
        self.profiles.append(profile.shapes)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> Optional[ITimingCache]:
        if not serialized_timing_cache:
            return ITimingCache({"header": self.header(), "entries": {}})
        try:
            data = json.loads(bytes(serialized_timing_cache).decode())
            return ITimingCache(data)
        except Exception:  # noqa: BLE001 - the real one logs and returns an unusable cache
            raise RuntimeError("Failed to deserialize the timing cache")

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        _record("set_timing_cache", len(cache.entries))
        if cache.header != self.header() and not ignore_mismatch:
            return False
        self.cache = cache
        return True

    def get_timing_cache(self) -> Optional[ITimingCache]:
        return self.cache


class EngineInspector:
    def __init__(self, engine: "ICudaEngine"):
        self.engine = engine

    def get_engine_information(self, format: Any) -> str:  # noqa: A002
        layers = [{"Name": n, "LayerType": op, "Precision": "fake"}
                  for n, op in self.engine.data.get("layers", [])]
        return json.dumps({"Layers": layers, "Bindings": []})


class ICudaEngine:
    def __init__(self, data: Dict[str, Any]):
        self.data = data

    def create_engine_inspector(self) -> EngineInspector:
        return EngineInspector(self)

    def serialize(self) -> IHostMemory:
        return IHostMemory(json.dumps(self.data, sort_keys=True).encode())


class Runtime:
    def __init__(self, logger: ILogger):
        self.engine_host_code_allowed = False

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> Optional[ICudaEngine]:
        try:
            data = json.loads(bytes(serialized_engine).decode())
        except Exception:  # noqa: BLE001
            return None
        return ICudaEngine(data) if data.get("fake") else None


class Refitter:
    def __init__(self, engine: ICudaEngine, logger: ILogger):
        _record("Refitter")
        self.engine = engine
        self.refitted: Optional[str] = None

    def refit_cuda_engine(self) -> bool:
        _record("refit_cuda_engine")
        return self.refitted is not None

    def get_missing_weights(self) -> List[str]:
        return [] if self.refitted else ["all"]


class OnnxParserRefitter:
    def __init__(self, refitter: Refitter, logger: ILogger):
        self.refitter = refitter

    @property
    def num_errors(self) -> int:
        return 0

    def get_error(self, index: int) -> ParserError:  # pragma: no cover
        raise IndexError(index)

    def refit_from_file(self, path: str) -> bool:
        from buildgraph.backends.tensorrt.structure import structure_digest

        _record("refit_from_file", os.path.basename(path))
        if structure_digest(path) != self.refitter.engine.data.get("digest"):
            return False
        import onnx

        raw = onnx.load(path).SerializeToString(deterministic=True)
        self.refitter.refitted = hashlib.sha256(raw).hexdigest()
        self.refitter.engine.data["weights"] = self.refitter.refitted
        return True


def make_test_onnx(path: Any, channels: Tuple[int, int] = (32, 64), classes: int = 10,
                   size: int = 16, seed: int = 0, dynamic_batch: bool = True,
                   extra_op: Optional[str] = None, opset: int = 17) -> Any:
    """A small CNN as ONNX (Conv-Relu-Conv-Relu-GlobalAveragePool-Flatten-Gemm), input ``x``
    [batch, 3, size, size], output ``y`` [batch, classes]; weights from ``seed``.
    ``extra_op`` appends a node of that (unsupported) op type, for parser-error tests."""
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
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1] * 4,
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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="buildgraph-test")
    model.ir_version = 8
    onnx.save(model, str(path))
    return model
