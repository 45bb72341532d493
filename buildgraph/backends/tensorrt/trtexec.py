"""``trtexec``: build an engine with NVIDIA's ``trtexec`` binary, for machines that have it
(TensorRT's tarball or containers) but not the Python bindings.

Same parameters as ``tensorrt.build`` (and the same validation: profiles are checked against
the ONNX inputs first), translated into ``trtexec`` options by :func:`trtexec_args` — the
options of TensorRT 11's ``samples/common/sampleOptions.cpp``. Outputs: ``model`` (the engine),
``log`` (trtexec's output), ``layers`` (``--exportLayerInfo``), ``timing_cache``. The shared
timing cache is handed to ``--timingCacheFile`` (trtexec loads it and saves it back with the
new timings); the result replaces the team cache only if nobody changed it meanwhile, since
combining two caches needs the Python API (``tensorrt.build`` does that).

The key includes the version trtexec reports (``[TensorRT v110400]``) and the GPU, as for
``tensorrt.build``; what that version lacks is a recipe error at plan time (the version table),
and a version trtexec does not report fails the step (closed: which options exist depends on
it, and trtexec 11 stops at ``Unknown option: --fp16``).

Input names go into ``--minShapes``-style lists, which trtexec splits at every ``,`` before it
looks at quotes (``getShapesBuild``, then ``splitNameAndValue``): a name with ``,`` or ``'``
cannot be written there and is refused; one with ``:`` is quoted (``'in:0':1x3``), which
``splitNameAndValue`` reads back. Plugin libraries go to ``--dynamicPlugins`` or
``--staticPlugins`` by their kind.

``--int8`` without a calibration cache makes trtexec set placeholder dynamic ranges (an engine
good for timing only), which the Python path never does: ``legacy_precision_flags: [int8]``
needs ``timing_only: true`` here, and the ``info`` output says ``timing_only``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from pydantic import Field

from pydantic import model_validator

from buildgraph.backends.tensorrt import env as trt_env
from buildgraph.backends.tensorrt import plugins as trt_plugins
from buildgraph.errors import RecipeError, StepFailed
from buildgraph.backends.tensorrt.build_params import BuildDescription, DescriptionError, TensorRTBuildParams, describe_build, parse_version, tactic_flags
from buildgraph.engine.executor import DescribeContext, Description, Task
from buildgraph.backends.tensorrt.build import TIMING_AREA, TensorRTBuildExecutor, engine_info, source_onnx, write_info

POOLS = {"WORKSPACE": "workspace", "DLA_MANAGED_SRAM": "dlaSRAM",
         "DLA_LOCAL_DRAM": "dlaLocalDRAM", "DLA_GLOBAL_DRAM": "dlaGlobalDRAM",
         "TACTIC_SHARED_MEMORY": "tacticSharedMem"}
FLAGS = {"REFIT": "--refit", "STRIP_PLAN": "--stripWeights", "SPARSE_WEIGHTS": "--sparsity=enable",
         "VERSION_COMPATIBLE": "--versionCompatible",
         "EXCLUDE_LEAN_RUNTIME": "--excludeLeanRuntime", "GPU_FALLBACK": "--allowGPUFallback",
         "ERROR_ON_TIMING_CACHE_MISS": "--errorOnTimingCacheMiss", "TF32": "",
         "FP16": "--fp16", "BF16": "--bf16", "INT8": "--int8", "FP8": "--fp8"}
HWCOMPAT = {"NONE": "none", "AMPERE_PLUS": "ampere+",
            "SAME_COMPUTE_CAPABILITY": "sameComputeCapability"}
VERSION_RE = re.compile(r"\[TensorRT v(\d+)\]")
PLUGIN_OPTIONS = {"dynamic": "--dynamicPlugins", "static": "--staticPlugins"}
UNWRITABLE = re.compile(r"[,']")
"""Characters an input name cannot have in trtexec's shape lists."""


class TrtexecParams(TensorRTBuildParams):
    trtexec: str = Field("trtexec", description="the trtexec binary (name on PATH or path)")
    extra_args: List[str] = Field(default_factory=list, description="more trtexec options, "
                                  "appended as given (part of the key)")
    timing_only: bool = Field(False, description="with legacy_precision_flags: [int8]: accept "
                              "trtexec's placeholder int8 ranges (no calibration), an engine "
                              "for timing only; the info output says so")

    @model_validator(mode="after")
    def _int8_is_timing_only(self) -> "TrtexecParams":
        int8 = "int8" in self.legacy_precision_flags
        if int8 and not self.timing_only:
            raise ValueError("legacy_precision_flags: [int8] with trtexec means --int8 without "
                             "calibration: trtexec sets placeholder dynamic ranges, an engine "
                             "whose outputs mean nothing (good for timing only). Put "
                             "onnx.quantize upstream for a real int8 engine, or say "
                             "timing_only: true")
        if self.timing_only and not int8:
            raise ValueError("timing_only: true only marks a legacy int8 engine without "
                             "calibration; this step has none")
        return self


