"""Reduced precision the TensorRT 11 way: transform the ONNX graph, then build strongly typed.

* ``onnx.autocast``: fp16 or bf16 with NVIDIA ModelOpt's AutoCast
  (``modelopt.onnx.autocast.convert_to_mixed_precision``). Nodes whose inputs or outputs exceed
  ``data_max`` on reference data, or whose initializers exceed ``init_max``, and the op types
  and nodes named in ``op_types_to_exclude``/``nodes_to_exclude``, stay in fp32; Cast nodes
  join the two. ``keep_io_types`` (default) keeps the model's inputs and outputs fp32.
* ``onnx.quantize``: explicit Q/DQ int8 (or fp8) with ModelOpt's ONNX quantization
  (``modelopt.onnx.quantization.quantize``), calibrated on data given as files: ``.npz`` (one
  array per input name) or ``.npy`` (a single-input model), first axis = samples.

Both run on the CPU (onnxruntime's CPU provider calibrates and checks), and both compare their
result with the fp32 input model on onnxruntime: the metadata reports the largest absolute and
relative errors and, for 2-D outputs (class scores), top-1 agreement; ``max_error`` /
``min_top1`` turn those into failures. TensorRT (any version) builds the result strongly
typed; ModelOpt is needed only here (``pip install 'buildgraph[precision]'``: nvidia-modelopt
with its ONNX dependencies, not its ``[onnx]`` extra, which pulls onnxruntime-gpu and cupy).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence

from pydantic import Field

from buildgraph.errors import RecipeError, StepFailed, did_you_mean
from buildgraph.engine.environment import package_versions
from buildgraph.backends.onnx.source import onnx_input
from buildgraph.engine.executor import DescribeContext, Description, Executor, Task
from buildgraph.engine.params import StrictParams

MODELOPT_DISTS = ("nvidia-modelopt", "onnx", "onnxruntime", "onnx-graphsurgeon", "numpy")


class _Params(StrictParams):
    model: Optional[str] = Field(None, description="an ONNX model of the recipe's 'models:' "
                                 "(default: the upstream step's ONNX output)")
    check_samples: int = Field(8, ge=0, description="inputs compared with the fp32 model on "
                               "onnxruntime (0: no check)")
    max_error: Optional[float] = Field(None, gt=0, description="fail when the largest "
                                       "absolute output error exceeds this")
    min_top1: Optional[float] = Field(None, ge=0, le=1, description="fail when top-1 "
                                      "agreement (2-D outputs) is below this")
    opset: Optional[int] = Field(None, ge=13, description="target opset (default: ModelOpt's "
                                 "minimum for the precision)")
    op_types_to_exclude: List[str] = Field(default_factory=list,
                                           description="op types kept in higher precision")
    nodes_to_exclude: List[str] = Field(default_factory=list,
                                        description="node-name regexes kept in higher precision")


class AutocastParams(_Params):
    precision: Literal["fp16", "bf16"] = Field("fp16", description="low precision type")
    keep_io_types: bool = Field(True, description="keep graph inputs/outputs in fp32")
    data_max: float = Field(512.0, gt=0, description="nodes with larger activations stay fp32")
    init_max: float = Field(65504.0, gt=0, description="nodes with larger initializers stay "
                            "fp32")
    calibration: Optional[str] = Field(None, description=".npz of reference inputs for the "
                                       "data_max check (default: random inputs)")


class QuantizeParams(_Params):
    precision: Literal["int8", "fp8"] = Field("int8", description="quantized type")
    calibration: str = Field(description=".npz (one array per input) or .npy (single input) "
                                         "of calibration samples, relative to the recipe, or "
                                         "${in.STEP.OUTPUT}")
    calibration_method: Literal["max", "entropy"] = Field(
        "max", description="max: largest magnitude; entropy: KL-divergence histogram")
    high_precision_dtype: Literal["fp32", "fp16", "bf16"] = Field(
        "fp16", description="precision of what is not quantized")
    op_types_to_quantize: Optional[List[str]] = Field(None, description="default: every op "
                                                      "type ModelOpt quantizes")


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------

def load_samples(path: Path, input_names: Sequence[str]) -> Dict[str, Any]:
    """Calibration/reference inputs from ``.npz`` (by input name) or ``.npy`` (one input)."""
    import numpy as np

    if path.suffix == ".npy":
        if len(input_names) != 1:
            raise StepFailed(f"{path.name} is a single array but the model has "
                             f"{len(input_names)} inputs ({', '.join(input_names)}): give an "
                             ".npz with one array per input name")
        return {input_names[0]: np.load(path)}
    if path.suffix != ".npz":
        raise StepFailed(f"calibration data must be .npz or .npy; got {path.name}")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    missing = [n for n in input_names if n not in arrays]
    if missing:
        raise StepFailed(f"{path.name} has no array for input '{missing[0]}'"
                         f"{did_you_mean(missing[0], list(arrays))} (arrays: "
                         + ", ".join(arrays) + ")")
    extra = [k for k in arrays if k not in input_names]
    if extra:
        raise StepFailed(f"{path.name} has arrays for no model input: {', '.join(extra)}"
                         f"{did_you_mean(extra[0], list(input_names))}")
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1:
        raise StepFailed(f"{path.name}: the arrays have different sample counts "
                         f"({sorted(counts)})")
    return arrays


def random_samples(model_path: Path, count: int, seed: int = 0) -> Dict[str, Any]:
    """Standard-normal inputs (ints: 0..9); dynamic dims become 1."""
    import numpy as np

    from buildgraph.backends.onnx.graph import onnx_inputs

    rng = np.random.default_rng(seed)
    out = {}
    for spec in onnx_inputs(model_path).values():
        shape = [count] + [d if isinstance(d, int) and d > 0 else 1 for d in spec.dims[1:]]
        if spec.dtype.startswith(("int", "uint")):
            out[spec.name] = rng.integers(0, 10, size=shape).astype(spec.dtype)
        elif spec.dtype == "bool":
            out[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return out


def compare(reference: Path, candidate: Path, samples: Mapping[str, Any], count: int,
            threads: int = 1) -> Dict[str, Any]:
    """Run both models on onnxruntime's CPU provider, one sample at a time; errors and top-1
    agreement of the candidate against the reference."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.log_severity_level = 3
    ref = ort.InferenceSession(str(reference), opts, providers=["CPUExecutionProvider"])
    if has_float8(candidate):
        # onnxruntime 1.32's extended CPU fusions compute float8 Q/DQ models wrongly (top-1
        # 62% vs 100% with basic optimizations on the test model): check with basic ones
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    cand = ort.InferenceSession(str(candidate), opts, providers=["CPUExecutionProvider"])
    n = min(count, min(len(v) for v in samples.values())) if samples else 0
    max_abs = 0.0
    max_rel = 0.0
    agree = total = 0
    cand_types = {i.name: i.type for i in cand.get_inputs()}
    for i in range(n):
        feed = {k: v[i:i + 1] for k, v in samples.items()}
        cfeed = {k: (v.astype(np.float16) if cand_types.get(k) == "tensor(float16)" else v)
                 for k, v in feed.items()}
        outs_r = ref.run(None, feed)
        outs_c = cand.run(None, cfeed)
        for r, c in zip(outs_r, outs_c):
            r = np.asarray(r, dtype=np.float64)
            c = np.asarray(c, dtype=np.float64)
            diff = np.abs(r - c)
            max_abs = max(max_abs, float(diff.max()) if diff.size else 0.0)
            scale = float(np.abs(r).max()) if r.size else 0.0
            if scale > 0:
                max_rel = max(max_rel, float(diff.max()) / scale)
            if r.ndim == 2 and r.shape[1] > 1:
                agree += int((r.argmax(1) == c.argmax(1)).sum())
                total += r.shape[0]
    result: Dict[str, Any] = {"samples": n, "max_abs_error": max_abs,
                              "max_rel_error": max_rel}
    if total:
        result["top1_agreement"] = agree / total
    return result


