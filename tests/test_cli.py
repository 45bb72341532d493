"""The smaller commands: graph, schema, kinds, plugins through entry points."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from buildgraph.cli import run_cli
from conftest import REPO

RECIPE = """
steps:
  a: {uses: shell, with: {cmd: 'echo > ${out.o}'}, outputs: [o]}
  b: {uses: shell, from: a, with: {cmd: 'cat ${in.a.o} > ${out.o}'}, outputs: [o]}
"""


def test_graph_mermaid_and_dot(project, capsys):
    project.write("r.yaml", RECIPE)
    assert run_cli(["graph", "r.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flowchart LR") and "s0 --> s1" in out
    assert run_cli(["graph", "r.yaml", "--format", "dot", "--status"]) == 0
    out = capsys.readouterr().out
    assert '"a" -> "b";' in out and 'fillcolor="#ffe9a8"' in out


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
def test_graph_png(project):
    project.write("r.yaml", RECIPE)
    assert run_cli(["graph", "r.yaml", "--format", "png", "-o", "g.png"]) == 0
    assert (project.root / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_graph_png_without_dot_is_a_clear_error(project, capsys, monkeypatch):
    project.write("r.yaml", RECIPE)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert run_cli(["graph", "r.yaml", "--format", "svg", "-o", "g.svg"]) == 2
    assert "Graphviz 'dot' is not installed" in capsys.readouterr().err


def test_schema_is_json_schema_with_per_kind_params(capsys):
    assert run_cli(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    step = schema["$defs"]["StepSpec"]
    assert "shell" in step["properties"]["uses"]["enum"]
    assert {"if": {"properties": {"uses": {"const": "shell"}}, "required": ["uses"]},
            "then": {"properties": {"with": {"$ref": "#/$defs/params_shell"}}}} in step["allOf"]
    assert schema["$defs"]["params_shell"]["required"] == ["cmd"]


def test_schema_validates_the_shipped_recipes(capsys):
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    run_cli(["schema"])
    schema = json.loads(capsys.readouterr().out)
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(recipe.read_text()), schema)


def test_kinds_lists_builtins(capsys):
    assert run_cli(["kinds"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("shell ") for line in out.splitlines())


def test_third_party_kind_through_entry_point(project):
    plugin = project.root / "plugin"
    (plugin / "bgplugin").mkdir(parents=True)
    (plugin / "bgplugin" / "__init__.py").write_text(
        "from buildgraph.engine.executor import Executor\n"
        "from pydantic import BaseModel\n\n"
        "class Params(BaseModel):\n    text: str\n\n"
        "class Echo(Executor):\n    kind = 'echo'\n    Params = Params\n"
        "    outputs = {'out': 'out.txt'}\n\n"
        "    def run(self, task):\n"
        "        task.outputs['out'].write_text(task.params['text'])\n")
    dist = plugin / "bgplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bgplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[buildgraph.executors]\necho = bgplugin:Echo\n")
    project.write("r.yaml", "steps:\n  e: {uses: echo, with: {text: plugged}}\n")
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{plugin}",
               BUILDGRAPH_CACHE_DIR=str(project.cache))
    proc = subprocess.run([sys.executable, "-m", "buildgraph", "run", "r.yaml"],
                          cwd=project.root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (project.build / "r" / "e" / "out.txt").read_text() == "plugged"


def test_no_command_prints_help(capsys):
    assert run_cli([]) == 2
    assert "usage: buildgraph" in capsys.readouterr().err


def test_unusable_cache_dir_is_one_line_not_a_traceback(project, capsys):
    project.write("r.yaml", RECIPE)
    (project.root / "afile").write_text("")
    assert run_cli(["run", "r.yaml", "--cache-dir", "afile/cache"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error: ") and "afile/cache" in err


def test_cache_dir_may_follow_the_cache_action(project, capsys):
    project.write("r.yaml", RECIPE)
    assert run_cli(["run", "r.yaml", "--cache-dir", "elsewhere"]) == 0
    capsys.readouterr()
    assert run_cli(["cache", "du", "--cache-dir", "elsewhere"]) == 0
    assert "2 actions" in capsys.readouterr().out
    assert run_cli(["cache", "--cache-dir", "elsewhere", "du"]) == 0
    assert "2 actions" in capsys.readouterr().out
