"""The TensorRT runtime (``verify``/``benchmark``'s loader for engines) against the fake
TensorRT, whose execution context runs the engine's network with onnxruntime on host memory
(:class:`trt_fake.HostBuffers` in place of torch's CUDA memory): deserializing with or without
host code, execution-context return values, refit and stripped weights, and whole ``verify`` and
``benchmark`` runs over a version-compatible engine."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

from buildgraph.backends.tensorrt import env as trt_env
from buildgraph.backends.tensorrt.build import TensorRTBuildExecutor
from buildgraph.backends.tensorrt.builder import configure
from buildgraph.backends.tensorrt.refit import TensorRTRefitExecutor
from buildgraph.backends.tensorrt.runtime import BUFFERS_ENV, TensorRTRuntime
from buildgraph.backends.tensorrt.build_params import BuildDescription, TensorRTBuildParams, describe_build
from buildgraph.engine.executor import DescribeContext, Task
from buildgraph.engine.runtime import RuntimeContext, artifact_info
from buildgraph.errors import StepFailed
from trt_fake import make_test_onnx

PROFILE = {"x": {"min": [1, 3, 16, 16], "opt": [4, 3, 16, 16], "max": [8, 3, 16, 16]}}


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv(trt_env.MODULE_ENV, "trt_fake")
    module = importlib.reload(importlib.import_module("trt_fake"))
    trt_env.probe(refresh=True)
    monkeypatch.setattr(TensorRTRuntime, "buffers", module.HostBuffers)
    # benchmark runners are processes of their own: they read the same from the environment
    monkeypatch.setenv(BUFFERS_ENV, "trt_fake:HostBuffers")
    yield module
    trt_env._cached = None


def ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def build(tmp_path: Path, onnx_path: Path, params: Dict[str, Any], name: str = "b") -> Task:
    out = tmp_path / name / "out"
    out.mkdir(parents=True)
    (tmp_path / name / "work").mkdir()
    task = Task(step_id=name, kind="tensorrt.build",
                params=TensorRTBuildParams.model_validate(params).model_dump(mode="json"),
                inputs={}, upstream={"onnx": {"model": onnx_path}},
                outputs={n: out / f for n, f in TensorRTBuildExecutor.outputs.items()},
                work_dir=tmp_path / name / "work", recipe_dir=tmp_path,
                log_path=tmp_path / name / "log.txt", upstream_kinds={"onnx": "onnx.export"},
                areas={"trt-timing": tmp_path / "cache" / "trt-timing"})
    task.meta = TensorRTBuildExecutor().run(task)  # type: ignore[attr-defined]
    return task


def load(path: Path, kind: Any = "tensorrt.build", meta: Any = None,
         trusted: bool = False) -> TensorRTRuntime:
    """The runtime as verify and benchmark load it: the producing kind, the step's info."""
    if meta is None:
        meta = artifact_info({n: p for n, p in (("info", path.parent / "engine.json"),)
                              if p.exists()})
    return TensorRTRuntime.load(path, RuntimeContext(kind=kind, meta=meta, trusted=trusted))


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.onnx"
    make_test_onnx(path)
    return path


def test_an_engine_runs_and_matches_its_network(fake, tmp_path, tiny):
    task = build(tmp_path, tiny, {"profiles": [PROFILE]})
    rt = load(task.outputs["model"])
    try:
        assert rt.inputs == ["x"] and rt.outputs == ["y"] and rt.precision == "tf32"
        for batch in (1, 5, 8):
            x = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16), np.float32)
            (got,) = rt.run([x])
            np.testing.assert_allclose(got, ort(tiny, x), rtol=1e-5, atol=1e-6)
        with pytest.raises(StepFailed, match=r"input 'x' shape \(9, 3, 16, 16\) is outside the "
                                             r"engine's profile 0 \(\(1, 3, 16, 16\) \.\. "):
            rt.run([np.zeros((9, 3, 16, 16), np.float32)])
    finally:
        rt.close()


def test_a_version_compatible_engine_loads_for_verify_and_benchmark(fake, tmp_path, tiny):
    """The engine's provenance (this recipe's tensorrt.build or tensorrt.refit) lets its host
    code run: with the step's info as verify passes it (which says version_compatible), and
    without any."""
    task = build(tmp_path, tiny, {"profiles": [PROFILE], "version_compatible": True})
    assert "VERSION_COMPATIBLE" in task.meta["flags"]  # type: ignore[attr-defined]
    for kind, meta in (("tensorrt.build", None), ("tensorrt.refit", {})):
        rt = load(task.outputs["model"], kind, meta)
        x = np.ones((2, 3, 16, 16), np.float32)
        np.testing.assert_allclose(rt.run([x])[0], ort(tiny, x), rtol=1e-5, atol=1e-6)
        rt.close()


