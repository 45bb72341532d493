"""The example recipes for models that are not PyTorch build from the repository:
recipes/onnx_model.yaml (a checked-in ONNX file) and, slow, recipes/keras_cpu.yaml (a Keras CNN
defined in the repository)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

RECIPES = REPO / "recipes"


def _copy(tmp_path: Path, name: str) -> Path:
    """The recipe and recipes/models/ in a scratch directory (the lock file is written beside
    the recipe)."""
    shutil.copytree(RECIPES / "models", tmp_path / "models",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(RECIPES / name, tmp_path / name)
    return tmp_path / name


def _verified(result, step: str) -> dict:
    report = json.loads(Path(result[step].outputs["report"]).read_text())
    assert report["passed"]
    return report


def test_the_checked_in_onnx_model_is_what_its_script_writes(tmp_path: Path):
    pytest.importorskip("onnx")
    script = tmp_path / "make_onnx_model.py"
    shutil.copy(RECIPES / "models" / "make_onnx_model.py", script)
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True)
    assert (tmp_path / "small_cnn.onnx").read_bytes() == \
        (RECIPES / "models" / "small_cnn.onnx").read_bytes()


def test_the_onnx_recipe_builds(tmp_path: Path):
    for module in ("onnxruntime", "onnxsim", "tvm", "modelopt.onnx.autocast"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install "
                            "'buildgraph[all]')")
    from buildgraph import api

    path = _copy(tmp_path, "onnx_model.yaml")
    result = api.run(path, cache_dir=tmp_path / ".cache", build_dir=tmp_path / "build", jobs=2)
    assert result.ok, {s: r.message for s, r in result.steps.items() if not r.ok}
    report = _verified(result, "verify")
    assert report["reference"]["runtime"] == "onnxruntime.fp32"
    assert result["onnx_sim"].meta["nodes_before"] == 12
    assert result["onnx_sim"].meta["nodes_after"] == 9  # the BatchNorms folded
    _verified(result, "verify_tvm")
    manifest = json.loads(Path(result["release"].outputs["manifest"]).read_text())
    assert manifest["chosen"] in ("onnx_sim", "tvm_lib", "fp16")


@pytest.mark.slow
def test_the_keras_recipe_builds(tmp_path: Path):
    for module in ("tensorflow", "tf2onnx", "tvm", "modelopt.onnx.autocast"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install "
                            "'buildgraph[all]')")
    from buildgraph import api

    path = _copy(tmp_path, "keras_cpu.yaml")
    result = api.run(path, cache_dir=tmp_path / ".cache", build_dir=tmp_path / "build", jobs=2)
    assert result.ok, {s: r.message for s, r in result.steps.items() if not r.ok}
    report = _verified(result, "verify")
    assert report["reference"]["runtime"] == "tensorflow"
    assert set(report["candidates"]) == {"savedmodel", "onnx", "onnx_sim", "fp16"}
    assert _verified(result, "verify_tvm")["candidates"]["tvm_lib"]["passed"]
