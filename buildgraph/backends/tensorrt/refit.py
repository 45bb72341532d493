"""``tensorrt.refit``: put new weights into a refittable engine with TensorRT's Refitter,
instead of building again.

``from: [ENGINE_STEP, ONNX_STEP]``: the engine comes from a ``tensorrt.build`` step with
``refit: true`` (or ``refittable: true``), or from another ``tensorrt.refit`` step (TensorRT
10.14 and later); the weights from an ONNX model of the same architecture (a new checkpoint
exported by ``onnx.export``). ``trt.OnnxParserRefitter`` reads the weights by initializer name,
``Refitter.refit_cuda_engine`` applies them, and the engine is serialized again with its weights
(a ``strip_weights`` engine gets them back here) and, where TensorRT has it (10.14+),
``SerializationFlag.INCLUDE_REFIT``, so that it stays refittable.

The engine is read the way it was built: TensorRT's own plugins registered, the plugin
libraries the build step's ``info`` records loaded (checked by sha256), host code allowed (a
version-compatible engine embeds the lean runtime). The step writes an ``info`` output of its
own (the build's, plus whether the result is still refittable) for the steps after it.

Then it checks its own work, because a refit is where a silent numerical error would ship
(TensorRT 11.3 lists REFIT engines that lose a GEMM bias as a known issue): the refitted
engine runs on seeded random inputs at each input's opt shape next to the ONNX model it was
refitted from on onnxruntime, at the step's tolerance (``atol``/``rtol``, by default those of
the engine's precision). ``check: auto`` runs it wherever it can (torch with CUDA for the
engine's memory, onnxruntime for the reference) and says why when it cannot; ``required`` fails
the step then; ``off`` skips it.

The step reports the refit time and, when the build step's log is at hand, the build time it
saved. A network whose structure differs from the engine's is refused by TensorRT (missing or
mis-shaped weights), and the step fails naming the weights.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Literal, Optional, Tuple

from pydantic import Field

from buildgraph.backends.tensorrt import env as trt_env
from buildgraph.backends.tensorrt import plugins as trt_plugins
from buildgraph.backends.tensorrt.build import ENGINE_SUFFIXES
from buildgraph.backends.tensorrt.builder import ParserIssue, engine_precision, layer_summary, open_runtime
from buildgraph.backends.tensorrt.trt_logging import capture, errors_in
from buildgraph.backends.tensorrt.build_params import version_problems
from buildgraph.engine.executor import DescribeContext, Description, Executor, Task
from buildgraph.engine.params import StrictParams
from buildgraph.engine.runtime import artifact_info
from buildgraph.errors import RecipeError, StepFailed

ENGINE_KINDS = ("tensorrt.build", "tensorrt.refit")

TOLERANCE: Dict[str, Tuple[Optional[float], Optional[float], float]] = {
    "fp32": (1e-4, 1e-3, 0.9999), "tf32": (1e-2, 1e-2, 0.999), "fp16": (5e-2, 1e-2, 0.999),
    "bf16": (1e-1, 5e-2, 0.995), "int8": (None, None, 0.98), "fp8": (None, None, 0.97)}
"""The refit check's default (atol, rtol, minimum cosine) by the engine's precision: verify's
defaults; int8/fp8 engines are judged by cosine only."""


class TensorRTRefitParams(StrictParams):
    engine: Optional[str] = Field(None, description="upstream step with the engine (default: "
                                  "the tensorrt.build or tensorrt.refit upstream)")
    weights: Optional[str] = Field(None, description="upstream step with the ONNX weights "
                                   "(default: the other upstream)")
    log_level: str = Field("warning", pattern="^(verbose|info|warning|error)$")
    check: Literal["auto", "required", "off"] = Field(
        "auto", description="compare the refitted engine with the ONNX model on onnxruntime: "
                            "auto (where torch with CUDA and onnxruntime are there), required, "
                            "off")
    atol: Optional[float] = Field(None, ge=0, description="the check's absolute tolerance "
                                  "(default: by the engine's precision)")
    rtol: Optional[float] = Field(None, ge=0, description="the check's relative tolerance "
                                  "(default: by the engine's precision)")
    samples: int = Field(2, ge=1, le=64, description="random input sets the check runs")
    seed: int = Field(0, description="seed of the check's inputs")


def pick_upstreams(task: Task, p: TensorRTRefitParams) -> Tuple[Path, Path, Optional[Path]]:
    """(engine, onnx, the build step's log or None) from the step's upstreams."""
    engine_step = p.engine or next((s for s, k in task.upstream_kinds.items()
                                    if k in ENGINE_KINDS), None)
    if engine_step is None or engine_step not in task.upstream:
        raise StepFailed("tensorrt.refit needs an upstream tensorrt.build step (from: [ENGINE, "
                         "ONNX]) or with.engine naming it")
    others = [s for s in task.upstream if s != engine_step]
    weights_step = p.weights or (others[0] if len(others) == 1 else None)
    if weights_step is None or weights_step not in task.upstream:
        raise StepFailed("tensorrt.refit needs exactly one upstream with the new weights (an "
                         "ONNX model), or with.weights naming it")
    outs = task.upstream[engine_step]
    engine = outs.get("model") or next((o for o in outs.values()
                                        if str(o).endswith(ENGINE_SUFFIXES)), None)
    if engine is None:
        raise StepFailed(f"step '{engine_step}' has no engine output")
    w = task.upstream[weights_step]
    onnx = w.get("model") if str(w.get("model", "")).endswith(".onnx") else next(
        (o for o in w.values() if str(o).endswith(".onnx")), None)
    if onnx is None:
        raise StepFailed(f"step '{weights_step}' has no .onnx output")
    return engine, onnx, outs.get("log")


def build_seconds(log: Optional[Path]) -> Optional[float]:
    """The build time a tensorrt.build log recorded (``# build_s: 12.3``)."""
    if log is None:
        return None
    try:
        m = re.search(r"^# build_s: ([\d.]+)$", log.read_text(encoding="utf-8"), re.M)
    except OSError:
        return None
    return float(m.group(1)) if m else None


class TensorRTRefitExecutor(Executor):
    """Put new ONNX weights into a refittable TensorRT engine (Refitter), instead of a build."""

    kind = "tensorrt.refit"
    version = "2"
    Params = TensorRTRefitParams
    outputs = {"model": "model.engine", "info": "engine.json", "log": "refit.log"}
    resources = {"gpu": 1}
    isolation = "worker"

    def describe(self, params: Any, ctx: DescribeContext) -> Description:
        """The GPU, CUDA and TensorRT found now (volatile: the GPU can change between plans).
        What the installed TensorRT lacks is a recipe error: the refit API (10.0), and, for an
        engine from another tensorrt.refit step, the flag that keeps it refittable (10.14)."""
        env = trt_env.probe().fingerprint()
        engine_step = params.engine or next(
            (s for s, k in ctx.upstream_kinds.items() if k in ENGINE_KINDS), None)

        asked = SimpleNamespace(  # what the version table looks at
            refit_chain=ctx.upstream_kinds.get(engine_step or "") == "tensorrt.refit")
        problems = version_problems(asked, env.get("tensorrt"), self.kind)
        if problems:
            raise RecipeError(problems[0][0], hint=problems[0][1] or None)
        return Description(env=env, volatile=True)

    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        assert self.Params is not None
        p: TensorRTRefitParams = self.Params.model_validate(task.params)
        engine_path, onnx_path, build_log = pick_upstreams(task, p)
        engine_step = _engine_step(task, p)
        upstream_info = artifact_info(task.upstream[engine_step])
        if task.upstream_kinds.get(engine_step) == "tensorrt.refit" and \
                upstream_info.get("refittable") is False:
            raise StepFailed(f"step '{engine_step}' refitted its engine with a TensorRT that "
                             "cannot keep it refittable (SerializationFlag.INCLUDE_REFIT comes "
                             "with 10.14): refit the tensorrt.build step's engine instead")
        libs = trt_plugins.from_info(upstream_info, task.recipe_dir)
        trt = trt_env.load_tensorrt()
        sink: List[Tuple[str, str]] = []
        start = time.monotonic()
        try:
            with capture(trt, p.log_level.upper(), sink) as logger:
                engine_bytes, refittable = refit_engine(trt, logger, engine_path.read_bytes(),
                                                        onnx_path, libs, sink)
        finally:
            if "log" in task.outputs:
                task.outputs["log"].write_text("".join(f"[{s}] {m}\n" for s, m in sink),
                                               encoding="utf-8")
        refit_s = time.monotonic() - start
        task.outputs["model"].write_bytes(engine_bytes)
        info = dict(upstream_info)
        info.update({"refittable": refittable, "refitted_with": onnx_path.name})
        if "info" in task.outputs:
            task.outputs["info"].write_text(json.dumps(info, indent=1, sort_keys=True) + "\n",
                                            encoding="utf-8")
        if not refittable:
            task.log("note: the refitted engine is not refittable again (this TensorRT has no "
                     "SerializationFlag.INCLUDE_REFIT)")
        meta: Dict[str, Any] = {"refit_s": round(refit_s, 3), "engine_bytes": len(engine_bytes),
                                "refittable": refittable}
        built = build_seconds(build_log)
        if built is not None:
            meta["build_s"] = built
            meta["saved_s"] = round(built - refit_s, 3)
            task.log(f"refit in {refit_s:.1f} s instead of a {built:.1f} s build")
        meta["check"] = self.check(task, p, task.outputs["model"], onnx_path, info,
                                   task.upstream[engine_step].get("layers"))
        return meta

    def check(self, task: Task, p: TensorRTRefitParams, engine: Path, onnx_path: Path,
              info: Dict[str, Any], layers: Optional[Path]) -> Dict[str, Any]:
        """The refitted engine against ``onnx_path`` on onnxruntime (see the module's doc)."""
        if p.check == "off":
            return {"ran": False, "why": "check: off"}
        precision = _precision(layers)
        atol, rtol, min_cos = TOLERANCE.get(precision, TOLERANCE["fp32"])
        atol = p.atol if p.atol is not None else atol
        rtol = p.rtol if p.rtol is not None else rtol
        try:
            result = compare_with_onnx(engine, onnx_path, info, task.recipe_dir, p.samples,
                                       p.seed, atol, rtol, min_cos)
        except CheckUnavailable as exc:
            if p.check == "required":
                raise StepFailed(f"refit check: cannot run it ({exc}); check: required") \
                    from None
            task.log(f"warning: refit check not run: {exc}")
            return {"ran": False, "why": str(exc)}
        summary = {"ran": True, "precision": precision, "atol": atol, "rtol": rtol,
                   "min_cosine": min_cos, **result}
        task.log(f"refit check: {result['worst']}")
        if not result["passed"]:
            raise StepFailed(
                f"refit check: the refitted engine does not match {onnx_path.name} on "
                f"onnxruntime: {result['worst']} — a refit that lost weights? (TensorRT 11.3 "
                "lists REFIT engines that drop a GEMM bias as a known issue)")
        return summary


class CheckUnavailable(Exception):
    """The refit check cannot run here (no CUDA through torch, no onnxruntime)."""


def _engine_step(task: Task, p: TensorRTRefitParams) -> str:
    return p.engine or next(s for s, k in task.upstream_kinds.items() if k in ENGINE_KINDS)


def _precision(layers: Optional[Path]) -> str:
    try:
        return engine_precision(layer_summary(Path(layers).read_text(encoding="utf-8"))) \
            if layers else "tf32"
    except OSError:
        return "tf32"


def compare_with_onnx(engine: Path, onnx_path: Path, info: Dict[str, Any],
                      recipe_dir: Optional[Path], samples: int, seed: int,
                      atol: Optional[float], rtol: Optional[float], min_cosine: float
                      ) -> Dict[str, Any]:
    """Run ``engine`` (the TensorRT runtime) and ``onnx_path`` (onnxruntime, CPU) on the same
    seeded inputs at each input's opt shape; whether every output is within tolerance, and the
    worst difference found."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as exc:
        raise CheckUnavailable(f"onnxruntime is not installed ({exc})") from None
    from buildgraph.backends.tensorrt.runtime import NoDeviceMemory, TensorRTRuntime
    from buildgraph.engine.runtime import RuntimeContext

    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - e.g. plugin ops onnxruntime does not have
        raise CheckUnavailable(f"onnxruntime cannot load {onnx_path.name}: "
                               f"{str(exc).splitlines()[0][:200]}") from None
    try:
        rt = TensorRTRuntime.load(engine, RuntimeContext(kind="tensorrt.refit", meta=info,
                                                          recipe_dir=recipe_dir))
    except NoDeviceMemory as exc:
        raise CheckUnavailable(exc.message) from None
    rng = np.random.default_rng(seed)
    rows: List[Tuple[bool, str, float, float]] = []  # (within tolerance, output, max |diff|, cos)
    try:
        for _ in range(samples):
            arrays = []
            for name in rt.inputs:
                _, opt, _ = rt.shape_range(name)
                np_dtype, _ = rt.tensor_dtype(name)
                if np.dtype(np_dtype).kind == "f":
                    arrays.append(rng.standard_normal(opt).astype(np_dtype))
                else:
                    arrays.append(rng.integers(0, 2, size=opt).astype(np_dtype))
            got = rt.run(arrays)
            want = session.run(None, dict(zip(rt.inputs, arrays)))
            for name, a, b in zip(rt.outputs, got, want):
                a = np.asarray(a, dtype=np.float64)
                b = np.asarray(b, dtype=np.float64)
                diff = float(np.abs(a - b).max()) if a.size else 0.0
                denom = float(np.linalg.norm(a) * np.linalg.norm(b))
                cosine = float(a.ravel() @ b.ravel()) / denom if denom else 1.0
                close = atol is None or rtol is None or bool(np.allclose(a, b, atol=atol,
                                                                         rtol=rtol))
                rows.append((close and cosine >= min_cosine, name, diff, cosine))
    finally:
        rt.close()
    passed = all(r[0] for r in rows)
    _, out, diff, cos = next((r for r in rows if not r[0]), None) or \
        max(rows, key=lambda r: r[2], default=(True, "", 0.0, 1.0))
    worst = {"output": out, "max_abs": diff, "cosine": cos}
    text = (f"output '{worst['output']}' differs by up to {worst['max_abs']:.3g} (cosine "
            f"{worst['cosine']:.6f}; atol {atol}, rtol {rtol}, min cosine {min_cosine})")
    return {"passed": passed, "samples": samples, "worst": text,
            "max_abs": worst["max_abs"], "cosine": worst["cosine"]}


def refit_failure(issues: List[ParserIssue], onnx_name: str, shown: int = 3) -> str:
    """One line for weights the refitter refused (its errors name weights, not nodes)."""
    head = f"refit: TensorRT could not read the weights of {onnx_name} (is it the engine's " \
           "architecture?)"
    if not issues:
        return head
    body = "; ".join((f"{i.name}: " if i.name and i.name not in i.desc else "") + i.desc
                     for i in issues[:shown])
    more = f"; and {len(issues) - shown} more" if len(issues) > shown else ""
    return f"{head}: {body}{more}"


def refit_engine(trt: Any, logger: Any, engine_bytes: bytes, onnx_path: Path,
                 libs: List[trt_plugins.PluginLibrary], sink: List[Tuple[str, str]]
                 ) -> Tuple[bytes, bool]:
    """Refit a serialized engine with the weights of ``onnx_path``: the new serialized engine,
    and whether it is still refittable (``SerializationFlag.INCLUDE_REFIT``, 10.14+)."""
    # the engine is an upstream tensorrt.build's: a version-compatible one embeds the lean
    # runtime, which TensorRT runs only when host code is allowed
    runtime = open_runtime(trt, logger, libs, True, sink)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        errors = errors_in(sink)
        raise StepFailed("TensorRT could not deserialize the engine (built by another "
                         "TensorRT version or GPU?)" + (f": {errors[-1][:300]}" if errors
                                                        else ""))
    if not engine.refittable:
        raise StepFailed("the engine is not refittable: build it with refit: true (or "
                         "refittable: true)")
    refitter = trt.Refitter(engine, logger)
    parser_refitter = trt.OnnxParserRefitter(refitter, logger)
    if not parser_refitter.refit_from_file(str(onnx_path)):
        issues = []
        for i in range(parser_refitter.num_errors):
            err = parser_refitter.get_error(i)
            issues.append(ParserIssue(int(err.node()), str(err.node_name()),
                                      str(err.node_operator()), str(err.desc())))
        raise StepFailed(refit_failure(issues, onnx_path.name))
    if not refitter.refit_cuda_engine():
        missing = list(refitter.get_missing_weights())
        raise StepFailed("refit failed: the engine still lacks weights "
                         + ", ".join(map(str, missing[:5]))
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    config = engine.create_serialization_config()
    config.clear_flag(trt.SerializationFlag.EXCLUDE_WEIGHTS)
    include_refit = getattr(trt.SerializationFlag, "INCLUDE_REFIT", None)
    if include_refit is not None:  # "remain refittable if originally so" (10.14+)
        config.set_flag(include_refit)
    return bytes(engine.serialize_with_config(config)), include_refit is not None
