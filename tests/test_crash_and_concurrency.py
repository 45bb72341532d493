"""Killed, interrupted and concurrent runs never corrupt the cache or the build directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO


def _spawn(project, *args):
    env = dict(os.environ, BUILDGRAPH_CACHE_DIR=str(project.cache),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "buildgraph", *args], cwd=project.root,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


CRASH_RECIPE = """
steps:
  done1: {uses: shell, with: {cmd: 'echo one > ${out.o}'}, outputs: [o]}
  slow:
    uses: shell
    from: done1
    with: {cmd: 'echo partial > ${out.o}; touch $BUILDGRAPH_RECIPE_DIR/started; sleep 60; echo end >> ${out.o}'}
    outputs: [o]
"""


def test_sigkill_mid_step_leaves_cache_valid_and_next_run_resumes(project):
    project.write("r.yaml", CRASH_RECIPE)
    proc = _spawn(project, "run", "r.yaml", "-j", "1")
    _wait_for(project.root / "started")
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group, workers and the sleeping shell too
    proc.wait()
    assert not (project.build / "r" / "slow" / "o").exists()
    verify = project.cli("cache", "verify")
    assert verify.returncode == 0, verify.stdout
    assert "ok" in verify.stdout
    # done1 completed before the kill: the next run takes it from the cache
    project.write("r.yaml", CRASH_RECIPE.replace("sleep 60", "true"))
    statuses = project.statuses(project.run())
    assert statuses == {"done1": "cached", "slow": "built"}
    assert not any((project.cache / "tmp").iterdir())  # the dead run's scratch was cleaned


def test_sigterm_interrupts_cleanly(project):
    project.write("r.yaml", CRASH_RECIPE)
    proc = _spawn(project, "run", "r.yaml", "-j", "1")
    _wait_for(project.root / "started")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not (project.build / "r" / "slow" / "o").exists()
    assert not any((project.cache / "tmp").iterdir())
    lock = json.loads((project.root / "r.lock.json").read_text())
    assert list(lock["steps"]) == ["done1"]  # completed work is recorded, the rest is not


def test_four_processes_on_one_cache_build_each_step_once(project):
    counter = project.root / "executions.log"
    steps = ["steps:"]
    for i in range(6):
        up = f", from: s{i - 1}" if i else ""
        steps.append(f"  s{i}: {{uses: shell{up}, with: {{cmd: 'echo s{i} >> {counter}; "
                     f"sleep 0.3; echo {i} > ${{out.o}}'}}, outputs: [o]}}")
    project.write("r.yaml", "\n".join(steps) + "\n")
    procs = [_spawn(project, "run", "r.yaml", "--json", "--build-dir", f"b{n}") for n in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    executions = counter.read_text().split()
    assert sorted(executions) == [f"s{i}" for i in range(6)]  # no step built twice
    for n in range(4):
        assert (project.root / f"b{n}" / "s5" / "o").read_text() == "5\n"
    assert project.cli("cache", "verify").returncode == 0


def test_concurrent_runs_merge_the_lock_file(project):
    project.write("r.yaml", """
        steps:
          a: {uses: shell, with: {cmd: 'sleep 0.5; echo a > ${out.o}'}, outputs: [o]}
          b: {uses: shell, with: {cmd: 'sleep 0.5; echo b > ${out.o}'}, outputs: [o]}
    """)
    p1 = _spawn(project, "run", "r.yaml", "a")
    p2 = _spawn(project, "run", "r.yaml", "b")
    p1.communicate(timeout=60)
    p2.communicate(timeout=60)
    lock = json.loads((project.root / "r.lock.json").read_text())
    assert set(lock["steps"]) == {"a", "b"}


def test_lock_file_writers_with_different_caches_are_serialized(tmp_path):
    """The guard of the lock file sits beside it (``.r.lock``), so two runs of one recipe that
    use different caches still take turns: a writer waits while another holds it."""
    import threading

    from filelock import FileLock

    from buildgraph.engine.lockfile import write_lock

    lock = tmp_path / "r.lock.json"
    entry = {"uses": "shell", "key": "k" * 32}
    with FileLock(str(tmp_path / ".r.lock")):  # another run, with another cache, is writing
        writer = threading.Thread(target=write_lock, args=(lock, "r", {"a": entry}, ["a"]))
        writer.start()
        writer.join(1.0)
        assert writer.is_alive() and not lock.exists()
    writer.join(10)
    assert not writer.is_alive()
    assert json.loads(lock.read_text())["steps"] == {"a": entry}
    assert not (tmp_path / ".cache").exists()  # nothing of a cache is involved


DIR_RECIPE = """
steps:
  d: {uses: shell, with: {cmd: 'mkdir -p ${out.d}/sub; echo VERSION > ${out.d}/sub/f'}, outputs: [d]}
