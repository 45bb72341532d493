"""``tvm.tune`` measuring on a remote device through a real TVM RPC tracker and server (on
loopback: the "device" is this machine, registered under a key), and what the device changes:
the step's key, the scope its records are filed under, the library ``tvm.compile`` builds from
them, and the one-line errors when the tracker or the device is not there."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List

import numpy as np
import pytest

from proc_helpers import describe, descendants, kill, needs_proc, wait_gone
from tvm_helpers import TUNE, eager, log_of, needs_tvm, run, write_project

needs_tvm()
needs_proc()
pytest.importorskip("torch")
pytest.importorskip("xgboost")
pytest.importorskip("tornado", reason="the RPC tracker needs tornado (pip install tornado)")

KEY = "test-dev"
OTHER_KEY = "test-dev2"
SERVER_SESSION_LINE = "load_module"
"""What the RPC server logs for every module a session loads (one per measured candidate)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RpcCluster:
    """A tracker and servers, each started in a session of its own and killed by group."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = _free_port()
        self.procs: List[subprocess.Popen] = []
        self.logs: Dict[str, Path] = {}

    @property
    def tracker(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, argv: List[str]) -> None:
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        with open(log, "wb") as fh:
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", *argv], stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.workdir, start_new_session=True))

    def start(self, keys: List[str], timeout: float = 90.0) -> None:
        self._start("tracker", ["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                                str(self.port), "--port-end", str(self.port + 1)])
        self._wait(lambda: _listening(self.port), timeout, "the tracker")
        for key in keys:
            port = _free_port()
            self._start(key, ["tvm.exec.rpc_server", "--tracker", self.tracker, "--key", key,
                              "--host", "127.0.0.1", "--port", str(port), "--port-end",
                              str(port + 1)])
        self._wait(lambda: self.registered() >= set(keys), timeout, f"servers {keys}")

    def registered(self) -> set:
        from tvm import rpc

        summary = rpc.connect_tracker("127.0.0.1", self.port).summary()
        return {k for k, v in summary["queue_info"].items() if v.get("free")}

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                break
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.3)
        logs = {n: p.read_text(errors="replace")[-1500:] for n, p in self.logs.items()}
        raise RuntimeError(f"{what} did not come up in {timeout:g} s: {logs}")

    def stop(self) -> List:
        """Kill every group (SIGTERM, then SIGKILL); returns the processes still running."""
        snapshot = [pr for p in self.procs for pr in descendants(p.pid)]
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
            for p in self.procs:
                if p.poll() is None:
                    try:
                        os.killpg(p.pid, sig)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + wait
            for p in self.procs:
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            if all(p.poll() is not None for p in self.procs):
                break
        left = wait_gone(snapshot, 10.0)
        kill(left)  # a child that left its group: by pid, and reported
        return left

    def sessions(self, key: str = KEY) -> int:
        return self.logs[key].read_text(errors="replace").count(SERVER_SESSION_LINE)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RpcCluster]:
    c = RpcCluster(tmp_path_factory.mktemp("rpc"))
    try:
        c.start([KEY, OTHER_KEY])
        yield c
    finally:
        left = c.stop()
        assert not left, "left running: " + describe(left)
        assert all(p.poll() is not None for p in c.procs)


RPC_TUNE = dict(TUNE, target="llvm", trials=3)
"""A generic x86-64 target (the device is this machine); one trial per task of net_a."""


def steps(tracker: str) -> str:
    runner = {"tracker": tracker, "key": KEY, "timeout": 30}
    other = dict(runner, key=OTHER_KEY)
    return f"""