def name_problem(name: str) -> Optional[str]:
    """Why ``name`` cannot go into a trtexec shape list (None: it can)."""
    bad = sorted(set(UNWRITABLE.findall(name)))
    if not bad:
        return None
    return (f"input '{name}' has {' and '.join(repr(c) for c in bad)} in its name, which "
            "trtexec's shape options cannot carry (they split at every ',' before reading "
            "quotes): rename the input in the ONNX model, or use tensorrt.build")


def shape_spec(shapes: List[Tuple[str, Tuple[int, ...]]]) -> str:
    """``x:1x3x224x224,'in:0':1x128``: names with ':' quoted (``splitNameAndValue`` reads
    everything between the quotes as the name); names with ',' or "'" are refused."""
    parts = []
    for name, dims in shapes:
        problem = name_problem(name)
        if problem:
            raise DescriptionError(problem)
        label = f"'{name}'" if ":" in name else name
        parts.append(f"{label}:" + "x".join(str(d) for d in dims))
    return ",".join(parts)


def trtexec_args(desc: BuildDescription, onnx: Path, engine: Path, layers: Optional[Path],
                 timing_cache: Optional[Path]) -> List[str]:
    """The trtexec command line (without the binary) for ``desc``."""
    args = [f"--onnx={onnx}", f"--saveEngine={engine}", "--skipInference"]
    if desc.strongly_typed:
        args.append("--stronglyTyped")  # TensorRT 10 needs it; 11 accepts it as a no-op
    for flag in desc.builder_flags:
        if flag not in FLAGS:
            raise DescriptionError(f"trtexec has no option for builder flag {flag}")
        if FLAGS[flag]:
            args.append(FLAGS[flag])
    if "TF32" in desc.cleared_flags:
        args.append("--noTF32")
    if desc.memory_pools:
        specs = []
        for pool, size in desc.memory_pools:
            if pool not in POOLS:
                raise DescriptionError(f"trtexec cannot limit the {pool.lower()} memory pool; "
                                       "use tensorrt.build")
            specs.append(f"{POOLS[pool]}:{size}B")
        args.append("--memPoolSize=" + ",".join(specs))
    if desc.optimization_level is not None:
        args.append(f"--builderOptimizationLevel={desc.optimization_level}")
    if desc.hardware_compatibility != "NONE":
        args.append(f"--hardwareCompatibilityLevel={HWCOMPAT[desc.hardware_compatibility]}")
    if desc.dla_core is not None:
        args.append(f"--useDLACore={desc.dla_core}")
    for lib, kind in desc.plugins:
        args.append(f"{PLUGIN_OPTIONS[kind]}={lib}")
    if desc.max_aux_streams is not None:
        args.append(f"--maxAuxStreams={desc.max_aux_streams}")
    args.append(f"--profilingVerbosity={desc.profiling_verbosity.lower()}")
    if ("NATIVE_INSTANCENORM", False) in desc.parser_flags:
        if "VERSION_COMPATIBLE" in desc.builder_flags or desc.hardware_compatibility != "NONE":
            raise DescriptionError(
                "native_instancenorm: false (the InstanceNorm plugin) cannot go into a "
                "version-compatible or hardware-compatible engine: trtexec refuses "
                "--pluginInstanceNorm with --versionCompatible and "
                "--hardwareCompatibilityLevel=ampere+, and the parser needs NATIVE_INSTANCENORM "
                "for every compatible engine")
        args.append("--pluginInstanceNorm")
    many = len(desc.profiles) > 1
    for i, profile in enumerate(desc.profiles):
        if many:
            args.append(f"--profile={i}")
        for option, index in (("--minShapes", 1), ("--optShapes", 2), ("--maxShapes", 3)):
            args.append(f"{option}=" + shape_spec([(p[0], p[index]) for p in profile]))
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    if layers is not None:
        args.append(f"--exportLayerInfo={layers}")
    if desc.log_severity == "VERBOSE":
        args.append("--verbose")
    return args


def version_from_output(text: str) -> Optional[str]:
    """``[TensorRT v110400]`` -> ``11.4.0``."""
    m = VERSION_RE.search(text)
    if not m:
        return None
    n = int(m.group(1))
    return f"{n // 10000}.{(n // 100) % 100}.{n % 100}"


_versions: Dict[str, Optional[str]] = {}


def trtexec_version(binary: str) -> Optional[str]:
    """The TensorRT version a trtexec binary reports (its banner), once per process."""
    path = shutil.which(binary)
    if path is None:
        return None
    if path not in _versions:
        try:
            proc = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60)
            _versions[path] = version_from_output(proc.stdout + proc.stderr) or "unknown"
        except (OSError, subprocess.SubprocessError):
            _versions[path] = "unknown"
    return _versions[path]


