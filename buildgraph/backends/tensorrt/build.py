"""``tensorrt.build``: parse an ONNX model with TensorRT's ONNX parser and build a serialized
engine through the ``tensorrt`` Python API (Builder, NetworkDefinition, OnnxParser,
BuilderConfig), not a shell-out.

This module is the executor: parameters, what the step adds to its key, the shared timing-cache
store and the outputs. :mod:`buildgraph.backends.tensorrt.build_params` validates the parameters, checks
the optimization profiles against the ONNX model's inputs and translates everything into a
:class:`~buildgraph.backends.tensorrt.build_params.BuildDescription` in TensorRT's own member names;
:func:`buildgraph.backends.tensorrt.builder.build_engine` applies that description to the API in
the order of NVIDIA's samples and of polygraphy's loaders (logger, plugins, builder, network,
parser, config, profiles, timing cache, build, inspector).
:mod:`buildgraph.backends.tensorrt.timing_cache` keeps the shared timing caches.

Outputs: ``model`` (the serialized engine), ``log`` (the builder's log), ``layers`` (the engine
inspector's JSON: what ran in which precision and with which tactic) and ``timing_cache``
(this build's timing cache, e.g. to pin for a bit-exact rebuild).

Precision is the ONNX graph's (TensorRT 11 builds strongly typed networks only): put
``onnx.autocast`` or ``onnx.quantize`` upstream. ``legacy_precision_flags`` applies builder
flags on TensorRT <= 10 and is refused, with that advice, on 11.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from buildgraph.backends.tensorrt import env as trt_env
from buildgraph.backends.tensorrt import plugins as trt_plugins
from buildgraph.backends.tensorrt.builder import BuildResult, build_engine, layer_summary
from buildgraph.backends.tensorrt.timing_cache import NO_QUERY_KEYS, cache_keys, trt_combiner
from buildgraph.backends.tensorrt.trt_logging import capture
from buildgraph.errors import RecipeError, StepFailed
from buildgraph.backends.tensorrt.build_params import BuildDescription, DescriptionError, InputSpec, TensorRTBuildParams, check_profiles, default_profiles, describe_build, model_spec_inputs, onnx_inputs, tactic_flags, trt_major, version_problems
from buildgraph.backends.onnx.source import describe_onnx_source
from buildgraph.engine.executor import DescribeContext, Description, Executor, Task, find_artifact


ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


# --------------------------------------------------------------------------------------------
# The executor
# --------------------------------------------------------------------------------------------

TIMING_AREA = "trt-timing"
"""The store's record area of shared timing caches."""
STRUCTURE_VIEW = "buildgraph.backends.tensorrt.structure:onnx_structure_view"
"""How a weight-agnostic (refittable) build sees its upstream ONNX model."""


UNPINNED_TACTICS = ("TensorRT picks each layer's tactic by timing candidates on this GPU, so "
                    "two builds can choose differently; timing_cache: pinned fixes the choices")
"""Why an engine built without a pinned timing cache is not deterministic (repro compares its
numbers, and a release manifest names it)."""


def _is_onnx_model(spec: Any, ctx: DescribeContext) -> bool:
    from buildgraph.backends.onnx.modelspec import model_framework

    raw = spec if isinstance(spec, dict) else spec.model_dump(mode="json")
    return model_framework(raw, ctx.recipe_dir) == "onnx"


def source_onnx(task: Task, p: Any, what: str) -> Path:
    """The ONNX file to build from: the upstream step's, else (no upstream ONNX output) the
    file of ``model:`` when it is an ONNX model."""
    from buildgraph.backends.onnx.source import onnx_input

    has_upstream = any(str(path).endswith(".onnx") for outs in task.upstream.values()
                       for path in outs.values())
    if p.model and not has_upstream and f"model:{p.model}:file" in task.inputs:
        return onnx_input(task, what, p.model)
    return find_artifact(task, what, (".onnx",))


