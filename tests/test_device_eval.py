"""Where verify and benchmark run (issue 21 items 1-4) and candidates that failed upstream
(issue 22 item 5), on this CPU-only machine: every runtime runs where ``device:`` says or
refuses with one line, never on the CPU under the GPU's name; ``max_s`` holds when single runs
are slow; release ranks like against like; one failed candidate does not hide the others.

The same paths on a real GPU are in ``tests/test_gpu_runtimes.py`` (marked gpu)."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import buildgraph  # noqa: E402
from buildgraph.engine.runtime import DeviceUnavailable, RuntimeContext  # noqa: E402
from torch_helpers import MODEL, write_recipe  # noqa: E402

NO_CUDA = pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="these pin the refusals of a machine "
    "without CUDA")


# --- refusals, one line each ---------------------------------------------------------------

def test_onnxruntime_provider_choice_never_lists_the_cpu_for_a_gpu():
    from buildgraph.backends.onnx.runtime import providers_for

    with pytest.raises(DeviceUnavailable) as err:
        providers_for("cuda", ["AzureExecutionProvider", "CPUExecutionProvider"])
    assert err.value.message == ("not runnable on cuda here: onnxruntime has no CUDA provider "
                                 "(onnxruntime-gpu)")
    assert err.value.skip and err.value.device_refusal
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cuda:1", gpu, math="fp32") == [
        ("CUDAExecutionProvider", {"device_id": 1, "use_tf32": "0"})]
    assert providers_for("cuda", gpu, tensorrt=True) == [
        ("TensorrtExecutionProvider", {"device_id": 0}),
        ("CUDAExecutionProvider", {"device_id": 0})]
    with pytest.raises(DeviceUnavailable, match="has no TensorRT provider"):
        providers_for("cuda", gpu[1:], tensorrt=True)
    assert providers_for("cpu", gpu) == ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An ONNX file, a TorchScript trace and a .pt2 of the tiny CNN."""
    root = tmp_path_factory.mktemp("exports")
    write_recipe(root, """
onnx: {uses: onnx.export, with: {model: tiny, exporter: legacy}}
ts: {uses: torchscript, with: {model: tiny, mode: trace}}
ep: {uses: torch.export, with: {model: tiny}}
""")
    result = buildgraph.run(root / "r.yaml", cache_dir=root / "c", build_dir=root / "b")
    assert result.ok, {s: r.message for s, r in result.steps.items() if not r.ok}
    return root, result


@NO_CUDA
def test_every_runtime_refuses_cuda_here_with_one_line(exported):
    import onnxruntime
    import torch

    from buildgraph.engine.runtime import load_runtime

    root, result = exported
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    no_torch_cuda = (f"not runnable on cuda here: this torch ({torch.__version__}) has no CUDA "
                     "device (torch.cuda.is_available() is False)")
    expected = {
        "onnx": ("onnx.export", "not runnable on cuda here: onnxruntime has no CUDA provider "
                                "(onnxruntime-gpu)"),
        "ts": ("torchscript", no_torch_cuda),
        "ep": ("torch.export", no_torch_cuda),
    }
    for step, (kind, message) in expected.items():
        ctx = RuntimeContext(model="tiny", model_spec=MODEL, recipe_dir=root, kind=kind,
                             device="cuda")
        with pytest.raises(DeviceUnavailable) as err:
            load_runtime(result[step].outputs["model"], ctx)
        assert err.value.message == message
    # on the CPU they run, and say so
    ctx = RuntimeContext(model="tiny", model_spec=MODEL, recipe_dir=root, kind="torchscript")
    rt = load_runtime(result["ts"].outputs["model"], ctx)
    assert (rt.details["device"], rt.details["provider"], rt.timing) == ("cpu", "torch", "host")
    ctx = RuntimeContext(model="tiny", model_spec=MODEL, recipe_dir=root, kind="onnx.export")
    rt = load_runtime(result["onnx"].outputs["model"], ctx)
    assert (rt.details["device"], rt.details["provider"]) == ("cpu", "CPUExecutionProvider")


def test_a_tvm_library_runs_only_on_the_device_its_target_names():
    from buildgraph.backends.tvm.runtime import check_device

    with pytest.raises(DeviceUnavailable) as err:
        check_device({"target": {"kind": "llvm"}}, "cuda")
    assert err.value.message == ("not runnable on cuda here: the library was compiled for "
                                 "target kind 'llvm', not cuda (compile it with target: cuda)")
    with pytest.raises(DeviceUnavailable, match="compiled for cuda .set device: cuda"):
        check_device({"target": {"kind": "cuda", "arch": "sm_90"}}, "cpu")
    check_device({"target": {"kind": "cuda"}}, "cuda:0")
    check_device({"target": {"kind": "llvm"}}, "cpu")