class TrtexecExecutor(TensorRTBuildExecutor):
    """Build a TensorRT engine with the trtexec binary (same parameters as tensorrt.build)."""

    kind = "trtexec"
    version = "2"
    Params = TrtexecParams

    def _environment(self, params: Any) -> Dict[str, str]:
        env = trt_env.probe().fingerprint(params.hardware_compatibility)
        env["tensorrt"] = trtexec_version(params.trtexec) or "(no trtexec)"
        return env

    def describe(self, params: Any, ctx: DescribeContext) -> Description:
        """As tensorrt.build's, against the version trtexec reports; input names trtexec cannot
        write (the profiles', the model's) are recipe errors here too."""
        for i, profile in enumerate(params.profiles):
            for name in profile:
                problem = name_problem(name)
                if problem:
                    raise RecipeError(f"profiles[{i}].{name}: {problem}")
        if params.model and params.model in ctx.models:
            from buildgraph.backends.tensorrt.build_params import model_spec_inputs

            for name in model_spec_inputs(ctx.models[params.model]):
                problem = name_problem(name)
                if problem:
                    raise RecipeError(f"model '{params.model}': {problem}")
        return super().describe(params, ctx)

    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        from buildgraph.engine.execution.procs import run_logged
        from buildgraph.backends.tensorrt import timing_cache as tc

        assert self.Params is not None
        p: TrtexecParams = self.Params.model_validate(task.params)
        onnx_path = task.inputs["onnx"] if p.onnx else source_onnx(task, p, "trtexec")
        self.validate_profiles(task, p, onnx_path)
        profiles = self._profiles(task, p, onnx_path)
        for profile in profiles:
            for name in profile:
                problem = name_problem(name)
                if problem:
                    raise RecipeError(problem)  # the scheduler adds the step's file and line
        env = trt_env.probe()
        binary = shutil.which(p.trtexec)
        version = trtexec_version(p.trtexec)
        if binary is None or env.gpu is None:
            missing = [] if binary else [f"no '{p.trtexec}' on PATH"]
            if env.gpu is None:
                missing.append("no NVIDIA GPU" + (f" ({env.gpu_problem})" if env.gpu_problem
                                                  else ""))
            raise StepFailed("needs an NVIDIA GPU and TensorRT's trtexec; found: "
                             + ", ".join(missing))
        if parse_version(version) is None:
            raise StepFailed(f"cannot read the TensorRT version of {binary} (its --help banner "
                             "has no '[TensorRT vNNNNNN]'): which options exist depends on it "
                             "(trtexec 11 has no --fp16), so the step does not guess")
        self.check_version(p, version)
        libs = trt_plugins.from_params(p.plugins, task.inputs)
        try:
            desc = describe_build(p, version or "", profiles,
                                  [(str(lib.file), lib.kind) for lib in libs])
        except DescriptionError as exc:
            raise StepFailed(str(exc)) from None
        scope = tc.CacheScope(env.gpu.name, env.gpu.compute_capability, env.cuda or "",
                              version or "", tactic_flags(desc))
        store = tc.TimingCacheStore(task.areas[TIMING_AREA])
        cache_file = task.work_dir / "timing.cache"
        start_blob, message = self._starting_cache(task, p, store, scope)
        if start_blob:
            cache_file.write_bytes(start_blob)
        task.log(message)
        engine = task.outputs["model"]
        layers = task.outputs.get("layers")
        try:
            args = trtexec_args(desc, onnx_path, engine, layers, cache_file)
        except DescriptionError as exc:
            raise StepFailed(str(exc)) from None
        args += list(p.extra_args)
        log_out = task.outputs.get("log") or task.work_dir / "trtexec.log"
        with open(log_out, "ab") as log:
            log.write(("$ " + " ".join([binary] + args) + "\n").encode())
            log.flush()
            run_logged([binary] + args, log, cwd=str(task.work_dir), timeout=task.timeout,
                       what="trtexec")
        if not engine.exists():
            raise StepFailed("trtexec finished without writing the engine (see the log)")
        if layers is not None and not layers.exists():
            layers.write_text("{}", encoding="utf-8")
        blob = cache_file.read_bytes() if cache_file.exists() else b""
        if "timing_cache" in task.outputs:
            task.outputs["timing_cache"].write_bytes(blob)
        shared = "unchanged"
        if p.timing_cache == "shared" and blob and blob != start_blob:
            started = hashlib.sha256(start_blob or b"").hexdigest()

            def replace_if_unchanged(base: bytes, new: bytes) -> bytes:
                if hashlib.sha256(base).hexdigest() != started:
                    raise RuntimeError("the shared cache changed during this build; combining "
                                       "needs the tensorrt Python module")
                return new

            try:
                shared = store.merge(scope, blob, replace_if_unchanged).status
            except Exception as exc:  # noqa: BLE001 - never fatal
                shared = f"not updated ({exc})"
            task.log(f"shared timing cache: {shared}")
        meta = {"tensorrt": version, "gpu": scope.gpu, "compute_capability":
                scope.compute_capability, "cuda": scope.cuda,
                "strongly_typed": desc.strongly_typed, "flags": list(desc.builder_flags),
                "profiles": [{n: {"min": list(a), "opt": list(b), "max": list(c)}
                              for n, a, b, c in prof} for prof in desc.profiles],
                "engine_bytes": engine.stat().st_size, "trtexec_args": args,
                "timing_cache": {"mode": p.timing_cache, "shared": shared},
                "timing_only": p.timing_only}
        if "info" in task.outputs:
            write_info(task, engine_info(meta, desc, libs, timing_only=p.timing_only))
        return meta
