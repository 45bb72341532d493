"""TVM on a real NVIDIA GPU (``pytest -m gpu --run-gpu``; tools/gpu_check.sh runs these on the
GPU host): the CUDA target completed on the GPU present agrees with what the driver reports,
and a CUDA tune is visibly alive, stops on its budget, compares its records with DLight's
default schedules, and compiles into a library that runs and verifies on the GPU."""

from __future__ import annotations

import json
import re

import pytest

from tvm_helpers import TUNE, log_of, needs_tvm, run, write_project

pytestmark = pytest.mark.gpu


def test_the_completed_target_matches_the_gpu():
    needs_tvm()
    import tvm

    from buildgraph.backends.tvm import target as tvmtarget
    from buildgraph.backends.tvm.compile import complete_target

    device = tvmtarget.detect_cuda_device()
    assert device is not None, "nvidia-smi names no GPU"
    lines = []
    done = complete_target(tvm, {"kind": "cuda"}, lines.append)
    print(device.key(), lines, done)
    found = dict(tvm.target.Target.from_device(tvm.cuda(0)).export())
    assert done["arch"] == device.arch
    assert done["max_threads_per_block"] == int(found["max_threads_per_block"])
    assert done["thread_warp_size"] == int(found["thread_warp_size"])
    assert done["max_shared_memory_per_block"] <= int(found["max_shared_memory_per_block"])
    tvm.target.Target(done)


def test_a_cuda_tune_is_alive_bounded_and_compiles(tmp_path, monkeypatch):
    needs_tvm()
    pytest.importorskip("xgboost")
    monkeypatch.setenv("BUILDGRAPH_PROGRESS_S", "2")
    tune = dict(TUNE, target="cuda", trials=400, trials_per_iter=4, max_s=15, timeout=20,
                min_repeat_ms=10)
    recipe = write_project(tmp_path, f"""
onnx: {{uses: onnx.export, with: {{model: net_a, exporter: legacy, opset: 18}}}}
tune: {{uses: tvm.tune, from: onnx, with: {json.dumps(tune)}}}
untuned: {{uses: tvm.compile, from: onnx, with: {{target: cuda, dims: {{batch: 1}}}}}}
tuned: {{uses: tvm.compile, from: [onnx, tune], with: {{target: cuda, dims: {{batch: 1}}, require_records: "off"}}}}
verify: {{uses: verify, from: [untuned, tuned], with: {{model: net_a, random: 1, dims: {{batch: [1]}}, device: cuda}}}}
""")
    result = run(recipe, tmp_path)
    for sid in ("onnx", "tune", "untuned", "tuned", "verify"):
        assert result[sid].ok, (sid, result[sid].message, result[sid].log_tail)
    meta = result["tune"].meta
    log = log_of(result, "tune")
    print(log[-4000:])
    assert meta["tvm_target"]["max_threads_per_block"] >= 256
    assert 0 < meta["trials"] < 400 and meta["tune_s"] < 15 + 60
    stamps = [float(m) for m in re.findall(r"^\S*\s*\[\s*([\d.]+) s\]", log, re.M)]
    assert stamps and max(b - a for a, b in zip([0.0] + stamps, stamps)) < 2 + 30, stamps
    # every tuned task was compared with DLight's default schedule on the GPU
    assert "could not measure the default schedules" not in log
    assert re.search(r"tuned [\d.]+ us, default schedule [\d.]+ us", log), log[-2000:]
    assert result["tuned"].meta["target"] == {"kind": "cuda"}