@NO_CUDA
def test_verify_and_benchmark_on_cuda_run_nothing_on_the_cpu_and_say_why(tmp_path):
    write_recipe(tmp_path, """
onnx: {uses: onnx.export, with: {model: tiny, exporter: legacy}}
ts: {uses: torchscript, with: {model: tiny, mode: trace}}
verify: {uses: verify, from: [onnx, ts], with: {model: tiny, random: 1, device: cuda}}
bench:
  uses: benchmark
  from: [onnx, ts]
  with: {model: tiny, device: cuda, warmup: 1, runs: 3, window_s: 0.01, max_s: 1}
""")
    result = buildgraph.run(tmp_path / "r.yaml", cache_dir=tmp_path / "c",
                            build_dir=tmp_path / "b", keep_going=True)
    assert result["onnx"].ok and result["ts"].ok
    assert result["verify"].message.startswith(
        "nothing ran on cuda: onnx: not runnable on cuda here: onnxruntime has no CUDA "
        "provider (onnxruntime-gpu) (and 1 more; the report lists each)")
    # the benchmark's eager reference is refused too: it runs on the benchmark's device
    assert result["bench"].message.startswith("nothing ran on cuda: eager: not runnable on "
                                              "cuda here: this torch")
    verify_log = result["verify"].log_path.read_text()
    for cand in ("onnx", "ts"):
        assert f"{cand} (" in verify_log and "): not run: not runnable on cuda here" in \
            verify_log
    bench_log = result["bench"].log_path.read_text()
    assert "p50" not in bench_log  # not one timing was taken, on any device


def test_verify_math_mode_sets_the_tolerances_and_is_stated():
    from buildgraph.backends.evaluate.verify import (MATH_MODES, VerifyExecutor, VerifyParams,
                                                     resolve_tolerance)

    gpu = VerifyParams(model="m", device="cuda")
    assert gpu.math == "fp32" and "TF32 off" in MATH_MODES["fp32"]
    assert VerifyExecutor._precision_checked(gpu, "fp32") == "fp32"
    tf32 = VerifyParams(model="m", device="cuda", math="tf32")
    assert VerifyExecutor._precision_checked(tf32, "fp32") == "tf32"
    assert VerifyExecutor._precision_checked(tf32, "fp16") == "fp16"
    assert VerifyExecutor._precision_checked(VerifyParams(model="m", math="tf32"),
                                             "fp32") == "fp32"  # the CPU has no TF32
    assert resolve_tolerance(tf32, "c", "y", "tf32")["atol"] == 1e-2


# --- max_s: a real cap ---------------------------------------------------------------------

SLOW_PY = '''
import os
import time

import torch
from torch import nn


class Slow(nn.Module):
    """Sleeps in eager mode at batch 7 only (the benchmark's size; the trace and its check
    use others): its TorchScript trace is fast."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        if x.shape[0] == 7 and not torch.jit.is_tracing():
            time.sleep(self.seconds)
        return self.lin(x)


def slow(seconds=1.0):
    return Slow(seconds)
'''


def test_max_s_caps_one_setting_even_when_single_runs_are_slow(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "slow.py").write_text(SLOW_PY)
    spec = {"inputs": {"x": {"shape": ["batch", 4]}}, "dims": {"batch": {"opt": 2}}}
    models = {"stuck": {"source": "models/slow.py:slow", "kwargs": {"seconds": 60.0}, **spec}}
    write_recipe(tmp_path, """
ts: {uses: torchscript, with: {model: stuck, mode: trace}}
bench:
  uses: benchmark
  from: [ts]
  with: {model: stuck, warmup: 3, runs: 5, window_s: 0.01, max_s: 1, threads: {intra: 1},
         dims: {batch: [7]}}
""", models=models)
    start = time.monotonic()
    result = buildgraph.run(tmp_path / "r.yaml", cache_dir=tmp_path / "c",
                            build_dir=tmp_path / "b", jobs=1)
    wall = time.monotonic() - start
    assert result.ok, {s: r.message for s, r in result.steps.items() if not r.ok}
    # the eager reference's first run takes 60 s: the runner's watchdog ends it max_s + 2 s
    # into the setting (a run in Python or in native code cannot be interrupted otherwise;
    # the rule between runs is pinned with a fake clock in test_measure.py)
    report = json.loads((tmp_path / "b" / "bench" / "benchmark.json").read_text())
    (r,) = report["reference"]["results"]
    assert r["stop"] == "max_s" and r["p50_ms"] is None and r["runs"] == 0
    assert r["stop_detail"] == ("stopped at max_s (1 s) after 0 runs: a run was still going "
                                "2 s past the cap")
    assert report["reference"]["capped"] == r["stop_detail"]
    assert r["batch"] == 7
    # the fast candidate is timed as usual
    assert report["candidates"]["ts"]["results"][0]["p50_ms"] > 0
    assert "eager batch=7: stopped at max_s (1 s) after 0 runs" in \
        result["bench"].log_path.read_text()
    assert wall < 55  # nowhere near one 60 s run, let alone the warm-up's three


