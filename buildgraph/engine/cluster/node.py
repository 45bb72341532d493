"""The node side of a cluster build: one step, run on a Ray worker node from a small spec.

The driver (:mod:`buildgraph.engine.cluster.driver`) sends a JSON-able spec, never file contents:
what to build (kind, key, params, key parts), where each file the step reads goes (paths
relative to a scratch root, with their xxh3 digest and BLAKE3 name on the team remote), and
which remote to use. Here the node:

1. fetches every file by digest from the team remote into a node-local store (verified
   against both names) and lays them out under one root that mirrors the recipe directory's
   relative layout, so relative references (a model's ``source: models/net.py``) resolve;
2. runs the executor in a persistent worker process, exactly as a local run does
   (:mod:`buildgraph.engine.execution.pool`: the worker dies with this Ray worker process, kills the
   commands it started, enforces the step's timeout);
3. moves the outputs into its store, writes the entry (same format as a local build, plus the
   node in ``meta``), and pushes blobs first and the entry last;
4. returns the key and a few figures. The driver then pulls the entry like any team-cache hit.

While the step runs, what its log grows by goes to the driver's :class:`LogSink` about once a
second, so ``build/<recipe>/.logs/<step>.log`` can be followed as for a local build.

A node killed at any point leaves no entry on the remote (the entry goes last), so a retry or
a rerun builds the step again; a retry that finds the entry already pushed reuses it.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional

SPEC_VERSION = 1
LOG_TAIL_BYTES = 64 << 10
"""How much of a failed step's log travels back with the failure (the rest stays on the
node's scratch directory only until the task ends)."""

_pool: Any = None
_remotes: Dict[str, Any] = {}


def node_store_dir() -> Path:
    """The node-local cache: ``$BUILDGRAPH_CACHE_DIR`` when the node sets it, else a folder
    under the node's temporary directory."""
    env = os.environ.get("BUILDGRAPH_CACHE_DIR")
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"buildgraph-node-cache-{os.getuid()}"


def node_info() -> Dict[str, str]:
    """Which node this is: Ray's node id, the host name and the node's IP address."""
    info = {"host": socket.gethostname()}
    try:
        import ray

        info["ray_node_id"] = ray.get_runtime_context().get_node_id()
        info["ip"] = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray (tests of this module): the host is enough
        pass
    return info


def _team(remote: Dict[str, Any]) -> Any:
    """The team cache the spec names, opened once per Ray worker process. Strict: a failing
    remote fails the step (a node cannot build what it cannot fetch, nor keep what it built).
    Entries are signed with the node's own ``BUILDGRAPH_SIGNING_KEY`` when it has one."""
    from buildgraph.engine.team.remote import TeamCache
    from buildgraph.engine.team.config import RemoteSpec, signing_key_path

    ident = repr(sorted(remote.items(), key=lambda kv: kv[0]))
    team = _remotes.get(ident)
    if team is None:
        spec = RemoteSpec(name=remote["name"], url=remote["url"], read_only=False,
                          options=dict(remote.get("options") or {}), source="cluster driver")
        team = TeamCache(spec, signing_key=signing_key_path(), strict=True)
        _remotes[ident] = team
    return team


def _workers() -> Any:
    global _pool
    if _pool is None:
        from buildgraph.engine.execution.pool import WorkerPool

        _pool = WorkerPool(1)  # a Ray worker process runs one task at a time
    return _pool


class LogSink:
    """The driver's mailbox for the logs of running steps (a Ray actor of the run, 0 CPUs).

    A node appends what its step's log grew by, about once a second; the driver takes it and
    appends it to ``build/<recipe>/.logs/<step>.log``, so the log can be followed while the
    step runs, as for a local build. The complete log still arrives with the entry (a blob)
    and replaces what was streamed. Only log text goes this way, at most ``MAX_PENDING`` bytes
    per step waiting to be taken (older text is dropped, and a line says so)."""

    MAX_PENDING = 1 << 20

    def __init__(self) -> None:
        self._pending: Dict[str, bytearray] = {}

    def append(self, key: str, data: bytes) -> None:
        buf = self._pending.setdefault(key, bytearray())
        buf += data
        if len(buf) > self.MAX_PENDING:
            del buf[:len(buf) - self.MAX_PENDING]
            buf[:0] = b"[... earlier log lines dropped while streaming ...]\n"

    def take(self, key: str) -> bytes:
        return bytes(self._pending.pop(key, b""))


