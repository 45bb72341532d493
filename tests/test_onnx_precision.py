"""``onnx.autocast`` and ``onnx.quantize`` for real: NVIDIA ModelOpt on the CPU, and the
results checked here with onnxruntime against the fp32 model (errors, top-1 agreement) on
inputs the steps never saw. A small CNN keeps this to seconds."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import onnx
import pytest

pytest.importorskip("modelopt.onnx.quantization", reason="needs nvidia-modelopt (the "
                    "precision extra)")
ort = pytest.importorskip("onnxruntime")

from buildgraph.errors import RecipeError, StepFailed  # noqa: E402
from buildgraph.engine.executor import DescribeContext, Task  # noqa: E402
from buildgraph.backends.onnx.precision import AutocastExecutor, QuantizeExecutor, load_samples
from trt_fake import make_test_onnx  # noqa: E402

SAMPLES = 32


@pytest.fixture(scope="module")
def fp32(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fp32") / "model.onnx"
    make_test_onnx(path, channels=(32, 64), size=16, seed=3)
    return path


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    rng = np.random.default_rng(11)
    np.savez(path, x=rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def holdout() -> np.ndarray:
    return np.random.default_rng(99).standard_normal((SAMPLES, 3, 16, 16)).astype(np.float32)


def task_for(executor: Any, tmp_path: Path, source: Path, params: Dict[str, Any],
             inputs: Optional[Dict[str, Path]] = None, name: str = "t") -> Task:
    root = tmp_path / name
    (root / "out").mkdir(parents=True)
    (root / "work").mkdir()
    validated = executor.Params.model_validate(params).model_dump(mode="json")
    return Task(step_id=name, kind=executor.kind, params=validated, inputs=inputs or {},
                upstream={"up": {"model": source}}, outputs={"model": root / "out" /
                                                             "model.onnx"},
                work_dir=root / "work", recipe_dir=tmp_path, log_path=root / "log.txt",
                upstream_kinds={"up": "onnx.export"})


def run_ort(path: Path, x: np.ndarray, basic: bool = False) -> np.ndarray:
    opts = ort.SessionOptions()
    if basic:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = x.astype(np.float16) if session.get_inputs()[0].type == "tensor(float16)" else x
    return session.run(None, {"x": feed})[0].astype(np.float64)


def errors(ref: np.ndarray, got: np.ndarray) -> Dict[str, float]:
    return {"max_abs": float(np.abs(ref - got).max()),
            "max_rel": float(np.abs(ref - got).max() / np.abs(ref).max()),
            "top1": float((ref.argmax(1) == got.argmax(1)).mean())}


def init_types(path: Path) -> Dict[str, int]:
    return {i.name: i.data_type for i in onnx.load(str(path)).graph.initializer}


def test_autocast_fp16_matches_fp32(tmp_path, fp32, holdout):
    task = task_for(AutocastExecutor, tmp_path, fp32, {"precision": "fp16"})
    meta = AutocastExecutor().run(task)
    out = task.outputs["model"]
    onnx.checker.check_model(onnx.load(str(out)))
    types = init_types(out)
    assert types["w1"] == onnx.TensorProto.FLOAT16 and types["w2"] == onnx.TensorProto.FLOAT16
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"  # keep_io_types
    e = errors(run_ort(fp32, holdout), run_ort(out, holdout))
    assert e["max_rel"] < 1e-2 and e["top1"] == 1.0, e
    assert meta["precision"] == "fp16" and meta["casts"] >= 2
    assert meta["check"]["top1_agreement"] == 1.0 and meta["check"]["max_rel_error"] < 1e-2


def test_autocast_keeps_excluded_ops_in_fp32(tmp_path, fp32, holdout):
    task = task_for(AutocastExecutor, tmp_path, fp32, {"op_types_to_exclude": ["Gemm"]})
    AutocastExecutor().run(task)
    types = init_types(task.outputs["model"])
    assert types["w3"] == onnx.TensorProto.FLOAT and types["w2"] == onnx.TensorProto.FLOAT16


def test_autocast_bf16_converts(tmp_path, fp32):
    task = task_for(AutocastExecutor, tmp_path, fp32, {"precision": "bf16", "check_samples": 0})
    meta = AutocastExecutor().run(task)
    assert init_types(task.outputs["model"])["w2"] == onnx.TensorProto.BFLOAT16
    assert meta["opset"] >= 22


def test_quantize_int8_qdq_matches_fp32(tmp_path, fp32, calib, holdout):
    task = task_for(QuantizeExecutor, tmp_path, fp32,
                    {"calibration": "calib.npz", "high_precision_dtype": "fp32"},
                    inputs={"calibration": calib})
    meta = QuantizeExecutor().run(task)
    out = task.outputs["model"]
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 3
    assert any(i.data_type == onnx.TensorProto.INT8 for i in model.graph.initializer)
    e = errors(run_ort(fp32, holdout), run_ort(out, holdout))
    assert e["max_rel"] < 0.05 and e["top1"] >= 0.9, e
    assert meta["calibration_samples"] == 16 and meta["qdq_nodes"] >= 6
    assert meta["check"]["top1_agreement"] >= 0.9


def test_quantize_int8_with_fp16_elsewhere(tmp_path, fp32, calib, holdout):
    task = task_for(QuantizeExecutor, tmp_path, fp32, {"calibration": "calib.npz"},
                    inputs={"calibration": calib})
    QuantizeExecutor().run(task)
    e = errors(run_ort(fp32, holdout), run_ort(task.outputs["model"], holdout))
    assert e["max_rel"] < 0.05 and e["top1"] >= 0.9, e


def test_quantize_fp8(tmp_path, fp32, calib, holdout):
    task = task_for(QuantizeExecutor, tmp_path, fp32,
                    {"calibration": "calib.npz", "precision": "fp8",
                     "high_precision_dtype": "fp32"}, inputs={"calibration": calib})
    meta = QuantizeExecutor().run(task)
    out = task.outputs["model"]
    assert any(i.data_type == onnx.TensorProto.FLOAT8E4M3FN
               for i in onnx.load(str(out)).graph.initializer)
    # onnxruntime's extended CPU fusions get float8 Q/DQ wrong; basic optimizations do not
    e = errors(run_ort(fp32, holdout), run_ort(out, holdout, basic=True))
    assert e["max_rel"] < 0.1 and e["top1"] >= 0.9, e
    assert meta["check"]["top1_agreement"] >= 0.9
    # verify's onnxruntime runtime sees the float8 graph and runs it with basic optimizations
    from buildgraph.engine.runtime import RuntimeContext
    from buildgraph.backends.onnx.runtime import OnnxRuntime

    runtime = OnnxRuntime.load(out, RuntimeContext(model="m", model_spec={},
                                                   recipe_dir=tmp_path))
    assert runtime.precision == "fp8"
    got = runtime.run([holdout])[0]
    assert errors(run_ort(fp32, holdout), got)["top1"] >= 0.9


def test_npy_calibration_for_a_single_input(tmp_path, fp32, calib):
    npy = tmp_path / "calib.npy"
    np.save(npy, np.load(calib)["x"])
    task = task_for(QuantizeExecutor, tmp_path, fp32, {"calibration": "calib.npy",
                                                       "check_samples": 0},
                    inputs={"calibration": npy})
    assert QuantizeExecutor().run(task)["calibration_samples"] == 16


def test_calibration_data_must_name_the_inputs(tmp_path, fp32):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(StepFailed, match="bad.npz has no array for input 'x'"):
        load_samples(bad, ["x"])
    np.savez(bad, inputs=np.zeros((2, 3), np.float32), x=np.zeros((2, 3), np.float32))
    with pytest.raises(StepFailed, match="arrays for no model input: inputs"):
        load_samples(bad, ["x"])
    with pytest.raises(StepFailed, match="single array but the model has 2 inputs"):
        np.save(tmp_path / "a.npy", np.zeros(3))
        load_samples(tmp_path / "a.npy", ["a", "b"])


def test_missing_calibration_file_is_a_recipe_error(tmp_path):
    params = QuantizeExecutor.Params.model_validate({"calibration": "nope.npz"})
    with pytest.raises(RecipeError, match="calibration: file 'nope.npz' does not exist"):
        QuantizeExecutor().describe(params, DescribeContext(recipe_dir=tmp_path))
    runtime_ref = QuantizeExecutor.Params.model_validate({"calibration": "${in.data.npz}"})
    assert QuantizeExecutor().describe(runtime_ref,
                                       DescribeContext(recipe_dir=tmp_path)).inputs == {}


def test_error_bounds_fail_the_step(tmp_path, fp32, calib):
    task = task_for(QuantizeExecutor, tmp_path, fp32,
                    {"calibration": "calib.npz", "max_error": 1e-9},
                    inputs={"calibration": calib})
    with pytest.raises(StepFailed, match="quantize vs fp32 on onnxruntime .* above max_error"):
        QuantizeExecutor().run(task)


def test_missing_modelopt_is_one_line(tmp_path, fp32, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelopt.onnx", None)
    task = task_for(AutocastExecutor, tmp_path, fp32, {})
    with pytest.raises(StepFailed) as err:
        AutocastExecutor().run(task)
    assert err.value.message.startswith("onnx.autocast needs NVIDIA ModelOpt's ONNX tools")
    assert "buildgraph[precision]" in err.value.message
