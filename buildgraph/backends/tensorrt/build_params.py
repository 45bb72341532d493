"""The ``tensorrt.build`` step as pure data: its parameters, their validation against the ONNX
model's inputs, and the build description they translate to.

Nothing here imports TensorRT (or onnx at module level): the executor
(:mod:`buildgraph.backends.tensorrt.build`) is a thin layer that applies a
:class:`BuildDescription` to the ``tensorrt`` API, and everything that decides *what* to apply
lives here, where it is tested on a CPU.

TensorRT 11 removed weak typing: every network is strongly typed and precision is a property of
the ONNX graph (``onnx.autocast`` for fp16/bf16, ``onnx.quantize`` for int8/fp8 Q/DQ). The
builder-flag precisions of TensorRT <= 10 (``legacy_precision_flags``) are refused with a hint
on 11 and applied, weakly typed, on 10.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

from pydantic import Field, field_validator, model_validator

from buildgraph.errors import did_you_mean
from buildgraph.engine.params import StrictParams
from buildgraph.engine.sizes import parse_size
from buildgraph.backends.onnx.graph import InputSpec, onnx_inputs, onnx_model_inputs  # noqa: F401


MEMORY_POOLS = {
    "workspace": "WORKSPACE",
    "dla_managed_sram": "DLA_MANAGED_SRAM",
    "dla_local_dram": "DLA_LOCAL_DRAM",
    "dla_global_dram": "DLA_GLOBAL_DRAM",
    "tactic_dram": "TACTIC_DRAM",
    "tactic_shared_memory": "TACTIC_SHARED_MEMORY",
}
"""Recipe name of a memory pool -> ``trt.MemoryPoolType`` member."""

HARDWARE_COMPATIBILITY = {
    "none": "NONE",
    "ampere_plus": "AMPERE_PLUS",
    "same_compute_capability": "SAME_COMPUTE_CAPABILITY",
}
"""Recipe value -> ``trt.HardwareCompatibilityLevel`` member."""

LEGACY_PRECISIONS = {"fp16": "FP16", "bf16": "BF16", "int8": "INT8", "fp8": "FP8"}
"""Builder-flag precisions of TensorRT <= 10 -> ``trt.BuilderFlag`` member (gone in 11)."""

PROFILING_VERBOSITY = {"detailed": "DETAILED", "layer_names_only": "LAYER_NAMES_ONLY",
                       "none": "NONE"}

LOG_SEVERITY = {"verbose": "VERBOSE", "info": "INFO", "warning": "WARNING", "error": "ERROR"}


class ShapeRange(StrictParams):
    """The shapes one input may take in one optimization profile."""

    min: List[int] = Field(description="smallest shape")
    opt: List[int] = Field(description="shape the kernels are tuned for")
    max: List[int] = Field(description="largest shape")

    @model_validator(mode="after")
    def _ordered(self) -> "ShapeRange":
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise ValueError(f"min, opt and max must have the same rank; got "
                             f"{len(self.min)}, {len(self.opt)} and {len(self.max)} dims")
        for axis, (lo, mid, hi) in enumerate(zip(self.min, self.opt, self.max)):
            if lo < 0:
                raise ValueError(f"axis {axis}: dims cannot be negative (min {lo})")
            if not lo <= mid <= hi:
                raise ValueError(f"axis {axis}: expected min <= opt <= max; got "
                                 f"{lo}, {mid}, {hi}")
        return self


Profile = Dict[str, ShapeRange]

PLUGIN_KINDS = {
    "dynamic": "exports getCreators: IPluginRegistry.load_library (trtexec --dynamicPlugins)",
    "static": "registers its plugins with REGISTER_TENSORRT_PLUGIN when loaded: ctypes.CDLL, as "
              "Polygraphy does (trtexec --staticPlugins)",
}


class PluginSpec(StrictParams):
    """A plugin library and how TensorRT must load it: the two kinds are not interchangeable
    (``load_library`` returns None for a library without ``getCreators``, and loading a dynamic
    one with ctypes registers nothing)."""

    path: str = Field(description="the .so, relative to the recipe")
    kind: Literal["dynamic", "static"] = Field(
        description="dynamic: the library exports getCreators (IPluginRegistry.load_library, "
                    "trtexec --dynamicPlugins); static: it registers its plugins with "
                    "REGISTER_TENSORRT_PLUGIN when loaded (ctypes.CDLL, trtexec --staticPlugins)")


class TensorRTBuildParams(StrictParams):
    """``with:`` of ``tensorrt.build``."""

    model: Optional[str] = Field(
        None, description="the recipe model the ONNX comes from: profiles are checked against "
                          "its inputs when the recipe loads, and default to its 'dims'")
    onnx: Optional[str] = Field(
        None, description="an ONNX file in the repository (relative to the recipe) instead of "
                          "an upstream step's model")
    profiles: List[Profile] = Field(
        default_factory=list,
        description="optimization profiles: a list of {input: {min, opt, max}}; every dynamic "
                    "input must be in each profile")
    legacy_precision_flags: List[Literal["fp16", "bf16", "int8", "fp8"]] = Field(
        default_factory=list,
        description="TensorRT <= 10 only: weakly typed build with these builder flags (TensorRT "
                    "11 refuses them: use onnx.autocast / onnx.quantize upstream)")
    tf32: Optional[bool] = Field(None, description="allow TF32 for fp32 layers (TensorRT's "
                                 "default: on)")
    workspace: Optional[Union[int, str]] = Field(
        None, description="workspace memory pool limit, e.g. 4GiB (default: the GPU's memory)")
    memory_pools: Dict[Literal["workspace", "dla_managed_sram", "dla_local_dram",
                               "dla_global_dram", "tactic_dram", "tactic_shared_memory"],
                       Union[int, str]] = Field(default_factory=dict,
                                                description="memory pool limits, e.g. "
                                                            "{tactic_dram: 2GiB}")
    optimization_level: Optional[int] = Field(
        None, ge=0, le=5, description="builder optimization level 0-5 (TensorRT default 3)")
    hardware_compatibility: Literal["none", "ampere_plus", "same_compute_capability"] = Field(
        "none", description="engines that run on other GPUs than the one that built them")
    version_compatible: bool = Field(False, description="engine runs on later TensorRT "
                                     "versions (lean runtime)")
    exclude_lean_runtime: bool = Field(False, description="with version_compatible: do not "
                                       "embed the lean runtime")
    refittable: bool = Field(False, description="engine's weights can be replaced (REFIT)")
    refit: bool = Field(False, description="weight-agnostic engine: refittable, keyed on the "
                        "network's structure; new weights go through a tensorrt.refit step")
    strip_weights: bool = Field(False, description="with refit: leave the refittable weights "
                                "out of the plan (STRIP_PLAN); the refit step puts them back")
    sparsity: bool = Field(False, description="allow 2:4 structured-sparse tactics "
                           "(SPARSE_WEIGHTS)")
    dla_core: Optional[int] = Field(None, ge=0, description="run on this DLA core (Jetson)")
    gpu_fallback: bool = Field(True, description="with dla_core: layers DLA cannot run fall "
                               "back to the GPU")
    plugins: List[PluginSpec] = Field(
        default_factory=list,
        description="plugin libraries to load: {path: lib.so, kind: dynamic|static}; part of "
                    "the key, recorded with their sha256 in the 'info' output so that refit, "
                    "verify and benchmark load the same ones")
    max_aux_streams: Optional[int] = Field(None, ge=0, description="auxiliary streams per "
                                           "execution context")
    profiling_verbosity: Literal["detailed", "layer_names_only", "none"] = Field(
        "detailed", description="layer detail kept in the engine (detailed: the inspector "
                                "shows each layer's precision and tactic)")
    native_instancenorm: Optional[bool] = Field(None, description="ONNX parser flag "
                                                "NATIVE_INSTANCENORM")
    timing_cache: Literal["shared", "off", "pinned"] = Field(
        "shared", description="shared: start from and merge into the team's cache for this "
                              "GPU/CUDA/TensorRT (not in the key); off: an empty cache; pinned: "
                              "only timing_cache_file, in the key, and the build fails if it "
                              "would time anything new (bit-exact rebuilds)")
    timing_cache_file: Optional[str] = Field(None, description="with timing_cache: pinned: the "
                                             "cache file, relative to the recipe")
    log_level: Literal["verbose", "info", "warning", "error"] = Field(
        "info", description="severity kept in the builder log output")

    @field_validator("plugins", mode="before")
    @classmethod
    def _plugin_kind(cls, value: Any) -> Any:
        for i, item in enumerate(value if isinstance(value, list) else []):
            if isinstance(item, str):
                raise ValueError(
                    f"plugins[{i}]: say how TensorRT loads '{item}': {{path: {item}, kind: "
                    f"dynamic}} (the library {PLUGIN_KINDS['dynamic']}) or kind: static (it "
                    f"{PLUGIN_KINDS['static']})")
        return value

    @field_validator("workspace")
    @classmethod
    def _workspace_size(cls, value: Any) -> Any:
        if value is not None:
            parse_size(value)
        return value

    @field_validator("memory_pools")
    @classmethod
    def _pool_sizes(cls, value: Dict[str, Any]) -> Dict[str, Any]:
        for size in value.values():
            parse_size(size)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "TensorRTBuildParams":
        if self.workspace is not None and "workspace" in self.memory_pools:
            raise ValueError("give the workspace limit once: 'workspace' or "
                             "'memory_pools.workspace'")
        if self.exclude_lean_runtime and not self.version_compatible:
            raise ValueError("exclude_lean_runtime needs version_compatible: true")
        if self.strip_weights and not (self.refit or self.refittable):
            raise ValueError("strip_weights needs refit: true (or refittable: true)")
        if self.refit and self.sparsity:
            raise ValueError("refit: true builds from the network's structure, so the weights "
                             "are not known when tactics are chosen; sparsity (which picks "
                             "tactics from the weights' 2:4 pattern) cannot be combined with it")
        if self.timing_cache == "pinned" and not self.timing_cache_file:
            raise ValueError("timing_cache: pinned needs timing_cache_file")
        if self.native_instancenorm is False and (self.version_compatible or
                                                  self.hardware_compatibility != "none"):
            raise ValueError(
                "native_instancenorm: false (TensorRT's InstanceNorm plugin) cannot go into a "
                "version-compatible or hardware-compatible engine: the ONNX parser's "
                "NATIVE_INSTANCENORM is required there (NvOnnxParser.h), and trtexec refuses "
                "--pluginInstanceNorm with --versionCompatible or a hardware-compatibility "
                "level")
        if self.timing_cache_file and self.timing_cache != "pinned":
            raise ValueError("timing_cache_file is only read with timing_cache: pinned")
        for i, profile in enumerate(self.profiles):
            if not profile:
                raise ValueError(f"profiles[{i}] is empty: give {{input: {{min, opt, max}}}}")
        return self


# --------------------------------------------------------------------------------------------
# The ONNX model's inputs, and profile checks against them
# --------------------------------------------------------------------------------------------



def model_spec_inputs(spec: Any) -> Dict[str, InputSpec]:
    """Inputs of a recipe model (``models:`` entry, pydantic or dict), as the ONNX export
    names them by default: named dims are dynamic."""
    raw = spec.get("inputs") if isinstance(spec, Mapping) else getattr(spec, "inputs", None)
    out: Dict[str, InputSpec] = {}
    for name, tensor in (raw or {}).items():
        shape = tensor.get("shape") if isinstance(tensor, Mapping) else tensor.shape
        dtype = (tensor.get("dtype") if isinstance(tensor, Mapping) else tensor.dtype) \
            or "float32"
        out[name] = InputSpec(name, tuple(shape), dtype)
    return out


def default_profiles(inputs: Mapping[str, InputSpec], dims: Mapping[str, Mapping[str, int]]
                     ) -> List[Profile]:
    """One profile from a model's named dim ranges (``dims: {batch: {min, opt, max}}``);
    empty when some dynamic dim has no range."""
    profile: Dict[str, ShapeRange] = {}
    for spec in inputs.values():
        if not spec.dynamic_axes:
            continue
        shapes: Dict[str, List[int]] = {"min": [], "opt": [], "max": []}
        for d in spec.dims:
            if isinstance(d, int) and d >= 0:
                for k in shapes:
                    shapes[k].append(d)
                continue
            rng = dims.get(str(d)) if d is not None else None
            if not rng or not all(k in rng for k in ("min", "opt", "max")):
                return []
            for k in shapes:
                shapes[k].append(int(rng[k]))
        profile[spec.name] = ShapeRange(**shapes)
    return [profile] if profile else []


def check_profiles(profiles: Sequence[Mapping[str, ShapeRange]],
                   inputs: Mapping[str, InputSpec], source: str) -> List[Tuple[str, str]]:
    """Problems of ``profiles`` against the model's ``inputs``, as (key path, message).

    ``source`` names where the inputs come from ("the ONNX model", "model 'resnet50'")."""
    problems: List[Tuple[str, str]] = []
    dynamic = [s for s in inputs.values() if s.dynamic_axes]
    if not profiles:
        if dynamic:
            names = ", ".join(f"'{s.name}' {s.describe()}" for s in dynamic)
            problems.append(("profiles", f"{source} has dynamic inputs ({names}) and no "
                             "optimization profile gives their ranges"))
        return problems
    for i, profile in enumerate(profiles):
        for name, rng in profile.items():
            where = f"profiles[{i}].{name}"
            spec = inputs.get(name)
            if spec is None:
                problems.append((where, f"{source} has no input '{name}'"
                                 f"{did_you_mean(name, inputs)}; its inputs: "
                                 + ", ".join(f"{s.name} {s.describe()}"
                                             for s in inputs.values())))
                continue
            if len(rng.min) != len(spec.dims):
                problems.append((where, f"rank {len(rng.min)} given, but input '{name}' of "
                                 f"{source} has rank {len(spec.dims)} {spec.describe()}"))
                continue
            for axis, d in enumerate(spec.dims):
                if isinstance(d, int) and d >= 0:
                    got = {rng.min[axis], rng.opt[axis], rng.max[axis]}
                    if got != {d}:
                        problems.append((where, f"axis {axis} of input '{name}' is fixed at "
                                         f"{d} in {source}; the profile gives min/opt/max "
                                         f"{rng.min[axis]}/{rng.opt[axis]}/{rng.max[axis]}"))
        for spec in dynamic:
            if spec.name not in profile:
                problems.append((f"profiles[{i}]", f"dynamic input '{spec.name}' "
                                 f"{spec.describe()} of {source} has no range in this profile "
                                 "(TensorRT needs every dynamic input in every profile)"))
    return problems


# --------------------------------------------------------------------------------------------
# The build description: what the executor applies to the TensorRT API
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildDescription:
    """Everything the builder is told, validated, in TensorRT's own member names."""

    strongly_typed: bool
    builder_flags: Tuple[str, ...]
    """``trt.BuilderFlag`` members to set, in order."""
    cleared_flags: Tuple[str, ...]
    """``trt.BuilderFlag`` members to clear (e.g. TF32 when ``tf32: false``)."""
    memory_pools: Tuple[Tuple[str, int], ...]
    """(``trt.MemoryPoolType`` member, bytes)."""
    profiles: Tuple[Tuple[Tuple[str, Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]], ...],
                    ...]
    """Per profile: (input, min, opt, max)."""
    optimization_level: Optional[int]
    hardware_compatibility: str
    """``trt.HardwareCompatibilityLevel`` member."""
    dla_core: Optional[int]
    plugins: Tuple[Tuple[str, str], ...]
    """(resolved path, kind: dynamic or static) of each plugin library."""
    max_aux_streams: Optional[int]
    profiling_verbosity: str
    parser_flags: Tuple[Tuple[str, bool], ...]
    timing_cache: str
    log_severity: str
    notes: Tuple[str, ...] = field(default=())


