"""Plugins against the fake TensorRT: TensorRT's own plugins (``init_libnvinfer_plugins`` before
every deserialize), user plugin libraries of both kinds (``getCreators`` through
``IPluginRegistry.load_library``; ``REGISTER_TENSORRT_PLUGIN`` through ``ctypes.CDLL``), and the
record of both in the build's ``info`` output, from which refit, verify and benchmark load the
same files.

Reloading the fake module stands for a new process (a worker that only verifies): its global
plugin registry starts empty, as TensorRT's does. A static library stays loaded in the test
process once loaded, as it would in a real one, so each test compiles libraries with plugin
names of its own."""

from __future__ import annotations

import importlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
from pydantic import ValidationError

from buildgraph.backends.tensorrt import env as trt_env
from buildgraph.backends.tensorrt import plugins as trt_plugins
from buildgraph.backends.tensorrt.build import TensorRTBuildExecutor
from buildgraph.backends.tensorrt.refit import TensorRTRefitExecutor
from buildgraph.backends.tensorrt.runtime import TensorRTRuntime
from buildgraph.backends.tensorrt.build_params import TensorRTBuildParams
from buildgraph.engine.executor import Task
from buildgraph.engine.runtime import RuntimeContext, artifact_info
from buildgraph.errors import StepFailed
from trt_fake import make_test_onnx

PROFILE = {"x": {"min": [1, 3, 16, 16], "opt": [4, 3, 16, 16], "max": [8, 3, 16, 16]}}

needs_cc = pytest.mark.skipif(shutil.which("cc") is None,
                              reason="needs a C compiler (cc) to make test plugin libraries")


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv(trt_env.MODULE_ENV, "trt_fake")
    monkeypatch.delenv("BUILDGRAPH_FAKE_TRT_VERSION", raising=False)

    def fresh() -> Any:
        """The fake as a new process finds it (empty registries, no logger yet)."""
        module = importlib.reload(importlib.import_module("trt_fake"))
        monkeypatch.setattr(TensorRTRuntime, "buffers", module.HostBuffers)
        trt_env.probe(refresh=True)
        return module

    yield fresh
    importlib.reload(importlib.import_module("trt_fake"))
    trt_env._cached = None


def build(tmp_path: Path, onnx_path: Path, params: Dict[str, Any], name: str = "b",
          inputs: Optional[Dict[str, Path]] = None) -> Task:
    out = tmp_path / name
    out.mkdir()
    task = Task(step_id=name, kind="tensorrt.build",
                params=TensorRTBuildParams.model_validate(params).model_dump(mode="json"),
                inputs=inputs or {}, upstream={"onnx": {"model": onnx_path}},
                outputs={n: out / f for n, f in TensorRTBuildExecutor.outputs.items()},
                work_dir=out, recipe_dir=tmp_path, log_path=out / "log.txt",
                upstream_kinds={"onnx": "onnx.export"},
                areas={"trt-timing": tmp_path / "cache" / "trt-timing"})
    TensorRTBuildExecutor().run(task)
    return task


def refit(tmp_path: Path, engine: Task, weights: Path, name: str = "r",
          params: Optional[Dict[str, Any]] = None, engine_kind: str = "tensorrt.build") -> Task:
    out = tmp_path / name
    out.mkdir()
    task = Task(step_id=name, kind="tensorrt.refit",
                params=TensorRTRefitExecutor.Params.model_validate(params or {})
                .model_dump(mode="json"), inputs={},
                upstream={"engine": dict(engine.outputs), "w": {"model": weights}},
                outputs={n: out / f for n, f in TensorRTRefitExecutor.outputs.items()},
                work_dir=out, recipe_dir=tmp_path, log_path=out / "log.txt",
                upstream_kinds={"engine": engine_kind, "w": "onnx.export"})
    task.meta = TensorRTRefitExecutor().run(task)  # type: ignore[attr-defined]
    return task


def load(task: Task, tmp_path: Path, kind: str = "tensorrt.build") -> TensorRTRuntime:
    """As verify and benchmark load a step's engine: its kind, its info, the recipe dir."""
    return TensorRTRuntime.load(task.outputs["model"], RuntimeContext(
        kind=kind, meta=artifact_info(task.outputs), recipe_dir=tmp_path))


def ort(path: Path, x: np.ndarray, relu_for: Optional[str] = None) -> np.ndarray:
    """onnxruntime's output for ``path``; ``relu_for``: the plugin op to run as Relu."""
    import onnx
    import onnxruntime

    model = onnx.load(str(path))
    if relu_for:
        for node in model.graph.node:
            if node.op_type == relu_for:
                node.op_type, node.domain = "Relu", ""
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


X = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)


# --- TensorRT's own plugins -----------------------------------------------------------------

def test_tensorrt_plugins_are_registered_before_every_deserialize(fake, tmp_path):
    """An engine with TensorRT's InstanceNorm plugin (native_instancenorm: false) loads in a
    process that only verifies or refits: init_libnvinfer_plugins comes first there too."""
    trt = fake()
    onnx_path = tmp_path / "in.onnx"
    make_test_onnx(onnx_path, instance_norm=True)
    task = build(tmp_path, onnx_path, {"profiles": [PROFILE], "native_instancenorm": False,
                                       "refit": True})
    assert json.loads(task.outputs["model"].read_bytes())["plugins"] == \
        [["InstanceNormalization_TRT", "1", ""]]
    assert "error" not in json.loads(task.outputs["layers"].read_text())

    trt = fake()  # a fresh worker: nothing registered yet
    bare = trt.Runtime(trt.Logger())
    assert bare.deserialize_cuda_engine(task.outputs["model"].read_bytes()) is None  # the fake
    del bare
    rt = load(task, tmp_path)
    np.testing.assert_allclose(rt.run([X])[0], ort(onnx_path, X), rtol=1e-5, atol=1e-5)
    rt.close()
    fake()
    new = tmp_path / "new.onnx"
    make_test_onnx(new, instance_norm=True, seed=3)
    done = refit(tmp_path, task, new)
    assert done.meta["check"]["ran"] is True  # type: ignore[attr-defined]
    assert ("init_libnvinfer_plugins", "") in trt.CALLS


# --- user plugins ---------------------------------------------------------------------------

def plugin_name() -> str:
    return "BgRelu" + uuid.uuid4().hex[:8]


@needs_cc
@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_a_plugin_engine_loads_with_its_recorded_libraries_in_a_new_process(fake, tmp_path,
                                                                           kind):
    trt = fake()
    op = plugin_name()
    lib = Path(trt.make_plugin_library(tmp_path / "libplug.so", kind, f"{op}=Relu"))
    onnx_path = tmp_path / "plug.onnx"
    make_test_onnx(onnx_path, plugin_op=op)
    spec = {"path": "libplug.so", "kind": kind}
    task = build(tmp_path, onnx_path, {"profiles": [PROFILE], "plugins": [spec], "refit": True},
                 inputs={"plugin:libplug.so": lib})
    info = json.loads(task.outputs["info"].read_text())
    assert info["plugins"] == [{
        "path": "libplug.so", "kind": kind, "sha256": trt_plugins.file_sha256(lib),
        "creators": [[op, "1", ""]] if kind == "dynamic" else []}]
    assert "error" not in json.loads(task.outputs["layers"].read_text())  # inspected
    calls = [c for c in trt.CALLS if c[0] == "load_library"]
    # dynamic: into the builder's registry and the inspecting Runtime's; static: never
    assert len(calls) == (2 if kind == "dynamic" else 0)

    fake()  # verify in a new worker: the engine's libraries come from its info
    rt = load(task, tmp_path)
    np.testing.assert_allclose(rt.run([X])[0], ort(onnx_path, X, relu_for=op), rtol=1e-5,
                               atol=1e-5)
    rt.close()
    fake()  # refit in a new worker, then verify its output through the refit step's info
    new = tmp_path / "new.onnx"
    make_test_onnx(new, plugin_op=op, seed=4)
    done = refit(tmp_path, task, new)
    assert json.loads(done.outputs["info"].read_text())["plugins"] == info["plugins"]
    fake()
    rt = load(done, tmp_path, "tensorrt.refit")
    np.testing.assert_allclose(rt.run([X])[0], ort(new, X, relu_for=op), rtol=1e-5, atol=1e-5)
    rt.close()


@needs_cc
def test_without_its_library_a_dynamic_plugin_engine_does_not_load(fake, tmp_path):
    """What recording the libraries fixes: the same engine, its info without them."""
    trt = fake()
    op = plugin_name()
    lib = Path(trt.make_plugin_library(tmp_path / "libplug.so", "dynamic", f"{op}=Relu"))
    onnx_path = tmp_path / "plug.onnx"
    make_test_onnx(onnx_path, plugin_op=op)
    task = build(tmp_path, onnx_path, {"profiles": [PROFILE], "plugins": [
        {"path": "libplug.so", "kind": "dynamic"}]}, inputs={"plugin:libplug.so": lib})
    fake()
    info = {**artifact_info(task.outputs), "plugins": []}
    with pytest.raises(StepFailed, match=f"Cannot find plugin: {op}, version: 1"):
        TensorRTRuntime.load(task.outputs["model"], RuntimeContext(
            kind="tensorrt.build", meta=info, recipe_dir=tmp_path))


