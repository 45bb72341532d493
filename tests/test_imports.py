"""Heavy ML libraries are imported only inside the executors that need them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

HEAVY = ("torch", "tvm", "tensorrt", "onnxruntime", "onnx", "onnxsim")


def _modules_after(code: str, cwd) -> list:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\n"
                          "print(json.dumps(sorted(sys.modules)))"], cwd=cwd, env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_import_buildgraph_cli_is_light(tmp_path):
    mods = _modules_after("import buildgraph, buildgraph.cli, buildgraph.api", tmp_path)
    assert not [m for m in HEAVY if m in mods]


def test_fully_cached_run_imports_no_yaml_pydantic_or_rich(project):
    project.write("r.yaml", "steps:\n  a: {uses: shell, with: {cmd: 'echo > ${out.o}'},"
                            " outputs: [o]}\n")
    project.run()
    project.run()  # the second run stores nothing new
    mods = _modules_after("from buildgraph.cli import run_cli\n"
                          "assert run_cli(['run', 'r.yaml']) == 0", project.root)
    for name in HEAVY + ("yaml", "pydantic", "rich"):
        assert name not in mods, name
