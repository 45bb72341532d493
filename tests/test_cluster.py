"""``run --cluster``: steps built on a real two-node Ray cluster on this machine.

The module's fixture starts a head node offering the custom resource ``node_a`` and a worker
node offering ``node_b`` (one CPU each, a small object store, each with its own node cache),
and always stops exactly those nodes. The team cache both sides use is a ``file://`` folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from conftest import FAKES, REPO
from ray_cluster import RayNodes, ray_available
from torch_helpers import HELPERS_PY, MODEL, TINY_PY

needs_ray = pytest.mark.skipif(not ray_available(),
                               reason="Ray is not installed (pip install buildgraph[cluster])")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    if not ray_available():
        pytest.skip("Ray is not installed (pip install buildgraph[cluster])")
    caches = tmp_path_factory.mktemp("node-caches")
    cluster = RayNodes(base_env={"PYTHONPATH": os.pathsep.join([str(REPO), str(FAKES)])})
    try:
        cluster.start_head({"node_a": 1}, env={"BUILDGRAPH_CACHE_DIR": str(caches / "a")})
        cluster.add("b", {"node_b": 1}, env={"BUILDGRAPH_CACHE_DIR": str(caches / "b")})
        cluster.caches = {"node_a": caches / "a", "node_b": caches / "b"}
        cluster.wait_for(2)
        yield cluster
    finally:
        cluster.stop()


class Project:
    """A checkout with its own cache; ``remote`` is the team cache it shares."""

    def __init__(self, root: Path, remote: Optional[Path]):
        self.root = root
        self.cache = root / ".cache"
        self.remote = remote
        root.mkdir(parents=True, exist_ok=True)
        if remote is not None:
            remote.mkdir(parents=True, exist_ok=True)
            self.write("buildgraph.toml", f'[remotes.team]\nurl = "file://{remote}"\n')

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    def env(self, **extra: str) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",
                                                                 "BUILDGRAPH_REMOTE")}
        env.update(BUILDGRAPH_CACHE_DIR=str(self.cache),
                   PYTHONPATH=os.pathsep.join([str(REPO), str(FAKES)]), **extra)
        return env

    def argv(self, recipe: str, *args: str) -> List[str]:
        return [sys.executable, "-m", "buildgraph", "run", recipe, "--json", *args]

    def run(self, recipe: str, *args: str, check: Optional[int] = 0,
            **env: str) -> "subprocess.CompletedProcess[str]":
        proc = subprocess.run(self.argv(recipe, *args), cwd=self.root, env=self.env(**env),
                              capture_output=True, text=True, timeout=240)
        if check is not None:
            assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
        return proc

    @staticmethod
    def finished(proc: "subprocess.CompletedProcess[str]") -> Dict[str, dict]:
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        return {e["step"]: e for e in events if e["event"] == "step_finished"}

    def remote_entry(self, key: str) -> Optional[dict]:
        assert self.remote is not None
        path = self.remote / "v1" / "ac" / key[:2] / f"{key}.json"
        return json.loads(path.read_text()) if path.exists() else None


MIXED = """\
name: mixed
models: {tiny: %s}
pools: {node_a: 1, node_b: 1}
steps:
  a:
    uses: shell
    with: {cmd: "echo recipe_dir=$BUILDGRAPH_RECIPE_DIR; tr a-z A-Z < ${in.data} > ${out.o}"}
    inputs: {data: ../data/input.txt}
    outputs: [o]
    resources: {node_a: 1}
  b:
    uses: shell
    from: a
    with: {cmd: "mkdir -p ${out.d}/sub && cp ${in.a.o} ${out.d}/x.txt && echo b > ${out.d}/sub/y.txt"}
    outputs: [d]
    resources: {node_b: 1}
  ep:
    uses: torch.export
    with: {model: tiny}
    resources: {node_b: 1}
  c:
    uses: shell
    from: [b, ep]
    with: {cmd: "cat ${in.b.d}/x.txt ${in.b.d}/sub/y.txt > ${out.o} && test -s ${in.ep.model} && echo ok >> ${out.o}"}
    outputs: [o]
    resources: {node_a: 1}