@needs_cc
def test_a_plugin_library_that_changed_since_the_build_is_refused(fake, tmp_path):
    trt = fake()
    op = plugin_name()
    lib = Path(trt.make_plugin_library(tmp_path / "libplug.so", "dynamic", f"{op}=Relu"))
    onnx_path = tmp_path / "plug.onnx"
    make_test_onnx(onnx_path, plugin_op=op)
    task = build(tmp_path, onnx_path, {"profiles": [PROFILE], "plugins": [
        {"path": "libplug.so", "kind": "dynamic"}]}, inputs={"plugin:libplug.so": lib})
    trt.make_plugin_library(lib, "dynamic", f"{op}=Sigmoid")  # rebuilt: other bytes
    with pytest.raises(StepFailed) as err:
        load(task, tmp_path)
    assert err.value.message.startswith("plugin library 'libplug.so' changed since the engine "
                                        "was built (sha256 ")
    lib.unlink()
    with pytest.raises(StepFailed, match="plugin library 'libplug.so' the engine was built "
                                         "with is not there"):
        load(task, tmp_path)


@needs_cc
def test_a_library_is_not_loaded_twice_where_its_plugins_are_visible(fake, tmp_path):
    """load_library returns None when a plugin of the library is already registered: the
    second load into the same registry is skipped (its creators were recorded the first
    time)."""
    trt = fake()
    op = plugin_name()
    path = Path(trt.make_plugin_library(tmp_path / "libplug.so", "dynamic", f"{op}=Relu"))
    lib = trt_plugins.PluginLibrary("libplug.so", "dynamic", path,
                                    trt_plugins.file_sha256(path))
    registry = trt.get_plugin_registry()
    first = trt_plugins.load_dynamic(registry, lib)
    assert first.creators == ((op, "1", ""),)
    again = trt_plugins.load_dynamic(registry, first)
    assert again == first
    assert [c for c in trt.CALLS if c[0] == "load_library"] == [("load_library", str(path))]
    assert registry.load_library(str(path)) is None  # what loading it again would have done


def test_a_recipe_says_which_kind_a_plugin_library_is():
    with pytest.raises(ValidationError) as err:
        TensorRTBuildParams.model_validate({"plugins": ["libmy.so"]})
    assert "plugins[0]: say how TensorRT loads 'libmy.so': {path: libmy.so, kind: dynamic} " \
           "(the library exports getCreators" in str(err.value)
    with pytest.raises(ValidationError):
        TensorRTBuildParams.model_validate({"plugins": [{"path": "a.so", "kind": "auto"}]})
    p = TensorRTBuildParams.model_validate({"plugins": [{"path": "a.so", "kind": "static"}]})
    assert p.plugins[0].kind == "static"


# --- one logger per worker ------------------------------------------------------------------

def test_a_workers_tensorrt_messages_reach_the_step_that_runs(fake, tmp_path):
    """TensorRT keeps the first logger while any builder, runtime or refitter lives: a runtime
    verify still holds must not take the next build's messages (issue 1475)."""
    fake()
    onnx_path = tmp_path / "m.onnx"
    make_test_onnx(onnx_path)
    first = build(tmp_path, onnx_path, {"profiles": [PROFILE]}, "b1")
    held = load(first, tmp_path)  # a runtime still alive in this worker
    held.messages.clear()
    second = build(tmp_path, onnx_path, {"profiles": [PROFILE], "optimization_level": 1},
                   "b2")
    log = second.outputs["log"].read_text()
    assert "[INFO] [fake] building 7 layers" in log
    assert not [m for _, m in held.messages if "building" in m]
    assert "differs from one already provided" not in log
    held.close()


def test_the_fake_keeps_one_logger_while_objects_live(fake):
    trt = fake()
    seen: Dict[str, List[str]] = {"a": [], "b": []}

    def logger(key: str) -> Any:
        class L(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                seen[key].append(msg)

        return L()

    a, b = logger("a"), logger("b")
    builder = trt.Builder(a)
    runtime = trt.Runtime(b)
    runtime.deserialize_cuda_engine(b"not an engine")
    assert seen["b"] == [] and any("not a serialized engine" in m for m in seen["a"])
    assert any("differs from one already provided" in m for m in seen["a"])
    del builder, runtime
    trt.Runtime(b).deserialize_cuda_engine(b"again")
    assert any("not a serialized engine" in m for m in seen["b"])