onnx: {{uses: onnx.export, with: {{model: net_a, exporter: legacy, opset: 18}}}}
tune: {{uses: tvm.tune, from: onnx, with: {json.dumps(dict(RPC_TUNE, runner=runner))}}}
lib: {{uses: tvm.compile, from: [onnx, tune], with: {{target: llvm, dims: {{batch: 1}}, require_records: all}}}}
tune_other_device: {{uses: tvm.tune, from: onnx, with: {json.dumps(dict(RPC_TUNE, runner=other))}}}
tune_here: {{uses: tvm.tune, from: onnx, with: {json.dumps(RPC_TUNE)}}}
lib_here: {{uses: tvm.compile, from: [onnx, tune], with: {{target: "llvm -num-cores=2", dims: {{batch: 1}}}}}}
"""


def test_tuning_measures_on_the_device_and_files_records_under_it(cluster: RpcCluster,
                                                                   tmp_path: Path):
    from buildgraph import api

    recipe = write_project(tmp_path, steps(cluster.tracker), name="rpc")
    # --- the device is part of the key: another key, or none, is another step ---------------
    assert run(recipe, tmp_path, targets=["onnx"])["onnx"].ok
    plan = api.plan(recipe, cache_dir=tmp_path / ".cache", build_dir=tmp_path / "build")
    keys = {sid: d.key for sid, d in plan.items()}
    assert len({keys["tune"], keys["tune_other_device"], keys["tune_here"]}) == 3
    env = plan["tune"].description.env
    device = json.loads(env["rpc_device"])
    assert device["key"] == KEY and device["threads"] >= 1 and device["cpu"] != "unknown"
    assert env["rpc_scope"].startswith(f"rpc-{KEY}-")
    other_env = plan["tune_other_device"].description.env
    assert json.loads(other_env["rpc_device"])["key"] == OTHER_KEY
    assert other_env["rpc_scope"] != env["rpc_scope"]
    assert "rpc_device" not in plan["tune_here"].description.env

    # --- tuning measures through the RPC server ----------------------------------------------
    before = cluster.sessions()
    result = run(recipe, tmp_path, targets=["lib", "lib_here"], keep_going=True)
    for sid in ("onnx", "tune", "lib"):
        assert result[sid].ok, (sid, result[sid].message, result[sid].log_tail)
    meta = result["tune"].meta
    measured = cluster.sessions() - before
    assert meta["trials"] == RPC_TUNE["trials"]
    assert measured >= meta["trials"], (measured, cluster.logs[KEY].read_text()[-2000:])
    assert meta["device"]["key"] == KEY and meta["device_scope"] == env["rpc_scope"]
    log = log_of(result, "tune")
    assert f"measuring on device {KEY}" in log and f"registered with key {KEY}" in log

    # every record carries the device scope in its target, and measured times
    from buildgraph.backends.tvm.records import read_db, record_seconds, record_target

    out = result["tune"].outputs["database"]
    db = read_db(out)
    assert db.records
    for _, rec in db.records:
        assert record_target(rec)["model"] == env["rpc_scope"]
        assert record_seconds(rec) is not None  # run_secs measured on the device
    manifest = json.loads((out / "tunedb.json").read_text())
    assert manifest["device"]["key"] == KEY and manifest["tracker"] == cluster.tracker

    # the shared records are filed under the device's scope, apart from this host's
    shared = sorted(p.name for p in (tmp_path / ".cache" / "tunedb" / "v1").glob("*/*")
                    if p.is_dir())
    assert len(shared) == 1 and f"rpc-{KEY}-" in shared[0], shared

    # --- the library for the same target picks the device's records, and is correct ---------
    lib = result["lib"].meta
    assert lib["device"]["key"] == KEY and lib["device_scope"] == env["rpc_scope"]
    assert lib["with_record"] == lib["functions"]
    from buildgraph.backends.tvm.runtime import TvmRuntime
    from buildgraph.engine.runtime import RuntimeContext

    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype("float32")
    got = TvmRuntime.load(result["lib"].outputs["model"], RuntimeContext()).run([x])[0]
    np.testing.assert_allclose(got, eager(tmp_path, "net_a", 0, x), rtol=1e-4, atol=1e-5)
    # a build for this host's target applies none of them (another scope)
    here = result["lib_here"]
    assert here.status == "failed" and "applied to none of the" in here.message, here.message


def test_no_device_with_the_key_is_one_line(cluster: RpcCluster, tmp_path: Path):
    from buildgraph import api
    from buildgraph.errors import BuildgraphError

    runner = {"tracker": cluster.tracker, "key": "nobody", "timeout": 5}
    recipe = write_project(tmp_path, f"""
onnx: {{uses: onnx.export, with: {{model: net_a, exporter: legacy, opset: 18}}}}
tune: {{uses: tvm.tune, from: onnx, with: {json.dumps(dict(RPC_TUNE, runner=runner))}}}
""", name="nokey")
    with pytest.raises(BuildgraphError) as info:
        api.plan(recipe, cache_dir=tmp_path / ".cache", build_dir=tmp_path / "build")
    text = info.value.render().splitlines()[0]
    assert text.startswith(f"{recipe}:") and "steps.tune.with" in text
    assert (f"no device with key nobody registered at tracker {cluster.tracker}; "
            f"`python -m tvm.exec.query_rpc_tracker --host 127.0.0.1 "
            f"--port {cluster.port}`") in text


def test_a_target_for_another_architecture_than_the_device_is_one_line(cluster: RpcCluster,
                                                                        tmp_path: Path):
    """The device reports its triple: aarch64 objects sent to this x86 "board" would fail to
    link for every candidate, so planning says so first."""
    from buildgraph import api
    from buildgraph.errors import BuildgraphError

    runner = {"tracker": cluster.tracker, "key": KEY}
    cross = dict(RPC_TUNE, target="llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72",
                 runner=runner)
    recipe = write_project(tmp_path, f"""