def test_the_build_info_says_version_compatible_and_a_timing_only_engine_is_labelled(
        fake, tmp_path, tiny):
    task = build(tmp_path, tiny, {"profiles": [PROFILE], "version_compatible": True})
    info = artifact_info(task.outputs)
    assert info["version_compatible"] is True and info["plugins"] == []
    assert info["timing_only"] is False
    rt = load(task.outputs["model"])
    assert "timing_only" not in rt.details
    rt.close()
    rt = load(task.outputs["model"], meta={**info, "timing_only": True})
    assert "placeholder dynamic ranges" in rt.details["timing_only"]
    rt.close()


def test_an_engine_of_unknown_origin_gets_no_host_code(fake, tmp_path, tiny):
    task = build(tmp_path, tiny, {"profiles": [PROFILE], "version_compatible": True})
    copied = tmp_path / "from_shell.engine"
    copied.write_bytes(task.outputs["model"].read_bytes())
    with pytest.raises(StepFailed) as err:
        load(copied, kind="shell")
    assert "runs host code when it loads" in err.value.message
    assert "engine_host_code_allowed is False" in err.value.message
    assert "\n" not in err.value.message
    load(copied, kind="shell", trusted=True).close()  # the model says trusted: true
    plain = build(tmp_path, tiny, {"profiles": [PROFILE]}, "plain")
    load(plain.outputs["model"], kind="shell").close()  # no host code: nothing to allow


def test_refit_puts_the_new_weights_into_the_numbers(fake, tmp_path, tiny):
    task = build(tmp_path, tiny, {"profiles": [PROFILE], "refit": True,
                                  "version_compatible": True})
    new = tmp_path / "new.onnx"
    make_test_onnx(new, seed=5)
    out = tmp_path / "refit"
    out.mkdir()
    refit = Task(step_id="refit", kind="tensorrt.refit", params={"log_level": "warning"},
                 inputs={}, upstream={"engine": dict(task.outputs), "w": {"model": new}},
                 outputs={"model": out / "model.engine", "log": out / "refit.log"},
                 work_dir=out, recipe_dir=tmp_path, log_path=out / "log.txt",
                 upstream_kinds={"engine": "tensorrt.build", "w": "onnx.export"})
    TensorRTRefitExecutor().run(refit)
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16), np.float32)
    rt = load(out / "model.engine", "tensorrt.refit")
    got = rt.run([x])[0]
    rt.close()
    np.testing.assert_allclose(got, ort(new, x), rtol=1e-5, atol=1e-6)
    assert np.abs(got - ort(tiny, x)).max() > 1e-2


def test_a_stripped_engine_is_refused_until_refitted(fake, tmp_path, tiny):
    task = build(tmp_path, tiny, {"profiles": [PROFILE], "refit": True, "strip_weights": True})
    with pytest.raises(StepFailed, match="cannot create an execution context for model.engine: "
                                         r"\[fake\] the engine's weights were stripped"):
        load(task.outputs["model"])
    out = tmp_path / "refit"
    out.mkdir()
    refit = Task(step_id="refit", kind="tensorrt.refit", params={"log_level": "warning"},
                 inputs={}, upstream={"engine": dict(task.outputs), "w": {"model": tiny}},
                 outputs={"model": out / "model.engine", "log": out / "refit.log"},
                 work_dir=out, recipe_dir=tmp_path, log_path=out / "log.txt",
                 upstream_kinds={"engine": "tensorrt.build", "w": "onnx.export"})
    TensorRTRefitExecutor().run(refit)
    assert json.loads((out / "model.engine").read_bytes())["weights_missing"] == []
    load(out / "model.engine", "tensorrt.refit").close()


def test_refit_of_a_plain_engine_is_one_line(fake, tmp_path, tiny):
    task = build(tmp_path, tiny, {"profiles": [PROFILE]})
    out = tmp_path / "refit"
    out.mkdir()
    refit = Task(step_id="refit", kind="tensorrt.refit", params={"log_level": "warning"},
                 inputs={}, upstream={"engine": dict(task.outputs), "w": {"model": tiny}},
                 outputs={"model": out / "model.engine", "log": out / "refit.log"},
                 work_dir=out, recipe_dir=tmp_path, log_path=out / "log.txt",
                 upstream_kinds={"engine": "tensorrt.build", "w": "onnx.export"})
    with pytest.raises(StepFailed, match="the engine is not refittable: build it with refit"):
        TensorRTRefitExecutor().run(refit)


def test_configure_stops_on_profiles_tensorrt_refuses(fake):
    trt = fake
    desc = describe_build(TensorRTBuildParams.model_validate({"profiles": [PROFILE]}), "11.4")
    logger = trt.Logger()
    builder = trt.Builder(logger)
    backwards = desc.__class__(**{**desc.__dict__, "profiles": (
        (("x", (4, 3, 16, 16), (1, 3, 16, 16), (8, 3, 16, 16)),),)})
    with pytest.raises(StepFailed, match="TensorRT refused profile 0 of input 'x' .*Shape "
                                         "provided for opt is inconsistent"):
        configure(trt, builder, builder.create_builder_config(), backwards)
    empty: BuildDescription = desc.__class__(**{**desc.__dict__, "profiles": ((),)})
    with pytest.raises(StepFailed, match="TensorRT refused optimization profile 0 as invalid"):
        configure(trt, builder, builder.create_builder_config(), empty)


