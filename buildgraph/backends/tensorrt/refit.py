"""``tensorrt.refit``: put new weights into a refittable engine with TensorRT's Refitter,
instead of building again.

``from: [ENGINE_STEP, ONNX_STEP]``: the engine comes from a ``tensorrt.build`` step with
``refit: true`` (or ``refittable: true``); the weights from an ONNX model of the same
architecture (a new checkpoint exported by ``onnx.export``). ``trt.OnnxParserRefitter`` reads
the weights by initializer name, ``Refitter.refit_cuda_engine`` applies them, and the engine is
serialized again with its weights (a ``strip_weights`` engine gets them back here).

The step reports the refit time and, when the build step's log is at hand, the build time it
saved. A network whose structure differs from the engine's is refused by TensorRT (missing or
mis-shaped weights), and the step fails naming the weights.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from pydantic import Field

from buildgraph.backends.tensorrt import env as trt_env
from buildgraph.errors import StepFailed
from buildgraph.engine.executor import DescribeContext, Description, Executor, Task
from buildgraph.backends.tensorrt.build import ENGINE_SUFFIXES
from buildgraph.backends.tensorrt.builder import ParserIssue, make_logger
from buildgraph.engine.params import StrictParams


class TensorRTRefitParams(StrictParams):
    engine: Optional[str] = Field(None, description="upstream step with the engine (default: "
                                  "the tensorrt.build upstream)")
    weights: Optional[str] = Field(None, description="upstream step with the ONNX weights "
                                   "(default: the other upstream)")
    log_level: str = Field("warning", pattern="^(verbose|info|warning|error)$")


def pick_upstreams(task: Task, p: TensorRTRefitParams) -> Tuple[Path, Path, Optional[Path]]:
    """(engine, onnx, the build step's log or None) from the step's upstreams."""
    engine_step = p.engine or next((s for s, k in task.upstream_kinds.items()
                                    if k in ("tensorrt.build", "tensorrt.refit")), None)
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
    version = "1"
    Params = TensorRTRefitParams
    outputs = {"model": "model.engine", "log": "refit.log"}
    resources = {"gpu": 1}
    isolation = "worker"

    def describe(self, params: Any, ctx: DescribeContext) -> Description:
        """The GPU, CUDA and TensorRT found now (volatile: the GPU can change between plans)."""
        return Description(env=trt_env.probe().fingerprint(), volatile=True)

    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        assert self.Params is not None
        p = self.Params.model_validate(task.params)
        engine_path, onnx_path, build_log = pick_upstreams(task, p)
        trt = trt_env.load_tensorrt()
        sink: List[Tuple[str, str]] = []
        logger = make_logger(trt, p.log_level.upper(), sink)
        start = time.monotonic()
        try:
            engine_bytes = refit_engine(trt, logger, engine_path.read_bytes(), onnx_path)
        finally:
            if "log" in task.outputs:
                task.outputs["log"].write_text("".join(f"[{s}] {m}\n" for s, m in sink),
                                               encoding="utf-8")
        refit_s = time.monotonic() - start
        task.outputs["model"].write_bytes(engine_bytes)
        meta: Dict[str, Any] = {"refit_s": round(refit_s, 3), "engine_bytes": len(engine_bytes)}
        built = build_seconds(build_log)
        if built is not None:
            meta["build_s"] = built
            meta["saved_s"] = round(built - refit_s, 3)
            task.log(f"refit in {refit_s:.1f} s instead of a {built:.1f} s build")
        return meta


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


def refit_engine(trt: Any, logger: Any, engine_bytes: bytes, onnx_path: Path) -> bytes:
    """Refit a serialized engine with the weights of ``onnx_path``; the new serialized engine."""
    runtime = trt.Runtime(logger)
    # the engine is an upstream tensorrt.build's: a version-compatible one embeds the lean
    # runtime, which TensorRT runs only when host code is allowed
    runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise StepFailed("TensorRT could not deserialize the engine (built by another "
                         "TensorRT version or GPU?)")
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
    if hasattr(engine, "create_serialization_config"):
        config = engine.create_serialization_config()
        config.clear_flag(trt.SerializationFlag.EXCLUDE_WEIGHTS)
        return bytes(engine.serialize_with_config(config))
    return bytes(engine.serialize())
