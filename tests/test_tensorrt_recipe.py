"""recipes/resnet50_trt.yaml: the graph it makes, and (slow) what a machine without TensorRT
does with it: everything but the TensorRT steps builds, and those fail with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from buildgraph.recipe.load import load_recipe
from conftest import REPO

RECIPE = REPO / "recipes" / "resnet50_trt.yaml"


def test_recipe_graph():
    graph = load_recipe(RECIPE)
    steps = graph.steps
    assert steps["engine@fp32"].upstream == ("onnx_fp32",)
    assert steps["engine@fp16"].upstream == ("onnx_fp16",)
    assert steps["onnx_fp16"].kind == "onnx.autocast"
    assert set(steps["verify_trt"].upstream) == {"engine@fp32", "engine@fp16"}
    profile = steps["engine@fp16"].raw_params["profiles"][0]["x"]
    assert [profile[k][0] for k in ("min", "opt", "max")] == [1, 8, 32]
    assert steps["engine@fp16"].resources.get("gpu") == 1
    assert steps["benchmark"].resources.get("gpu") == 1


@pytest.mark.slow
def test_recipe_without_tensorrt_builds_everything_else(tmp_path):
    env = dict(os.environ, BUILDGRAPH_CACHE_DIR=str(tmp_path / "cache"),
               BUILDGRAPH_BUILD_DIR=str(tmp_path / "build"), PYTHONPATH=str(REPO))
    env.pop("BUILDGRAPH_TENSORRT_MODULE", None)
    proc = subprocess.run([sys.executable, "-m", "buildgraph", "run", str(RECIPE),
                           "--keep-going", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    done = {e["step"]: e for e in events if e["event"] == "step_finished"}
    assert {s for s, e in done.items() if e["status"] == "built"} == {
        "onnx", "onnx_fp32", "onnx_fp16", "verify_onnx"}
    for step in ("engine@fp32", "engine@fp16"):
        assert done[step]["status"] == "failed"
        assert done[step]["message"].startswith("needs an NVIDIA GPU and TensorRT; found: ")
    assert done["verify_trt"]["status"] == "skipped"
