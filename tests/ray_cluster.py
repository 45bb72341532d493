"""A real Ray cluster of a few nodes on this machine, for the cluster tests and benchmark (not a
test module).

Each node is a ``ray start --block`` process started in a session of its own, with its own
temporary directory, free ports and custom resources; everything Ray starts for that node stays
in the session. So a node can be killed outright (:meth:`RayNodes.kill`: SIGKILL to every
process of its session, the "lost node" case) and :meth:`RayNodes.stop` ends exactly the nodes
this object started, never another Ray on the machine (no ``ray stop``). Traffic stays on
loopback. Each node's environment can differ (its own ``BUILDGRAPH_CACHE_DIR``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from seaweed import free_ports

RAY = str(Path(sys.executable).parent / "ray")


def ray_available() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("ray") is not None and Path(RAY).exists()
    except Exception:  # noqa: BLE001
        return False


def _stop_with_parent() -> None:  # runs in the child before exec
    """SIGTERM when the process that started the node dies (a killed test run): ``ray start
    --block`` then stops the node's processes."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: stop() still ends it
        pass


def _session_pids(sid: int) -> List[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after "pid (comm)": state ppid pgrp session
            pids.append(int(entry))
    return pids


class RayNodes:
    """``nodes = RayNodes(); nodes.start_head(...); nodes.add("b", {...}); ...; nodes.stop()``."""

    def __init__(self, base_env: Optional[Dict[str, str]] = None):
        # unix socket paths must stay short: a private folder right under /tmp
        self.root = Path(tempfile.mkdtemp(prefix="bgray-", dir="/tmp"))
        self.base_env = dict(base_env or {})
        self.procs: Dict[str, subprocess.Popen] = {}
        self.specs: Dict[str, tuple] = {}
        self.gcs_port, self.client_port = free_ports(2)

    @property
    def address(self) -> str:
        """The GCS address (a driver on this machine)."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def _start(self, name: str, head: bool, resources: Dict[str, float],
               env: Dict[str, str], cpus: int) -> None:
        agent, grpc, runtime_env, metrics = free_ports(4)
        argv = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1",
                "--num-cpus", str(cpus), "--object-store-memory", str(80 * 1024 * 1024),
                "--resources", json.dumps(resources), "--temp-dir", str(self.root / name),
                "--dashboard-agent-listen-port", str(agent),
                "--dashboard-agent-grpc-port", str(grpc),
                "--runtime-env-agent-port", str(runtime_env),
                "--metrics-export-port", str(metrics), "--disable-usage-stats"]
        if head:
            argv += ["--head", "--port", str(self.gcs_port), "--include-dashboard", "false",
                     "--ray-client-server-port", str(self.client_port)]
        else:
            argv += ["--address", self.address]
        full = {**os.environ, **self.base_env, **env, "RAY_USAGE_STATS_ENABLED": "0"}
        full.pop("RAY_ADDRESS", None)
        log = open(self.root / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(argv, env=full, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=_stop_with_parent)
        log.close()
        self.specs[name] = (head, resources, env, cpus)

    def start_head(self, resources: Dict[str, float], env: Optional[Dict[str, str]] = None,
                   cpus: int = 1) -> None:
        self._start("head", True, resources, env or {}, cpus)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.gcs_port), 0.2).close()
                return
            except OSError:
                if self.procs["head"].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Ray head did not start:\n" + self.log("head"))
                time.sleep(0.2)

    def add(self, name: str, resources: Dict[str, float], env: Optional[Dict[str, str]] = None,
            cpus: int = 1) -> None:
        self._start(name, False, resources, env or {}, cpus)

    def restart(self, name: str) -> None:
        head, resources, env, cpus = self.specs[name]
        self._start(name, head, resources, env, cpus)

    def wait_for(self, count: int, timeout: float = 90) -> None:
        """Until ``count`` nodes are alive (asked from a short-lived driver process)."""
        code = ("import ray, sys, time\nray.init(address=sys.argv[1], logging_level='ERROR', "
                "log_to_driver=False)\nend = time.time() + float(sys.argv[3])\n"
                "while len([n for n in ray.nodes() if n['Alive']]) < int(sys.argv[2]):\n"
                "    assert time.time() < end, ray.nodes()\n    time.sleep(0.2)\n"
                "ray.shutdown()\n")
        env = {**os.environ, **self.base_env}
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.run([sys.executable, "-c", code, self.address, str(count),
                               str(timeout)], env=env, capture_output=True, text=True,
                              timeout=timeout + 30)
        if proc.returncode != 0:
            raise RuntimeError(f"the Ray nodes did not come up: {proc.stderr[-2000:]}\n"
                               + "\n".join(self.log(n) for n in self.procs))

    def pids(self, name: str) -> List[int]:
        """Every process of node ``name`` (its session)."""
        proc = self.procs.get(name)
        return _session_pids(proc.pid) if proc is not None else []

    def kill(self, name: str) -> None:
        """The node is lost: SIGKILL to all its processes at once, no clean-up."""
        proc = self.procs.pop(name)
        for _ in range(3):  # a process may start while we kill: look again
            for pid in _session_pids(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        proc.wait(timeout=10)

    def stop(self) -> None:
        """End the nodes this object started (workers first, the head last)."""
        names = [n for n in self.procs if n != "head"] + (["head"] if "head" in self.procs
                                                           else [])
        for name in names:
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes
        for name in names:
            proc = self.procs.pop(name)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            for pid in _session_pids(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self, name: str) -> str:
        try:
            return (self.root / f"{name}.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""
