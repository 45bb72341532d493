"""``trtexec``: the option translation (pure), and a run through a stand-in trtexec script
that records its arguments and writes what the real one writes."""

from __future__ import annotations

import importlib
import json
import os
import stat
from pathlib import Path

import pytest

from buildgraph.backends.tensorrt import env as trt_env
from buildgraph.errors import StepFailed
from buildgraph.engine.executor import DescribeContext, Task
from buildgraph.backends.tensorrt.trtexec import TrtexecExecutor, trtexec_args, version_from_output, _versions
from trt_fake import make_test_onnx
from buildgraph.backends.tensorrt.spec import DescriptionError, TensorRTBuildParams, describe_build

PROFILE = {"x": {"min": [1, 3, 16, 16], "opt": [4, 3, 16, 16], "max": [8, 3, 16, 16]}}


def test_options_follow_trtexecs_grammar(tmp_path):
    p = TensorRTBuildParams.model_validate({
        "profiles": [PROFILE, {"x": {"min": [1, 3, 16, 16], "opt": [1, 3, 16, 16],
                                     "max": [1, 3, 16, 16]}}],
        "workspace": "1GiB", "memory_pools": {"tactic_shared_memory": "48KiB"},
        "optimization_level": 5, "hardware_compatibility": "ampere_plus",
        "version_compatible": True, "refit": True, "tf32": False, "max_aux_streams": 0,
        "native_instancenorm": False})
    desc = describe_build(p, "11.4.0", plugins=["/p/libx.so"])
    args = trtexec_args(desc, Path("m.onnx"), Path("e.engine"), Path("l.json"), Path("t.cache"))
    assert args == [
        "--onnx=m.onnx", "--saveEngine=e.engine", "--skipInference", "--stronglyTyped",
        "--refit", "--versionCompatible", "--noTF32",
        "--memPoolSize=tacticSharedMem:49152B,workspace:1073741824B",
        "--builderOptimizationLevel=5", "--hardwareCompatibilityLevel=ampere+",
        "--staticPlugins=/p/libx.so", "--maxAuxStreams=0", "--profilingVerbosity=detailed",
        "--pluginInstanceNorm",
        "--profile=0", "--minShapes=x:1x3x16x16", "--optShapes=x:4x3x16x16",
        "--maxShapes=x:8x3x16x16",
        "--profile=1", "--minShapes=x:1x3x16x16", "--optShapes=x:1x3x16x16",
        "--maxShapes=x:1x3x16x16",
        "--timingCacheFile=t.cache", "--exportLayerInfo=l.json"]
    legacy = describe_build(TensorRTBuildParams.model_validate(
        {"legacy_precision_flags": ["fp16", "int8"], "profiles": [PROFILE]}), "10.16")
    args = trtexec_args(legacy, Path("m.onnx"), Path("e"), None, None)
    assert "--fp16" in args and "--int8" in args and "--stronglyTyped" not in args


def test_tactic_dram_has_no_trtexec_option():
    desc = describe_build(TensorRTBuildParams.model_validate(
        {"memory_pools": {"tactic_dram": "1GiB"}}), "11.4")
    with pytest.raises(DescriptionError, match="cannot limit the tactic_dram"):
        trtexec_args(desc, Path("m"), Path("e"), None, None)


def test_version_banner():
    assert version_from_output("&&&& RUNNING TensorRT.trtexec [TensorRT v110400] [b106] # "
                               "trtexec --help") == "11.4.0"
    assert version_from_output("[TensorRT v101601]") == "10.16.1"
    assert version_from_output("nothing") is None


FAKE_TRTEXEC = r"""#!/usr/bin/env bash
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v110400] [b106] # trtexec $*"
printf '%s\n' "$@" >> "$(dirname "$0")/args.txt"
for a in "$@"; do
  case "$a" in
    --saveEngine=*) echo '{"fake": "trtexec"}' > "${a#--saveEngine=}" ;;
    --exportLayerInfo=*) echo '{"Layers": []}' > "${a#--exportLayerInfo=}" ;;
    --timingCacheFile=*) f="${a#--timingCacheFile=}"; cat "$f" 2>/dev/null > "$f.tmp"; echo "timed" >> "$f.tmp"; mv "$f.tmp" "$f" ;;
  esac
done
echo "&&&& PASSED TensorRT.trtexec"
"""


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "trtexec"
    script.write_text(FAKE_TRTEXEC)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(trt_env.MODULE_ENV, "trt_fake")
    importlib.reload(importlib.import_module("trt_fake"))
    trt_env.probe(refresh=True)
    _versions.clear()
    yield bin_dir
    monkeypatch.delenv(trt_env.MODULE_ENV)
    trt_env._cached = None
    _versions.clear()


def make_task(tmp_path: Path, params: dict, name: str = "t") -> Task:
    onnx = tmp_path / "model.onnx"
    if not onnx.exists():
        make_test_onnx(onnx)
    root = tmp_path / name
    (root / "out").mkdir(parents=True)
    (root / "work").mkdir()
    return Task(step_id=name, kind="trtexec",
                params=TrtexecExecutor.Params.model_validate(params).model_dump(mode="json"),
                inputs={}, upstream={"onnx": {"model": onnx}},
                outputs={n: root / "out" / f for n, f in TrtexecExecutor.outputs.items()},
                work_dir=root / "work", recipe_dir=tmp_path, log_path=root / "log.txt",
                areas={"trt-timing": tmp_path / "cache" / "trt-timing"})


def test_run_through_a_trtexec_binary(fake_gpu, tmp_path):
    executor = TrtexecExecutor()
    assert executor.describe(executor.Params(), DescribeContext(recipe_dir=tmp_path)
                             ).env["tensorrt"] == "11.4.0"
    task = make_task(tmp_path, {"profiles": [PROFILE], "extra_args": ["--noCompilationCache"]})
    meta = executor.run(task)
    assert json.loads(task.outputs["model"].read_text()) == {"fake": "trtexec"}
    assert task.outputs["layers"].read_text().strip() == '{"Layers": []}'
    args = (fake_gpu / "args.txt").read_text().splitlines()
    assert "--minShapes=x:1x3x16x16" in args and args[-1] == "--noCompilationCache"
    assert "&&&& PASSED" in task.outputs["log"].read_text()
    assert meta["timing_cache"]["shared"] == "created"
    second = executor.run(make_task(tmp_path, {"profiles": [PROFILE]}, "t2"))
    assert second["timing_cache"]["shared"] == "combined"
    scope = next((tmp_path / "cache" / "trt-timing").iterdir())
    assert (scope / "cache.bin").read_text() == "timed\ntimed\n"


def test_missing_trtexec_is_one_line(fake_gpu, tmp_path):
    task = make_task(tmp_path, {"profiles": [PROFILE], "trtexec": "no-such-trtexec"})
    with pytest.raises(StepFailed) as err:
        TrtexecExecutor().run(task)
    assert err.value.message == ("needs an NVIDIA GPU and TensorRT's trtexec; found: no "
                                 "'no-such-trtexec' on PATH")
