"""``tensorrt.build``: parse an ONNX model with TensorRT's ONNX parser and build a serialized
engine through the ``tensorrt`` Python API (Builder, NetworkDefinition, OnnxParser,
BuilderConfig), not a shell-out.

This module is the thin layer. :mod:`buildgraph.backends.tensorrt.spec` validates the parameters, checks the
optimization profiles against the ONNX model's inputs and translates everything into a
:class:`~buildgraph.backends.tensorrt.spec.BuildDescription` in TensorRT's own member names;
:func:`build_engine` applies that description to the API in the order of NVIDIA's samples and
of polygraphy's loaders (logger, plugins, builder, network, parser, config, profiles, timing
cache, build, inspector). :mod:`buildgraph.backends.tensorrt.timing_cache` keeps the shared timing caches.

Outputs: ``model`` (the serialized engine), ``log`` (the builder's log), ``layers`` (the engine
inspector's JSON: what ran in which precision and with which tactic) and ``timing_cache``
(this build's timing cache, e.g. to pin for a bit-exact rebuild).

Precision is the ONNX graph's (TensorRT 11 builds strongly typed networks only): put
``onnx.autocast`` or ``onnx.quantize`` upstream. ``legacy_precision_flags`` applies builder
flags on TensorRT <= 10 and is refused, with that advice, on 11.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from buildgraph.backends.tensorrt import env as trt_env
from buildgraph.errors import RecipeError, StepFailed
from buildgraph.backends.tensorrt.spec import BuildDescription, DescriptionError, InputSpec, TensorRTBuildParams, check_profiles, default_profiles, describe_build, model_spec_inputs, onnx_inputs, tactic_flags, trt_major
from buildgraph.engine.executor import DescribeContext, Description, Executor, Task, find_artifact

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


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

def make_logger(trt: Any, severity: str, sink: List[Tuple[str, str]]) -> Any:
    """An ``ILogger`` that keeps messages at ``severity`` or worse in ``sink``."""
    order = ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"]
    limit = order.index(severity)

    class CapturingLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, sev: Any, msg: str) -> None:
            name = getattr(sev, "name", str(sev)).split(".")[-1]
            if name in order and order.index(name) <= limit:
                sink.append((name, msg))

    return CapturingLogger()


def _enum(trt: Any, enum_name: str, member: str) -> Any:
    return getattr(getattr(trt, enum_name), member)


@dataclass
class BuildResult:
    engine: bytes
    inspector_json: str
    timing_cache: Optional[bytes]
    keys_before: Set[str]
    keys_after: Set[str]
    cache_loaded: str
    """How the starting cache went: none, empty, loaded, rejected (with the reason)."""
    build_s: float
    layers_parsed: int


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


def cache_keys(cache: Any) -> Set[str]:
    if cache is None:
        return set()
    return {str(k) for k in cache.queryKeys()}


def trt_combiner(config: Any) -> Callable[[bytes, bytes], bytes]:
    """``ITimingCache.combine`` on blobs, for :meth:`TimingCacheStore.merge`."""
    from buildgraph.backends.tensorrt.timing_cache import CacheRejected

    def combine(base: bytes, new: bytes) -> bytes:
        try:
            merged = config.create_timing_cache(base)
            incoming = config.create_timing_cache(new)
        except Exception as exc:  # noqa: BLE001
            raise CacheRejected(f"TensorRT cannot read it: {exc}") from None
        if merged is None or incoming is None:
            raise CacheRejected("TensorRT cannot read it")
        if not merged.combine(incoming, False):
            raise CacheRejected("TensorRT refused to combine it (another device or version)")
        return bytes(merged.serialize())

    return combine


def build_engine(trt: Any, desc: BuildDescription, onnx_path: Path, sink: List[Tuple[str, str]],
                 cache_blob: Optional[bytes], major: int) -> BuildResult:
    """Parse ``onnx_path`` and build an engine as ``desc`` says. Raises StepFailed."""
    logger = make_logger(trt, desc.log_severity, sink)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    registry = builder.get_plugin_registry()
    for lib in desc.plugins:
        if registry.load_library(lib) is None:
            raise StepFailed(f"TensorRT could not load plugin library {lib}")
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
        errors = [m for s, m in sink if s in ("ERROR", "INTERNAL_ERROR")]
        raise StepFailed("TensorRT could not build the engine"
                         + (f": {errors[-1][:300]}" if errors else " (see the log)"))
    engine_bytes = bytes(serialized)
    after = config.get_timing_cache()
    blob_after = bytes(after.serialize()) if after is not None else None
    inspector_json = inspect_engine(trt, logger, engine_bytes, desc)
    return BuildResult(engine_bytes, inspector_json, blob_after, keys_before, cache_keys(after),
                       cache_status, build_s, int(network.num_layers))


def inspect_engine(trt: Any, logger: Any, engine_bytes: bytes, desc: BuildDescription) -> str:
    """The engine inspector's JSON (layers, precisions, tactics)."""
    runtime = trt.Runtime(logger)
    if "VERSION_COMPATIBLE" in desc.builder_flags:
        runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        return json.dumps({"error": "the engine could not be deserialized for inspection"})
    inspector = engine.create_engine_inspector()
    return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