"""


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_killed_directory_swap_is_recovered_and_swept(project):
    """A kill -9 between the two renames of a directory swap left the output missing and a
    `.d.old-*` folder nobody removed. The next run restores the output and sweeps what dead
    runs left; a live run's half-placed output is left alone."""
    project.write("r.yaml", DIR_RECIPE.replace("VERSION", "one"))
    assert project.statuses(project.run()) == {"d": "built"}
    step_dir = project.build / "r" / "d"
    out = step_dir / "d"
    project.write("r.yaml", DIR_RECIPE.replace("VERSION", "two"))
    assert project.statuses(project.run()) == {"d": "built"}
    # the state a kill between `rename(d, .d.old-*)` and `rename(.d.tmp-*, d)` leaves
    dead = _dead_pid()
    os.rename(out, step_dir / f".d.old-{dead}-0123abcd")
    (step_dir / f".d.tmp-{dead}-89abcdef" / "sub").mkdir(parents=True)
    (step_dir / ".d.old-feedbeef").mkdir()  # named by an older version (no pid)
    live = subprocess.Popen(["sleep", "60"])
    try:
        (step_dir / f".d.tmp-{live.pid}-00000000").mkdir()  # another run placing its output
        assert project.statuses(project.run()) == {"d": "restored"}
        assert (out / "sub" / "f").read_text() == "two\n"
        assert sorted(p.name for p in step_dir.iterdir()) == [f".d.tmp-{live.pid}-00000000", "d"]
    finally:
        live.kill()
        live.wait()
    assert project.statuses(project.run()) == {"d": "cached"}
    assert sorted(p.name for p in step_dir.iterdir()) == ["d"]


def test_replacing_a_directory_output_never_leaves_it_missing(tmp_path):
    """Where the OS swaps two paths atomically, a reader polling the output while it is
    replaced never finds it missing, and nothing is left beside it."""
    import threading

    from buildgraph.engine.store.cache import Store, _renameat2

    if _renameat2() is None:
        pytest.skip("no renameat2 here: the two-rename fallback has a window (swept later)")
    store = Store(tmp_path / "cache")
    entries = []
    for version in range(2):
        src = tmp_path / f"src{version}"
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "f").write_text(str(version))
        entries.append(store.put_output(src))
    dest = tmp_path / "build" / "d"
    store.materialize(entries[0], dest)
    missing = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if not os.path.isdir(dest):
                missing.append(1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(200):
            store.materialize(entries[i % 2], dest)
    finally:
        stop.set()
        watcher.join()
    assert not missing
    assert sorted(p.name for p in dest.parent.iterdir()) == ["d"]


def test_scratch_of_a_live_run_survives_the_sweep_and_a_dead_ones_goes(project):
    from buildgraph.engine.store.cache import Store

    store = Store(project.cache)
    dead = _dead_pid()
    live = subprocess.Popen(["sleep", "60"])
    try:
        (store.tmp / f"0123456789abcdef-{dead}-aaaaaa" / "work").mkdir(parents=True)
        (store.tmp / f"0123456789abcdef-{live.pid}-bbbbbb" / "work").mkdir(parents=True)
        project.write("r.yaml", DIR_RECIPE)
        project.run()
        assert [p.name for p in store.tmp.iterdir()] == [f"0123456789abcdef-{live.pid}-bbbbbb"]
    finally:
        live.kill()
        live.wait()


def test_a_key_committed_after_planning_is_not_built_again(project):
    """Process B plans a miss; process A builds and commits the key; B then takes the lock
    without waiting. B must look at the cache again rather than build a second time."""
    from buildgraph import api
    from buildgraph.reporters import Reporter

    counter = project.root / "executions.log"
    project.write("r.yaml", f"""
        steps:
          s: {{uses: shell, with: {{cmd: 'echo run >> {counter}; echo s > ${{out.o}}'}}, outputs: [o]}}
    """)

    class OtherProcessCommitsFirst(Reporter):
        """Runs as the step is handed to a thread: planned, not yet locked."""

        def step_started(self, step_id, reasons):
            other = project.cli("run", "r.yaml", "--build-dir", "elsewhere")
            assert other.returncode == 0, other.stderr
            assert counter.read_text() == "run\n"  # A built it

    result = api.run(project.root / "r.yaml", cache_dir=project.cache,
                     build_dir=project.build / "r", reporter=OtherProcessCommitsFirst())
    assert result["s"].status == "cached", result["s"].message
    assert counter.read_text() == "run\n"  # built once, by A
    assert (project.build / "r" / "s" / "o").read_text() == "s\n"
    # --force still builds, even with the entry in the cache
    forced = api.run(project.root / "r.yaml", cache_dir=project.cache,
                     build_dir=project.build / "r", force=["s"])
    assert forced["s"].status == "built"
    assert counter.read_text() == "run\nrun\n"