class DescriptionError(ValueError):
    """The parameters cannot be applied with this TensorRT version (one line)."""


def trt_major(version: str) -> int:
    m = re.match(r"^(\d+)", version or "")
    return int(m.group(1)) if m else 0


def parse_version(version: Optional[str]) -> Optional[Tuple[int, int]]:
    """``10.8.0.43`` -> (10, 8); None when it cannot be read ("unknown", "", None)."""
    m = re.match(r"^(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


# --------------------------------------------------------------------------------------------
# Which TensorRT each parameter value needs (docs/tensorrt.md prints this table; a test checks
# it against tests/data/tensorrt_api_since.txt, read from NVIDIA's release tags)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Requirement:
    """A parameter value that needs a TensorRT release range."""

    param: str
    """As a recipe writes it: ``hardware_compatibility: same_compute_capability``."""
    first: str
    """The first release (major.minor) with what it needs."""
    api: str
    """What it needs: a binding (``Owner.member``) or a trtexec option."""
    kinds: Tuple[str, ...]
    """The step kinds it concerns."""
    removed: str = ""
    """The first release without it (empty: every release since ``first`` has it)."""
    applies: Callable[[Any], bool] = field(default=lambda p: True, compare=False, repr=False)
    refused: bool = True
    """False: an older TensorRT only loses a report (the timing cache's hit rate)."""
    hint: str = ""


BUILD_KINDS = ("tensorrt.build", "trtexec")
VERSION_TABLE: Tuple[Requirement, ...] = (
    Requirement("(default) strongly typed network", "9.1",
                "NetworkDefinitionCreationFlag.STRONGLY_TYPED", BUILD_KINDS,
                applies=lambda p: not p.legacy_precision_flags),
    Requirement("legacy_precision_flags", "8.6", "BuilderFlag.FP16/INT8/FP8 (BF16: 9.1)",
                BUILD_KINDS, removed="11.0", applies=lambda p: bool(p.legacy_precision_flags),
                hint="TensorRT 11 builds strongly typed networks only: make the ONNX graph carry "
                     "the precision with onnx.autocast (fp16/bf16) or onnx.quantize (int8/fp8) "
                     "upstream, and drop legacy_precision_flags"),
    Requirement("hardware_compatibility: ampere_plus", "8.6",
                "HardwareCompatibilityLevel.AMPERE_PLUS", BUILD_KINDS,
                applies=lambda p: p.hardware_compatibility == "ampere_plus"),
    Requirement("hardware_compatibility: same_compute_capability", "10.9",
                "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY "
                "(trtexec --hardwareCompatibilityLevel=sameComputeCapability)", BUILD_KINDS,
                applies=lambda p: p.hardware_compatibility == "same_compute_capability"),
    Requirement("version_compatible", "8.6", "BuilderFlag.VERSION_COMPATIBLE", BUILD_KINDS,
                applies=lambda p: p.version_compatible),
    Requirement("exclude_lean_runtime", "8.6", "BuilderFlag.EXCLUDE_LEAN_RUNTIME", BUILD_KINDS,
                applies=lambda p: p.exclude_lean_runtime),
    Requirement("optimization_level", "8.6", "IBuilderConfig.builder_optimization_level",
                BUILD_KINDS, applies=lambda p: p.optimization_level is not None),
    Requirement("max_aux_streams", "8.6", "IBuilderConfig.max_aux_streams", BUILD_KINDS,
                applies=lambda p: p.max_aux_streams is not None),
    Requirement("native_instancenorm", "8.6", "OnnxParserFlag.NATIVE_INSTANCENORM",
                BUILD_KINDS, applies=lambda p: p.native_instancenorm is not None),
    Requirement("strip_weights", "10.0", "BuilderFlag.STRIP_PLAN (trtexec --stripWeights)",
                BUILD_KINDS, applies=lambda p: p.strip_weights),
    Requirement("memory_pools: tactic_shared_memory", "10.0",
                "MemoryPoolType.TACTIC_SHARED_MEMORY", BUILD_KINDS,
                applies=lambda p: "tactic_shared_memory" in p.memory_pools),
    Requirement("timing_cache: pinned", "9.1", "BuilderFlag.ERROR_ON_TIMING_CACHE_MISS",
                BUILD_KINDS, applies=lambda p: p.timing_cache == "pinned"),
    Requirement("plugins: kind: dynamic", "8.6",
                "IPluginRegistry.load_library (trtexec --dynamicPlugins)", BUILD_KINDS,
                applies=lambda p: any(x.kind == "dynamic" for x in p.plugins)),
    Requirement("(any trtexec step)", "10.0",
                "trtexec --pluginInstanceNorm (9.x: the InstanceNorm plugin unless "
                "--nativeInstanceNorm, the opposite default)", ("trtexec",),
                hint="the trtexec kind writes the options of trtexec 10 and 11; use "
                     "tensorrt.build with TensorRT 9"),
    Requirement("(timing cache hit rate)", "10.8", "ITimingCache.queryKeys", ("tensorrt.build",),
                refused=False),
    Requirement("tensorrt.refit", "10.0", "OnnxParserRefitter.refit_from_file",
                ("tensorrt.refit",)),
    Requirement("tensorrt.refit of a tensorrt.refit step's engine", "10.14",
                "SerializationFlag.INCLUDE_REFIT", ("tensorrt.refit",),
                applies=lambda p: bool(getattr(p, "refit_chain", False)),
                hint="without it a refitted engine is serialized without its refit data: refit "
                     "the tensorrt.build step's engine instead"),
)
"""The minimum (and where removed, maximum) TensorRT release of each parameter value."""


def version_problems(params: Any, version: Optional[str], kind: str
                     ) -> List[Tuple[str, str]]:
    """What ``params`` asks for that TensorRT ``version`` lacks, as (message naming the release
    it needs, hint); [] when the version cannot be read (the step fails closed when it runs)."""
    have = parse_version(version)
    if have is None:
        return []
    out = []
    for req in VERSION_TABLE:
        if kind not in req.kinds or not req.refused or not req.applies(params):
            continue
        first = parse_version(req.first)
        removed = parse_version(req.removed) if req.removed else None
        if first is not None and have < first:
            out.append((f"{req.param} needs TensorRT {req.first} or later ({req.api}); "
                        f"installed: TensorRT {version}", req.hint))
        elif removed is not None and have >= removed:
            out.append((f"{req.param}: TensorRT {req.removed} removed {req.api}; installed: "
                        f"TensorRT {version}", req.hint))
    return out


def describe_build(params: TensorRTBuildParams, trt_version: str,
                   profiles: Optional[Sequence[Mapping[str, ShapeRange]]] = None,
                   plugins: Sequence[Tuple[str, str]] = ()) -> BuildDescription:
    """Translate validated params into the builder's terms for TensorRT ``trt_version``.

    ``profiles`` overrides ``params.profiles`` (defaults derived from the model's dims);
    ``plugins`` are the resolved plugin paths with their kinds. A version that cannot be read
    fails closed: which options exist depends on it (TensorRT 11 refuses the legacy precision
    flags)."""
    if parse_version(trt_version) is None:
        raise DescriptionError(f"cannot tell the TensorRT version ({trt_version or 'none'!r}): "
                               "which builder options exist depends on it (TensorRT 11 has no "
                               "FP16/INT8 builder flags), so buildgraph does not guess")
    major = trt_major(trt_version)
    flags: List[str] = []
    cleared: List[str] = []
    notes: List[str] = []
    if params.legacy_precision_flags:
        if major >= 11:
            wanted = ", ".join(params.legacy_precision_flags)
            raise DescriptionError(
                f"legacy_precision_flags [{wanted}] are builder flags that TensorRT "
                f"{trt_version} no longer has (TensorRT 11 builds strongly typed networks "
                "only): make the ONNX graph carry the precision with onnx.autocast (fp16/bf16) "
                "or onnx.quantize (int8/fp8) upstream, and drop legacy_precision_flags")
        strongly_typed = False
        flags.extend(LEGACY_PRECISIONS[p] for p in params.legacy_precision_flags)
        notes.append("weakly typed build with builder flags " + ", ".join(flags)
                     + f" (TensorRT {trt_version})")
        if "int8" in params.legacy_precision_flags:
            notes.append("INT8 without a calibrator: tensors without a dynamic range stay in a "
                         "higher precision (the Python path sets no placeholder ranges, unlike "
                         "trtexec --int8); for real int8 put onnx.quantize upstream")
    else:
        strongly_typed = True
    if params.tf32 is True:
        flags.append("TF32")
    elif params.tf32 is False:
        cleared.append("TF32")
    if params.refit or params.refittable:
        flags.append("REFIT")
    if params.strip_weights:
        flags.append("STRIP_PLAN")
    if params.sparsity:
        flags.append("SPARSE_WEIGHTS")
    if params.version_compatible:
        flags.append("VERSION_COMPATIBLE")
    if params.exclude_lean_runtime:
        flags.append("EXCLUDE_LEAN_RUNTIME")
    if params.dla_core is not None and params.gpu_fallback:
        flags.append("GPU_FALLBACK")
    if params.timing_cache == "pinned":
        flags.append("ERROR_ON_TIMING_CACHE_MISS")
    pools: Dict[str, int] = {}
    if params.workspace is not None:
        pools["WORKSPACE"] = parse_size(params.workspace)
    for name, size in sorted(params.memory_pools.items()):
        pools[MEMORY_POOLS[name]] = parse_size(size)
    chosen = list(params.profiles) if profiles is None else list(profiles)
    described = tuple(tuple((name, tuple(r.min), tuple(r.opt), tuple(r.max))
                            for name, r in sorted(p.items())) for p in chosen)
    parser_flags: List[Tuple[str, bool]] = []
    if params.native_instancenorm is not None:
        parser_flags.append(("NATIVE_INSTANCENORM", params.native_instancenorm))
    elif params.version_compatible or params.hardware_compatibility != "none":
        # polygraphy's advice: compatible engines need the native InstanceNorm
        parser_flags.append(("NATIVE_INSTANCENORM", True))
    return BuildDescription(
        strongly_typed=strongly_typed, builder_flags=tuple(flags), cleared_flags=tuple(cleared),
        memory_pools=tuple(sorted(pools.items())), profiles=described,
        optimization_level=params.optimization_level,
        hardware_compatibility=HARDWARE_COMPATIBILITY[params.hardware_compatibility],
        dla_core=params.dla_core, plugins=tuple(plugins),
        max_aux_streams=params.max_aux_streams,
        profiling_verbosity=PROFILING_VERBOSITY[params.profiling_verbosity],
        parser_flags=tuple(parser_flags), timing_cache=params.timing_cache,
        log_severity=LOG_SEVERITY[params.log_level], notes=tuple(notes))


TACTIC_FLAGS = ("FP16", "BF16", "INT8", "FP8", "TF32", "REFIT", "STRIP_PLAN", "SPARSE_WEIGHTS",
                "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "GPU_FALLBACK")
"""Builder flags that change which tactics exist or how they are timed: the shared timing
cache is kept apart per combination of them."""


def tactic_flags(desc: BuildDescription) -> Tuple[str, ...]:
    """What of ``desc`` selects a separate shared timing cache."""
    out = sorted(f for f in desc.builder_flags if f in TACTIC_FLAGS)
    out += [f"no-{f}" for f in sorted(desc.cleared_flags) if f in TACTIC_FLAGS]
    if desc.hardware_compatibility != "NONE":
        out.append(f"hwcompat-{desc.hardware_compatibility}")
    if desc.dla_core is not None:
        out.append("dla")
    if not desc.strongly_typed:
        out.append("weakly-typed")
    return tuple(out)
