"""``tensorrt.refit`` against the fake TensorRT: refitted engines stay refittable where TensorRT
has ``SerializationFlag.INCLUDE_REFIT`` (10.14+), refit chains are refused where it does not
(at plan time, with the version needed), and the step checks its own output against the ONNX
model it refitted from (TensorRT 11.3's known issue: REFIT engines losing a GEMM bias, which
the fake reproduces on 11.3)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from buildgraph.backends.tensorrt import env as trt_env
from buildgraph.backends.tensorrt.build import TensorRTBuildExecutor
from buildgraph.backends.tensorrt.refit import TensorRTRefitExecutor, TensorRTRefitParams
from buildgraph.backends.tensorrt.runtime import TensorRTRuntime
from buildgraph.backends.tensorrt.build_params import TensorRTBuildParams
from buildgraph.engine.executor import DescribeContext, Task
from buildgraph.errors import RecipeError, StepFailed
from trt_fake import make_test_onnx

PROFILE = {"x": {"min": [1, 3, 16, 16], "opt": [4, 3, 16, 16], "max": [8, 3, 16, 16]}}


@pytest.fixture
def fake(monkeypatch):
    """The fake at a version; ``host``: run engines on host memory (else the runtime wants
    torch with CUDA, which this machine lacks)."""
    monkeypatch.setenv(trt_env.MODULE_ENV, "trt_fake")

    def load(version: str = "11.4.0.106", host: bool = True) -> Any:
        monkeypatch.setenv("BUILDGRAPH_FAKE_TRT_VERSION", version)
        module = importlib.reload(importlib.import_module("trt_fake"))
        if host:
            monkeypatch.setattr(TensorRTRuntime, "buffers", module.HostBuffers)
        trt_env.probe(refresh=True)
        return module

    yield load
    monkeypatch.delenv("BUILDGRAPH_FAKE_TRT_VERSION", raising=False)
    importlib.reload(importlib.import_module("trt_fake"))
    trt_env._cached = None


def build(tmp_path: Path, onnx_path: Path, params: Dict[str, Any], name: str = "b") -> Task:
    out = tmp_path / name
    out.mkdir()
    task = Task(step_id=name, kind="tensorrt.build",
                params=TensorRTBuildParams.model_validate(params).model_dump(mode="json"),
                inputs={}, upstream={"onnx": {"model": onnx_path}},
                outputs={n: out / f for n, f in TensorRTBuildExecutor.outputs.items()},
                work_dir=out, recipe_dir=tmp_path, log_path=out / "log.txt",
                upstream_kinds={"onnx": "onnx.export"},
                areas={"trt-timing": tmp_path / "cache" / "trt-timing"})
    TensorRTBuildExecutor().run(task)
    return task


def refit_task(tmp_path: Path, engine: Task, weights: Path, name: str = "r",
               params: Optional[Dict[str, Any]] = None) -> Task:
    out = tmp_path / name
    out.mkdir()
    return Task(step_id=name, kind="tensorrt.refit",
                params=TensorRTRefitParams.model_validate(params or {}).model_dump(mode="json"),
                inputs={}, upstream={"engine": dict(engine.outputs), "w": {"model": weights}},
                outputs={n: out / f for n, f in TensorRTRefitExecutor.outputs.items()},
                work_dir=out, recipe_dir=tmp_path, log_path=out / "log.txt",
                upstream_kinds={"engine": engine.kind, "w": "onnx.export"})


def run(task: Task) -> Dict[str, Any]:
    return TensorRTRefitExecutor().run(task) or {}


@pytest.fixture
def weights(tmp_path):
    """The first model and two later checkpoints of the same architecture."""
    paths = []
    for seed in (0, 1, 2):
        path = tmp_path / f"w{seed}.onnx"
        make_test_onnx(path, seed=seed)
        paths.append(path)
    return paths


# --- INCLUDE_REFIT and refit chains ----------------------------------------------------------

def test_a_refitted_engine_stays_refittable_and_refits_again(fake, tmp_path, weights):
    trt = fake("11.4.0.106")
    engine = build(tmp_path, weights[0], {"profiles": [PROFILE], "refit": True})
    first = refit_task(tmp_path, engine, weights[1], "r1")
    meta = run(first)
    assert meta["refittable"] is True and meta["check"]["ran"] is True
    assert ("serialize_with_config", ["INCLUDE_REFIT"]) in trt.CALLS
    assert json.loads(first.outputs["info"].read_text())["refittable"] is True
    second = refit_task(tmp_path, first, weights[2], "r2")
    assert run(second)["check"]["ran"] is True


def test_before_include_refit_a_refit_of_a_refit_is_refused(fake, tmp_path, weights):
    trt = fake("10.13.3.9")
    engine = build(tmp_path, weights[0], {"profiles": [PROFILE], "refit": True})
    first = refit_task(tmp_path, engine, weights[1], "r1")
    meta = run(first)
    assert meta["refittable"] is False
    assert ("serialize_with_config", []) in trt.CALLS
    assert json.loads(first.outputs["info"].read_text())["refittable"] is False
    assert "not refittable again" in first.log_path.read_text()
    # at plan time: the planner adds the step's file and line
    executor = TensorRTRefitExecutor()
    ctx = DescribeContext(recipe_dir=tmp_path, upstream_kinds={"r1": "tensorrt.refit",
                                                               "w": "onnx.export"})
    with pytest.raises(RecipeError) as err:
        executor.describe(TensorRTRefitParams(), ctx)
    assert err.value.message == (
        "tensorrt.refit of a tensorrt.refit step's engine needs TensorRT 10.14 or later "
        "(SerializationFlag.INCLUDE_REFIT); installed: TensorRT 10.13.3.9")
    assert "refit the tensorrt.build step's engine instead" in (err.value.hint or "")
    plain = DescribeContext(recipe_dir=tmp_path, upstream_kinds={"b": "tensorrt.build",
                                                                 "w": "onnx.export"})
    assert executor.describe(TensorRTRefitParams(), plain).env["tensorrt"] == "10.13.3.9"
    # and if it runs anyway (a plan made elsewhere), one line before TensorRT is asked
    with pytest.raises(StepFailed, match="cannot keep it refittable \\(SerializationFlag"
                                         "\\.INCLUDE_REFIT comes with 10.14\\)"):
        run(refit_task(tmp_path, first, weights[2], "r2"))


def test_refit_needs_the_onnx_refitter_of_10_0(fake, tmp_path):
    fake("9.3.0.1")
    with pytest.raises(RecipeError, match="tensorrt.refit needs TensorRT 10.0 or later "
                                          "\\(OnnxParserRefitter.refit_from_file\\)"):
        TensorRTRefitExecutor().describe(TensorRTRefitParams(), DescribeContext(
            recipe_dir=tmp_path, upstream_kinds={"b": "tensorrt.build"}))


# --- the refit's own check ------------------------------------------------------------------

def test_the_check_catches_a_refit_that_drops_the_gemm_bias(fake, tmp_path, weights):
    """TensorRT 11.3's release notes: REFIT engines may silently lose a GEMM bias. The fake
    11.3 does; the step's check compares with onnxruntime and fails it."""
    fake("11.3.0.1")
    engine = build(tmp_path, weights[0], {"profiles": [PROFILE], "refit": True})
    with pytest.raises(StepFailed) as err:
        run(refit_task(tmp_path, engine, weights[1], "r1"))
    assert err.value.message.startswith(
        "refit check: the refitted engine does not match w1.onnx on onnxruntime: output 'y' "
        "differs by up to ")
    assert "TensorRT 11.3 lists REFIT engines that drop a GEMM bias" in err.value.message
    unchecked = run(refit_task(tmp_path, engine, weights[1], "r2", {"check": "off"}))
    assert unchecked["check"] == {"ran": False, "why": "check: off"}


