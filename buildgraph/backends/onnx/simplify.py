"""``onnx.simplify``: simplify an ONNX model (an upstream step's, or the recipe's ONNX model
with ``model:``) with onnxsim (constant folding, shape
inference, the onnx-optimizer's fusions and eliminations), and report the node counts before
and after.

``check_n`` random-input comparisons of the original and the simplified model run inside
onnxsim (a failed check fails the step). ``backend: onnxslim`` uses onnxslim instead, when it
is installed; it is never substituted silently for a missing onnxsim.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Dict, List, Literal, Optional

from pydantic import Field

from buildgraph.errors import StepFailed
from buildgraph.backends.onnx.graph import check_onnx, graph_summary, save_onnx
from buildgraph.backends.onnx.source import describe_onnx_input, onnx_input
from buildgraph.engine.params import StrictParams
from buildgraph.engine.environment import package_versions
from buildgraph.engine.executor import (DescribeContext, Description, Executor, Timed, artifact_of,
                                       out_path, single_upstream)


class OnnxSimplifyParams(StrictParams):
    model: Optional[str] = Field(None, description="an ONNX model of the recipe's 'models:' "
                                 "(default: the upstream step's ONNX output)")
    backend: Literal["onnxsim", "onnxslim"] = Field("onnxsim", description="the simplifier")
    check_n: int = Field(1, ge=0, description="onnxsim: random-input checks of the result")
    check_rtol: float = Field(1e-4, ge=0, description="onnxsim: tolerance of those checks")
    check_atol: float = Field(1e-5, ge=0)
    skipped_optimizers: List[str] = Field(default_factory=list,
                                          description="onnxsim: optimizer passes not to run, "
                                                      "e.g. [fuse_bn_into_conv]")
    perform_optimization: bool = Field(True, description="onnxsim: run the onnx optimizer")
    skip_fuse_bn: bool = False
    skip_constant_folding: bool = False
    skip_shape_inference: bool = False
    overwrite_input_shapes: Optional[Dict[str, List[int]]] = Field(
        None, description="onnxsim: make these inputs static with these shapes")
    test_input_shapes: Optional[Dict[str, List[int]]] = Field(
        None, description="onnxsim: shapes of the check inputs (default: dynamic dims = 1)")
    check: bool = Field(True, description="onnx.checker and shape inference on the result")


class OnnxSimplifyExecutor(Timed, Executor):
    """onnxsim (or onnxslim) on an ONNX model (upstream, or model:); node counts before/after."""

    kind = "onnx.simplify"
    version = "1"
    Params = OnnxSimplifyParams
    outputs = {"model": "model.onnx"}
    isolation = "worker"

    def describe(self, params: OnnxSimplifyParams, ctx: DescribeContext) -> Description:
        """The simplifier's versions; with ``model:``, the ONNX file and its external data."""
        files = {}
        if params.model:
            files, _ = describe_onnx_input(params.model, ctx.models, ctx.recipe_dir,
                                           self.kind)
        return Description(inputs=files,
                           env=package_versions("onnx", params.backend, "onnxruntime"))

    def run(self, task: Any) -> Optional[Dict[str, Any]]:
        start = time.perf_counter()
        import onnx

        self.seconds["import"] = round(time.perf_counter() - start, 4)
        assert self.Params is not None
        p: OnnxSimplifyParams = self.Params.model_validate(task.params)
        if p.model:
            source = onnx_input(task, self.kind, p.model)
        else:
            up = single_upstream(task, "onnx.simplify")
            source = artifact_of(task, up)
            if source.suffix != ".onnx":
                raise StepFailed(f"step '{up}' produced {source.name}, not an .onnx model")
        with self.timed("summary"):
            before = onnx.load(str(source), load_external_data=False)
        with self.timed("simplify"):
            if p.backend == "onnxsim":
                simplified = self._onnxsim(task, p, source)
            else:
                simplified = self._onnxslim(task, source)
        dest = out_path(task)
        with self.timed("save"):
            save_onnx(simplified, dest, task.outputs.get("data"))
        if p.check:
            with self.timed("check"):
                check_onnx(dest, task.log)
        with self.timed("summary"):
            after = graph_summary(onnx.load(str(dest), load_external_data=False))
        ops_before = Counter(n.op_type for n in before.graph.node)
        ops_after = Counter(after["ops"])
        changed = {op: ops_after.get(op, 0) - ops_before.get(op, 0)
                   for op in sorted(set(ops_before) | set(ops_after))
                   if ops_after.get(op, 0) != ops_before.get(op, 0)}
        task.log(f"nodes: {len(before.graph.node)} -> {after['nodes']}")
        return {"backend": p.backend, "nodes_before": len(before.graph.node),
                "nodes_after": after["nodes"], "ops_changed": changed,
                "check_n": p.check_n if p.backend == "onnxsim" else 0,
                "opset": after["opset"], "inputs": after["inputs"], "outputs": after["outputs"],
                "bytes": dest.stat().st_size, "seconds": self.seconds}

    @staticmethod
    def _onnxsim(task: Any, p: OnnxSimplifyParams, source: Any) -> Any:
        try:
            import onnxsim
        except Exception as exc:  # noqa: BLE001 - missing or broken native wheel
            raise StepFailed("onnx.simplify needs the 'onnxsim' package, which is not "
                             f"installed or fails to import here ({type(exc).__name__}: {exc}); "
                             "pip install onnxsim, or set backend: onnxslim") from None
        kwargs: Dict[str, Any] = dict(
            check_n=p.check_n, perform_optimization=p.perform_optimization,
            skip_fuse_bn=p.skip_fuse_bn, skipped_optimizers=p.skipped_optimizers or None,
            skip_constant_folding=p.skip_constant_folding,
            skip_shape_inference=p.skip_shape_inference,
            overwrite_input_shapes=p.overwrite_input_shapes,
            test_input_shapes=p.test_input_shapes)
        import inspect

        accepted = inspect.signature(onnxsim.simplify).parameters
        for name, value in (("check_rtol", p.check_rtol), ("check_atol", p.check_atol),
                            ("certify", False)):
            if name in accepted:  # newer onnxsim releases only
                kwargs[name] = value
        try:
            model, ok = onnxsim.simplify(str(source), **kwargs)
        except Exception as exc:  # noqa: BLE001
            task.log(f"{type(exc).__name__}: {exc}")
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise StepFailed(f"onnxsim failed: {type(exc).__name__}: {first[:300]}") from None
        if not ok:
            raise StepFailed(f"onnxsim's check failed: the simplified model differs from the "
                             f"original on random inputs (check_n {p.check_n}, rtol "
                             f"{p.check_rtol:g}, atol {p.check_atol:g})")
        return model

    @staticmethod
    def _onnxslim(task: Any, source: Any) -> Any:
        try:
            import onnxslim  # type: ignore[import-not-found]
        except Exception as exc:  # noqa: BLE001
            raise StepFailed("backend: onnxslim needs the 'onnxslim' package, which is not "
                             f"installed or fails to import here ({type(exc).__name__}: {exc}); "
                             "pip install onnxslim") from None
        try:
            return onnxslim.slim(str(source))
        except Exception as exc:  # noqa: BLE001
            raise StepFailed(f"onnxslim failed: {type(exc).__name__}: {exc}") from None
