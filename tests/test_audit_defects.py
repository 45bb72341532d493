"""The smaller robustness defects of issue 19's audit, one test each: a step's background
processes, a full disk in ``put_bytes``, a shell command too long to start, and ``-j`` /
``--frozen --locked`` values that make no sense."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from buildgraph.engine.store.cache import Store
from buildgraph.errors import CacheError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def test_a_successful_steps_background_process_ends_with_the_step(project, tmp_path):
    pidfile = tmp_path / "bg.pid"
    project.write("r.yaml", f"""
        name: bg
        steps:
          s:
            uses: shell
            with: {{cmd: "sleep 120 & echo $! > {pidfile}; echo done > ${{out.o}}"}}
            outputs: [o]
        """)
    events = project.run()
    assert project.statuses(events) == {"s": "built"}
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(pid)
    if alive:
        os.kill(pid, 9)
    assert not alive, "the step's `sleep 120 &` outlived the run"


def test_a_full_disk_in_put_bytes_leaves_no_temp_and_says_one_line(tmp_path, monkeypatch):
    store = Store(tmp_path / "cache")
    real_write = Path.write_bytes

    def full(self: Path, data: bytes) -> int:
        if self.name.startswith(".tmp-"):
            real_write(self, b"")  # what a full disk leaves: a 0-byte file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(CacheError) as info:
        store.put_bytes(b"x" * 1000)
    assert "no space left for the cache" in info.value.message
    assert "\n" not in info.value.message
    assert not list(store.objects.rglob(".tmp-*"))
    monkeypatch.undo()
    # and what an older run (or a kill) left is swept by gc
    (store.objects / "ab").mkdir(parents=True, exist_ok=True)
    (store.objects / "ab" / ".tmp-0123").write_bytes(b"")
    from buildgraph.engine.store import maintenance

    with store.using(exclusive=True):
        result = maintenance.gc(store)
    assert result["removed_tmp"] >= 1
    assert not list(store.objects.rglob(".tmp-*"))
    store.close()


def test_a_huge_shell_command_fails_in_one_line(project):
    project.write("r.yaml", """
        name: big
        steps:
          s:
            uses: shell
            with: {cmd: "true %s > ${out.o}"}
            outputs: [o]
        """ % ("x" * (10 << 20)))
    proc = project.cli("run", "r.yaml")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "too long for the operating system to start" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("args, message", [
    (["-j", "0"], "expected at least 1; got 0"),
    (["-j", "-3"], "expected at least 1; got -3"),
    (["--jobs=0"], "expected at least 1; got 0"),
    (["--frozen", "--locked"], "not allowed with argument --frozen"),
])
def test_nonsense_run_options_are_refused(args, message, capsys):
    from buildgraph.cli import run_cli

    with pytest.raises(SystemExit) as info:
        run_cli(["run", "r.yaml", *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_lock_file_entry_with_a_bad_key_or_path_is_ignored_with_its_reason(tmp_path):
    """Issue 19 item 1: the same validators guard the lock file (it comes with a git pull)."""
    import json

    from buildgraph.engine.lockfile import LOCK_SCHEMA, read_lock

    good = {"key": "a" * 32, "outputs": {"o": {"digest": "b" * 32, "path": "s/o"}}}
    path = tmp_path / "r.lock.json"
    path.write_text(json.dumps({"schema": LOCK_SCHEMA, "steps": {
        "good": good,
        "key": dict(good, key="ab/../../etc/passwd"),
        "digest": dict(good, outputs={"o": {"digest": "../x"}}),
        "path": dict(good, outputs={"o": {"digest": "b" * 32, "path": "/etc/passwd"}})}}))
    warnings: list = []
    assert set(read_lock(path, warn=warnings.append)) == {"good"}
    assert len(warnings) == 3 and all("ignored: " in w for w in warnings), warnings
    assert any("is not a xxh3 digest" in w for w in warnings)
    assert any("is absolute" in w for w in warnings)


def test_the_validators_stand_alone_and_remote_records_does_not_import_remote():
    """names.py imports nothing else from buildgraph; the remote <-> remote_records circle
    (issue 20) is gone: both depend on remote_docs instead."""
    import ast

    import buildgraph

    engine = Path(buildgraph.__file__).parent / "engine"

    def imports(name: str) -> set:
        tree = ast.parse((engine / name).read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        return found

    assert not {m for m in imports("names.py") if m.startswith("buildgraph")}
    assert "buildgraph.engine.team.remote" not in imports("team/records.py")
    assert "buildgraph.engine.team.records" not in imports("remote_docs.py")