def test_the_check_passes_a_good_refit_at_the_engines_tolerance(fake, tmp_path, weights):
    fake("11.4.0.106")
    engine = build(tmp_path, weights[0], {"profiles": [PROFILE], "refit": True})
    check = run(refit_task(tmp_path, engine, weights[1]))["check"]
    assert check["ran"] and check["passed"] and check["precision"] == "tf32"
    assert (check["atol"], check["rtol"]) == (1e-2, 1e-2) and check["max_abs"] < 1e-4
    assert check["samples"] == 2
    tight = run(refit_task(tmp_path, engine, weights[2], "r2", {"atol": 0, "rtol": 0,
                                                               "samples": 1}))["check"]
    assert tight["atol"] == 0 and tight["samples"] == 1


def test_without_device_memory_the_check_says_why_or_fails_when_required(fake, tmp_path,
                                                                          weights):
    fake("11.4.0.106", host=False)  # the runtime asks torch for CUDA memory: none here
    engine = build(tmp_path, weights[0], {"profiles": [PROFILE], "refit": True})
    task = refit_task(tmp_path, engine, weights[1])
    check = run(task)["check"]
    assert check["ran"] is False and "needs CUDA through torch" in check["why"]
    assert "warning: refit check not run" in task.log_path.read_text()
    with pytest.raises(StepFailed, match="refit check: cannot run it \\(the TensorRT runtime "
                                         "needs CUDA through torch.*check: required"):
        run(refit_task(tmp_path, engine, weights[1], "r2", {"check": "required"}))


def test_a_version_compatible_engine_refits_and_its_info_says_so(fake, tmp_path, weights):
    fake("11.4.0.106")
    engine = build(tmp_path, weights[0], {"profiles": [PROFILE], "refit": True,
                                          "version_compatible": True})
    built = json.loads(engine.outputs["info"].read_text())
    assert built["version_compatible"] is True and built["refittable"] is True
    task = refit_task(tmp_path, engine, weights[1])
    assert run(task)["check"]["passed"]
    info = json.loads(task.outputs["info"].read_text())
    assert info["version_compatible"] is True and info["refitted_with"] == "w1.onnx"