class TensorRTBuildExecutor(Executor):
    """Build a TensorRT engine from ONNX: strongly typed, profiles, shared timing caches."""

    kind = "tensorrt.build"
    version = "2"
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
        only; the shared timing-cache area. A parameter value the installed TensorRT lacks is a
        recipe error naming the release it needs (the version table, spec.VERSION_TABLE)."""
        env = self._environment(params)
        self.check_version(params, env.get("tensorrt"))
        return Description(inputs=self._files(params, ctx), data=self._model_data(params, ctx),
                           env=env, volatile=True,
                           upstream_view=STRUCTURE_VIEW if params.refit else None,
                           areas=(TIMING_AREA,),
                           nondeterministic="" if getattr(params, "timing_cache", None) == "pinned"
                           else UNPINNED_TACTICS)

    def _environment(self, params: TensorRTBuildParams) -> Dict[str, str]:
        return trt_env.probe().fingerprint(params.hardware_compatibility)

    def check_version(self, params: TensorRTBuildParams, version: Optional[str]) -> None:
        """Refuse, as a recipe error, what TensorRT ``version`` lacks (nothing when no TensorRT
        is found or its version cannot be read: the run says so)."""
        problems = version_problems(params, version, self.kind)
        if problems:
            message, hint = problems[0]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise RecipeError(message + more, hint=hint or None)

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
            path = ctx.recipe_dir / lib.path
            if not path.is_file():
                raise RecipeError(f"plugins[{i}]: plugin library '{lib.path}' does not exist "
                                  f"(looked in {ctx.recipe_dir})")
            extra[f"plugin:{lib.path}"] = path
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
            if not params.onnx and _is_onnx_model(spec, ctx):
                # an ONNX model: its file is the engine's source when no upstream gives one
                files, data = describe_onnx_source(params.model, ctx.models, ctx.recipe_dir)
                extra.update(files)
                inputs = {k: InputSpec(k, tuple(v["shape"]), v["dtype"])
                          for k, v in data["model"]["inputs"]}
            if inputs:
                dims = spec.get("dims") if isinstance(spec, dict) else getattr(spec, "dims", {})
                _raise_problems(params, inputs, f"model '{params.model}'", dims or {})
        return extra

    # --- run ------------------------------------------------------------------------------
    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        assert self.Params is not None
        p: TensorRTBuildParams = self.Params.model_validate(task.params)
        onnx_path = task.inputs["onnx"] if p.onnx else source_onnx(task, p, "tensorrt.build")
        self.validate_profiles(task, p, onnx_path)
        profiles = self._profiles(task, p, onnx_path)
        libs = trt_plugins.from_params(p.plugins, task.inputs)
        env = trt_env.probe()
        trt = trt_env.load_tensorrt(env)
        version = str(getattr(trt, "__version__", env.tensorrt or ""))
        problems = version_problems(p, version, self.kind)
        if problems:
            raise StepFailed(problems[0][0] + (f"; {problems[0][1]}" if problems[0][1] else ""))
        try:
            desc = describe_build(p, version, profiles,
                                  [(str(lib.file), lib.kind) for lib in libs])
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
            result = build_engine(trt, desc, onnx_path, sink, blob, trt_major(version), libs)
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
        if result.plugins:
            meta["plugins"] = [lib.as_info() for lib in result.plugins]
        if "info" in task.outputs:  # what runtimes need to load the engine (artifact_info)
            write_info(task, engine_info(meta, desc, result.plugins))
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
            else (set() if result.keys_before is not None else None)
        stats = tc.hit_stats(before, result.keys_after, known, NO_QUERY_KEYS)
        task.log(stats.line())
        meta: Dict[str, Any] = {"mode": mode, "start": result.cache_loaded, **stats.as_dict()}
        # (where the keys cannot be listed, ERROR_ON_TIMING_CACHE_MISS alone guards a pin)
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
        if mode == "shared" and result.timing_cache and stats.timed != 0:
            # a config only to combine and count caches (its messages go to the step's log)
            sink: List[Tuple[str, str]] = []
            try:
                with capture(trt, "ERROR", sink) as logger:
                    config = trt.Builder(logger).create_builder_config()

                    def count(blob: bytes) -> Optional[int]:
                        keys = cache_keys(config.create_timing_cache(blob))
                        return len(keys) if keys is not None else None

                    outcome = store.merge(scope, result.timing_cache, trt_combiner(config),
                                          count_entries=count)
            except Exception as exc:  # noqa: BLE001 - the engine is built; the cache is extra
                task.log(f"warning: could not update the shared timing cache: "
                         f"{type(exc).__name__}: {exc}")
                meta["shared"] = f"not updated ({type(exc).__name__})"
            else:
                task.log(f"{outcome.message} ({outcome.size} bytes, {outcome.path})")
                meta["shared"] = outcome.status
            for sev, msg in sink:
                task.log(f"[TensorRT {sev}] {msg}")
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



def engine_info(meta: Dict[str, Any], desc: BuildDescription,
                libs: List[trt_plugins.PluginLibrary], timing_only: bool = False
                ) -> Dict[str, Any]:
    """The ``info`` output: what a later step needs to load the engine as it was built."""
    info = {k: meta[k] for k in ("tensorrt", "gpu", "compute_capability", "cuda",
                                 "strongly_typed", "flags", "profiles") if k in meta}
    info["version_compatible"] = "VERSION_COMPATIBLE" in desc.builder_flags
    info["refittable"] = "REFIT" in desc.builder_flags
    info["plugins"] = [lib.as_info() for lib in libs]
    info["timing_only"] = timing_only
    return info


def write_info(task: Task, info: Dict[str, Any]) -> None:
    task.outputs["info"].write_text(json.dumps(info, indent=1, sort_keys=True) + "\n",
                                    encoding="utf-8")


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
