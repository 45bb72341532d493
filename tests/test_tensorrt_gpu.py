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


# --- the audit's open questions (issue 11): each test asserts what the fake assumes, so the
# first run on a machine with a GPU and TensorRT confirms the fake or shows where it is wrong

def _logger(trt):
    from buildgraph.backends.tensorrt.builder import worker_logger

    return worker_logger(trt)


def _refit_engine(tmp_path, tiny, params):
    """(trt, runtime, engine) of a refittable engine of the test CNN, deserialized."""
    trt = trt_env.load_tensorrt()
    task = build(tmp_path, tiny, {"profiles": [PROFILE], "refit": True, **params})
    runtime = trt.Runtime(_logger(trt))
    runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(task.outputs["model"].read_bytes())
    assert engine is not None
    return trt, runtime, engine


def test_open_question_serializing_after_refit_drops_refittability(tmp_path, tiny):
    """Open question 1: does an engine serialized after a refit with EXCLUDE_WEIGHTS cleared
    but without INCLUDE_REFIT stay refittable? The fake (and the refit step's refusal of chains
    before 10.14) says no; with INCLUDE_REFIT it must."""
    trt, runtime, engine = _refit_engine(tmp_path, tiny, {})
    refitter = trt.Refitter(engine, _logger(trt))
    new = tmp_path / "new.onnx"
    make_test_onnx(new, seed=5)
    assert trt.OnnxParserRefitter(refitter, _logger(trt)).refit_from_file(str(new))
    assert refitter.refit_cuda_engine()
    config = engine.create_serialization_config()
    config.clear_flag(trt.SerializationFlag.EXCLUDE_WEIGHTS)
    plain = runtime.deserialize_cuda_engine(bytes(engine.serialize_with_config(config)))
    assert plain is not None
    assert plain.refittable is False, "a plan serialized without INCLUDE_REFIT is refittable: " \
        "the fake and the refusal of refit chains before 10.14 are too strict"
    if hasattr(trt.SerializationFlag, "INCLUDE_REFIT"):
        config.set_flag(trt.SerializationFlag.INCLUDE_REFIT)
        kept = runtime.deserialize_cuda_engine(bytes(engine.serialize_with_config(config)))
        assert kept is not None and kept.refittable is True


def test_open_question_inspector_and_refit_work_on_lean_runtime_engines(tmp_path, tiny):
    """Open question 2: a version-compatible engine runs in the lean runtime it embeds; do the
    engine inspector and the Refitter work on it? The build's inspection and the refit step
    assume so (the fake too)."""
    trt, runtime, engine = _refit_engine(tmp_path, tiny, {"version_compatible": True})
    info = json.loads(engine.create_engine_inspector().get_engine_information(
        trt.LayerInformationFormat.JSON))
    assert info.get("Layers"), info
    refitter = trt.Refitter(engine, _logger(trt))
    new = tmp_path / "new.onnx"
    make_test_onnx(new, seed=6)
    assert trt.OnnxParserRefitter(refitter, _logger(trt)).refit_from_file(str(new))
    assert refitter.refit_cuda_engine()


def test_open_question_a_builders_plugin_registry_is_not_a_runtimes(tmp_path):
    """Open question 3: is a plugin registered in a Builder's registry visible to a separate
    Runtime? buildgraph loads plugins into every Runtime (and skips a library whose creators it
    already sees); the fake says the registries are separate, which this checks."""
    trt = trt_env.load_tensorrt()

    class Probe(trt.IPluginCreatorV3One):  # a creator registered from Python: no C++ needed
        def __init__(self):
            trt.IPluginCreatorV3One.__init__(self)
            self.name = "BuildgraphRegistryProbe"
            self.plugin_namespace = ""
            self.plugin_version = "1"
            self.field_names = trt.PluginFieldCollection([])

        def create_plugin(self, name, field_collection, phase):
            return None

    logger = _logger(trt)
    builder = trt.Builder(logger)
    probe = Probe()
    assert builder.get_plugin_registry().register_creator(probe, "")
    runtime = trt.Runtime(logger)
    seen = runtime.get_plugin_registry().get_creator("BuildgraphRegistryProbe", "1", "")
    assert seen is None, "a Builder's plugin registry is visible to a separate Runtime: the " \
        "fake's separate registries are too strict (harmless: buildgraph skips visible ones)"


def test_open_question_a_timing_cache_from_another_version(tmp_path, tiny):
    """Open question 4: what does create_timing_cache do with a blob another TensorRT version
    wrote: None, an exception, a cache set_timing_cache refuses, or one it takes? The build
    handles all four (attach_timing_cache). Needs such a blob: a build's timing_cache output
    from another TensorRT version, in BUILDGRAPH_FOREIGN_TIMING_CACHE."""
    import os

    from buildgraph.backends.tensorrt.builder import attach_timing_cache

    foreign = os.environ.get("BUILDGRAPH_FOREIGN_TIMING_CACHE")
    if not foreign:
        pytest.skip("set BUILDGRAPH_FOREIGN_TIMING_CACHE to a timing cache another TensorRT "
                    "version wrote (a tensorrt.build 'timing_cache' output)")
    trt = trt_env.load_tensorrt()
    config = trt.Builder(_logger(trt)).create_builder_config()
    blob = Path(foreign).read_bytes()
    try:
        made = config.create_timing_cache(blob)
        outcome = "none" if made is None else (
            "set refused" if not config.set_timing_cache(made, False) else "accepted")
    except Exception as exc:  # noqa: BLE001 - the question is which of these happens
        outcome = f"raised {type(exc).__name__}"
    cache, status = attach_timing_cache(trt.Builder(_logger(trt)).create_builder_config(), blob)
    assert cache is not None
    assert (outcome == "accepted") == (status == "loaded"), (outcome, status)
    # the fake's answer: a foreign header makes set_timing_cache refuse it
    assert outcome == "set refused", outcome


def test_plugins_of_tensorrt_load_in_a_fresh_runtime(tmp_path):
    """The InstanceNorm plugin (native_instancenorm: false) in an engine that a new process
    loads: the runtime registers TensorRT's plugins before deserializing."""
    from buildgraph.backends.tensorrt.runtime import load

    onnx_path = tmp_path / "in.onnx"
    make_test_onnx(onnx_path, instance_norm=True)
    task = build(tmp_path, onnx_path, {"profiles": [PROFILE], "native_instancenorm": False})
    rt = load(task.outputs["model"], recipe_dir=tmp_path)
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(rt.run([x])[0], ort_run(onnx_path, x), rtol=1e-2, atol=1e-3)
    rt.close()


def test_refit_step_checks_its_engine_against_onnx(tmp_path, tiny):
    task = build(tmp_path, tiny, {"profiles": [PROFILE], "refit": True})
    new = tmp_path / "new.onnx"
    make_test_onnx(new, channels=(32, 64), seed=7)
    out = tmp_path / "refit"
    out.mkdir()
    refit = Task(step_id="refit", kind="tensorrt.refit",
                 params=TensorRTRefitExecutor.Params.model_validate({"check": "required"})
                 .model_dump(mode="json"), inputs={},
                 upstream={"engine": dict(task.outputs), "w": {"model": new}},
                 outputs={n: out / f for n, f in TensorRTRefitExecutor.outputs.items()},
                 work_dir=out, recipe_dir=tmp_path, log_path=out / "log.txt",
                 upstream_kinds={"engine": "tensorrt.build", "w": "onnx.export"})
    meta = TensorRTRefitExecutor().run(refit)
    assert meta["check"]["ran"] and meta["check"]["passed"], meta["check"]
