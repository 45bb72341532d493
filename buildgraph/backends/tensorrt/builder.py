"""The layer that talks to TensorRT for ``tensorrt.build``: the logger, the network and parser,
the builder config, optimization profiles, timing caches, the build call and the engine
inspector; plus the pure readers of what comes back (parser errors, the inspector's JSON).

Everything here takes the ``tensorrt`` module as an argument (``trt``): the real bindings, or the
fake of the tests (tests/fakes/trt_fake.py). :mod:`buildgraph.backends.tensorrt.build` is the
executor around it: parameters, keys, the shared timing-cache store, outputs.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from buildgraph.backends.tensorrt import plugins
from buildgraph.backends.tensorrt.plugins import PluginLibrary
from buildgraph.backends.tensorrt.build_params import BuildDescription
from buildgraph.backends.tensorrt.timing_cache import NO_QUERY_KEYS, cache_keys, trt_combiner  # noqa: F401 - re-exported
from buildgraph.backends.tensorrt.trt_logging import SEVERITIES, Sink, capture, errors_in, worker_logger  # noqa: F401 - re-exported
from buildgraph.errors import StepFailed


# --------------------------------------------------------------------------------------------
# Pure helpers (tested without TensorRT)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParserIssue:
    """One error of TensorRT's ONNX parser."""

    node: int
    name: str
    op: str
    desc: str
    code: str = ""

    def text(self) -> str:
        where = f"node {self.node}" if self.node >= 0 else "model"
        label = f" '{self.name}'" if self.name else ""
        op = f" ({self.op})" if self.op else ""
        return f"{where}{label}{op}: {self.desc}"


def parser_failure(issues: Sequence[ParserIssue], shown: int = 3) -> str:
    """One line for a failed parse; the log lists every issue."""
    if not issues:
        return "TensorRT's ONNX parser failed without reporting an error"
    ops = sorted({i.op for i in issues if i.op})
    head = f"TensorRT's ONNX parser rejected {len(issues)} node" \
           f"{'s' if len(issues) != 1 else ''}" + (f" (ops: {', '.join(ops)})" if ops else "")
    body = "; ".join(i.text() for i in issues[:shown])
    more = f"; and {len(issues) - shown} more (see the log)" if len(issues) > shown else ""
    return f"{head}: {body}{more}"


def layer_summary(inspector_json: str) -> Dict[str, Any]:
    """Layer count and precision counts from the engine inspector's JSON (TensorRT writes
    each layer's outputs with a ``Format/Datatype`` such as ``Half`` or ``Int8``)."""
    try:
        data = json.loads(inspector_json)
    except ValueError:
        return {}
    layers = data.get("Layers", []) if isinstance(data, dict) else []
    precisions: Dict[str, int] = {}
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        outs = layer.get("Outputs") or []
        fmt = ""
        if outs and isinstance(outs[0], dict):
            fmt = str(outs[0].get("Format/Datatype", ""))
        dtype = _datatype(fmt) or str(layer.get("Precision", "")) or "unknown"
        precisions[dtype] = precisions.get(dtype, 0) + 1
    return {"layers": len(layers), "precisions": dict(sorted(precisions.items()))}


def engine_precision(summary: Dict[str, Any]) -> str:
    """The precision ``verify`` should judge an engine by, from :func:`layer_summary`: the
    lowest precision any layer computes in (fp32 layers may use TF32: TensorRT's default)."""
    found = summary.get("precisions") or {}
    for name in ("fp8", "int8", "bf16", "fp16"):
        if found.get(name):
            return name
    return "tf32"


def _datatype(fmt: str) -> str:
    """``Row major linear FP16 format`` / ``... Half`` / ``Int8 NC/32HW32`` -> fp16 / int8."""
    words = set(re.findall(r"[a-z0-9]+", fmt.lower()))
    for names, dtype in (({"fp8", "e4m3", "float8"}, "fp8"), ({"int8"}, "int8"),
                         ({"bf16", "bfloat16"}, "bf16"), ({"fp16", "half"}, "fp16"),
                         ({"fp32", "float"}, "fp32"), ({"int32"}, "int32"),
                         ({"int64"}, "int64"), ({"bool"}, "bool")):
        if words & names:
            return dtype
    return ""


