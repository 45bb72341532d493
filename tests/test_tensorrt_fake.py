"""The fake TensorRT module keeps the real API's shape and refusals: every public name it has is
in the real bindings (on the same class), it takes nothing the real one refuses, it returns what
the real one returns, and it decides nothing with buildgraph's code."""

from __future__ import annotations

import ast
import importlib
import json
from typing import Any, List, Tuple

import pytest

from conftest import REPO

FAKE = REPO / "tests" / "fakes" / "trt_fake.py"


def table(name: str) -> set:
    lines = (REPO / "tests" / "data" / name).read_text(encoding="utf-8").splitlines()
    return {ln for ln in lines if ln and not ln.startswith("#")}


@pytest.fixture
def trt(monkeypatch):
    def load(version: str = "11.4.0.106") -> Any:
        monkeypatch.setenv("BUILDGRAPH_FAKE_TRT_VERSION", version)
        import trt_fake

        return importlib.reload(trt_fake)

    yield load
    monkeypatch.delenv("BUILDGRAPH_FAKE_TRT_VERSION", raising=False)
    importlib.reload(importlib.import_module("trt_fake"))


def public_surface(module: Any) -> List[Tuple[str, str]]:
    """(owner, member) for the fake's public names: module level, class and enum members."""
    out = []
    for name in dir(module):
        if name.startswith("_") and name != "__version__" or name in module.FAKE_ONLY:
            continue
        value = getattr(module, name)
        if isinstance(value, type(json)) or getattr(value, "__module__", "") == "typing" or \
                name == "annotations":
            continue  # what the fake imports (json, os, typing.Any, __future__)
        out.append(("tensorrt", name))
        if isinstance(value, type) and name not in ("IHostMemory", "Dims"):
            members = value.__members__ if hasattr(value, "__members__") else vars(value)
            for member in members:
                if not member.startswith("_"):
                    out.append((name, member))
            if name == "ILogger":
                out += [("ILogger.Severity", m) for m in value.Severity.__members__]
    return out


@pytest.mark.parametrize("version,suffix", [("11.4.0.106", ""), ("10.16.1.11", "_10")])
def test_every_public_name_of_the_fake_is_real(trt, version, suffix):
    module = trt(version)
    members = table(f"tensorrt_api_members{suffix}.txt")
    surface = public_surface(module)
    assert ("IExecutionContext", "execute_async_v3") in surface
    assert ("ICudaEngine", "create_serialization_config") in surface
    assert ("BuilderFlag", "FP16") in surface if suffix else ("BuilderFlag", "FP16") not in surface
    unknown = sorted(f"{o}.{m}" for o, m in surface if f"{o}.{m}" not in members)
    assert not unknown, f"the fake has names TensorRT {version} does not: {unknown}"


def test_the_fake_decides_with_its_own_code():
    """It imports nothing from buildgraph: its network digest, refittable weights and
    timing-cache keys are its own, so a test cannot pass because both sides run one function."""
    tree = ast.parse(FAKE.read_text(encoding="utf-8"))
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + \
        [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.split(".")[0] == "buildgraph"], imported


class Sink:
    pass


