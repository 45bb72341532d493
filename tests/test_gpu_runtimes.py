"""On a CUDA host (``pytest --run-gpu``): every runtime runs where ``device: cuda`` says.

Each PyTorch form (eager, the three ``torch.save`` forms, TorchScript, ``.pt2``) and a TVM
CUDA library must compute on the GPU (module and outputs on the device, CUDA memory
allocated, same numbers as the CPU within the stated math mode); onnxruntime without its CUDA
provider must refuse with one line; verify and benchmark on ``cuda`` must record the device,
and the benchmark's eager baseline must be the GPU one. On machines without a GPU these are
skipped (see conftest.py); the CPU-side logic is pinned in ``tests/test_device_eval.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import buildgraph  # noqa: E402
from buildgraph.engine.runtime import DeviceUnavailable, RuntimeContext, load_runtime  # noqa: E402
from torch_helpers import MODEL, write_recipe  # noqa: E402

STEPS = """
state: {uses: torch.save, with: {model: tiny}}
ckpt: {uses: torch.save, with: {model: tiny, form: checkpoint}}
whole: {uses: torch.save, with: {model: tiny, form: model}}
ts: {uses: torchscript, with: {model: tiny, mode: trace}}
ep: {uses: torch.export, with: {model: tiny}}
onnx: {uses: onnx.export, with: {model: tiny, exporter: legacy}}
tvm: {uses: tvm.compile, from: onnx, with: {target: cuda, dims: {batch: 2}}}
verify:
  uses: verify
  from: [state, ckpt, whole, ts, ep, onnx, tvm]
  with: {model: tiny, random: 2, device: cuda, dims: {batch: [2]}}
bench:
  uses: benchmark
  from: [ts, ep, onnx, tvm]
  with: {model: tiny, device: cuda, dims: {batch: [2]}, warmup: 3, runs: 10, window_s: 0.05,
         max_s: 5}
"""

TORCH_STEPS = {"state": "torch.save", "ckpt": "torch.save", "whole": "torch.save",
               "ts": "torchscript", "ep": "torch.export"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.fail("--run-gpu given but torch sees no CUDA device")
    root = tmp_path_factory.mktemp("gpu")
    write_recipe(root, STEPS)
    result = buildgraph.run(root / "r.yaml", cache_dir=root / "c", build_dir=root / "b",
                            keep_going=True)
    return root, result


def _x(batch=2):
    return np.random.default_rng(0).standard_normal((batch, 3, 16, 16)).astype("float32")


def test_every_torch_form_runs_on_the_gpu(built):
    root, result = built
    x = _x()
    cpu_out = {}
    for step, kind in TORCH_STEPS.items():
        assert result[step].ok, result[step].message
        path = result[step].outputs["model"]
        base = dict(model="tiny", model_spec=MODEL, recipe_dir=root, kind=kind, trusted=True)
        cpu_out[step] = load_runtime(path, RuntimeContext(**base)).run([x])[0]
        torch.cuda.reset_peak_memory_stats()
        rt = load_runtime(path, RuntimeContext(**base, device="cuda", math="fp32"))
        assert rt.details["device"].startswith("cuda:0 "), (step, rt.details)
        assert rt.timing == "device" and rt.details["provider"] == "torch"
        if hasattr(rt.module, "parameters"):
            assert all(p.is_cuda for p in rt.module.parameters()), step
        staged = rt.stage([x])
        assert all(t.is_cuda for t in staged)
        outs = rt.run_staged(staged)
        assert outs[0][1].is_cuda, step  # computed on the device, not copied there
        rt.synchronize()
        assert torch.cuda.max_memory_allocated() > 0
        got = rt.run([x])[0]
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, cpu_out[step], rtol=1e-3, atol=1e-4)
        assert "tf32" not in rt.details["math"]  # math: fp32 turned TF32 off
    # the eager model itself (the benchmark's baseline)
    from buildgraph.backends.torch.runtime import EagerRuntime

    rt = EagerRuntime.load(root, RuntimeContext(model="tiny", model_spec=MODEL,
                                                recipe_dir=root, device="cuda"))
    assert next(rt.module.parameters()).is_cuda
    np.testing.assert_allclose(rt.run([x])[0], cpu_out["ts"], rtol=1e-2, atol=1e-2)


def test_tvm_cuda_library_runs_on_the_gpu(built):
    root, result = built
    assert result["tvm"].ok, result["tvm"].message
    path = result["tvm"].outputs["model"]
    rt = load_runtime(path, RuntimeContext(kind="tvm.compile", device="cuda"))
    assert rt.details["device"].startswith("cuda:0 ") and rt.timing == "device"
    staged = rt.stage([_x()])
    assert all(t.device.dlpack_device_type() == 2 for t in staged)  # kDLCUDA
    rt.synchronize()
    # the same library on device: cpu is refused, not run
    with pytest.raises(DeviceUnavailable, match="compiled for cuda"):
        load_runtime(path, RuntimeContext(kind="tvm.compile", device="cpu"))


def test_onnxruntime_without_a_cuda_provider_refuses(built):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    root, result = built
    with pytest.raises(DeviceUnavailable) as err:
        load_runtime(result["onnx"].outputs["model"],
                     RuntimeContext(kind="onnx.export", device="cuda"))
    assert err.value.message == ("not runnable on cuda here: onnxruntime has no CUDA provider "
                                 "(onnxruntime-gpu)")


def test_verify_on_cuda_checks_on_the_gpu_under_a_stated_math_mode(built):
    root, result = built
    assert result["verify"].ok, result["verify"].message
    report = json.loads((root / "b" / "verify" / "report.json").read_text())
    assert report["device"] == "cuda" and report["math"].startswith("fp32: TF32 off")
    assert report["reference"]["runtime"] == "torch.eager"  # the fp32 CPU reference
    for step in list(TORCH_STEPS) + ["tvm"]:
        entry = report["candidates"][step]
        assert entry["passed"] and not entry.get("skipped"), (step, entry)
        assert entry["device"].startswith("cuda:0 "), (step, entry)
    onnx = report["candidates"]["onnx"]
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert onnx["skipped"].startswith("not runnable on cuda here")


def test_benchmark_on_cuda_times_the_gpu_against_eager_on_the_gpu(built):
    root, result = built
    assert result["bench"].ok, result["bench"].message
    report = json.loads((root / "b" / "bench" / "benchmark.json").read_text())
    ref = report["reference"]
    assert ref["runtime"] == "torch.eager" and ref["device"].startswith("cuda:0 ")
    assert ref["timing"] == "device"
    assert report["gpu"]["name"] and "memory_total" in report["gpu"]
    for step in ("ts", "ep", "tvm"):
        entry = report["candidates"][step]
        assert entry["device"].startswith("cuda:0 "), (step, entry)
        r = entry["results"][0]
        assert r["p50_ms"] > 0 and r["warmup_runs"] >= 10  # GPU warm-up floor
        assert r["gpu"]["before"]["name"] and r["gpu"]["after"]["name"]
    for step in ("ts", "ep"):
        r = report["candidates"][step]["results"][0]
        assert r["gpu"]["peak_allocated_mb"] > 0  # torch allocated CUDA memory in the runner
