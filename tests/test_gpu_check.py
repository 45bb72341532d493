"""tools/gpu_check.sh (the one script run on the GPU host) and tools/gpu_summary.py, here
without a GPU: the script stops at once with one line, and the summary reads the reports a
run leaves (all of them optional) into the figures the lead puts in docs/gpu.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _script(env_path: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=env_path, OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    return subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh")], capture_output=True,
                          text=True, env=env, timeout=120)


def test_without_nvidia_smi_the_check_is_one_line(tmp_path):
    res = _script("/usr/bin:/bin", tmp_path)
    assert res.returncode == 2
    assert res.stdout.strip().splitlines() == [
        "gpu_check: no NVIDIA GPU here (nvidia-smi missing or failing): nothing to check"]


def test_a_gpu_that_torch_does_not_see_is_one_line(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
    (fake / "nvidia-smi").chmod(0o755)
    res = _script(f"{fake}:/usr/bin:/bin", tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: ") and "GPU" in lines[0], lines


def test_the_summary_reads_a_runs_reports(tmp_path):
    build = tmp_path / "build"
    (build / "verify").mkdir(parents=True)
    (build / "benchmark").mkdir()
    (build / "tvm_tune" / "tunedb").mkdir(parents=True)
    (build / ".run.json").write_text(json.dumps({"steps": {
        "tvm_tuned": {"status": "built", "wall_s": 20.5, "message": None},
        "onnx": {"status": "built", "wall_s": 12.0, "message": None},
        "release": {"status": "failed", "wall_s": 1.0, "message": "no\ntraceback here"}}}))
    (build / "verify" / "report.json").write_text(json.dumps({"passed": True, "device": "cuda",
        "math": "fp32", "candidates": {
            "tvm_tuned": {"passed": True, "device": "cuda", "outputs": {"logits": {"max_abs": 1.9e-4}}},
            "onnx_sim": {"passed": True, "skipped": "not runnable on cuda here: onnxruntime "
                                                    "has no CUDA provider (onnxruntime-gpu)"}}}))
    (build / "benchmark" / "benchmark.json").write_text(json.dumps({
        "device": "cuda", "reference_runtime": "eager", "gpu": {"name": "NVIDIA H200"},
        "candidates": {
            "eager": {"device": "cuda", "results": [{"dims": {"batch": 8}, "median_ms": 3.4}]},
            "tvm_untuned": {"device": "cuda", "results": [{"dims": {"batch": 8}, "median_ms": 7.66}]},
            "tvm_tuned": {"device": "cuda", "results": [{"dims": {"batch": 8}, "median_ms": 5.1}]},
            "onnx_sim": {"error": "not runnable on cuda here"}}}))
    (build / "tvm_tune" / "tunedb" / "tunedb.json").write_text(json.dumps({
        "tvm_target": {"kind": "cuda", "arch": "sm_90", "max_threads_per_block": 1024},
        "tasks": [{"status": "tuned"}, {"status": "default faster"}, {"status": "not selected"}]}))
    out = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_summary.py"), str(build)],
                         capture_output=True, text=True, check=True).stdout
    assert "tvm_tuned      built       20.5" in out
    assert "release        failed       1.0  no" in out and "traceback" not in out
    assert "onnx_sim       -                      not run: not runnable on cuda" in out
    assert "logits max|err| 0.00019" in out
    assert "tvm_tuned        cuda                   batch=8           5.100" in out
    assert "TVM untuned 7.660 ms -> tuned 5.100 ms (1.50x): tuned beats untuned" in out
    assert "reference (eager PyTorch on the benchmark's device): 3.400 ms" in out
    assert "3 tasks default faster 1, not selected 1, tuned 1" in out
    missing = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_summary.py"),
                              str(tmp_path / "nothing")], capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stdout.count("\n") == 1