FLOAT8_TYPES = {17, 18, 19, 20}
"""onnx.TensorProto FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2, FLOAT8E5M2FNUZ."""


def has_float8(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(i.data_type in FLOAT8_TYPES for i in model.graph.initializer)


def op_counts(path: Path) -> Dict[str, Any]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops: Dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    types: Dict[str, int] = {}
    for init in model.graph.initializer:
        name = onnx.TensorProto.DataType.Name(init.data_type).lower()
        types[name] = types.get(name, 0) + 1
    return {"nodes": len(model.graph.node), "qdq_nodes": ops.get("QuantizeLinear", 0)
            + ops.get("DequantizeLinear", 0), "casts": ops.get("Cast", 0),
            "initializer_types": dict(sorted(types.items())),
            "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          None)}


def _copy_model(src: Path, work: Path) -> Path:
    """Copy the model (and an external-data file beside it) into the scratch directory:
    ModelOpt writes intermediate files next to its input."""
    dest = work / "input.onnx"
    shutil.copyfile(src, dest)
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                data = src.parent / entry.value
                if data.exists() and not (work / entry.value).exists():
                    shutil.copyfile(data, work / entry.value)
    return dest


def _modelopt(what: str) -> None:
    try:
        import modelopt.onnx  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - missing package or missing dependency
        raise StepFailed(f"{what} needs NVIDIA ModelOpt's ONNX tools, which are not "
                         f"installed or fail to import here ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); pip install "
                         "'buildgraph[precision]'") from None


def _quiet_modelopt() -> None:
    for name in ("modelopt", "modelopt.onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)


class _PrecisionExecutor(Executor):
    outputs = {"model": "model.onnx"}
    isolation = "worker"
    what = ""

    def describe(self, params: Any, ctx: DescribeContext) -> Description:
        """ModelOpt's and its helpers' versions, and the calibration data file; with
        ``model:``, the ONNX file and its external data."""
        files = self._calibration_input(params, ctx)
        if params.model:
            from buildgraph.backends.onnx.source import describe_onnx_input

            model_files, _ = describe_onnx_input(params.model, ctx.models, ctx.recipe_dir,
                                                 self.kind)
            files.update(model_files)
        return Description(inputs=files,
                           env=package_versions(*MODELOPT_DISTS, missing="(none)"))

    @staticmethod
    def _calibration_input(params: Any, ctx: DescribeContext) -> Dict[str, Path]:
        calib = getattr(params, "calibration", None)
        if not calib or "${" in calib:
            return {}
        path = ctx.recipe_dir / calib
        if not path.is_file():
            raise RecipeError(f"calibration: file '{calib}' does not exist (looked in "
                              f"{ctx.recipe_dir})", hint="give an .npz (one array per input "
                                                         "name) or an .npy (single input)")
        if path.suffix not in (".npz", ".npy"):
            raise RecipeError(f"calibration: '{calib}' must be an .npz or .npy file")
        return {"calibration": path}

    def _calibration_path(self, task: Task, calib: Optional[str]) -> Optional[Path]:
        if not calib:
            return None
        if "calibration" in task.inputs:
            return task.inputs["calibration"]
        return Path(calib)

    def _check(self, task: Task, p: Any, source: Path, dest: Path,
               samples: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        if p.check_samples == 0:
            return {}
        if samples is None:
            samples = random_samples(source, p.check_samples)
        result = compare(source, dest, samples, p.check_samples, task.threads)
        line = (f"{self.what} vs fp32 on onnxruntime ({result['samples']} samples): max abs "
                f"error {result['max_abs_error']:.3g}, max rel {result['max_rel_error']:.3g}"
                + (f", top-1 agreement {result['top1_agreement']:.1%}"
                   if "top1_agreement" in result else ""))
        task.log(line)
        if p.max_error is not None and result["max_abs_error"] > p.max_error:
            raise StepFailed(f"{line}: above max_error {p.max_error:g}")
        if p.min_top1 is not None and result.get("top1_agreement", 1.0) < p.min_top1:
            raise StepFailed(f"{line}: below min_top1 {p.min_top1:g}")
        return {"check": result}


class AutocastExecutor(_PrecisionExecutor):
    """fp16/bf16 ONNX with ModelOpt AutoCast (sensitive ops stay fp32)."""

    kind = "onnx.autocast"
    version = "1"
    Params = AutocastParams
    what = "autocast"

    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        import onnx

        assert self.Params is not None
        p: AutocastParams = self.Params.model_validate(task.params)
        source = onnx_input(task, "onnx.autocast", p.model)
        _modelopt("onnx.autocast")
        from buildgraph.backends.onnx.graph import onnx_inputs

        work = _copy_model(source, task.work_dir)
        names = list(onnx_inputs(source))
        calib_path = self._calibration_path(task, p.calibration)
        samples = load_samples(calib_path, names) if calib_path else None
        ref_file = None
        if calib_path is not None:
            ref_file = task.work_dir / "reference.npz"
            import numpy as np

            np.savez(ref_file, **{k: v[:1] for k, v in samples.items()})  # type: ignore[union-attr]
        _quiet_modelopt()
        from modelopt.onnx.autocast import convert_to_mixed_precision

        start = time.monotonic()
        try:
            converted = convert_to_mixed_precision(
                str(work), low_precision_type=p.precision,
                op_types_to_exclude=list(p.op_types_to_exclude) or None,
                nodes_to_exclude=list(p.nodes_to_exclude) or None,
                data_max=p.data_max, init_max=p.init_max, keep_io_types=p.keep_io_types,
                calibration_data=str(ref_file) if ref_file else None, providers=["cpu"],
                opset=p.opset)
        except Exception as exc:  # noqa: BLE001
            _log_traceback(task)
            raise StepFailed(f"ModelOpt AutoCast failed: {type(exc).__name__}: "
                             f"{_first_line(exc)}") from None
        seconds = time.monotonic() - start
        dest = task.outputs["model"]
        onnx.save(converted, str(dest))
        task.log(f"autocast {p.precision} in {seconds:.1f} s")
        meta: Dict[str, Any] = {"precision": p.precision, "seconds": round(seconds, 3),
                                **op_counts(dest)}
        meta.update(self._check(task, p, source, dest, samples))
        return meta


class QuantizeExecutor(_PrecisionExecutor):
    """Explicit Q/DQ int8/fp8 ONNX with ModelOpt, calibrated on files."""

    kind = "onnx.quantize"
    version = "1"
    Params = QuantizeParams
    what = "quantize"

    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        assert self.Params is not None
        p: QuantizeParams = self.Params.model_validate(task.params)
        source = onnx_input(task, "onnx.quantize", p.model)
        _modelopt("onnx.quantize")
        from buildgraph.backends.onnx.graph import onnx_inputs

        calib_path = self._calibration_path(task, p.calibration)
        assert calib_path is not None
        if not calib_path.exists():
            raise StepFailed(f"calibration data {calib_path} does not exist")
        samples = load_samples(calib_path, list(onnx_inputs(source)))
        work = _copy_model(source, task.work_dir)
        dest = task.outputs["model"]
        _quiet_modelopt()
        from modelopt.onnx.quantization import quantize

        start = time.monotonic()
        try:
            quantize(str(work), quantize_mode=p.precision, calibration_data=dict(samples),
                     calibration_method=p.calibration_method, calibration_eps=["cpu"],
                     op_types_to_quantize=p.op_types_to_quantize,
                     op_types_to_exclude=list(p.op_types_to_exclude) or None,
                     nodes_to_exclude=list(p.nodes_to_exclude) or None,
                     high_precision_dtype=p.high_precision_dtype, output_path=str(dest),
                     log_level="ERROR", opset=p.opset)
        except Exception as exc:  # noqa: BLE001
            _log_traceback(task)
            raise StepFailed(f"ModelOpt quantization ({p.precision}) failed: "
                             f"{type(exc).__name__}: {_first_line(exc)}") from None
        seconds = time.monotonic() - start
        if not dest.exists():
            raise StepFailed("ModelOpt quantization wrote no model")
        counts = op_counts(dest)
        if counts["qdq_nodes"] == 0:
            task.log("warning: no node was quantized (ModelOpt found no op it quantizes here)")
        task.log(f"quantize {p.precision} ({p.calibration_method}, "
                 f"{len(next(iter(samples.values())))} samples) in {seconds:.1f} s")
        meta: Dict[str, Any] = {"precision": p.precision, "method": p.calibration_method,
                                "calibration_samples": len(next(iter(samples.values()))),
                                "seconds": round(seconds, 3), **counts}
        meta.update(self._check(task, p, source, dest, samples))
        return meta


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _log_traceback(task: Task) -> None:
    import traceback

    task.log(traceback.format_exc())