"""
WHERE = {"a": "node_a", "b": "node_b", "ep": "node_b", "c": "node_a"}


def write_mixed(project: Project) -> None:
    project.write("recipes/r.yaml", MIXED % json.dumps(MODEL))
    project.write("recipes/models/tiny.py", TINY_PY)
    project.write("recipes/models/helpers.py", HELPERS_PY)
    project.write("data/input.txt", "hello cluster\n")


def node_ids(nodes: RayNodes) -> Dict[str, str]:
    """custom resource -> the id of the node that offers it."""
    code = ("import json, sys, ray\nray.init(address=sys.argv[1], logging_level='ERROR', "
            "log_to_driver=False)\nprint(json.dumps({r: n['NodeID'] for n in ray.nodes() "
            "if n['Alive'] for r in n['Resources'] if r.startswith('node_') and ':' not in r}))"
            "\nray.shutdown()")
    out = subprocess.run([sys.executable, "-c", code, nodes.address], capture_output=True,
                         text=True, check=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_ray
def test_steps_run_where_their_resources_are_and_equal_a_local_run(nodes, tmp_path):
    shared = tmp_path / "team"
    cluster = Project(tmp_path / "cluster", shared)
    write_mixed(cluster)
    done = Project.finished(cluster.run("recipes/r.yaml", "--cluster", nodes.address))
    assert {s: e["status"] for s, e in done.items()} == dict.fromkeys(WHERE, "built")
    ids = node_ids(nodes)
    for step, resource in WHERE.items():
        # where it ran, by the driver's result and by the entry every reader of the team
        # cache sees
        assert done[step]["meta"]["node"]["ray_node_id"] == ids[resource], step
        entry = cluster.remote_entry(done[step]["key"])
        assert entry is not None and entry["entry"]["meta"]["node"]["ray_node_id"] == \
            ids[resource], step
    # the node laid the files out under its own root, mirroring the recipe's relative layout
    log = (cluster.root / "build/mixed/.logs/a.log").read_text()
    assert f"recipe_dir={nodes.caches['node_a']}" in log and "/tree/recipes" in log, log
    assert (cluster.root / "build/mixed/c/o").read_text() == "HELLO CLUSTER\nb\nok\n"
    assert (cluster.root / "build/mixed/b/d/sub/y.txt").read_text() == "b\n"

    local = Project(tmp_path / "local", None)
    write_mixed(local)
    local.run("recipes/r.yaml", BUILDGRAPH_REMOTE="off")
    ours = (cluster.root / "recipes/r.lock.json").read_text()
    assert ours == (local.root / "recipes/r.lock.json").read_text()  # keys, output digests

    # a cached rerun dispatches nothing: Ray is not even imported
    code = ("import sys\nfrom buildgraph.cli import run_cli\n"
            f"rc = run_cli(['run', 'recipes/r.yaml', '--cluster', '{nodes.address}'])\n"
            "print('RESULT', rc, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=cluster.root, env=cluster.env(),
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "RESULT 0 False", (out.stdout, out.stderr)

    # another checkout pulls everything from the team cache: nothing is dispatched either
    other = Project(tmp_path / "other", shared)
    write_mixed(other)
    out = subprocess.run([sys.executable, "-c", code.replace("['run', ", "['run', '--json', ")],
                         cwd=other.root, env=other.env(), capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "RESULT 0 False", (out.stdout, out.stderr)
    assert (other.root / "recipes/r.lock.json").read_text() == ours


@needs_ray
def test_through_ray_client_and_ray_address(nodes, tmp_path):
    """``ray://`` (Ray Client, what a laptop outside the cluster uses), given by $RAY_ADDRESS
    to a bare --cluster."""
    project = Project(tmp_path / "p", tmp_path / "team")
    project.write("r.yaml", "name: client\npools: {node_b: 1}\nsteps:\n"
                            "  s: {uses: shell, with: {cmd: 'echo hi > ${out.o}'}, outputs: [o],"
                            " resources: {node_b: 1}}\n")
    proc = project.run("r.yaml", "--cluster", RAY_ADDRESS=nodes.client_address)
    done = Project.finished(proc)
    assert done["s"]["status"] == "built", proc.stdout
    assert done["s"]["meta"]["node"]["ray_node_id"] == node_ids(nodes)["node_b"]
    assert (project.root / "build/client/s/o").read_text() == "hi\n"


SLOW_STEP = """\
name: lost
pools: {node_b: 1}
steps:
  slow:
    uses: shell
    with: {cmd: "echo $$ > %(mark)s; while [ ! -e %(release)s ]; do sleep 0.1; done; echo done > ${out.o}"}
    outputs: [o]
    resources: {node_b: 1}
