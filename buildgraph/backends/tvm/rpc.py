"""Remote devices behind a TVM RPC tracker: the ``runner:`` option of ``tvm.tune``, the device's
fingerprint, and the session factory MetaSchedule's RPC runner measures through.

A board (a Raspberry Pi, a phone, another server) runs ``python -m tvm.exec.rpc_server
--tracker HOST:9190 --key rasp4``; the tracker (``python -m tvm.exec.rpc_tracker``) hands its
sessions out by key. ``tvm.tune`` builds candidates on this machine (object files in a ``.tar``:
the device's RPC server links them with its own C compiler, so no cross compiler is needed
here) and measures them on the device.

Records measured on a device must never be applied to a build for another one, so the device is
part of everything records are filed under:

* the **fingerprint** (:func:`probe`): the key, and what the device's TVM reports about its
  machine (LLVM's name for its CPU and its default triple, where the server has TVM's compiler
  library; the runtime's thread count always). It is asked once when the step is described
  (in a child process with a hard time limit: planning never imports TVM and never hangs on a
  busy device) and memoised with the description; the run asks again and refuses to measure
  when the device behind the key is no longer the one the step was keyed for;
* the **device scope** (:func:`device_scope`): ``rpc-<key>-<digest of the fingerprint>``, put
  into the TVM target as its ``model`` attribute (a plain string TVM keeps for exactly this:
  naming the device a target is for; LLVM code generation ignores it). MetaSchedule writes the
  target into every record, so the records carry their device, and
  :func:`~buildgraph.backends.tvm.target.target_identity` (which files the shared records and
  filters them for ``tvm.compile``) includes ``model``: records from a Pi fall in another scope
  than records measured here, even for the same target string.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sys
import threading
from typing import Any, Dict, Mapping, Optional, Tuple

from pydantic import Field, field_validator

from buildgraph.engine.params import StrictParams
from buildgraph.errors import BuildgraphError

SCOPE_PREFIX = "rpc-"
FINGERPRINT_SCHEMA = 1


class RunnerParams(StrictParams):
    """``tvm.tune``'s ``runner:``: measure on a device registered at a TVM RPC tracker."""

    tracker: str = Field(description="the RPC tracker, host:port (e.g. 10.0.0.5:9190)")
    key: str = Field(min_length=1, description="the device key the RPC server registered "
                     "with (rpc_server --key)")
    priority: int = Field(1, description="priority of this step's session requests at the "
                          "tracker (higher first)")
    timeout: float = Field(60.0, gt=0, description="seconds to wait for a free device with "
                           "the key before failing")
    session_timeout: float = Field(60.0, gt=0, description="seconds one measurement session "
                                   "may last on the device (upload, link, run); the server "
                                   "ends it after that")

    @field_validator("tracker")
    @classmethod
    def _tracker(cls, value: str) -> str:
        parse_tracker(value)
        return value.strip()

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", value):
            raise ValueError(f"device key '{value}': letters, digits and . _ + - only (the "
                             "tracker matches keys by prefix before ':')")
        return value

    def address(self) -> Tuple[str, int]:
        return parse_tracker(self.tracker)


class DeviceError(BuildgraphError):
    """The tracker or the device cannot be reached, or holds no device with the key."""


def parse_tracker(text: str) -> Tuple[str, int]:
    """``host:port`` -> (host, port); a one-line error otherwise."""
    host, sep, port = str(text).strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"tracker '{text}' is not host:port (e.g. 10.0.0.5:9190)")
    return host.strip("[]"), int(port)


def query_hint(host: str, port: int) -> str:
    return f"`python -m tvm.exec.query_rpc_tracker --host {host} --port {port}`"


# --------------------------------------------------------------------------------------------
# asking the device (imports TVM: runs in the tuning worker or in the describe child process)
# --------------------------------------------------------------------------------------------

def _connect_tracker(host: str, port: int, wait: float, key: str) -> Any:
    """A TVM tracker session, or a DeviceError at once when nothing listens there (TVM's own
    ``connect_tracker`` retries a refused connection for 60 s)."""
    try:
        socket.create_connection((host, port), timeout=min(wait, 10.0)).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DeviceError(f"cannot reach the RPC tracker {host}:{port} (device key "
                          f"'{key}'): {reason}",
                          hint=f"start it with `python -m tvm.exec.rpc_tracker --host 0.0.0.0 "
                               f"--port {port}`, or check with {query_hint(host, port)}"
                          ) from None
    from tvm import rpc

    return rpc.connect_tracker(host, port)


