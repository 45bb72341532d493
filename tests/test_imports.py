"""Heavy ML libraries are imported only inside the executors that need them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

HEAVY = ("torch", "tvm", "tensorrt", "onnxruntime", "onnx", "onnxsim", "tensorflow", "keras",
         "tf2onnx")


def _modules_after(code: str, cwd) -> list:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\n"
                          "print(json.dumps(sorted(sys.modules)))"], cwd=cwd, env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_import_buildgraph_cli_is_light(tmp_path):
    mods = _modules_after("import buildgraph, buildgraph.cli, buildgraph.api", tmp_path)
    assert not [m for m in HEAVY if m in mods]


def test_import_api_leaves_the_engine_to_its_functions(tmp_path):
    mods = _modules_after("import buildgraph.api", tmp_path)
    for name in ("buildgraph.engine.planner", "buildgraph.engine.scheduler",
                 "buildgraph.engine.store.cache", "sqlite3"):
        assert name not in mods, name


# What a fully cached run decides on one thread with the modules it needs: no argument parser
# (run's command line is read directly), no thread pool, no worker machinery, no error helpers.
NOT_ON_THE_NO_OP_PATH = ("yaml", "pydantic", "rich", "argparse", "concurrent.futures",
                         "logging", "difflib", "filelock", "subprocess", "shutil",
                         "buildgraph.engine.execution.pool",
                         "buildgraph.recipe.load")


def test_fully_cached_run_imports_no_yaml_pydantic_or_rich(project):
    project.write("r.yaml", "steps:\n  a: {uses: shell, with: {cmd: 'echo > ${out.o}'},"
                            " outputs: [o]}\n")
    project.run()
    project.run()  # the second run stores nothing new
    mods = _modules_after("import os\nos.environ['BUILDGRAPH_NO_STAMP'] = '1'\n"
                          "from buildgraph.cli import run_cli\n"
                          "assert run_cli(['run', 'r.yaml']) == 0", project.root)
    assert "buildgraph.engine.planner" in mods  # decided in full, not from a no-op stamp
    for name in HEAVY + NOT_ON_THE_NO_OP_PATH:
        assert name not in mods, name


REMOTE_LIBS = ("fsspec", "s3fs", "botocore", "aiobotocore", "aiohttp", "blake3",
               "cryptography", "tomlkit", "gcsfs")
"""The team cache's libraries: loaded only when a remote is actually used."""


def test_no_team_cache_library_is_imported_unless_a_remote_is_used(project):
    mods = _modules_after("import buildgraph, buildgraph.cli, buildgraph.api", project.root)
    assert not [m for m in REMOTE_LIBS + ("tomllib", "buildgraph.engine.team.remote")
                if m in mods]
    project.write("r.yaml", "steps:\n  a: {uses: shell, with: {cmd: 'echo > ${out.o}'},"
                            " outputs: [o]}\n")
    project.run()
    mods = _modules_after("from buildgraph.cli import run_cli\n"
                          "assert run_cli(['run', 'r.yaml']) == 0", project.root)
    assert not [m for m in REMOTE_LIBS + ("tomllib", "buildgraph.engine.team.remote") if m in mods]


def test_a_cached_run_with_a_remote_configured_makes_no_request(project):
    """Everything is in the local cache: the remote is never opened. Its endpoint has nothing
    listening, so a request would end in a warning; none of its libraries is even loaded."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    project.write("r.yaml", "steps:\n  a: {uses: shell, with: {cmd: 'echo > ${out.o}'},"
                            " outputs: [o]}\n")
    project.run("r.yaml", "--remote", "off")
    project.write("buildgraph.toml", '[remotes.team]\nurl = "s3://bucket/prefix"\n'
                                     f'options = {{endpoint_url = "http://127.0.0.1:{port}"}}\n')
    code = ("import io, contextlib\nfrom buildgraph.cli import run_cli\nerr = io.StringIO()\n"
            "with contextlib.redirect_stderr(err):\n"
            "    assert run_cli(['run', 'r.yaml', '-v']) == 0\n"
            "assert 'warning' not in err.getvalue(), err.getvalue()\n"
            "assert 'cached' in err.getvalue(), err.getvalue()")
    mods = _modules_after(code, project.root)
    assert "buildgraph.engine.team.remote" in mods  # the remote is configured...
    assert not [m for m in REMOTE_LIBS if m in mods]  # ...and never opened


def test_plan_of_a_tensorflow_recipe_imports_no_tensorflow(project):
    """Describing TensorFlow steps reads files and metadata only: no TensorFlow, Keras,
    tf2onnx or torch (the model's factory is read with ast). tests/test_tensorflow.py checks
    that a fully cached run of such a recipe imports none either."""
    project.write("models/nets.py", "import keras\n\ndef cnn():\n    return keras.Sequential()\n")
    project.write("saved/saved_model.pb", "not read at plan time")
    project.write("r.yaml", """
        models:
          cnn: {source: models/nets.py:cnn, framework: tensorflow,
                inputs: {image: {shape: [batch, 16, 16, 3]}}}
          saved: {source: saved, inputs: {image: {shape: [batch, 16, 16, 3]}}}
        steps:
          export: {uses: keras.export, with: {model: cnn}}
          onnx: {uses: tf2onnx.convert, from: export, with: {model: cnn}}
          onnx2: {uses: tf2onnx.convert, with: {model: saved}}
          verify: {uses: verify, from: [export, onnx, onnx2], with: {model: cnn}}
        """)
    mods = _modules_after("from buildgraph.cli import run_cli\n"
                          "assert run_cli(['plan', 'r.yaml']) == 0", project.root)
    for name in HEAVY:
        assert name not in mods, name


CLUSTER_MODULES = ("ray", "buildgraph.engine.cluster.driver", "buildgraph.engine.cluster.node")


def test_nothing_of_ray_is_imported_without_cluster(project):
    """Ray comes with ``--cluster`` only: the CLI, a run that builds, and a cached run load none
    of it (nor the runner that would use it)."""
    mods = _modules_after("import buildgraph, buildgraph.cli, buildgraph.api", project.root)
    assert not [m for m in CLUSTER_MODULES if m in mods]
    project.write("r.yaml", "steps:\n  a: {uses: shell, with: {cmd: 'echo > ${out.o}'},"
                            " outputs: [o]}\n")
    for _ in range(2):  # built, then cached
        mods = _modules_after("from buildgraph.cli import run_cli\n"
                              "assert run_cli(['run', 'r.yaml']) == 0", project.root)
        assert not [m for m in CLUSTER_MODULES if m in mods]