"""


def _start_slow(project: Project, tmp_path: Path, nodes: RayNodes, name: str,
                **env: str) -> "tuple[subprocess.Popen, Path, Path, int]":
    mark, release = tmp_path / f"{name}.pid", tmp_path / f"{name}.release"
    project.write(f"{name}.yaml", SLOW_STEP % {"mark": mark, "release": release})
    driver = subprocess.Popen(project.argv(f"{name}.yaml", "--cluster", nodes.address),
                              cwd=project.root, env=project.env(**env), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not (mark.exists() and mark.read_text().strip()):
        assert driver.poll() is None, driver.communicate()
        assert time.monotonic() < deadline, "the step never started on the cluster"
        time.sleep(0.1)
    return driver, mark, release, int(mark.read_text())


def _gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _nothing_committed(project: Project, key: str, step: str, recipe: str) -> None:
    assert project.remote_entry(key) is None  # the entry goes last: none on the remote
    assert not (project.cache / "actions" / key[:2] / f"{key[2:]}.json").exists()
    assert not (project.root / "build" / recipe / step / "o").exists()


STREAMED_STEP = """\
name: streamed
pools: {node_a: 1}
steps:
  slow:
    uses: shell
    with: {cmd: "echo streamed-while-running; echo $$ > %(mark)s; while [ ! -e %(release)s ]; do sleep 0.1; done; echo after > ${out.o}"}
    outputs: [o]
    resources: {node_a: 1}
"""


@needs_ray
def test_a_running_cluster_step_streams_its_log(nodes, tmp_path):
    """The step's log grows in build/<recipe>/.logs/ while the step still runs on its node."""
    project = Project(tmp_path / "p", tmp_path / "team")
    mark, release = tmp_path / "s.pid", tmp_path / "s.release"
    project.write("s.yaml", STREAMED_STEP % {"mark": mark, "release": release})
    log = project.root / "build" / "streamed" / ".logs" / "slow.log"
    driver = subprocess.Popen(project.argv("s.yaml", "--cluster", nodes.address),
                              cwd=project.root, env=project.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (log.exists() and "streamed-while-running" in log.read_text()):
            assert driver.poll() is None, driver.communicate()
            assert time.monotonic() < deadline, "the log never arrived while the step ran"
            time.sleep(0.2)
        assert not (project.root / "build" / "streamed" / "slow" / "o").exists()  # still running
        assert "on cluster node" in log.read_text()  # the node's header came with it
    finally:
        release.write_text("")
        out, err = driver.communicate(timeout=120)
    assert driver.returncode == 0, (out, err)
    final = log.read_text()
    assert final.count("\nstreamed-while-running\n") == 1  # replaced by the complete log
    assert (project.root / "build" / "streamed" / "slow" / "o").read_text() == "after\n"


@needs_ray
def test_ctrl_c_cancels_the_cluster_task(nodes, tmp_path):
    project = Project(tmp_path / "p", tmp_path / "team")
    driver, mark, release, pid = _start_slow(project, tmp_path, nodes, "cancel")
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=60)
    assert driver.returncode == 130, (out, err)
    assert _gone(pid), "the step's command outlived the cancelled run"
    # nothing committed anywhere: no entry on the remote nor in the local store, no output
    assert not list((project.remote / "v1" / "ac").rglob("*.json"))
    assert not list((project.cache / "actions").rglob("*.json"))
    assert not (project.root / "build" / "lost" / "slow" / "o").exists()