def registered(tracker: Any, key: str) -> Tuple[int, int]:
    """(servers registered with ``key``, free ones) from the tracker's summary."""
    summary = tracker.summary()
    total = sum(1 for item in summary.get("server_info", [])
                if str(item.get("key", "")).split(":", 1)[-1] == key)
    free = int(summary.get("queue_info", {}).get(key, {}).get("free", 0))
    return total, free


def request_session(host: str, port: int, key: str, priority: int = 1,
                    session_timeout: float = 0, wait: float = 60.0) -> Any:
    """A session on a device with ``key``, waiting at most ``wait`` seconds for a free one
    (the tracker's own request waits forever). One-line DeviceErrors name the tracker and key."""
    return _open_session(host, port, key, priority, session_timeout, wait)[0]


def _open_session(host: str, port: int, key: str, priority: int, session_timeout: float,
                  wait: float) -> Tuple[Any, int]:
    tracker = _connect_tracker(host, port, wait, key)
    total, _ = registered(tracker, key)
    if total == 0:
        tracker.close()
        raise DeviceError(f"no device with key {key} registered at tracker {host}:{port}; "
                          f"{query_hint(host, port)}",
                          hint=f"on the device: python -m tvm.exec.rpc_server --tracker "
                               f"{host}:{port} --key {key}")
    box: Dict[str, Any] = {}

    def ask() -> None:
        try:
            box["session"] = tracker.request(key, priority=priority,
                                             session_timeout=session_timeout, max_retry=1)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc

    thread = threading.Thread(target=ask, daemon=True, name=f"rpc-request-{key}")
    thread.start()
    thread.join(wait)
    if thread.is_alive():
        tracker.close()  # ends the blocked request
        raise DeviceError(f"no free device with key {key} at tracker {host}:{port} within "
                          f"{wait:g} s ({total} registered, all busy); {query_hint(host, port)}")
    if "error" in box:
        text = str(box["error"]).strip().splitlines()
        raise DeviceError(f"device {key} at tracker {host}:{port} refused a session: "
                          f"{(text[-1] if text else type(box['error']).__name__)[:200]}")
    tracker.close()
    return box["session"], total


def create_session(rpc_config: Any, wait: float = 60.0) -> Any:
    """MetaSchedule's ``f_create_session`` (runs in the runner's worker processes): its
    default waits for a free device forever, so a device that went away would hang tuning."""
    return request_session(rpc_config.tracker_host, int(rpc_config.tracker_port),
                           rpc_config.tracker_key, rpc_config.session_priority,
                           rpc_config.session_timeout_sec, wait)


def _remote_call(session: Any, name: str) -> Optional[str]:
    try:
        func = session.get_function(name)
    except Exception:  # noqa: BLE001 - not registered on that server (a runtime-only build)
        return None
    try:
        return str(func())
    except Exception:  # noqa: BLE001
        return None


def probe(host: str, port: int, key: str, priority: int = 1, wait: float = 60.0
          ) -> Dict[str, Any]:
    """The fingerprint of the device behind ``key``: one short session on it.

    ``cpu``/``triple`` come from the LLVM functions of TVM's compiler library (a server
    installed with the apache-tvm wheel has them; a runtime-only one reports ``unknown``);
    ``threads`` is the runtime's thread-pool size, which parallel kernels use there."""
    session, total = _open_session(host, port, key, priority, max(wait, 30.0), wait)
    try:
        threads = _remote_call(session, "runtime.NumThreads")
        fp = {"schema": FINGERPRINT_SCHEMA, "key": key,
              "cpu": _remote_call(session, "target.llvm_get_system_cpu") or "unknown",
              "triple": _remote_call(session, "target.llvm_get_system_triple") or "unknown",
              "threads": int(threads) if threads and threads.isdigit() else 0}
    finally:
        del session
    fp["devices"] = total  # how many runner workers to use; not part of the scope
    return fp


def scope_fields(fp: Mapping[str, Any]) -> Dict[str, Any]:
    """The fingerprint fields that name the device (not how many there are)."""
    return {k: fp[k] for k in ("schema", "key", "cpu", "triple", "threads") if k in fp}


def device_scope(fp: Mapping[str, Any]) -> str:
    """``rpc-<key>-<12 hex>``: the target ``model`` naming the device records are measured on."""
    text = json.dumps(scope_fields(fp), sort_keys=True, separators=(",", ":"))
    return f"{SCOPE_PREFIX}{fp['key']}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def device_text(fp: Mapping[str, Any]) -> str:
    return (f"{fp.get('key')} (cpu {fp.get('cpu')}, triple {fp.get('triple')}, "
            f"{fp.get('threads')} threads)")


