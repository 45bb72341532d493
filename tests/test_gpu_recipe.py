"""recipes/resnet50_gpu.yaml on a machine without a GPU: it plans, and its GPU steps fail with
one line each (no traceback), while the exports build. The run uses the recipe's own steps with
a tiny model in ResNet-50's place (same model name), so that it takes seconds; the real model
runs on the GPU host (tools/gpu_check.sh)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tvm_helpers import NETS_PY, needs_tvm

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "resnet50_gpu.yaml"
GPU_STEPS = ("tvm_tune", "tvm_untuned")


def test_the_gpu_recipe_plans_here(tmp_path):
    from buildgraph import api

    plan = api.plan(RECIPE, cache_dir=tmp_path / ".cache", build_dir=tmp_path / "build")
    assert set(plan) == {"onnx", "onnx_sim", "exported", "ts_trace", *GPU_STEPS, "tvm_tuned",
                         "verify", "benchmark", "release"}
    data = yaml.safe_load(RECIPE.read_text())
    steps = data["steps"]
    assert not any(s["uses"].startswith("tensorrt") for s in steps.values())  # no TensorRT
    assert steps["verify"]["with"]["device"] == steps["benchmark"]["with"]["device"] == "cuda"
    assert steps["tvm_tune"]["with"]["max_s"] <= 180  # within the GPU check's recipe limit
    assert set(steps["release"]["from"]) >= {"benchmark", "verify", "tvm_tuned", "tvm_untuned"}


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU may be present")
def test_without_a_gpu_each_gpu_step_fails_with_one_line(tmp_path):
    needs_tvm()
    pytest.importorskip("torch")
    from buildgraph import api

    data = yaml.safe_load(RECIPE.read_text())
    data["models"]["resnet50"] = {"source": "models/nets.py:net_a", "seed": 0,
                                  "inputs": {"x": {"shape": ["batch", 3, 16, 16]}},
                                  "dims": {"batch": {"min": 1, "opt": 8, "max": 8}}}
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "nets.py").write_text(NETS_PY, encoding="utf-8")
    recipe = tmp_path / "gpu.yaml"
    recipe.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = api.run(recipe, cache_dir=tmp_path / ".cache", build_dir=tmp_path / "build",
                     jobs=2, keep_going=True)
    for sid in ("onnx", "onnx_sim", "exported", "ts_trace"):
        assert result[sid].ok, (sid, result[sid].message)
    for sid in GPU_STEPS:
        message = result[sid].message
        assert result[sid].status == "failed", (sid, result[sid].status)
        assert "\n" not in message.strip() and "Traceback" not in message, message
        assert "GPU" in message or "CUDA" in message, message
    for sid, res in result.steps.items():
        if res.status == "failed":  # whatever else fails on a CPU says why in one line
            assert "Traceback" not in res.message and res.message.strip().count("\n") <= 1, \
                (sid, res.message)
    assert result["tvm_tuned"].status in ("skipped", "failed")
    assert not result["release"].ok