# --- like against like ---------------------------------------------------------------------

def test_release_never_ranks_timings_from_different_devices_together():
    from buildgraph.backends.evaluate.release import ReleaseExecutor, ReleaseParams

    def entry(device, ms):
        return {"device": device, "kind": "k", "results": [{"batch": 1, "median_ms": ms}]}

    report = {"device": "cuda", "candidates": {
        "tvm": entry("cuda:0 NVIDIA H200", 7.7), "ts": entry("cuda:0 NVIDIA H200", 3.4),
        "onnx": entry("cpu", 1.0), "trt": {"skipped": "not runnable on cuda here: x"}},
        "failed_upstream": ["ep"]}
    verified = {c: True for c in ("tvm", "ts", "onnx", "trt")}
    ranking, reasons = ReleaseExecutor._rank(report, verified, ReleaseParams())
    assert [c for _, c, _ in ranking] == ["ts", "tvm"]
    assert reasons == {
        "onnx": "measured on cpu, not on the benchmark's device cuda: not ranked against the "
                "others",
        "trt": "not benchmarked: not runnable on cuda here: x",
        "ep": "failed upstream (not benchmarked)"}
    # a CPU benchmark (reports before devices were recorded too) ranks as before
    cpu = {"candidates": {"a": {"results": [{"batch": 1, "median_ms": 2.0}]},
                          "b": entry("cpu", 1.0)}}
    ranking, reasons = ReleaseExecutor._rank(cpu, {"a": True, "b": True}, ReleaseParams())
    assert [c for _, c, _ in ranking] == ["b", "a"] and not reasons


# --- one failed candidate does not hide the others ------------------------------------------

FAILING = """
onnx: {uses: onnx.export, with: {model: tiny, exporter: legacy}}
ts: {uses: torchscript, with: {model: tiny, mode: trace}}
bad:
  uses: shell
  with: {cmd: "FAIL"}
  outputs: {model: m.onnx}
verify: {uses: verify, from: [onnx, ts, bad], with: {model: tiny, random: 1}}
strict: {uses: verify, from: [onnx, ts, bad], with: {model: tiny, random: 1, required: [bad]}}
bench:
  uses: benchmark
  from: [onnx, ts, bad]
  with: {model: tiny, warmup: 1, runs: 3, window_s: 0.01, max_s: 1, threads: {intra: 1},
         reference: false}
ship: {uses: release, from: [bench, verify, onnx, ts, bad]}
"""


def test_a_failed_candidate_is_listed_and_the_others_are_checked_timed_and_ranked(tmp_path):
    write_recipe(tmp_path, FAILING.replace("FAIL", "exit 3"))
    run = lambda **kw: buildgraph.run(tmp_path / "r.yaml", cache_dir=tmp_path / "c",  # noqa
                                      build_dir=tmp_path / "b", **kw)
    result = run()
    assert result["verify"].status == "skipped"  # without --keep-going: as before
    result = run(keep_going=True)
    assert not result.ok and result["bad"].status == "failed"
    assert result["verify"].ok and result["bench"].ok and result["ship"].ok, \
        {s: r.message for s, r in result.steps.items() if not r.ok}
    assert result["strict"].message.endswith("required candidate missing: 'bad' failed "
                                             "upstream")
    build = tmp_path / "b"
    verify = json.loads((build / "verify" / "report.json").read_text())
    assert verify["failed_upstream"] == ["bad"] and set(verify["candidates"]) == {"onnx", "ts"}
    assert verify["passed"]
    bench = json.loads((build / "bench" / "benchmark.json").read_text())
    assert bench["failed_upstream"] == ["bad"] and set(bench["candidates"]) == {"onnx", "ts"}
    release = json.loads((build / "ship" / "release.json").read_text())
    assert release["chosen"] in ("onnx", "ts") and release["failed_upstream"] == ["bad"]
    assert release["not_eligible_reasons"]["bad"].startswith("failed upstream")
    # the HTML page lists it
    from buildgraph.cli import run_cli

    page = tmp_path / "r.html"
    assert run_cli(["report", str(tmp_path / "r.yaml"), "--cache-dir", str(tmp_path / "c"),
                    "--build-dir", str(build), "-o", str(page)]) == 0
    html = page.read_text()
    row = html[html.index('data-artifact="bad"'):]
    assert "failed upstream" in row[:row.index("</tr>")]
    # the missing upstream is keyed: once it builds, verify runs again (not a cache hit)
    write_recipe(tmp_path, FAILING.replace("FAIL", "cp ${in.onnx.model} ${out.model}")
                 .replace("bad:\n  uses: shell", "bad:\n  uses: shell\n  from: onnx"))
    result = run(keep_going=True, targets=["verify"])
    assert result.ok and result["verify"].status == "built"
    verify = json.loads((build / "verify" / "report.json").read_text())
    assert "failed_upstream" not in verify and set(verify["candidates"]) == {"onnx", "ts", "bad"}


