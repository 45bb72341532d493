"""Loading and planning a recipe full of PyTorch/ONNX steps imports neither torch, onnx nor
onnxruntime: keys come from reading files, fingerprints from package metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

HEAVY = ("torch", "onnx", "onnxruntime", "onnxsim", "onnxscript", "numpy", "transformers",
         "safetensors")


def test_loading_and_planning_the_default_recipe_imports_no_ml_library(tmp_path):
    code = (
        "import sys, json\n"
        "from buildgraph.cli import run_cli\n"
        "import buildgraph\n"
        f"graph = buildgraph.load({str(REPO / 'recipes' / 'resnet_cpu.yaml')!r}, "
        f"cache_dir={str(tmp_path / 'cache')!r})\n"
        "assert 'verify' in graph.steps\n"
        f"assert run_cli(['plan', {str(REPO / 'recipes' / 'resnet_cpu.yaml')!r}, "
        f"'--cache-dir', {str(tmp_path / 'cache')!r}, "
        f"'--build-dir', {str(tmp_path / 'build')!r}]) == 0\n"
        "print(json.dumps(sorted(sys.modules)))\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "buildgraph.backends.evaluate.verify" in modules  # the executors were consulted
    assert [m for m in HEAVY if m in modules] == []
    assert "run     state_dict" in proc.stdout


def test_torch_kinds_are_listed(capsys):
    from buildgraph.cli import run_cli

    assert run_cli(["kinds"]) == 0
    out = capsys.readouterr().out
    for kind in ("torch.save", "torchscript", "torch.export", "onnx.export", "onnx.simplify",
                 "verify"):
        assert any(line.split()[0] == kind for line in out.splitlines()), kind