# --- verify and benchmark over a version-compatible engine ---------------------------------

NET_PY = '''
import onnx
import torch
from onnx import numpy_helper
from torch import nn


def make():
    """The network of trt_fake.make_test_onnx, with the weights of tiny.onnx."""
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
               for i in onnx.load(__file__.replace("net.py", "tiny.onnx")).graph.initializer}
    for layer, (w, b) in zip((net[0], net[2], net[6]), (("w1", "b1"), ("w2", "b2"),
                                                        ("w3", "b3"))):
        layer.weight.data.copy_(weights[w])
        layer.bias.data.copy_(weights[b])
    return net
'''

SPEC = {"source": "net.py:make", "inputs": {"x": {"shape": ["batch", 3, 16, 16]}},
        "dims": {"batch": {"min": 1, "opt": 4, "max": 8}}}


def evaluate_task(tmp_path: Path, executor: Any, raw: Dict[str, Any], engine: Task) -> Task:
    """A verify/benchmark task as the planner makes it: described, then given its upstream."""
    from buildgraph.recipe.schema import ModelSpec

    kind = executor.kind
    params = executor.Params.model_validate(raw)
    ctx = DescribeContext(recipe_dir=tmp_path, upstream_kinds={"engine": "tensorrt.build"},
                          models={"net": ModelSpec.model_validate(SPEC).model_dump(mode="json")})
    desc = executor.describe(params, ctx)
    out = tmp_path / kind / "out"
    out.mkdir(parents=True)
    return Task(kind=kind, params=params.model_dump(mode="json"), inputs=desc.inputs,
                upstream={"engine": dict(engine.outputs)},
                outputs={n: out / f for n, f in executor.outputs.items()},
                upstream_kinds={"engine": "tensorrt.build"}, data=desc.data, env=desc.env,
                step_id=kind, work_dir=out, recipe_dir=tmp_path,
                log_path=tmp_path / kind / "log.txt")


@pytest.fixture
def vc_engine(fake, tmp_path, tiny) -> Task:
    pytest.importorskip("torch")
    (tmp_path / "net.py").write_text(NET_PY, encoding="utf-8")
    return build(tmp_path, tiny, {"profiles": [PROFILE], "version_compatible": True})


def test_verify_passes_a_version_compatible_engine(vc_engine, tmp_path):
    from buildgraph.backends.evaluate.verify import VerifyExecutor

    executor = VerifyExecutor()
    task = evaluate_task(tmp_path, executor, {"model": "net", "random": 2,
                                              "dims": {"batch": [1, 4]}}, vc_engine)
    meta = executor.run(task)
    assert meta["passed"] is True and meta["max_abs"]["engine"]["output"] < 1e-4
    report = json.loads(task.outputs["report"].read_text())
    entry = report["candidates"]["engine"]
    assert entry["runtime"] == "tensorrt"
    # an engine whose layers compute in fp32 is judged as TF32 (TensorRT's default for them)
    assert entry["precision"] == "tf32"
    assert entry["outputs"]["output"]["tolerance"] == {
        "precision": "tf32", "atol": 1e-2, "rtol": 1e-2, "statistic": "max",
        "min_cosine": 0.999, "min_top1": None, "min_topk": None}


def test_tf32_defaults_lie_between_fp32_and_fp16():
    from buildgraph.backends.evaluate.verify import PRECISION_DEFAULTS as D

    assert D["fp32"]["atol"] < D["tf32"]["atol"] <= D["fp16"]["atol"]
    assert D["fp32"]["rtol"] < D["tf32"]["rtol"] <= D["fp16"]["rtol"]
    assert D["fp32"]["min_cosine"] > D["tf32"]["min_cosine"] >= D["fp16"]["min_cosine"]
    assert D["tf32"]["statistic"] == "max"


def test_benchmark_times_a_version_compatible_engine(vc_engine, tmp_path):
    from buildgraph.backends.evaluate.benchmark import BenchmarkExecutor

    executor = BenchmarkExecutor()
    task = evaluate_task(tmp_path, executor, {"model": "net", "runs": 2, "warmup": 1,
                                              "window_s": 0.01, "max_s": 1, "reference": False,
                                              "dims": {"batch": [2]}}, vc_engine)
    meta = executor.run(task)
    assert len(meta["median_ms"]["engine"]) == 1
    entry = json.loads(task.outputs["report"].read_text())["candidates"]["engine"]
    assert entry["runtime"] == "tensorrt" and entry["results"][0]["batch"] == 2
    assert entry["threads"] == {"library": "tensorrt", "intra": None, "inter": None}
