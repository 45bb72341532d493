"""The processes of a run, read from /proc (not a test module).

A killed run's children are re-parented (to init or a subreaper), so "what is left of the run"
must be taken as a snapshot of its process tree *before* the kill, then watched by pid and
start time (a pid can be reused).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

Proc = Tuple[int, int]  # pid, start time (clock ticks since boot)


def needs_proc() -> None:
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc/self"):
        pytest.skip("reads the process tree from /proc (Linux)")


def _stat(pid: int) -> Optional[Tuple[str, int, int]]:
    """(state, ppid, start time) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode(errors="replace")
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()  # the command name may hold spaces and ')'
    return fields[0], int(fields[1]), int(fields[19])


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(root: int) -> List[Proc]:
    """Every living process below ``root`` (not ``root`` itself)."""
    children: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                children.setdefault(st[1], []).append(int(name))
    found: List[Proc] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        st = _stat(pid)
        if st is None or st[0] == "Z":
            continue
        found.append((pid, st[2]))
        todo.extend(children.get(pid, []))
    return found


def alive(procs: List[Proc]) -> List[Proc]:
    """Those still running (a zombie waiting for its new parent to reap it has ended)."""
    left = []
    for pid, start in procs:
        st = _stat(pid)
        if st is not None and st[0] != "Z" and st[2] == start:
            left.append((pid, start))
    return left


def wait_gone(procs: List[Proc], timeout: float) -> List[Proc]:
    """Wait up to ``timeout`` seconds for ``procs`` to end; return those still running."""
    deadline = time.monotonic() + timeout
    left = alive(procs)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = alive(left)
    return left


def describe(procs: List[Proc]) -> str:
    return "; ".join(f"{pid}: {cmdline(pid)}" for pid, _ in procs)


def kill(procs: List[Proc]) -> None:
    """SIGKILL what is left of ``procs`` (processes this test started), one pid at a time."""
    for pid, _ in alive(procs):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextlib.contextmanager
def sigint_reaches_children() -> Iterator[None]:
    """Let a child started inside this block take SIGINT as Ctrl-C does.

    A shell starts background commands with SIGINT ignored when it has no job control (a CI
    script's ``pytest &``), a child inherits that, and Python then leaves it ignored: the run
    would shrug off the interrupt the test sends. Handlers (unlike SIG_IGN) reset at exec."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