# --------------------------------------------------------------------------------------------
# The layer that talks to TensorRT
# --------------------------------------------------------------------------------------------

def _enum(trt: Any, enum_name: str, member: str) -> Any:
    return getattr(getattr(trt, enum_name), member)


@dataclass
class BuildResult:
    engine: bytes
    inspector_json: str
    timing_cache: Optional[bytes]
    keys_before: Optional[Set[str]]
    """The timing cache's keys before the build; None where TensorRT cannot list them (no
    ``ITimingCache.queryKeys`` before 10.8)."""
    keys_after: Optional[Set[str]]
    cache_loaded: str
    """How the starting cache went: none, empty, loaded, rejected (with the reason)."""
    build_s: float
    layers_parsed: int
    plugins: List[PluginLibrary] = field(default_factory=list)
    """The plugin libraries, with the creators each dynamic one registered."""


def network_flags(trt: Any, desc: BuildDescription, major: int) -> int:
    flags = 0
    if major < 10:
        flags |= legacy_explicit_batch(trt)
    if desc.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def legacy_explicit_batch(trt: Any) -> int:
    """TensorRT <= 9 needs explicit batch for ONNX (checked against the 10.x name table)."""
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def configure(trt: Any, builder: Any, config: Any, desc: BuildDescription) -> None:
    """Apply ``desc`` to a fresh ``IBuilderConfig``."""
    config.profiling_verbosity = _enum(trt, "ProfilingVerbosity", desc.profiling_verbosity)
    for flag in desc.builder_flags:
        config.set_flag(_enum(trt, "BuilderFlag", flag))
    for flag in desc.cleared_flags:
        config.clear_flag(_enum(trt, "BuilderFlag", flag))
    for pool, size in desc.memory_pools:
        config.set_memory_pool_limit(_enum(trt, "MemoryPoolType", pool), size)
    if desc.optimization_level is not None:
        config.builder_optimization_level = desc.optimization_level
    if desc.hardware_compatibility != "NONE":
        config.hardware_compatibility_level = _enum(trt, "HardwareCompatibilityLevel",
                                                    desc.hardware_compatibility)
    if desc.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = desc.dla_core
    if desc.max_aux_streams is not None:
        config.max_aux_streams = desc.max_aux_streams
    for i, shapes in enumerate(desc.profiles):
        profile = builder.create_optimization_profile()
        for name, lo, mid, hi in shapes:
            try:
                profile.set_shape(name, lo, mid, hi)
            except RuntimeError as exc:  # TensorRT's check of min <= opt <= max
                raise StepFailed(f"TensorRT refused profile {i} of input '{name}' "
                                 f"(min {list(lo)}, opt {list(mid)}, max {list(hi)}): "
                                 f"{str(exc).splitlines()[0]}") from None
        # -1: TensorRT found the profile invalid (empty, or shapes left unset)
        if config.add_optimization_profile(profile) < 0:
            raise StepFailed(f"TensorRT refused optimization profile {i} as invalid "
                             f"({len(shapes)} inputs set)")


def attach_timing_cache(config: Any, blob: Optional[bytes]) -> Tuple[Any, str]:
    """Attach a timing cache made from ``blob`` (empty when None); a blob TensorRT refuses is
    replaced by an empty cache. Returns (cache, what happened)."""
    status = "empty" if not blob else "loaded"
    cache = None
    if blob:
        try:
            cache = config.create_timing_cache(blob)
        except Exception as exc:  # noqa: BLE001 - TensorRT raises on unreadable blobs
            status = f"rejected: TensorRT cannot read it ({str(exc).splitlines()[0][:200]})"
        if cache is not None and not config.set_timing_cache(cache, False):
            status = "rejected: TensorRT refused it (made on another device or version)"
            cache = None
        elif cache is None and status == "loaded":
            status = "rejected: TensorRT cannot read it"
    if cache is None:
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache, status


