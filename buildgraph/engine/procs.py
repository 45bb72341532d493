"""Child processes of a run: started in their own process group, killed as a group.

The scheduler must be able to stop everything a step started (Ctrl-C, SIGTERM, a timeout)
without leaving orphans that keep writing into a scratch directory. Every child is started
with ``start_new_session=True`` and registered here; :func:`kill_all` signals each group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import IO, List, Optional, Sequence, Set

from buildgraph.errors import StepFailed

_lock = threading.Lock()
_running: Set[subprocess.Popen] = set()
_cancelled = threading.Event()


def register(proc: subprocess.Popen) -> None:
    with _lock:
        _running.add(proc)


def unregister(proc: subprocess.Popen) -> None:
    with _lock:
        _running.discard(proc)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def kill_all() -> None:
    """Cancel the run: kill every registered process group."""
    _cancelled.set()
    with _lock:
        procs = list(_running)
    for proc in procs:
        kill_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + 2
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_group(proc, signal.SIGKILL)


def reset() -> None:
    _cancelled.clear()


def cancelled() -> bool:
    return _cancelled.is_set()


def signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def run_logged(argv: Sequence[str], log: IO[bytes], cwd: str, env: Optional[dict] = None,
               timeout: Optional[float] = None, what: str = "command") -> None:
    """Run ``argv`` with stdout+stderr into ``log``; raise StepFailed on failure or timeout."""
    if _cancelled.is_set():
        raise StepFailed("cancelled")
    proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    register(proc)
    try:
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            proc.wait()
            raise StepFailed(f"{what} timed out after {timeout:g} s and was killed") from None
    finally:
        unregister(proc)
    if _cancelled.is_set():
        raise StepFailed("cancelled")
    if rc < 0:
        raise StepFailed(f"{what} was killed by {signal_name(rc)}")
    if rc != 0:
        raise StepFailed(f"{what} exited with status {rc}")


def alive_children() -> List[int]:
    with _lock:
        return [p.pid for p in _running]