def remote_target(canonical: Mapping[str, Any], fp: Mapping[str, Any]) -> Dict[str, Any]:
    """The effective TVM target for measuring ``canonical`` on the device: ``num-cores`` from
    the device (MetaSchedule needs it for CPU targets), ``model`` = the device scope."""
    from buildgraph.backends.tvm.target import (TargetError, host_arch, is_native, target_text,
                                                triple_arch)

    if is_native(canonical):
        raise TargetError("target native means this machine's CPU, not the device's",
                          hint=f"write the device's target, e.g. {suggest_target(fp)}")
    if canonical.get("model"):
        raise TargetError(f"target model '{canonical['model']}': with a runner the model names "
                          "the device the records are measured on; remove it")
    if canonical.get("kind") not in ("llvm", "c"):
        raise TargetError(f"runner: measuring on a device supports CPU targets (llvm); got "
                          f"{canonical.get('kind')}")
    device_triple = str(fp.get("triple") or "unknown")
    if device_triple != "unknown":
        # LLVM builds for -mtriple, else for this host's own: object files the board's linker
        # rejects ("file in wrong format") would fail every candidate after the search began
        built = triple_arch(str(canonical["mtriple"])) if canonical.get("mtriple") else host_arch()
        if built != triple_arch(device_triple):
            raise TargetError(f"target {target_text(canonical)} builds {built} code, and device "
                              f"{fp.get('key')} is {triple_arch(device_triple)} "
                              f"({device_triple})",
                              hint=f"write the device's target, e.g. {suggest_target(fp)}")
    out = dict(canonical)
    if "num-cores" not in out:
        out["num-cores"] = max(1, int(fp.get("threads") or 1))
    out["model"] = device_scope(fp)
    return dict(sorted(out.items()))


def suggest_target(fp: Mapping[str, Any]) -> str:
    cpu, triple = fp.get("cpu"), fp.get("triple")
    if cpu in (None, "unknown") or triple in (None, "unknown"):
        return "'llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72'"
    return f"'llvm -mtriple={triple} -mcpu={cpu}'"


# --------------------------------------------------------------------------------------------
# at describe time: in a child process with a hard limit
# --------------------------------------------------------------------------------------------

def describe_device(runner: RunnerParams) -> Dict[str, Any]:
    """The device's fingerprint for a step's description, asked in a child process (TVM stays
    out of the planning process; a wedged tracker is killed after ``runner.timeout`` plus the
    time to import TVM). Raises a one-line DeviceError."""
    import os
    import subprocess

    from buildgraph.engine.execution import procs

    host, port = runner.address()
    argv = [sys.executable, "-m", "buildgraph.backends.tvm.rpc", host, str(port), runner.key,
            str(runner.priority), str(runner.timeout)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ))
    procs.register(proc)
    limit = runner.timeout + 60.0
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        procs.kill_group(proc)
        proc.communicate()
        raise DeviceError(f"asking device {runner.key} at tracker {host}:{port} for its "
                          f"fingerprint took over {limit:g} s; {query_hint(host, port)}") from None
    finally:
        procs.unregister(proc)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    try:
        reply = json.loads(lines[-1]) if lines else {}
    except ValueError:
        reply = {}
    if reply.get("error"):
        raise DeviceError(reply["error"], hint=reply.get("hint", ""))
    if not reply.get("fingerprint"):
        tail = [ln for ln in err.splitlines() if ln.strip()]
        raise DeviceError(f"could not ask device {runner.key} at tracker {host}:{port} for its "
                          f"fingerprint: {(tail[-1] if tail else 'no answer')[:200]}")
    return dict(reply["fingerprint"])


def main(argv: Optional[list] = None) -> int:
    """``python -m buildgraph.backends.tvm.rpc HOST PORT KEY PRIORITY WAIT``: print the
    device's fingerprint (or the error) as one JSON line."""
    args = list(sys.argv[1:] if argv is None else argv)
    host, port, key, priority, wait = args[0], int(args[1]), args[2], int(args[3]), float(args[4])
    try:
        reply: Dict[str, Any] = {"fingerprint": probe(host, port, key, priority, wait)}
    except DeviceError as exc:
        reply = {"error": exc.message, "hint": exc.hint}
    except Exception as exc:  # noqa: BLE001 - one line for the planner
        text = str(exc).strip().splitlines()
        reply = {"error": f"asking device {key} at tracker {host}:{port} failed: "
                          f"{type(exc).__name__}: {(text[-1] if text else '')[:200]}"}
    print(json.dumps(reply, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover - run by describe_device
    sys.exit(main())