onnx: {{uses: onnx.export, with: {{model: net_a, exporter: legacy, opset: 18}}}}
tune: {{uses: tvm.tune, from: onnx, with: {json.dumps(cross)}}}
""", name="cross")
    with pytest.raises(BuildgraphError) as info:
        api.plan(recipe, cache_dir=tmp_path / ".cache", build_dir=tmp_path / "build")
    text = info.value.render()
    assert "steps.tune.with" in text.splitlines()[0]
    assert f"builds aarch64 code, and device {KEY} is x86_64" in text.splitlines()[0], text
    assert "hint: write the device's target, e.g. 'llvm -mtriple=x86_64" in text


def test_a_busy_device_is_one_line_after_the_timeout(cluster: RpcCluster, tmp_path: Path):
    """The tracker's own request waits forever for a free device; the step waits ``timeout``."""
    from tvm import rpc

    from buildgraph import api
    from buildgraph.errors import BuildgraphError

    runner = {"tracker": cluster.tracker, "key": OTHER_KEY, "timeout": 2}
    recipe = write_project(tmp_path, f"""
onnx: {{uses: onnx.export, with: {{model: net_a, exporter: legacy, opset: 18}}}}
tune: {{uses: tvm.tune, from: onnx, with: {json.dumps(dict(RPC_TUNE, runner=runner))}}}
""", name="busy")
    held = rpc.connect_tracker("127.0.0.1", cluster.port).request(OTHER_KEY, session_timeout=60)
    try:
        with pytest.raises(BuildgraphError) as info:
            api.plan(recipe, cache_dir=tmp_path / ".cache", build_dir=tmp_path / "build")
    finally:
        del held  # ends the session: the server registers again
    first = info.value.render().splitlines()[0]
    assert (f"no free device with key {OTHER_KEY} at tracker {cluster.tracker} within 2 s "
            "(1 registered, all busy)") in first, first
    deadline = time.monotonic() + 30
    while OTHER_KEY not in cluster.registered() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert OTHER_KEY in cluster.registered()


def test_a_missing_tracker_is_one_line_at_plan_time(tmp_path: Path):
    from buildgraph import api
    from buildgraph.errors import BuildgraphError

    port = _free_port()  # nothing listens there
    runner = {"tracker": f"127.0.0.1:{port}", "key": KEY}
    recipe = write_project(tmp_path, f"""
onnx: {{uses: onnx.export, with: {{model: net_a, exporter: legacy, opset: 18}}}}
tune: {{uses: tvm.tune, from: onnx, with: {json.dumps(dict(RPC_TUNE, runner=runner))}}}
""", name="notracker")
    start = time.monotonic()
    with pytest.raises(BuildgraphError) as info:
        api.plan(recipe, cache_dir=tmp_path / ".cache", build_dir=tmp_path / "build")
    assert time.monotonic() - start < 20  # not TVM's 60 s of retries
    text = info.value.render()
    first = text.splitlines()[0]
    assert f"cannot reach the RPC tracker 127.0.0.1:{port} (device key '{KEY}')" in first
    assert "steps.tune.with" in first and "Traceback" not in text


@pytest.mark.parametrize("runner, expected", [
    ({"tracker": "127.0.0.1:9190", "key": "rasp4", "prio": 2}, "prio"),
    ({"tracker": "no-port", "key": "rasp4"}, "is not host:port"),
    ({"key": "rasp4"}, "tracker"),
    ({"tracker": "127.0.0.1:9190", "key": "a b"}, "letters, digits"),
])
def test_runner_options_are_checked_with_their_location(tmp_path: Path, runner, expected):
    from buildgraph import api
    from buildgraph.errors import BuildgraphError

    recipe = write_project(tmp_path, f"""
onnx: {{uses: onnx.export, with: {{model: net_a, exporter: legacy, opset: 18}}}}
tune: {{uses: tvm.tune, from: onnx, with: {json.dumps(dict(RPC_TUNE, runner=runner))}}}
""", name="badrunner")
    with pytest.raises(BuildgraphError) as info:
        api.load(recipe)
    text = info.value.render()
    assert text.startswith(f"{recipe}:") and "runner" in text and expected in text, text
    assert "Traceback" not in text
