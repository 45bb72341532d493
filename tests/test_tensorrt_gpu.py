"""TensorRT for real: builds, runtime, refit, timing caches, verification. These need an NVIDIA
GPU and TensorRT (``pip install 'buildgraph[tensorrt]'``), which no machine of this project has
(see docs/tensorrt.md); they are marked ``gpu`` and run with ``pytest --run-gpu`` on one that
does. They have never run: treat a failure on first contact as a finding, not a regression."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import pytest

from buildgraph.backends.tensorrt import env as trt_env
from buildgraph.engine.executor import Task
from buildgraph.backends.tensorrt.build import TensorRTBuildExecutor
from buildgraph.backends.tensorrt.refit import TensorRTRefitExecutor
from trt_fake import make_test_onnx

pytestmark = pytest.mark.gpu

PROFILE = {"x": {"min": [1, 3, 16, 16], "opt": [4, 3, 16, 16], "max": [8, 3, 16, 16]}}


@pytest.fixture(autouse=True)
def real_tensorrt(monkeypatch):
    monkeypatch.delenv(trt_env.MODULE_ENV, raising=False)
    env = trt_env.probe(refresh=True)
    if env.tensorrt is None or env.gpu is None:
        pytest.skip(f"{trt_env.NEEDS}; found: {env.found()}")
    yield
    trt_env._cached = None


def build(tmp_path: Path, onnx_path: Path, params: Dict[str, Any], name: str = "b",
          inputs: Optional[Dict[str, Path]] = None) -> Task:
    out = tmp_path / name / "out"
    out.mkdir(parents=True)
    (tmp_path / name / "work").mkdir()
    task = Task(step_id=name, kind="tensorrt.build",
                params=TensorRTBuildExecutor.Params.model_validate(params)
                .model_dump(mode="json"), inputs=inputs or {},
                upstream={"onnx": {"model": onnx_path}},
                outputs={n: out / f for n, f in TensorRTBuildExecutor.outputs.items()},
                work_dir=tmp_path / name / "work", recipe_dir=tmp_path,
                log_path=tmp_path / name / "log.txt", upstream_kinds={"onnx": "onnx.export"},
                areas={"trt-timing": tmp_path / "cache" / "trt-timing"})
    task.meta = TensorRTBuildExecutor().run(task)  # type: ignore[attr-defined]
    return task


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) \
        .run(None, {"x": x})[0]


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.onnx"
    make_test_onnx(path, channels=(32, 64))
    return path


def test_build_run_and_compare(tmp_path, tiny):
    from buildgraph.backends.tensorrt.runtime import load

    task = build(tmp_path, tiny, {"profiles": [PROFILE], "tf32": False})
    layers = json.loads(task.outputs["layers"].read_text())
    assert layers.get("Layers")
    rt = load(task.outputs["model"])
    try:
        for batch in (1, 4, 8):
            x = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)) \
                .astype(np.float32)
            (got,) = rt.run([x])
            np.testing.assert_allclose(got, ort_run(tiny, x), rtol=1e-3, atol=1e-4)
        with pytest.raises(Exception, match="outside the engine's profile"):
            rt.run([np.zeros((9, 3, 16, 16), np.float32)])
    finally:
        rt.close()


def test_fp16_graph_builds_strongly_typed(tmp_path, tiny):
    from buildgraph.backends.onnx.precision import AutocastExecutor
    from buildgraph.backends.tensorrt.runtime import load

    out = tmp_path / "ac"
    (out / "work").mkdir(parents=True)
    auto = Task(step_id="ac", kind="onnx.autocast", params={}, inputs={},
                upstream={"u": {"model": tiny}}, outputs={"model": out / "m.onnx"},
                work_dir=out / "work", recipe_dir=tmp_path, log_path=out / "log.txt")
    auto.params = AutocastExecutor.Params.model_validate({}).model_dump(mode="json")
    AutocastExecutor().run(auto)
    task = build(tmp_path, out / "m.onnx", {"profiles": [PROFILE]})
    assert task.meta["strongly_typed"] and task.meta["precisions"].get("fp16")  # type: ignore
    rt = load(task.outputs["model"])
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    (got,) = rt.run([x])
    ref = ort_run(tiny, x)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-2
    assert (got.argmax(1) == ref.argmax(1)).all()
    rt.close()


def test_timing_cache_is_shared_between_builds(tmp_path, tiny):
    first = build(tmp_path, tiny, {"profiles": [PROFILE]}, "b1")
    second = build(tmp_path, tiny, {"profiles": [PROFILE]}, "b2")
    assert first.meta["timing_cache"]["shared"] == "created"  # type: ignore[attr-defined]
    stats = second.meta["timing_cache"]  # type: ignore[attr-defined]
    assert stats["timed"] == 0 and stats["hit_rate"] == 1.0


def test_pinned_cache_rebuild_is_bit_exact(tmp_path, tiny):
    first = build(tmp_path, tiny, {"profiles": [PROFILE], "timing_cache": "off"}, "b1")
    pinned = tmp_path / "pinned.cache"
    pinned.write_bytes(first.outputs["timing_cache"].read_bytes())
    params = {"profiles": [PROFILE], "timing_cache": "pinned",
              "timing_cache_file": "pinned.cache"}
    again = build(tmp_path, tiny, params, "b2", inputs={"timing_cache_file": pinned})
    assert again.outputs["model"].read_bytes() == first.outputs["model"].read_bytes()


def test_refit_new_weights(tmp_path, tiny):
    from buildgraph.backends.tensorrt.runtime import load

    task = build(tmp_path, tiny, {"profiles": [PROFILE], "refit": True})
    new = tmp_path / "new.onnx"
    make_test_onnx(new, channels=(32, 64), seed=5)
    out = tmp_path / "refit"
    out.mkdir()
    refit = Task(step_id="refit", kind="tensorrt.refit", params={"log_level": "warning"},
                 inputs={}, upstream={"engine": dict(task.outputs), "w": {"model": new}},
                 outputs={"model": out / "model.engine", "log": out / "refit.log"},
                 work_dir=out, recipe_dir=tmp_path, log_path=out / "log.txt",
                 upstream_kinds={"engine": "tensorrt.build", "w": "onnx.export"})
    meta = TensorRTRefitExecutor().run(refit)
    # the point of refit: new weights for less than a build costs
    assert meta["refit_s"] < meta["build_s"], meta
    assert meta["saved_s"] == round(meta["build_s"] - meta["refit_s"], 3) > 0
    rt = load(out / "model.engine")
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    (got,) = rt.run([x])
    np.testing.assert_allclose(got, ort_run(new, x), rtol=1e-2, atol=1e-3)
    rt.close()


def test_parser_error_names_the_node(tmp_path):
    from buildgraph.errors import StepFailed

    bad = tmp_path / "bad.onnx"
    make_test_onnx(bad, extra_op="FakeUnsupported")
    with pytest.raises(StepFailed, match="node 7 'odd' \\(FakeUnsupported\\)"):
        build(tmp_path, bad, {"profiles": [PROFILE]})