# --------------------------------------------------------------------------------------------
# The executor
# --------------------------------------------------------------------------------------------

TIMING_AREA = "trt-timing"
"""The store's record area of shared timing caches."""
STRUCTURE_VIEW = "buildgraph.backends.tensorrt.structure:onnx_structure_view"
"""How a weight-agnostic (refittable) build sees its upstream ONNX model."""


class TensorRTBuildExecutor(Executor):
    """Build a TensorRT engine from ONNX: strongly typed, profiles, shared timing caches."""

    kind = "tensorrt.build"
    version = "1"
    Params = TensorRTBuildParams
    outputs = {"model": "model.engine", "info": "engine.json", "log": "build.log",
               "layers": "layers.json", "timing_cache": "timing.cache"}
    resources = {"gpu": 1}
    isolation = "worker"

    def describe(self, params: TensorRTBuildParams, ctx: DescribeContext) -> Description:
        """Plugin libraries, a given timing cache or ONNX file; the model's dims (they shape
        the default optimization profile, and an ONNX file holds only their names); the GPU,
        CUDA and TensorRT found now (volatile: the GPU can change without the Python
        environment changing); with ``refit: true``, the ONNX model counts by its structure
        only; the shared timing-cache area."""
        return Description(inputs=self._files(params, ctx), data=self._model_data(params, ctx),
                           env=self._environment(params), volatile=True,
                           upstream_view=STRUCTURE_VIEW if params.refit else None,
                           areas=(TIMING_AREA,))

    def _environment(self, params: TensorRTBuildParams) -> Dict[str, str]:
        return trt_env.probe().fingerprint(params.hardware_compatibility)

    @staticmethod
    def _model_data(params: TensorRTBuildParams, ctx: DescribeContext) -> Dict[str, Any]:
        if not params.model:
            return {}
        spec = ctx.models.get(params.model)
        spec = spec if isinstance(spec, dict) else (spec.model_dump(mode="json") if spec else {})
        return {"model": {"name": params.model, "dims": spec.get("dims") or {},
                          "inputs": [[k, v] for k, v in (spec.get("inputs") or {}).items()]}}

    def _files(self, params: TensorRTBuildParams, ctx: DescribeContext) -> Dict[str, Path]:
        extra: Dict[str, Path] = {}
        for i, lib in enumerate(params.plugins):
            path = ctx.recipe_dir / lib
            if not path.is_file():
                raise RecipeError(f"plugins[{i}]: plugin library '{lib}' does not exist "
                                  f"(looked in {ctx.recipe_dir})")
            extra[f"plugin:{lib}"] = path
        if params.timing_cache_file:
            path = ctx.recipe_dir / params.timing_cache_file
            if not path.is_file():
                raise RecipeError(f"timing_cache_file '{params.timing_cache_file}' does not "
                                  f"exist (looked in {ctx.recipe_dir})",
                                  hint="a build's 'timing_cache' output is such a file")
            extra["timing_cache_file"] = path
        if params.onnx:
            path = ctx.recipe_dir / params.onnx
            if not path.is_file():
                raise RecipeError(f"onnx: '{params.onnx}' does not exist (looked in "
                                  f"{ctx.recipe_dir})")
            extra["onnx"] = path
            _raise_problems(params, onnx_inputs(path), f"{params.onnx}", {})
        if params.model:
            if params.model not in ctx.models:
                raise RecipeError(f"model: no model named '{params.model}' in the recipe's "
                                  "'models:'" + _choices(params.model, list(ctx.models)))
            spec = ctx.models[params.model]
            inputs = model_spec_inputs(spec)
            if inputs:
                dims = spec.get("dims") if isinstance(spec, dict) else getattr(spec, "dims", {})
                _raise_problems(params, inputs, f"model '{params.model}'", dims or {})
        return extra

    # --- run ------------------------------------------------------------------------------
    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        assert self.Params is not None
        p: TensorRTBuildParams = self.Params.model_validate(task.params)
        onnx_path = task.inputs["onnx"] if p.onnx else find_artifact(task, "tensorrt.build", (".onnx",))
        self.validate_profiles(task, p, onnx_path)
        profiles = self._profiles(task, p, onnx_path)
        plugins = [str(task.inputs[f"plugin:{lib}"]) for lib in p.plugins]
        env = trt_env.probe()
        trt = trt_env.load_tensorrt(env)
        version = str(getattr(trt, "__version__", env.tensorrt or ""))
        try:
            desc = describe_build(p, version, profiles, plugins)
        except DescriptionError as exc:
            raise StepFailed(str(exc)) from None
        for note in desc.notes:
            task.log(note)
        from buildgraph.backends.tensorrt import timing_cache as tc

        scope = tc.CacheScope(env.gpu.name if env.gpu else "", env.gpu.compute_capability
                              if env.gpu else "", env.cuda or "", version, tactic_flags(desc))
        store = tc.TimingCacheStore(task.areas[TIMING_AREA])
        blob, loaded_message = self._starting_cache(task, p, store, scope)
        network_key = _network_key(onnx_path, desc)
        sink: List[Tuple[str, str]] = []
        try:
            result = build_engine(trt, desc, onnx_path, sink, blob, trt_major(version))
        finally:
            self._write_log(task, sink, desc, loaded_message)
        if "log" in task.outputs:
            with open(task.outputs["log"], "a", encoding="utf-8") as fh:
                fh.write(f"# build_s: {result.build_s:.3f}\n")
        cache_meta = self._finish_cache(task, p, store, scope, result, network_key, trt)
        self._write_outputs(task, result)
        summary = layer_summary(result.inspector_json)
        meta = {"tensorrt": version, "gpu": scope.gpu, "compute_capability":
                scope.compute_capability, "cuda": scope.cuda,
                "strongly_typed": desc.strongly_typed, "flags": list(desc.builder_flags),
                "profiles": [{n: {"min": list(a), "opt": list(b), "max": list(c)}
                              for n, a, b, c in prof} for prof in desc.profiles],
                "engine_bytes": len(result.engine), "build_s": round(result.build_s, 3),
                "layers_parsed": result.layers_parsed, "timing_cache": cache_meta, **summary}
        if p.refit:
            from buildgraph.backends.tensorrt.structure import structure_digest

            meta["structure_digest"] = structure_digest(onnx_path)
        task.log(f"engine: {len(result.engine)} bytes in {result.build_s:.1f} s")
        if "info" in task.outputs:  # what runtimes need to load the engine (artifact_info)
            info = {k: meta[k] for k in ("tensorrt", "gpu", "compute_capability", "cuda",
                                         "strongly_typed", "flags", "profiles") if k in meta}
            info["version_compatible"] = "VERSION_COMPATIBLE" in desc.builder_flags
            task.outputs["info"].write_text(json.dumps(info, indent=1, sort_keys=True) + "\n",
                                            encoding="utf-8")
        return meta

    @staticmethod
    def _dims(task: Task) -> Dict[str, Any]:
        return dict((task.data.get("model") or {}).get("dims") or {})

    def validate_profiles(self, task: Task, p: TensorRTBuildParams, onnx_path: Path) -> None:
        """The profiles (given, or built from the model's dims) against the ONNX model's
        inputs: a mismatch is a recipe error, reported at the step's location."""
        _raise_problems(p, onnx_inputs(onnx_path), f"the ONNX model ({onnx_path.name})",
                        self._dims(task))

    def _profiles(self, task: Task, p: TensorRTBuildParams, onnx_path: Path) -> List[Any]:
        inputs = onnx_inputs(onnx_path)
        dims = self._dims(task)
        profiles = list(p.profiles) or default_profiles(inputs, dims)
        problems = check_profiles(profiles, inputs, f"the ONNX model ({onnx_path.name})")
        if problems:
            where, message = problems[0]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise StepFailed(f"with.{where}: {message}{more}")
        return profiles

    def _starting_cache(self, task: Task, p: TensorRTBuildParams, store: Any, scope: Any
                        ) -> Tuple[Optional[bytes], str]:
        mode = _cache_mode(p)
        if mode == "pinned":
            path = task.inputs["timing_cache_file"]
            return path.read_bytes(), f"timing cache: pinned to {path.name} (misses are errors)"
        if mode == "off":
            return None, "timing cache: off (an empty cache, not shared)"
        try:
            loaded = store.load(scope)
        except OSError as exc:  # the shared cache is an optimisation: never fatal
            return None, f"shared timing cache unreadable ({exc}); starting from an empty one"
        return (loaded.blob if loaded.usable else None), loaded.message

    def _finish_cache(self, task: Task, p: TensorRTBuildParams, store: Any, scope: Any,
                      result: BuildResult, network_key: str, trt: Any) -> Dict[str, Any]:
        from buildgraph.backends.tensorrt import timing_cache as tc

        mode = _cache_mode(p)
        known = store.needed_keys(scope, network_key) if mode in ("shared", "readonly") \
            else None
        before = result.keys_before if not result.cache_loaded.startswith("rejected") \
            else set()
        stats = tc.hit_stats(before, result.keys_after, known)
        task.log(stats.line())
        meta: Dict[str, Any] = {"mode": mode, "start": result.cache_loaded, **stats.as_dict()}
        if mode == "pinned" and result.keys_after != result.keys_before:
            raise StepFailed(f"timing_cache: pinned, but TensorRT timed "
                             f"{len(result.keys_after - result.keys_before)} tactics the pinned "
                             "cache does not have: this build is not a bit-exact rebuild")
        if mode in ("shared", "readonly"):
            learned = tc.learned_needed(before, result.keys_after, known)
            if learned is not None:
                try:
                    store.record_needed(scope, network_key, learned)
                except OSError as exc:
                    task.log(f"warning: could not record the network's timing keys: {exc}")
        if mode == "shared" and result.timing_cache and stats.timed:
            # build a config only to combine and count caches
            logger = make_logger(trt, "ERROR", [])
            config = trt.Builder(logger).create_builder_config()
            try:
                outcome = store.merge(scope, result.timing_cache, trt_combiner(config),
                                      count_entries=lambda b: len(cache_keys(
                                          config.create_timing_cache(b))))
            except Exception as exc:  # noqa: BLE001 - the engine is built; the cache is extra
                task.log(f"warning: could not update the shared timing cache: "
                         f"{type(exc).__name__}: {exc}")
                meta["shared"] = f"not updated ({type(exc).__name__})"
            else:
                task.log(f"{outcome.message} ({outcome.size} bytes, {outcome.path})")
                meta["shared"] = outcome.status
        elif mode == "shared":
            meta["shared"] = "unchanged (nothing new was timed)"
        return meta

    @staticmethod
    def _write_log(task: Task, sink: List[Tuple[str, str]], desc: BuildDescription,
                   loaded: str) -> None:
        lines = [f"# {loaded}"] + [f"# {n}" for n in desc.notes] + \
                [f"[{sev}] {msg}" for sev, msg in sink]
        text = "\n".join(lines) + "\n"
        if "log" in task.outputs:
            task.outputs["log"].write_text(text, encoding="utf-8")
        for sev, msg in sink:
            if sev in ("WARNING", "ERROR", "INTERNAL_ERROR"):
                task.log(f"[TensorRT {sev}] {msg}")

    @staticmethod
    def _write_outputs(task: Task, result: BuildResult) -> None:
        if "model" not in task.outputs:
            raise StepFailed("tensorrt.build must declare an output named 'model' (the engine)")
        task.outputs["model"].write_bytes(result.engine)
        if "layers" in task.outputs:
            task.outputs["layers"].write_text(result.inspector_json, encoding="utf-8")
        if "timing_cache" in task.outputs:
            task.outputs["timing_cache"].write_bytes(result.timing_cache or b"")



def _cache_mode(p: TensorRTBuildParams) -> str:
    import os

    override = os.environ.get("BUILDGRAPH_TRT_TIMING_CACHE", "")
    if p.timing_cache == "shared" and override in ("off", "readonly"):
        return override
    return p.timing_cache


def _network_key(onnx_path: Path, desc: BuildDescription) -> str:
    """Network identity for hit-rate bookkeeping: structure plus what the builder was told."""
    import hashlib

    from buildgraph.backends.tensorrt.structure import structure_digest

    text = json.dumps([structure_digest(onnx_path), list(desc.builder_flags),
                       [list(map(list, p)) for p in desc.profiles]], default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _raise_problems(params: TensorRTBuildParams, inputs: Dict[str, InputSpec], source: str,
                    dims: Dict[str, Any]) -> None:
    profiles = list(params.profiles) or default_profiles(inputs, dims)
    problems = check_profiles(profiles, inputs, source)
    if problems:
        where, message = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RecipeError(f"{where}: {message}{more}")


def _choices(name: str, names: List[str]) -> str:
    from buildgraph.errors import did_you_mean

    return (did_you_mean(name, names) + f"; models: {', '.join(names)}") if names else \
        "; the recipe has no models"
