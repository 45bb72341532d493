"""Persistent workers: the end of a run does not wait for their interpreters to finalize."""

from __future__ import annotations

import os

RECIPE = """
steps:
  a: {uses: python, with: {function: 'slow_exit.py:step', args: {name: a}}, outputs: [o]}
  b: {uses: python, with: {function: 'slow_exit.py:step', args: {name: b}}, outputs: [o]}
"""

# Like torch, whose teardown at interpreter exit takes up to a second: a module that makes
# finalizing its process slow, and says so in a file if it ever gets there.
SLOW_EXIT = """
import atexit, os, time

def _slow():
    time.sleep(8)
    with open(os.path.join(os.environ["MARKS"], "finalized-%d" % os.getpid()), "w"):
        pass

atexit.register(_slow)

def step(inputs, outputs, name):
    outputs["o"].write_text(name + " " + str(os.getpid()))
"""


def test_run_ends_without_waiting_for_workers_to_finalize(project, monkeypatch):
    marks = project.root / "marks"
    marks.mkdir()
    monkeypatch.setenv("MARKS", str(marks))
    project.write("slow_exit.py", SLOW_EXIT)
    project.write("r.yaml", RECIPE)
    events = project.run("r.yaml", "-j", "2")
    assert project.statuses(events) == {"a": "built", "b": "built"}
    pids = {int((project.build / "r" / s / "o").read_text().split()[1]) for s in "ab"}
    # Each worker's exit handler sleeps 8 s: a run that waits for its workers to finalize, one
    # after the other, ends 16 s after its last step (or kills them at a 5 s timeout each).
    last_step = max(e["time"] for e in events if e["event"] == "step_finished")
    finish = next(e["time"] for e in events if e["event"] == "finish")
    assert finish - last_step < 3, finish - last_step
    assert list(marks.iterdir()) == []
    for pid in pids:  # and none is left behind
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"worker {pid} is still running")


def test_workers_let_openmp_threads_sleep_unless_the_user_chose(project, monkeypatch):
    """Steps share few cores: a worker's OpenMP threads wait passively (a spinning torch step
    took the cores of the steps beside it, 7x slower under load); the user's own setting wins."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    project.write("r.yaml", "steps:\n  a: {uses: shell, with: {cmd: 'echo $OMP_WAIT_POLICY "
                            "> ${out.o}'}, outputs: [o]}\n")
    project.run("r.yaml")
    assert (project.build / "r" / "a" / "o").read_text().strip() == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    project.run("r.yaml", "--force", "a")
    assert (project.build / "r" / "a" / "o").read_text().strip() == "ACTIVE"


def test_a_fresh_worker_runs_one_call_and_ends(tmp_path):
    """``Executor.fresh_worker``: a new worker per call, never reused (a library with
    process-wide counters, like TensorFlow's function names, then starts from zero)."""
    from buildgraph.engine.execution.pool import WorkerPool

    pool = WorkerPool(2)
    log = str(tmp_path / "log.txt")
    request = ("call", "os:getpgid", 0, log)  # a worker leads its own process group
    try:
        warm = [pool.run("call:os:getpgid", None, 30, request)[1] for _ in range(2)]
        assert warm[0] == warm[1]  # an idle worker is reused
        fresh = [pool.run("call:os:getpgid", None, 30, request, fresh=True)[1]
                 for _ in range(2)]
        assert len({*fresh, warm[0]}) == 3
        for pid in fresh:  # ended, not kept idle
            try:
                os.kill(pid, 0)
                alive = open(f"/proc/{pid}/stat").read().split()[2] != "Z"
            except (ProcessLookupError, FileNotFoundError):
                alive = False
            assert not alive, pid
        assert pool.started == 3
    finally:
        pool.close()