def logger(trt, sink: list):
    class L(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            sink.append((severity.name, msg))

    return L()


@pytest.fixture
def parsed(trt, tmp_path):
    """(trt, builder, network, config, log) with the test CNN parsed."""
    module = trt()
    onnx_path = tmp_path / "m.onnx"
    module.make_test_onnx(onnx_path)
    log: list = []
    builder = module.Builder(logger(module, log))
    network = builder.create_network(0)
    parser = module.OnnxParser(network, logger(module, log))
    assert parser.parse_from_file(str(onnx_path)) is True
    return module, builder, network, builder.create_builder_config(), log


def profile(trt, builder, *shapes):
    p = builder.create_optimization_profile()
    p.set_shape("x", *shapes)
    return p


LO, MID, HI = [1, 3, 16, 16], [4, 3, 16, 16], [8, 3, 16, 16]


def test_objects_take_no_unknown_attributes_and_enums_are_typed(parsed):
    trt, builder, network, config, _ = parsed
    with pytest.raises(AttributeError):
        config.int8_calibrator = None  # gone in TensorRT 11
    with pytest.raises(AttributeError):
        builder.build_engine(network, config)  # noqa: B018 - removed in 10
    with pytest.raises(TypeError, match="expected BuilderFlag"):
        config.set_flag(trt.MemoryPoolType.WORKSPACE)
    with pytest.raises(TypeError, match="expected BuilderFlag"):
        config.set_flag(4)  # an int is not an enum member for pybind11
    with pytest.raises(TypeError, match="expected ProfilingVerbosity"):
        config.profiling_verbosity = "detailed"
    with pytest.raises(AttributeError):
        trt.BuilderFlag.FP16  # noqa: B018 - TensorRT 11 has no builder-flag precisions
    untyped = type("L", (trt.ILogger,), {"__init__": lambda self: None,
                                         "log": lambda self, s, m: None})
    with pytest.raises(TypeError, match="must be called"):
        trt.Builder(untyped())


def test_profiles_follow_tensorrts_return_conventions(parsed):
    trt, builder, network, config, log = parsed
    p = builder.create_optimization_profile()
    with pytest.raises(RuntimeError, match="Shape provided for opt is inconsistent"):
        p.set_shape("x", MID, LO, HI)
    assert not p and config.add_optimization_profile(p) == -1  # min set, opt and max not
    assert config.add_optimization_profile(builder.create_optimization_profile()) == -1
    assert config.add_optimization_profile(profile(trt, builder, LO, MID, HI)) == 0
    assert config.num_optimization_profiles == 1


@pytest.mark.parametrize("shapes,error", [
    (None, "Network has dynamic or shape inputs, but no optimization profile"),
    ({"images": (LO, MID, HI)}, "the network has no input 'images'"),
    ({"x": ([1, 3, 8, 8], [1, 3, 8, 8], [1, 3, 8, 8])}, "does not fit its dimensions"),
])
def test_the_builder_refuses_bad_profiles_with_none_and_an_error(parsed, shapes, error):
    trt, builder, network, config, log = parsed
    if shapes:
        p = builder.create_optimization_profile()
        for name, (a, b, c) in shapes.items():
            p.set_shape(name, a, b, c)
        assert config.add_optimization_profile(p) == 0
    assert builder.build_serialized_network(network, config) is None
    assert log[-1][0] == "ERROR" and error in log[-1][1]


def test_a_build_that_works_and_what_the_builder_refuses_on_flags(parsed):
    trt, builder, network, config, log = parsed
    config.add_optimization_profile(profile(trt, builder, LO, MID, HI))
    assert isinstance(builder.build_serialized_network(network, config), bytes)
    config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    assert builder.build_serialized_network(network, config) is None
    assert "EXCLUDE_LEAN_RUNTIME needs VERSION_COMPATIBLE" in log[-1][1]


def test_timing_caches_refuse_what_they_cannot_read_or_use(parsed):
    trt, builder, network, config, log = parsed
    assert config.create_timing_cache(b"\x00garbage") is None
    assert log[-1][0] == "ERROR"
    cache = config.create_timing_cache(b"")
    foreign = json.loads(bytes(cache.serialize()))
    foreign["header"]["gpu"] = "Another GPU"
    other = config.create_timing_cache(json.dumps(foreign).encode())
    assert config.set_timing_cache(other, False) is False
    assert config.set_timing_cache(other, True) is True
    assert cache.combine(other, False) is False and cache.combine(other, True) is True


def build(trt, builder, network, flags=(), strip=False):
    config = builder.create_builder_config()
    config.add_optimization_profile(profile(trt, builder, LO, MID, HI))
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    return bytes(builder.build_serialized_network(network, config))


def test_runtime_refuses_host_code_unless_allowed_and_other_versions(parsed, trt):
    module, builder, network, _, log = parsed
    plan = build(module, builder, network, ["VERSION_COMPATIBLE"])
    runtime = module.Runtime(logger(module, log))
    assert runtime.deserialize_cuda_engine(plan) is None
    assert "engine_host_code_allowed is False" in log[-1][1]
    runtime.engine_host_code_allowed = True
    assert runtime.deserialize_cuda_engine(plan) is not None
    plain = build(module, builder, network)
    newer = trt("11.5.0.1")
    r2 = newer.Runtime(logger(newer, log))
    r2.engine_host_code_allowed = True
    assert r2.deserialize_cuda_engine(plain) is None and "built by TensorRT 11.4" in log[-1][1]
    assert r2.deserialize_cuda_engine(plan) is not None  # version-compatible: later runtimes


def test_refit_refuses_a_plain_engine_and_wrong_weights(parsed, tmp_path):
    trt, builder, network, _, log = parsed
    runtime = trt.Runtime(logger(trt, log))
    plain = runtime.deserialize_cuda_engine(build(trt, builder, network))
    assert plain.refittable is False
    with pytest.raises(TypeError, match="returned nullptr"):
        trt.Refitter(plain, logger(trt, log))
    engine = runtime.deserialize_cuda_engine(build(trt, builder, network, ["REFIT"]))
    refitter = trt.Refitter(engine, logger(trt, log))
    wider = tmp_path / "wider.onnx"
    trt.make_test_onnx(wider, channels=(32, 48))
    parser = trt.OnnxParserRefitter(refitter, logger(trt, log))
    assert parser.refit_from_file(str(wider)) is False
    assert parser.num_errors == 3 and parser.get_error(3) is None
    assert parser.get_error(0).code() == trt.ErrorCode.REFIT_FAILED


def test_a_stripped_engine_runs_only_after_a_refit(parsed, tmp_path):
    trt, builder, network, _, log = parsed
    runtime = trt.Runtime(logger(trt, log))
    engine = runtime.deserialize_cuda_engine(build(trt, builder, network, ["REFIT",
                                                                          "STRIP_PLAN"]))
    assert engine.create_execution_context() is None and "stripped" in log[-1][1]
    config = engine.create_serialization_config()
    assert config.get_flag(trt.SerializationFlag.EXCLUDE_WEIGHTS)
    refitter = trt.Refitter(engine, logger(trt, log))
    assert refitter.refit_cuda_engine() is False  # every stripped weight is missing
    same = tmp_path / "same.onnx"
    trt.make_test_onnx(same)
    assert trt.OnnxParserRefitter(refitter, logger(trt, log)).refit_from_file(str(same))
    assert refitter.get_missing_weights() == [] and refitter.refit_cuda_engine() is True
    assert engine.create_execution_context() is not None


def test_the_execution_context_checks_shapes_and_addresses(parsed):
    import numpy as np

    trt, builder, network, _, log = parsed
    runtime = trt.Runtime(logger(trt, log))
    engine = runtime.deserialize_cuda_engine(build(trt, builder, network))
    context = engine.create_execution_context()
    assert context.set_input_shape("x", (9, 3, 16, 16)) is False  # beyond the profile's max
    assert context.set_input_shape("y", (2, 10)) is False  # an output
    assert context.get_tensor_shape("y") == (-1, 10)
    assert context.set_input_shape("x", (2, 3, 16, 16)) is True
    assert context.get_tensor_shape("y") == (2, 10)
    assert context.execute_async_v3(0) is False and "no address" in log[-1][1]
    buffers = trt.HostBuffers()
    x_addr, x = buffers.upload(np.ones((2, 3, 16, 16)), "float32")
    y_addr, y = buffers.empty((2, 10), "float32")
    assert context.set_tensor_address("z", x_addr) is False
    assert context.set_tensor_address("x", x_addr) and context.set_tensor_address("y", y_addr)
    assert context.execute_async_v3(buffers.stream) is True
    assert np.isfinite(y).all() and y.std() > 0
    assert context.set_optimization_profile_async(1, 0) is False


def test_trt10_has_the_precision_flags_and_refuses_them_on_strongly_typed_networks(trt, tmp_path):
    module = trt("10.16.1.11")
    onnx_path = tmp_path / "m.onnx"
    module.make_test_onnx(onnx_path)
    log: list = []
    builder = module.Builder(logger(module, log))
    strong = 1 << int(module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    for flags, works in ((0, True), (strong, False)):
        network = builder.create_network(flags)
        module.OnnxParser(network, logger(module, log)).parse_from_file(str(onnx_path))
        config = builder.create_builder_config()
        config.add_optimization_profile(profile(module, builder, LO, MID, HI))
        config.set_flag(module.BuilderFlag.FP16)
        assert (builder.build_serialized_network(network, config) is not None) is works
    assert "not allowed on a strongly typed network" in log[-1][1]


def test_trt9_parses_onnx_only_into_explicit_batch_networks(trt, tmp_path):
    module = trt("9.3.0.1")
    onnx_path = tmp_path / "m.onnx"
    module.make_test_onnx(onnx_path)
    builder = module.Builder(logger(module, []))
    implicit = module.OnnxParser(builder.create_network(0), logger(module, []))
    assert implicit.parse_from_file(str(onnx_path)) is False
    assert "EXPLICIT_BATCH" in implicit.get_error(0).desc()
    explicit = builder.create_network(1 << int(module.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    assert module.OnnxParser(explicit, logger(module, [])).parse_from_file(str(onnx_path))
