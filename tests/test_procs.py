"""A run's processes end with it, however it ends: killed, interrupted, or a step timing out.

Each test starts a ``python`` step (which runs in a persistent worker) that itself starts a
child, the way TVM's tuning starts builder and runner processes; it writes a marker once both
exist. The run's process tree is read before the run is stopped, and every process in it
must be gone within 2 s after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from proc_helpers import cmdline, describe, descendants, kill, needs_proc, sigint_reaches_children, wait_gone

needs_proc()

SLOW_PY = '''
import pathlib
import subprocess
import time


def slow(inputs, outputs, marker):
    child = subprocess.Popen(["sleep", "300"])  # like TVM's popen workers: in our group
    pathlib.Path(marker).write_text(str(child.pid))
    time.sleep(300)
'''


def _recipe(project, timeout: str = "") -> None:
    project.write("slow.py", SLOW_PY)
    marker = project.root / "started"
    project.write("r.yaml", f"""
        steps:
          slow:
            uses: python
            {timeout}
            with: {{function: "slow.py:slow", args: {{marker: "{marker}"}}}}
    """)


def _start(project, *args: str) -> subprocess.Popen:
    env = dict(os.environ, BUILDGRAPH_CACHE_DIR=str(project.cache),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with sigint_reaches_children():
        return subprocess.Popen([sys.executable, "-m", "buildgraph", "run", "r.yaml", *args],
                                cwd=project.root, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)


def _started_tree(project, proc: subprocess.Popen):
    marker = project.root / "started"
    deadline = time.monotonic() + 60
    while not marker.exists() or not marker.read_text():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)
    tree = descendants(proc.pid)
    commands = [cmdline(pid) for pid, _ in tree]
    assert any("buildgraph.engine.execution.worker_main" in c for c in commands), commands
    assert int(marker.read_text()) in [pid for pid, _ in tree], commands
    return tree


def test_sigkill_of_the_run_ends_its_worker_and_the_workers_children(project):
    _recipe(project)
    proc = _start(project)
    tree = []
    try:
        tree = _started_tree(project, proc)
        proc.kill()  # the run alone: nothing of it gets to clean up
        proc.wait()
        left = wait_gone(tree, 2.0)
        assert not left, "still running 2 s after the run was killed: " + describe(left)
    finally:
        proc.kill()
        proc.wait()
        kill(tree)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_ends_its_worker_and_the_workers_children(project, sig):
    _recipe(project)
    proc = _start(project)
    tree = []
    try:
        tree = _started_tree(project, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        left = wait_gone(tree, 2.0)
        assert not left, "still running 2 s after the run ended: " + describe(left)
    finally:
        proc.kill()
        proc.wait()
        kill(tree)


def test_a_step_timeout_ends_the_worker_and_its_children(project):
    _recipe(project, timeout="timeout: 3")
    proc = _start(project)
    tree = []
    try:
        tree = _started_tree(project, proc)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert "timed out after 3 s" in err
        left = wait_gone(tree, 2.0)
        assert not left, "still running after the step timed out: " + describe(left)
    finally:
        proc.kill()
        proc.wait()
        kill(tree)


def test_a_worker_whose_parent_died_before_it_could_watch_ends_at_once(tmp_path):
    """The race PR_SET_PDEATHSIG leaves open: the parent dies before the worker asks to be
    told. The worker compares its parent with the pid the run wrote down, and ends."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               BUILDGRAPH_PARENT_PID=str(os.getpid() + 10**6))  # not our pid: "already gone"
    worker = subprocess.Popen([sys.executable, "-m", "buildgraph.engine.execution.worker_main"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              start_new_session=True, env=env)
    try:
        worker.wait(timeout=20)
    finally:
        worker.kill()
        worker.wait()
        worker.stdin.close()
        worker.stdout.close()
    assert worker.returncode == -signal.SIGKILL  # it killed its own group


def _shell_recipe(project, timeout: str = "") -> None:
    marker = project.root / "started"
    project.write("r.yaml", f"""
        steps:
          slow:
            uses: shell
            {timeout}
            with: {{cmd: "sleep 300 | cat & echo $! > {marker}; wait"}}
    """)


def test_sigkill_of_the_run_ends_a_shell_steps_pipeline(project):
    """A shell command runs in a session of its own (Ctrl-C goes to the run, which decides);
    its worker ends that session when the run dies, however it dies."""
    _shell_recipe(project)
    proc = _start(project)
    tree = []
    try:
        tree = _started_tree(project, proc)
        assert any("sleep 300" in cmdline(pid) for pid, _ in tree)
        proc.kill()
        proc.wait()
        left = wait_gone(tree, 2.0)
        assert not left, "still running 2 s after the run was killed: " + describe(left)
    finally:
        proc.kill()
        proc.wait()
        kill(tree)


def test_a_shell_step_timeout_ends_its_pipeline(project):
    _shell_recipe(project, timeout="timeout: 3")
    proc = _start(project)
    tree = []
    try:
        tree = _started_tree(project, proc)
        shells = [(pid, t) for pid, t in tree if "sleep 300" in cmdline(pid)]
        assert shells
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert "timed out after 3 s" in err
        left = wait_gone(shells, 2.0)
        assert not left, "still running 2 s after the timeout: " + describe(left)
    finally:
        proc.kill()
        proc.wait()
        kill(tree)
