"""The pure parts of the TensorRT steps: parameters, profile checks against the ONNX model's
inputs, the build description per TensorRT version, the structure digest, the environment
probe and its one-line failure."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from pydantic import ValidationError

from buildgraph.backends.tensorrt import env as trt_env
from buildgraph.errors import StepFailed
from buildgraph.backends.tensorrt.builder import ParserIssue, engine_precision, layer_summary, parser_failure
from trt_fake import make_test_onnx
from buildgraph.backends.tensorrt.build_params import DescriptionError, InputSpec, ShapeRange, TensorRTBuildParams, check_profiles, default_profiles, describe_build, model_spec_inputs, onnx_inputs, parse_size, tactic_flags
from buildgraph.backends.tensorrt.structure import structure_digest, weight_names

BATCH = {"x": {"min": [1, 3, 16, 16], "opt": [8, 3, 16, 16], "max": [32, 3, 16, 16]}}


def params(**kw) -> TensorRTBuildParams:
    return TensorRTBuildParams.model_validate(kw)


# --- parameters ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [(1024, 1024), ("4GiB", 4 * 2 ** 30),
                                           ("512 MiB", 512 * 2 ** 20), ("1GB", 10 ** 9),
                                           ("1.5KiB", 1536), ("7", 7)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["4 gigs", "-1", "GiB", True])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_shape_range_must_be_ordered_and_same_rank():
    with pytest.raises(ValidationError, match="min <= opt <= max"):
        ShapeRange(min=[8], opt=[4], max=[16])
    with pytest.raises(ValidationError, match="same rank"):
        ShapeRange(min=[1, 3], opt=[1], max=[1, 3])


@pytest.mark.parametrize("kw,message", [
    ({"workspace": "1GiB", "memory_pools": {"workspace": "2GiB"}}, "workspace limit once"),
    ({"exclude_lean_runtime": True}, "needs version_compatible"),
    ({"strip_weights": True}, "needs refit"),
    ({"refit": True, "sparsity": True}, "sparsity"),
    ({"timing_cache": "pinned"}, "needs timing_cache_file"),
    ({"timing_cache_file": "t.cache"}, "only read with timing_cache: pinned"),
    ({"profiles": [{}]}, "profiles\\[0\\] is empty"),
    ({"workspace": "lots"}, "expected a size"),
    ({"optimization_level": 6}, "less than or equal to 5"),
    ({"memory_pools": {"vram": 1}}, "workspace"),
])
def test_params_reject_inconsistent_settings(kw, message):
    with pytest.raises(ValidationError, match=message):
        params(**kw)


# --- profiles against the model's inputs --------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    make_test_onnx(path)
    return path


def test_onnx_inputs_reads_dynamic_dims(tiny):
    assert onnx_inputs(tiny) == {"x": InputSpec("x", ("batch", 3, 16, 16), "float32")}


def test_valid_profile_has_no_problems(tiny):
    p = params(profiles=[BATCH])
    assert check_profiles(p.profiles, onnx_inputs(tiny), "the ONNX model") == []


def test_profile_problems_name_input_rank_and_fixed_axes(tiny):
    inputs = onnx_inputs(tiny)
    wrong_name = params(profiles=[{"images": BATCH["x"]}]).profiles
    problems = check_profiles(wrong_name, inputs, "the ONNX model")
    assert problems[0] == ("profiles[0].images", "the ONNX model has no input 'images'; its "
                                                 "inputs: x [batch, 3, 16, 16]")
    assert problems[1][0] == "profiles[0]" and "dynamic input 'x'" in problems[1][1]
    rank = params(profiles=[{"x": {"min": [1, 3, 16], "opt": [8, 3, 16],
                                   "max": [32, 3, 16]}}]).profiles
    assert check_profiles(rank, inputs, "m") == [
        ("profiles[0].x", "rank 3 given, but input 'x' of m has rank 4 [batch, 3, 16, 16]")]
    fixed = params(profiles=[{"x": {"min": [1, 3, 8, 16], "opt": [8, 3, 16, 16],
                                    "max": [32, 3, 16, 16]}}]).profiles
    (where, message), = check_profiles(fixed, inputs, "m")
    assert where == "profiles[0].x" and "axis 2 of input 'x' is fixed at 16" in message


def test_misspelt_input_gets_a_suggestion(tiny):
    problems = check_profiles(params(profiles=[{"image": {"min": [1], "opt": [1],
                                                          "max": [2]}}]).profiles,
                              {"images": InputSpec("images", ("b",))}, "m")
    assert "did you mean 'images'?" in problems[0][1]


def test_several_profiles_are_each_checked(tiny):
    second = {"x": {"min": [1, 3, 16, 16], "opt": [1, 3, 16, 16], "max": [1, 3, 16, 16]}}
    assert check_profiles(params(profiles=[BATCH, second]).profiles, onnx_inputs(tiny),
                          "m") == []
    problems = check_profiles(params(profiles=[BATCH, {"y": BATCH["x"]}]).profiles,
                              onnx_inputs(tiny), "m")
    assert [w for w, _ in problems] == ["profiles[1].y", "profiles[1]"]


def test_no_profile_for_a_dynamic_model_is_a_problem(tiny):
    (where, message), = check_profiles([], onnx_inputs(tiny), "the ONNX model")
    assert where == "profiles" and "'x' [batch, 3, 16, 16]" in message


def test_default_profile_from_model_dims():
    spec = {"inputs": {"x": {"shape": ["batch", 3, 224, 224], "dtype": "float32"}},
            "dims": {"batch": {"min": 1, "opt": 8, "max": 32}}}
    inputs = model_spec_inputs(spec)
    (profile,) = default_profiles(inputs, spec["dims"])
    assert profile["x"].min == [1, 3, 224, 224] and profile["x"].max == [32, 3, 224, 224]
    assert default_profiles(inputs, {}) == []


# --- the build description ----------------------------------------------------------------

def test_trt11_build_is_strongly_typed_with_translated_options():
    p = params(profiles=[BATCH], workspace="2GiB", memory_pools={"tactic_dram": "1GiB"},
               optimization_level=4, hardware_compatibility="ampere_plus",
               version_compatible=True, refittable=True, tf32=False, max_aux_streams=2,
               dla_core=0)
    d = describe_build(p, "11.4.0.106")
    assert d.strongly_typed
    assert d.builder_flags == ("REFIT", "VERSION_COMPATIBLE", "GPU_FALLBACK")
    assert d.cleared_flags == ("TF32",)
    assert d.memory_pools == (("TACTIC_DRAM", 2 ** 30), ("WORKSPACE", 2 * 2 ** 30))
    assert d.profiles == ((("x", (1, 3, 16, 16), (8, 3, 16, 16), (32, 3, 16, 16)),),)
    assert d.hardware_compatibility == "AMPERE_PLUS" and d.optimization_level == 4
    assert d.parser_flags == (("NATIVE_INSTANCENORM", True),)
    assert tactic_flags(d) == ("GPU_FALLBACK", "REFIT", "VERSION_COMPATIBLE", "no-TF32",
                               "hwcompat-AMPERE_PLUS", "dla")


def test_trt11_refuses_legacy_precision_flags_with_the_way_forward():
    with pytest.raises(DescriptionError) as err:
        describe_build(params(legacy_precision_flags=["fp16"]), "11.4.0.106")
    assert "onnx.autocast" in str(err.value) and "onnx.quantize" in str(err.value)


def test_trt10_applies_legacy_precision_flags_weakly_typed():
    d = describe_build(params(legacy_precision_flags=["fp16", "int8"]), "10.16.1.11")
    assert not d.strongly_typed and d.builder_flags == ("FP16", "INT8")
    assert "weakly-typed" in tactic_flags(d) and "FP16" in tactic_flags(d)


def test_pinned_cache_turns_misses_into_errors():
    d = describe_build(params(timing_cache="pinned", timing_cache_file="t.cache"), "11.0")
    assert "ERROR_ON_TIMING_CACHE_MISS" in d.builder_flags
    assert "ERROR_ON_TIMING_CACHE_MISS" not in tactic_flags(d)


# --- structure digest (weight-agnostic refit) ---------------------------------------------

def test_structure_digest_ignores_weight_values_only(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    make_test_onnx(a, seed=0)
    make_test_onnx(b, seed=1)
    assert onnx.load(a).SerializeToString() != onnx.load(b).SerializeToString()
    assert structure_digest(a) == structure_digest(b)
    wider = tmp_path / "c.onnx"
    make_test_onnx(wider, channels=(32, 48))
    assert structure_digest(wider) != structure_digest(a)
    other_op = tmp_path / "d.onnx"
    make_test_onnx(other_op, extra_op="Softmax")
    assert structure_digest(other_op) != structure_digest(a)


def test_structure_digest_keeps_small_and_integer_constants(tmp_path):
    path = tmp_path / "a.onnx"
    model = make_test_onnx(path)
    assert weight_names(model) == {"w1", "b1", "w2", "b2", "w3", "b3"}
    # an int64 shape initializer and a 2-element float (a Clip bound) are structure
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, -1], np.int64), "shape"))
    model.graph.initializer.append(numpy_helper.from_array(np.array([0, 6], np.float32), "clip"))
    assert weight_names(model) == {"w1", "b1", "w2", "b2", "w3", "b3"}
    d1 = structure_digest(model)
    model.graph.initializer[-2].CopyFrom(numpy_helper.from_array(np.array([1, 64], np.int64),
                                                                 "shape"))
    assert structure_digest(model) != d1


# --- environment --------------------------------------------------------------------------

def test_gpu_query_parsing_and_visible_devices():
    text = ("NVIDIA H100 80GB HBM3, 9.0, 570.86, 81559, GPU-aaaa\n"
            "NVIDIA L4, 8.9, 570.86, 23034, GPU-bbbb\n")
    gpus = trt_env.parse_gpu_query(text)
    assert [g.name for g in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    assert gpus[1].compute_capability == "8.9" and gpus[0].memory_mib == 81559
    assert [g.name for g in trt_env.visible(gpus, "1")] == ["NVIDIA L4"]
    assert [g.name for g in trt_env.visible(gpus, "GPU-bbbb,0")] == ["NVIDIA L4",
                                                                     "NVIDIA H100 80GB HBM3"]
    assert trt_env.visible(gpus, "") == () and trt_env.visible(gpus, "5") == ()
    assert trt_env.parse_gpu_query("Tesla T4, [N/A], 450.1, 15109, GPU-c\n")[0] \
        .compute_capability == "unknown"


def test_fingerprint_names_trt_cuda_gpu_and_compat_level():
    env = trt_env.TrtEnvironment("11.4.0.106", "12.9", "12.9",
                                 (trt_env.GPU("NVIDIA L4", "8.9"),))
    assert env.fingerprint() == {"tensorrt": "11.4.0.106", "cuda": "12.9", "gpu": "NVIDIA L4",
                                 "compute_capability": "8.9"}
    assert env.fingerprint("ampere_plus")["hardware_compatibility"] == "ampere_plus"


def test_missing_tensorrt_and_gpu_is_one_line():
    env = trt_env.TrtEnvironment(None, None, None, (), "nvidia-smi not found")
    with pytest.raises(StepFailed) as err:
        trt_env.load_tensorrt(env)
    message = err.value.message
    assert "\n" not in message
    assert message.startswith("needs an NVIDIA GPU and TensorRT; found: TensorRT not installed")
    assert message.endswith("no NVIDIA GPU (nvidia-smi not found)")


def test_tensorrt_without_gpu_and_unimportable_bindings(monkeypatch):
    env = trt_env.TrtEnvironment("11.4.0.106", "12.x", None, (), "nvidia-smi not found")
    with pytest.raises(StepFailed, match="found: no NVIDIA GPU .*TensorRT 11.4.0.106"):
        trt_env.load_tensorrt(env)
    env = trt_env.TrtEnvironment("11.4.0.106", "12.x", None, (trt_env.GPU("L4", "8.9"),),
                                 module="buildgraph_no_such_tensorrt")
    with pytest.raises(StepFailed, match="TensorRT 11.4.0.106 whose 'import "
                                         "buildgraph_no_such_tensorrt' fails"):
        trt_env.load_tensorrt(env)


def test_probe_here_finds_neither(monkeypatch):
    monkeypatch.delenv(trt_env.MODULE_ENV, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    env = trt_env.probe(refresh=True)
    try:
        assert env.gpu is None and env.gpu_problem == "nvidia-smi not found"
    finally:
        trt_env.probe(refresh=True)


# --- messages -----------------------------------------------------------------------------

def test_parser_failure_lists_nodes_with_op_names():
    issues = [ParserIssue(5, "odd", "FancyOp", "No importer registered for op: FancyOp"),
              ParserIssue(9, "odd2", "FancyOp", "No importer registered for op: FancyOp"),
              ParserIssue(11, "", "Other", "unsupported"),
              ParserIssue(12, "n12", "Other", "unsupported")]
    assert parser_failure(issues) == (
        "TensorRT's ONNX parser rejected 4 nodes (ops: FancyOp, Other): node 5 'odd' "
        "(FancyOp): No importer registered for op: FancyOp; node 9 'odd2' (FancyOp): No "
        "importer registered for op: FancyOp; node 11 (Other): unsupported; and 1 more "
        "(see the log)")


def test_layer_summary_counts_precisions():
    text = ('{"Layers": [{"Name": "a", "Outputs": [{"Format/Datatype": "Row major linear '
            'Half"}]}, {"Name": "b", "Outputs": [{"Format/Datatype": "Int8 NC/32HW32"}]}, '
            '{"Name": "c", "Outputs": [{"Format/Datatype": "Row major linear Float"}]}, '
            '{"Name": "d", "Outputs": [{"Format/Datatype": "Half"}]}]}')
    assert layer_summary(text) == {"layers": 4, "precisions": {"fp16": 2, "fp32": 1,
                                                               "int8": 1}}
    assert layer_summary("not json") == {}
    fp = ('{"Layers": [{"Outputs": [{"Format/Datatype": "Row major linear FP32"}]}, '
          '{"Outputs": [{"Format/Datatype": "Channel major FP16 format where channel % 8 == '
          '0"}]}, {"Outputs": [{"Format/Datatype": "BFloat16"}]}, "Reformat_1"]}')
    assert layer_summary(fp)["precisions"] == {"bf16": 1, "fp16": 1, "fp32": 1}
    assert engine_precision(layer_summary(fp)) == "bf16"
    assert engine_precision({"precisions": {"fp32": 3}}) == "tf32"