@pytest.mark.slow  # ~40 s: a node is killed and restarted twice
@needs_ray
def test_a_lost_node_commits_nothing_and_is_retried_or_rebuilt(nodes, tmp_path):
    project = Project(tmp_path / "p", tmp_path / "team")
    driver, mark, release, pid = _start_slow(project, tmp_path, nodes, "lost",
                                             BUILDGRAPH_CLUSTER_RETRIES="0")
    try:
        nodes.kill("b")
        out, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        nodes.restart("b")
    assert driver.returncode == 1, (out, err)
    slow = Project.finished(subprocess.CompletedProcess([], 1, out, err))["slow"]
    assert slow["status"] == "failed" and "the cluster could not run it" in slow["message"]
    assert _gone(pid), "the step's command outlived its node"
    _nothing_committed(project, slow["key"], "slow", "lost")

    nodes.wait_for(2)
    release.write_text("go")
    done = Project.finished(project.run("lost.yaml", "--cluster", nodes.address))
    assert done["slow"]["status"] == "built" and done["slow"]["key"] == slow["key"]
    assert (project.root / "build/lost/slow/o").read_text() == "done\n"
    assert project.remote_entry(slow["key"]) is not None

    # with Ray's retries (the default), the same loss is survived within the run: the task
    # runs again once a node offering node_b is back
    other = Project(tmp_path / "q", tmp_path / "team2")
    driver, mark, release, pid = _start_slow(other, tmp_path, nodes, "retried")
    try:
        nodes.kill("b")
        release.write_text("go")  # the second attempt finishes at once
        assert _gone(pid), "the first attempt's command outlived its node"
        nodes.restart("b")
        out, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, (out, err)
    done = Project.finished(subprocess.CompletedProcess([], 0, out, err))
    assert done["slow"]["status"] == "built"
    assert (other.root / "build/lost/slow/o").read_text() == "done\n"
    nodes.wait_for(2)


# --- errors that need no cluster -------------------------------------------------------------

def _one_line_error(proc: "subprocess.CompletedProcess[str]") -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


ONE_STEP = "name: one\nsteps:\n  s: {uses: shell, with: {cmd: 'echo > ${out.o}'}, outputs: [o]}\n"


def test_an_address_that_is_not_one_is_refused(tmp_path):
    project = Project(tmp_path / "p", tmp_path / "team")
    project.write("r.yaml", ONE_STEP)
    proc = subprocess.run(project.argv("r.yaml", "--cluster", "http://head"),
                          cwd=project.root, env=project.env(), capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--cluster: 'http://head' is not a Ray address" in _one_line_error(proc)


def test_without_an_address_anywhere_it_says_where_to_give_one(tmp_path):
    project = Project(tmp_path / "p", tmp_path / "team")
    project.write("r.yaml", ONE_STEP)
    proc = subprocess.run(project.argv("r.yaml", "--cluster"), cwd=project.root,
                          env=project.env(), capture_output=True, text=True)
    assert proc.returncode == 2
    assert "neither $RAY_ADDRESS nor the project's buildgraph.toml" in _one_line_error(proc)


def test_a_cluster_needs_a_team_cache(tmp_path):
    project = Project(tmp_path / "p", None)
    project.write("r.yaml", ONE_STEP)
    proc = subprocess.run(project.argv("r.yaml", "--cluster", "127.0.0.1:6379"),
                          cwd=project.root, env=project.env(BUILDGRAPH_REMOTE="off"),
                          capture_output=True, text=True)
    assert proc.returncode == 2
    line = _one_line_error(proc)
    assert "--cluster needs a team cache" in line
    assert "buildgraph remote add" in proc.stderr


def test_a_bad_address_fails_the_step_with_one_line(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    project = Project(tmp_path / "p", tmp_path / "team")
    project.write("r.yaml", ONE_STEP)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "buildgraph", "run", "r.yaml", "--cluster",
                           f"ray://127.0.0.1:{port}"], cwd=project.root, env=project.env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert time.monotonic() - start < 20
    failed = [line for line in proc.stderr.splitlines() if "failed" in line and " s" in line]
    assert failed and f"cannot reach the Ray cluster at ray://127.0.0.1:{port}" in failed[0], \
        proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_address_can_come_from_the_environment_or_the_project(tmp_path):
    project = Project(tmp_path / "p", tmp_path / "team")
    project.write("r.yaml", ONE_STEP)
    proc = subprocess.run(project.argv("r.yaml", "--cluster"), cwd=project.root,
                          env=project.env(RAY_ADDRESS="head:port"), capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert "$RAY_ADDRESS: 'head:port' is not a Ray address" in _one_line_error(proc)
    config = project.root / "buildgraph.toml"
    config.write_text('cluster = "http://head"\n' + config.read_text())  # a top-level key
    proc = subprocess.run(project.argv("r.yaml", "--cluster"), cwd=project.root,
                          env=project.env(), capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"{config}: cluster: 'http://head' is not a Ray address" in _one_line_error(proc)