def test_every_candidate_failed_upstream_is_one_line():
    from types import SimpleNamespace

    from buildgraph.backends.evaluate.upstream import check_required, failed_upstream
    from buildgraph.backends.evaluate.verify import VerifyExecutor, VerifyParams
    from buildgraph.errors import StepFailed

    task = SimpleNamespace(upstream={}, upstream_kinds={"a": "onnx.export", "b": "shell"})
    assert failed_upstream(task) == ["a", "b"] and failed_upstream(task, ["b"]) == ["b"]
    with pytest.raises(StepFailed) as err:
        VerifyExecutor._candidates(task, VerifyParams(model="m"), ["a", "b"])
    assert err.value.message == "nothing to verify: every candidate failed upstream (a, b)"
    with pytest.raises(StepFailed) as err:
        check_required(["a", "zz"], [], ["a"])
    assert err.value.message == ("required candidate missing: 'a' failed upstream; 'zz' is "
                                 "not an upstream step")


def test_gpu_facts_parse_nvidia_smi_rows():
    from buildgraph.backends.evaluate.gpu import BASIC_FIELDS, parse_query

    row = "0, NVIDIA H200, 580.65.06, 1980, 1980, 3201, 3201, 143771, 1, 31, 75.20, P0"
    (gpu,) = parse_query(row)
    assert gpu["name"] == "NVIDIA H200" and gpu["clocks_sm"] == 1980
    assert gpu["memory_total"] == 143771 and gpu["power_draw"] == 75.2
    assert gpu["pstate"] == "P0" and gpu["driver_version"] == "580.65.06"
    assert parse_query("0, NVIDIA H200, [N/A], 143771") == []  # not the full query's width
    (basic,) = parse_query("0, NVIDIA H200, 580.65.06, [N/A]", BASIC_FIELDS)
    assert basic["memory_total"] is None


def test_a_trace_records_tf32_convolutions_and_a_script_does_not(tmp_path):
    """On an H200 a traced ResNet-50 failed fp32 verification (max |err| 0.047) while its .pt2
    passed (2e-4): the trace fixed allow_tf32=True into every convolution. The TorchScript
    runtime reads that from the graph and checks such an artifact as tf32 on a GPU."""
    import torch

    from buildgraph.backends.torch.runtime import records_tf32_convolutions

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    example = torch.randn(1, 3, 8, 8)
    torch.jit.save(torch.jit.trace(model, example), str(tmp_path / "t.ts"))
    torch.jit.save(torch.jit.script(model), str(tmp_path / "s.ts"))
    assert records_tf32_convolutions(torch.jit.load(str(tmp_path / "t.ts")))
    assert not records_tf32_convolutions(torch.jit.load(str(tmp_path / "s.ts")))
    old = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = False
        assert not records_tf32_convolutions(torch.jit.trace(model, example))
    finally:
        torch.backends.cudnn.allow_tf32 = old


def test_a_release_whose_verify_step_failed_says_so_in_one_line():
    """Seen on the H200: verify failed (one candidate out of tolerance) and release, run
    under --keep-going, ended in KeyError: 'verify'."""
    from types import SimpleNamespace

    from buildgraph.backends.evaluate.release import ReleaseExecutor
    from buildgraph.errors import StepFailed

    task = SimpleNamespace(params={}, upstream={"ts": {}},
                           upstream_kinds={"verify": "verify", "bench": "benchmark",
                                           "ts": "torchscript"}, log=lambda *a: None)
    with pytest.raises(StepFailed) as err:
        ReleaseExecutor().run(task)
    assert err.value.message.startswith("verify step 'verify' failed upstream: nothing it "
                                        "checked is known to be correct")