class _LogFollower:
    """Sends what ``path`` grows by to a :class:`LogSink`, every ``every`` seconds, from a
    thread of the task; :meth:`close` sends the rest. Failures only stop the streaming."""

    def __init__(self, path: Path, key: str, sink: Any, every: float = 1.0):
        import threading

        self.path, self.key, self.sink, self.every = path, key, sink, every
        self.offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="buildgraph-log-follower")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._send()

    def _send(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(LOG_TAIL_BYTES)
            if data:
                self.offset += len(data)
                self.sink.append.remote(self.key, data)  # no reply awaited
        except Exception:  # noqa: BLE001 - a log that cannot stream still arrives at the end
            self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._send()


def run_step(spec: Dict[str, Any], sink: Any = None) -> Dict[str, Any]:
    """Build one step from its spec (see the module's doc); a small JSON-able reply:
    ``{"status": "ok", "key", "node", "wall_s", "reused"}`` or ``{"status": "failed" |
    "recipe", "message", "hint", "log_tail", "node"}``. ``sink``: the driver's
    :class:`LogSink`, which the step's log is streamed to while it runs."""
    from buildgraph.engine.store.cache import Store
    from buildgraph.errors import BuildgraphError

    start = time.monotonic()
    node = node_info()
    if spec.get("version") != SPEC_VERSION:
        return {"status": "failed", "node": node,
                "message": f"this node runs a buildgraph that reads step spec version "
                           f"{SPEC_VERSION}, not {spec.get('version')!r}; install the same "
                           "buildgraph on the driver and the nodes"}
    key = spec["key"]
    store = Store(node_store_dir())
    with store.using():
        store.clean_tmp()  # what killed tasks left behind
        team = _team(spec["remote"])
        if not spec.get("force"):
            found = team.lookup(key, fresh=True)
            if found.entry is not None:  # a retry whose first attempt pushed, or another run
                return {"status": "ok", "key": key, "node": node, "reused": True,
                        "wall_s": round(time.monotonic() - start, 3)}
        scratch = store.scratch_dir(key)
        log_path = scratch / "log.txt"
        try:
            return _build(spec, store, team, scratch, log_path, node, start, sink)
        except BuildgraphError as exc:
            return _failure(exc.message + (f" (hint: {exc.hint})" if exc.hint else ""),
                            log_path, node)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _build(spec: Dict[str, Any], store: Any, team: Any, scratch: Path, log_path: Path,
           node: Dict[str, str], start: float, sink: Any = None) -> Dict[str, Any]:
    from buildgraph.engine.executor import Task
    from buildgraph.engine.references import expand_runtime
    from buildgraph.errors import StepFailed

    key = spec["key"]
    root = scratch / "root"
    for rel, ref in _files(spec).items():
        dest = _inside(root, rel)
        team.get_blob(ref["digest"], {"b3": ref["b3"], "size": ref["size"]}, store, scratch)
        # exec files are copied: a hard link would share the blob's read-only mode
        store.materialize({"type": "file", "digest": ref["digest"], "exec": ref["exec"]}, dest,
                          "copy" if ref["exec"] else "hardlink")
    out_dir, work_dir = root / "out", root / "work"
    out_dir.mkdir(parents=True)
    work_dir.mkdir(parents=True)
    recipe_dir = _inside(root, spec["recipe_dir"])
    recipe_dir.mkdir(parents=True, exist_ok=True)
    inputs = {n: _inside(root, p) for n, p in spec["inputs"].items()}
    upstream = {u: {n: _inside(root, p) for n, p in outs.items()}
                for u, outs in spec["upstream"].items()}
    outputs = {n: out_dir / f for n, f in spec["outputs"].items()}
    areas = list(spec.get("areas") or [])
    team_records = team.pull_areas(store, areas) if areas else []
    params = spec["params"]
    if spec.get("expand"):
        params = expand_runtime(params, {n: str(p) for n, p in inputs.items()},
                                {u: {n: str(p) for n, p in o.items()}
                                 for u, o in upstream.items()},
                                {n: str(p) for n, p in outputs.items()})
    parts = spec.get("parts") or {}
    task = Task(kind=spec["kind"], params=params, inputs=inputs, upstream=upstream,
                outputs=outputs, upstream_kinds=dict(spec.get("upstream_kinds") or {}),
                data=dict(parts.get("data") or {}), env=dict(parts.get("env") or {}),
                step_id=spec["step"], work_dir=work_dir, recipe_dir=recipe_dir,
                log_path=log_path, threads=int(spec.get("threads") or 1),
                timeout=spec.get("timeout"), areas={a: store.area(a) for a in areas},
                untrusted=tuple(str(p) for u in spec.get("untrusted") or ()
                                for p in upstream.get(u, {}).values()))
    where = node.get("host", "?") + (f" ({node['ray_node_id'][:12]})"
                                     if node.get("ray_node_id") else "")
    log_path.write_text(f"# step {spec['step']} ({spec['kind']}) key {key}\n"
                        f"# why: {'; '.join(spec.get('reasons') or [])}\n"
                        f"# on cluster node {where}\n"
                        + "".join(f"# team records: {line}\n" for line in team_records),
                        encoding="utf-8")
    follower = _LogFollower(log_path, key, sink) if sink is not None else None
    try:
        from buildgraph.engine.executor import load_executor

        status, payload = _workers().run(spec["kind"], task, task.timeout,
                                         fresh=load_executor(spec["kind"]).fresh_worker)
    except StepFailed as exc:  # the worker died or timed out
        return _failure(exc.message, log_path, node)
    finally:
        if follower is not None:
            follower.close()
    if status == "recipe":
        message, hint = payload
        return _failure(message, log_path, node, status="recipe", hint=hint)
    if status != "ok":
        return _failure(str(payload), log_path, node)
    entries = {}
    for name, path in outputs.items():
        if not path.exists() and not path.is_symlink():
            return _failure(f"declared output '{name}' ({path.name}) was not written",
                            log_path, node)
        entries[name] = store.put_output(path)
    wall = time.monotonic() - start
    from buildgraph.engine.executor import jsonable_meta

    meta = jsonable_meta(payload or {})
    meta = dict(meta) if isinstance(meta, dict) else {"result": meta}
    meta["node"] = node
    store.put_action(key, {"step": spec["step"], "recipe": spec["recipe"], "kind": spec["kind"],
                           "parts": spec["parts"], "outputs": entries,
                           "log": store.put_bytes(log_path.read_bytes()), "meta": meta,
                           "wall_s": round(wall, 3), "created": time.time()})
    pushed = team.push(key, store, force=bool(spec.get("force")))  # blobs, then the entry
    if pushed not in ("pushed", "present", "healed"):
        return _failure(f"could not push the result to the {team.label()} ({pushed})",
                        log_path, node)
    if areas:
        team.push_areas(store, areas)
    return {"status": "ok", "key": key, "node": node, "reused": False,
            "wall_s": round(time.monotonic() - start, 3)}


def _files(spec: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {f["path"]: f for f in spec.get("files") or []}


def _inside(root: Path, rel: str) -> Path:
    """``root / rel``, refusing a spec path that climbs out of the scratch root."""
    from buildgraph.errors import BuildgraphError

    path = (root / rel)
    if rel.startswith("/") or ".." in Path(rel).parts:
        raise BuildgraphError(f"step spec names a path outside its scratch root: {rel!r}")
    return path


def _failure(message: str, log_path: Path, node: Dict[str, str], status: str = "failed",
             hint: Optional[str] = None) -> Dict[str, Any]:
    tail = ""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - LOG_TAIL_BYTES))
            tail = fh.read().decode("utf-8", errors="replace")
    except OSError:
        pass
    return {"status": status, "message": message, "hint": hint, "log": tail, "node": node}