def build_engine(trt: Any, desc: BuildDescription, onnx_path: Path, sink: Sink,
                 cache_blob: Optional[bytes], major: int,
                 plugins: Sequence[PluginLibrary] = ()) -> BuildResult:
    """Parse ``onnx_path`` and build an engine as ``desc`` says. Raises StepFailed."""
    with capture(trt, desc.log_severity, sink) as logger:
        return _build(trt, logger, desc, onnx_path, sink, cache_blob, major, plugins)


def _build(trt: Any, logger: Any, desc: BuildDescription, onnx_path: Path, sink: Sink,
           cache_blob: Optional[bytes], major: int, libs: Sequence[PluginLibrary]
           ) -> BuildResult:
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    registry = builder.get_plugin_registry()
    loaded = plugins.load_all(registry, libs, sink)
    network = builder.create_network(network_flags(trt, desc, major))
    parser = trt.OnnxParser(network, logger)
    for flag, on in desc.parser_flags:
        if on:
            parser.set_flag(_enum(trt, "OnnxParserFlag", flag))
        else:
            parser.clear_flag(_enum(trt, "OnnxParserFlag", flag))
    # parse_from_file, not parse(bytes): the parser then finds external weight files
    ok = parser.parse_from_file(str(onnx_path))
    issues = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        issues.append(ParserIssue(int(err.node()), str(err.node_name()),
                                  str(err.node_operator()), str(err.desc()),
                                  getattr(err.code(), "name", str(err.code()))))
    if not ok or issues:
        for issue in issues:
            sink.append(("ERROR", "ONNX parser: " + issue.text()))
        raise StepFailed(parser_failure(issues))
    config = builder.create_builder_config()
    configure(trt, builder, config, desc)
    # always a cache of our own (empty with timing_cache: off), so that this build's timings
    # can be written out as the 'timing_cache' output
    cache, cache_status = attach_timing_cache(config, cache_blob)
    if desc.timing_cache == "pinned" and cache_status.startswith("rejected"):
        raise StepFailed(f"timing_cache: pinned, but the pinned cache was {cache_status}: a "
                         "bit-exact rebuild needs a cache made by this GPU and TensorRT version")
    keys_before = cache_keys(cache)
    start = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.monotonic() - start
    if serialized is None:
        errors = errors_in(sink)
        raise StepFailed("TensorRT could not build the engine"
                         + (f": {errors[-1][:300]}" if errors else " (see the log)"))
    engine_bytes = bytes(serialized)
    after = config.get_timing_cache()
    blob_after = bytes(after.serialize()) if after is not None else None
    inspector_json = inspect_engine(trt, logger, engine_bytes, desc, loaded, sink)
    return BuildResult(engine_bytes, inspector_json, blob_after, keys_before, cache_keys(after),
                       cache_status, build_s, int(network.num_layers), loaded)


def open_runtime(trt: Any, logger: Any, libs: Sequence[PluginLibrary], host_code: bool,
                 sink: Sink) -> Any:
    """A ``trt.Runtime`` ready to deserialize an engine this recipe built: TensorRT's own
    plugins registered (``init_libnvinfer_plugins``, as Polygraphy does before every
    deserialize), the engine's plugin libraries loaded where this Runtime sees them, host code
    allowed for a version-compatible engine when ``host_code``. Call it inside
    :func:`capture` (``logger`` is the process's one logger)."""
    trt.init_libnvinfer_plugins(logger, "")
    runtime = trt.Runtime(logger)
    plugins.load_all(runtime.get_plugin_registry(), libs, sink)
    if host_code:
        runtime.engine_host_code_allowed = True
    return runtime


def inspect_engine(trt: Any, logger: Any, engine_bytes: bytes, desc: BuildDescription,
                   libs: Sequence[PluginLibrary] = (), sink: Optional[Sink] = None) -> str:
    """The engine inspector's JSON (layers, precisions, tactics); an ``error`` entry (and a
    warning in the log) when the engine cannot be read back."""
    sink = sink if sink is not None else []
    runtime = open_runtime(trt, logger, libs, "VERSION_COMPATIBLE" in desc.builder_flags, sink)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        errors = errors_in(sink)
        why = "the engine could not be deserialized for inspection" + \
            (f": {errors[-1][:300]}" if errors else "")
        sink.append(("WARNING", why))
        return json.dumps({"error": why})
    inspector = engine.create_engine_inspector()
    return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
