"""Persistent worker processes for heavy executors (Bazel's persistent workers).

Importing torch and onnx costs seconds; a process per step would make a recipe slower than the
script it replaces. Steps whose executor says ``isolation = "worker"`` run in long-lived child
processes that keep their imports warm from step to step. A worker that crashes (a segfault in
a native library) fails one step; the pool replaces it. Workers run in their own process group
so that Ctrl-C reaches the scheduler only, which then kills them.

Protocol: length-prefixed pickles over the worker's stdin/stdout, which the worker moves to
private descriptors at start; the step's own stdout/stderr (including native libraries') go to
its log file.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any, List, Optional, Tuple

from buildgraph.engine.execution import procs
from buildgraph.errors import StepFailed

_HEADER = struct.Struct("!Q")
TIMEOUT_GRACE_S = 1.0


def send(fd: int, obj: Any) -> None:
    """Write one length-prefixed pickle to ``fd`` (the engine and its workers talk so)."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def recv(fd: int) -> Any:
    """Read one message :func:`send` wrote; None at end of file (the other side is gone)."""
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    data = _read_exact(fd, size)
    if data is None:
        return None
    return pickle.loads(data)


def _read_exact(fd: int, size: int) -> Optional[bytes]:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


OMP_POLICY_SET = "BUILDGRAPH_SET_OMP_WAIT_POLICY"
"""Set in a worker's environment when the engine chose its ``OMP_WAIT_POLICY``."""


class Worker:
    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        # A step's output must not depend on the process it ran in: str hashes, and so the
        # iteration order of sets of names (TorchScript writes a module's constants in that
        # order), are seeded per process unless this is fixed. A value the user set stays.
        if env.get("PYTHONHASHSEED", "random") == "random":
            env["PYTHONHASHSEED"] = "0"
        # Steps run side by side on few cores. OpenMP's threads spin while they wait (its
        # default), so a torch step's threads burn the cores another step needs: measured on
        # 2 cores under load, 2-thread torch steps ran 7x slower. Threads that sleep cost only
        # a wake-up per parallel region. A value the user set stays; benchmark runners, which
        # measure, get the user's own setting back (backends/evaluate/benchmark.py).
        if "OMP_WAIT_POLICY" not in env:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
            env[OMP_POLICY_SET] = "1"
        env[procs.PARENT_ENV] = str(os.getpid())  # the worker dies with this process
        self.proc = subprocess.Popen([sys.executable, "-m",
                                      "buildgraph.engine.execution.worker_main"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=None, start_new_session=True, env=env)
        procs.register(self.proc)
        self.kinds: set = set()
        self.tasks = 0

    def call(self, kind: str, task: Any, timeout: Optional[float],
             request: Optional[tuple] = None) -> Any:
        """Run a step of ``kind`` (or send ``request``, a ``("call", ...)``) and wait."""
        assert self.proc.stdin and self.proc.stdout
        try:
            send(self.proc.stdin.fileno(), request or ("run", kind, task))
        except (BrokenPipeError, OSError):
            raise StepFailed(self._death()) from None
        fd = self.proc.stdout.fileno()
        # a second of grace: an executor that enforces the timeout itself (a shell command)
        # reports it more precisely than killing the worker would
        deadline = None if timeout is None else time.monotonic() + timeout + TIMEOUT_GRACE_S
        while True:
            if procs.cancelled():
                self.kill()
                raise StepFailed("cancelled")
            wait = 0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic()))
            ready, _, _ = select.select([fd], [], [], wait)
            if ready:
                break
            if deadline is not None and time.monotonic() >= deadline:
                self.kill()
                raise StepFailed(f"timed out after {timeout:g} s and was killed")
        reply = recv(fd)
        if reply is None:
            raise StepFailed(self._death())
        self.kinds.add(kind)
        self.tasks += 1
        return reply

    def _death(self) -> str:
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.wait()
        procs.unregister(self.proc)
        if procs.cancelled():
            return "cancelled"
        if rc is not None and rc < 0:
            return f"the worker process died ({procs.signal_name(rc)})"
        return f"the worker process exited unexpectedly (status {rc})"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGTERM first (the worker then ends the commands it started in their own
        sessions), SIGKILL to its group if it has not gone within a second."""
        procs.kill_group(self.proc, signal.SIGTERM)
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            procs.kill_group(self.proc)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        procs.unregister(self.proc)

    def close(self) -> None:
        self.stop()
        self.reap()

    def stop(self) -> None:
        """Ask the worker to exit (end of its input); :meth:`reap` waits for it."""
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass

    def reap(self, timeout: float = 5) -> None:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        procs.unregister(self.proc)


class WorkerPool:
    """Idle workers are reused, preferring one that already ran the same kind (warm imports)."""

    def __init__(self, max_workers: int):
        self.max_workers = max(1, max_workers)
        self._idle: List[Worker] = []
        self._lock = threading.Lock()
        self.started = 0

    def call_function(self, target: str, payload: Any, log_path: str,
                      timeout: Optional[float] = None) -> Tuple[str, Any]:
        """Call ``"module:function"(payload)`` in a worker (its output goes to ``log_path``);
        answers like :meth:`run`."""
        return self.run(f"call:{target}", None, timeout, ("call", target, payload, log_path))

    def run(self, kind: str, task: Any, timeout: Optional[float] = None,
            request: Optional[tuple] = None, fresh: bool = False) -> Tuple[str, Any]:
        """Run ``kind`` on ``task`` in an idle worker (``fresh``: in a new one, ended after
        this call; see ``Executor.fresh_worker``)."""
        if fresh:
            with self._lock:
                self.started += 1
            worker = Worker()
        else:
            worker = self._take(kind)
        try:
            reply = worker.call(kind, task, timeout, request)
        except StepFailed:
            worker.kill()
            raise
        except BaseException:
            worker.kill()
            raise
        if fresh:
            worker.close()
        elif worker.alive():
            with self._lock:
                self._idle.append(worker)
        return reply

    def _take(self, kind: str) -> Worker:
        with self._lock:
            self._idle = [w for w in self._idle if w.alive()]
            for i, worker in enumerate(self._idle):
                if kind in worker.kinds:
                    return self._idle.pop(i)
            if self._idle:
                return self._idle.pop()
        self.started += 1
        return Worker()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:  # all at once: each exit overlaps the others'
            worker.stop()
        for worker in idle:
            worker.reap()
