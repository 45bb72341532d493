"""Child processes of a run: started in their own process group, killed as a group.

The scheduler must be able to stop everything a step started (Ctrl-C, SIGTERM, a timeout)
without leaving orphans that keep writing into a scratch directory. Every child is started
with ``start_new_session=True`` and registered here; :func:`kill_all` signals each group.

A run killed outright (``kill -9``, the OOM killer) runs none of that, so long-lived children
watch their parent themselves: :func:`die_with_parent` ends a worker, and every process in its
group (TVM's builder and runner processes), as soon as the run is gone.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, List, Optional, Sequence, Set

from buildgraph.errors import StepFailed

# subprocess (with selectors and locale, ~5 ms) is imported where a process starts or is waited
# for: a fully cached run starts none
if TYPE_CHECKING:  # pragma: no cover
    import subprocess

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
    import subprocess

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
    import subprocess

    if _cancelled.is_set():
        raise StepFailed("cancelled")
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as exc:
        if exc.errno == errno.E2BIG:
            size = sum(len(a) for a in argv) + sum(len(k) + len(v) for k, v in (env or {}).items())
            raise StepFailed(f"{what} is too long for the operating system to start "
                             f"({size} bytes of arguments and environment; one argument may "
                             "hold at most 128 KiB on Linux): put it in a script file and run "
                             "that") from None
        raise StepFailed(f"cannot start {what}: {exc.strerror or exc}") from None
    register(proc)
    try:
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            proc.wait()
            raise StepFailed(f"{what} timed out after {timeout:g} s and was killed") from None
    finally:
        # the step is over, whatever its outcome: what it left running in its group (a
        # `sleep 120 &`) must not outlive it
        kill_group(proc, signal.SIGKILL)
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


# --- dying with the parent ------------------------------------------------------------------
PARENT_ENV = "BUILDGRAPH_PARENT_PID"
"""Set by a run for the workers it starts: the pid they must not outlive."""

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PARENT_GONE_SIGNAL = signal.SIGHUP


def end_on_sigterm() -> None:
    """In a worker: SIGTERM (the run cancelling or timing out a step) ends the worker together
    with the commands it started in sessions of their own, which a SIGKILL of the worker's
    group alone would orphan."""
    signal.signal(signal.SIGTERM, lambda signum, frame: _end_group())


def die_with_parent(parent: Optional[int] = None, pipe: Optional[int] = None) -> None:
    """End this process, and its process group if it leads one, as soon as ``parent`` ends.

    Call it first thing in a long-lived child. ``parent`` defaults to ``$BUILDGRAPH_PARENT_PID``
    (the pid the parent wrote before starting us; ``os.getppid()`` here could already be init's).
    Two paths, because either alone can be late or missing:

    * Linux: ``prctl(PR_SET_PDEATHSIG)`` has the kernel send SIGHUP when the parent exits. It is
      set after we started, so the parent may be gone already: the pid is checked right after.
      The signal also comes when the parent *thread* that started us ends (a thread pool
      shrinking), so the handler acts only once the parent process is gone. A Python handler
      runs only when the main thread runs Python, which a long native call can delay; hence:
    * everywhere: a daemon thread that waits for ``pipe`` (our end of a pipe whose other end
      only the parent holds) to hang up, and checks the parent pid twice a second.

    Ending means SIGKILL to our own process group, which takes the children we started with it
    (they inherit the group), or plain exit where we do not lead a group.
    """
    if parent is None:
        try:
            parent = int(os.environ.get(PARENT_ENV, ""))
        except ValueError:
            parent = os.getppid()
    if sys.platform.startswith("linux"):
        signal.signal(_PARENT_GONE_SIGNAL, lambda signum, frame: _check_parent(parent))
        _set_pdeathsig(_PARENT_GONE_SIGNAL)
    _check_parent(parent)  # gone before we could ask to be told: end now
    watchdog = threading.Thread(target=_watch_parent, args=(parent, pipe), daemon=True,
                                name="buildgraph-parent-watchdog")
    watchdog.start()


def _set_pdeathsig(sig: int) -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _check_parent(parent: int) -> None:
    if os.getppid() != parent:
        _end_group()


def _watch_parent(parent: int, pipe: Optional[int]) -> None:
    poller = None
    if pipe is not None and hasattr(select, "poll"):
        poller = select.poll()
        poller.register(pipe, select.POLLHUP)  # POLLHUP and POLLERR are reported anyway
    while True:
        if poller is not None:
            if poller.poll(500):
                # Hung up. The kernel closes a dying process's files before it re-parents its
                # children, so getppid() may still name it for a moment; and a parent that
                # closed the pipe on purpose (end of run) is alive: keep to the pid from here.
                poller = None
        else:
            time.sleep(0.1 if pipe is not None else 0.5)
        if os.getppid() != parent:
            _end_group()


def _end_group() -> None:
    """SIGKILL the process groups of the commands this process started (each in its own
    session: a shell step's pipeline), then our own group, and exit."""
    try:
        with _lock:
            started = list(_running)
        for proc in started:
            kill_group(proc, signal.SIGKILL)
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)  # the group, this process included
    finally:
        os._exit(1)
