"""Run the steps that must be built on a Ray cluster (``buildgraph run --cluster ADDR``).

Only what a cache cannot answer goes to the cluster: this process still loads, plans, keys and
decides, and local or team-cache hits never reach here. For a step that must run, the
:class:`RayRunner` (the scheduler's runner, see ``engine/scheduler.py``):

1. makes sure the team remote holds every file the step reads: its input files, the files its
   description names (model source, weights) and its upstream outputs. Each is uploaded once
   per run, and not at all when the remote has it (outputs the cluster built are known by
   their entries);
2. submits a Ray task with a small JSON-able spec (:mod:`buildgraph.engine.cluster.node`),
   asking for the step's ``resources:`` (``cpu`` -> ``num_cpus``, ``gpu`` -> ``num_gpus``, any
   other pool -> a custom resource of that name, which selects the nodes offering it);
3. waits for the key; the node has pushed the outputs, then the entry, to the remote. The entry
   is pulled (verified) into the local store and materialized as a team-cache hit would be.

Nothing big goes through Ray's object store, so a driver killed mid-run loses nothing built:
the rerun finds the entries in the team cache. Ctrl-C or SIGTERM cancels the outstanding tasks
(first as Ctrl-C would, so that the node's step worker ends the commands it started; then, if
still running, ``ray.cancel(force=True)`` kills the Ray worker). A lost node's task is retried
per Ray's ``max_retries`` (``$BUILDGRAPH_CLUSTER_RETRIES``, default 3); a node never
half-commits, since the entry is pushed last.

Ray is imported only here, and only once a step must actually run: a fully cached
``run --cluster`` neither imports Ray nor connects.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

from buildgraph.engine.execution import procs
from buildgraph.errors import BuildgraphError

if TYPE_CHECKING:  # pragma: no cover
    from buildgraph.engine.graph import StepNode
    from buildgraph.engine.planner import Decision
    from buildgraph.engine.results import StepResult
    from buildgraph.engine.execution.runner import RunContext

ENV_RETRIES = "BUILDGRAPH_CLUSTER_RETRIES"
DEFAULT_RETRIES = 3
CONNECT_TIMEOUT_S = 5.0
CANCEL_GRACE_S = 10.0
"""How long a cancelled step may take to end its commands before its Ray worker is killed."""
SLOTS = 64
"""Steps in flight at once: the cluster's own scheduler queues what its nodes cannot take."""
HINT_ADDRESS = "give --cluster ray://HEAD:10001 (Ray Client), --cluster HEAD:6379 (the GCS " \
               "of a cluster this machine is a node of) or --cluster auto"

_ADDRESS = re.compile(r"^(?:ray://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})$")


class ClusterError(BuildgraphError):
    """The cluster cannot be used: no address, a bad one, unreachable, no team remote."""


def resolve_address(value: Optional[str], start: Path) -> str:
    """The address ``--cluster`` means: its value, else ``$RAY_ADDRESS``, else the project's
    ``cluster = "..."`` (buildgraph.toml). Checked for form here (one line if wrong);
    reached only when a step must run."""
    address, source = (value or "").strip(), "--cluster"
    if not address:
        address, source = os.environ.get("RAY_ADDRESS", "").strip(), "$RAY_ADDRESS"
    if not address:
        from buildgraph.engine.team.config import find_config, load_config

        path = find_config(start)
        if path is not None:
            address, source = (load_config(path=path).cluster or ""), f"{path}: cluster"
    if not address:
        raise ClusterError("--cluster was given without an address, and neither $RAY_ADDRESS "
                           "nor the project's buildgraph.toml (cluster = \"...\") names one",
                           hint=HINT_ADDRESS)
    if address != "auto" and not _ADDRESS.match(address):
        raise ClusterError(f"{source}: '{address}' is not a Ray address", hint=HINT_ADDRESS)
    return address


def check_reachable(address: str) -> None:
    """Fail in seconds, with one line, when nothing listens at ``address`` (Ray itself would
    retry for a long while first)."""
    match = _ADDRESS.match(address)
    if match is None:  # auto: Ray finds the local cluster, or says there is none
        return
    import socket

    host, port = match.group(1).strip("[]"), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: "
                           f"{exc.strerror or type(exc).__name__}",
                           hint="is the cluster up (ray status on the head node), and the "
                                "address its Ray Client port (10001) or GCS port (6379)?"
                           ) from None


def step_resources(resources: Mapping[str, int], node_cpus: float) -> Dict[str, Any]:
    """Ray task options for a step's ``resources:``: ``cpu`` -> ``num_cpus`` (``all``: as
    many as the largest node has), ``gpu`` -> ``num_gpus``, anything else -> a custom resource
    of the same name."""
    cpu = resources.get("cpu", 1)
    options: Dict[str, Any] = {"num_cpus": max(1, int(node_cpus)) if cpu == -1 else cpu}
    custom = {}
    for name, amount in sorted(resources.items()):
        if name == "cpu" or not amount:
            continue
        if name == "gpu":
            options["num_gpus"] = amount
        else:
            custom[name] = amount
    if custom:
        options["resources"] = custom
    return options


class RayRunner:
    """The scheduler's runner for ``--cluster`` (see the module's doc)."""

    def __init__(self, run: "RunContext", address: str):
        remote = run.remote
        if remote is None:
            raise ClusterError("--cluster needs a team cache that this machine and the "
                               "cluster's nodes can both reach; none is configured",
                               hint="buildgraph remote add team s3://BUCKET/PREFIX (or pass "
                                    "--remote URL); the nodes need the same credentials")
        if remote.read_only:
            raise ClusterError(f"--cluster needs to write to the {remote.label()}, which is "
                               "read-only here", hint="drop --remote-read-only (or "
                                                      "BUILDGRAPH_REMOTE_READ_ONLY)")
        self.run = run
        self.address = address
        self.remote = remote
        self.retries = _retries()
        self.dispatched = 0
        """Ray tasks submitted by this run (a fully cached run submits none)."""
        self._ray: Any = None
        self._error: Optional[ClusterError] = None
        self._owns_ray = False
        self._fn: Any = None
        self._sink: Any = None
        self._nodes: List[Dict[str, float]] = []
        self._lock = threading.Lock()
        self._known: Dict[str, Dict[str, Any]] = {}
        """xxh3 digest -> its blob reference on the remote, for blobs known to be there."""

    # --- the runner interface ---------------------------------------------------------------
    def slots(self, jobs: int) -> int:
        return max(jobs, SLOTS)

    def needs(self, step: "StepNode") -> Dict[str, int]:
        """No local pool is held: the cluster schedules its own resources."""
        return {}

    def prepare(self) -> None:
        """Connect, on the scheduler's main thread, before the first step is submitted. A
        failure is remembered: with --keep-going, later steps fail with the same line."""
        if self._ray is not None:
            return
        if self._error is not None:
            raise self._error
        try:
            self._connect()
        except ClusterError as exc:
            self._error = exc
            raise

    def _connect(self) -> None:
        check_reachable(self.address)
        import signal

        try:
            import ray
        except ImportError:
            raise ClusterError("--cluster needs Ray, which is not installed here",
                               hint="pip install 'buildgraph[cluster]'") from None
        # ray.init makes SIGTERM exit the process; the run's own handler cancels the steps
        previous = signal.getsignal(signal.SIGTERM)
        try:
            if ray.is_initialized():  # a caller that is itself a Ray driver
                self._owns_ray = False
            else:
                import logging

                ray.init(address=self.address, logging_level=logging.WARNING,
                         log_to_driver=False, namespace="buildgraph")
                self._owns_ray = True
            self._nodes = [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
        except Exception as exc:  # noqa: BLE001 - Ray raises many kinds: one line for all
            raise ClusterError(f"cannot connect to the Ray cluster at {self.address}: "
                               f"{_first_line(exc)}", hint=HINT_ADDRESS) from None
        finally:
            if signal.getsignal(signal.SIGTERM) is not previous and previous is not None:
                signal.signal(signal.SIGTERM, previous)
        from buildgraph.engine.cluster.node import LogSink, run_step

        self._fn = ray.remote(run_step)
        try:  # created in the background; until it is up, logs simply arrive at the end
            self._sink = ray.remote(LogSink).options(num_cpus=0).remote()
        except Exception:  # noqa: BLE001 - streaming logs is a convenience
            self._sink = None
        self._ray = ray
        self.run.reporter.info(f"cluster: connected to {self.address} "
                                     f"({len(self._nodes)} nodes)")

    def close(self) -> None:
        if self._ray is None:
            return
        if self._sink is not None:
            try:
                self._ray.kill(self._sink)
            except Exception:  # noqa: BLE001 - gone with the cluster
                pass
            self._sink = None
        if self.dispatched:
            self.run.reporter.info(f"cluster: {self.dispatched} steps ran on "
                                         f"{self.address}")
        if self._owns_ray:
            self._ray.shutdown()
        self._ray = None

    # --- one step ---------------------------------------------------------------------------
    def build(self, step: "StepNode", decision: "Decision", threads: int, start: float
              ) -> "StepResult":
        from buildgraph.engine.results import BUILT, CANCELLED, FAILED, StepResult

        s = self.run
        key = decision.key or ""
        final_log = s.log_dir / f"{step.id}.log"
        options = step_resources(step.resources, max([n.get("CPU", 0) for n in self._nodes]
                                                      or [1]))
        missing = self._infeasible(options)
        if missing:
            return StepResult(step.id, FAILED, key, time.monotonic() - start,
                              message=f"no node of the cluster at {self.address} offers "
                                      f"{missing} (this step's resources: "
                                      f"{dict(step.resources)}); nodes offer: "
                                      + "; ".join(_offer(n) for n in self._nodes))
        try:
            spec = self._spec(step, decision, options)
        except (OSError, BuildgraphError) as exc:
            message = exc.message if isinstance(exc, BuildgraphError) else \
                f"{exc.strerror or exc}: {exc.filename}"
            return StepResult(step.id, FAILED, key, time.monotonic() - start,
                              message=f"cannot send its inputs to the {self.remote.label()}: "
                                      f"{message}")
        ray = self._ray
        submitted = time.monotonic()
        ref = self._fn.options(name=f"buildgraph {step.id}", max_retries=self.retries,
                               retry_exceptions=False, **options).remote(spec, self._sink)
        with self._lock:
            self.dispatched += 1
        follow = _LogReader(ray, self._sink, key, final_log)
        try:
            while not ray.wait([ref], timeout=0.2)[0]:
                if procs.cancelled():
                    self._cancel(ref)
                    return StepResult(step.id, CANCELLED, key, time.monotonic() - start,
                                      message="interrupted")
                follow.poll()
            reply = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - a lost node after its retries, a crash
            if procs.cancelled():
                return StepResult(step.id, CANCELLED, key, message="interrupted")
            return StepResult(step.id, FAILED, key, time.monotonic() - start,
                              message=f"the cluster could not run it: {_first_line(exc)}")
        if reply.get("status") != "ok":
            return self._failed(step, key, reply, final_log, start)
        answered = time.monotonic()
        found = self.remote.lookup(key, fresh=True)
        entry = self.remote.fetch(key, s.store, lambda done, total: s.reporter.transfer(
            step.id, done, total), found=found)
        if entry is None or not all(n in entry["outputs"] and
                                    s.store.check_output(entry["outputs"][n])
                                    for n in step.outputs):
            why = found.reason or "no entry"
            return StepResult(step.id, FAILED, key, time.monotonic() - start,
                              message=f"built on the cluster, but its result could not be "
                                      f"pulled from the {self.remote.label()}: {why}")
        self._remember(found.doc)
        entries = {n: entry["outputs"][n] for n in step.outputs}
        for name, out in entries.items():
            s.store.materialize(out, s.build_dir / step.id / step.outputs[name], s.options.link)
        log = s.store.read_bytes(entry["log"]) if entry.get("log") else None
        if log is not None:
            _write_log(final_log, log)
        meta = dict(entry.get("meta") or {})
        node = meta.get("node") or reply.get("node") or {}
        # where the time went, for the live view's JSON and the benchmark: sending the inputs,
        # the task (queued, started, run on the node), the node's own part, pulling the result
        meta["cluster"] = {"send_s": round(submitted - start, 3),
                           "task_s": round(answered - submitted, 3),
                           "node_s": reply.get("wall_s"),
                           "pull_s": round(time.monotonic() - answered, 3)}
        result = StepResult(step.id, BUILT, key, time.monotonic() - start,
                            reasons=decision.reasons, log_path=final_log,
                            outputs={n: s.build_dir / step.id / f
                                     for n, f in step.outputs.items()},
                            meta=meta,  # origin: built by this run (the node: meta.node)
                            message=f"on {node.get('host', '?')}"
                                    + (" (already pushed by an earlier attempt)"
                                       if reply.get("reused") else ""))
        result.meta["_entries"] = entries
        return result

    def _cancel(self, ref: Any) -> None:
        """Cancel a submitted step: first as Ctrl-C would (the task's worker then ends the
        commands it started, as a local run does), then by killing the Ray worker. Ray kills
        a worker's child processes with SIGKILL, which would leave the commands those started
        in sessions of their own running; hence the polite way first."""
        ray = self._ray
        try:
            ray.cancel(ref, force=False)
            if not ray.wait([ref], timeout=CANCEL_GRACE_S)[0]:
                ray.cancel(ref, force=True)
                ray.wait([ref], timeout=CANCEL_GRACE_S)
        except Exception:  # noqa: BLE001 - already finished, or the cluster is gone
            pass

    def _failed(self, step: "StepNode", key: str, reply: Dict[str, Any], final_log: Path,
                start: float) -> "StepResult":
        from buildgraph.engine.results import FAILED, StepResult
        from buildgraph.errors import RecipeError

        log = str(reply.get("log") or "")
        _write_log(final_log, log.encode("utf-8"))
        message = str(reply.get("message") or "failed on the cluster")
        if reply.get("status") == "recipe":  # a check against upstream files: point at the step
            exc = RecipeError(message, hint=str(reply.get("hint") or ""),
                              location=step.params_location or step.location,
                              key=f"steps.{step.base_id}.with")
            message = exc.render()
        node = reply.get("node") or {}
        return StepResult(step.id, FAILED, key, time.monotonic() - start,
                          message=f"{message} (on cluster node {node.get('host', '?')})",
                          log_path=final_log, log_tail="\n".join(log.splitlines()[-20:]))

    # --- what the node needs -----------------------------------------------------------------
    def _spec(self, step: "StepNode", decision: "Decision", options: Dict[str, Any]
              ) -> Dict[str, Any]:
        """The step as JSON data, after pushing every file it reads to the remote."""
        from buildgraph.engine.cluster.node import SPEC_VERSION
        from buildgraph.engine.executor import Description, load_executor

        s = self.run
        description = decision.description or Description()
        inputs = {n: Path(os.path.abspath(p)) for n, p in step.inputs.items()}
        inputs.update({n: Path(os.path.abspath(p)) for n, p in description.inputs.items()})
        recipe_dir = Path(os.path.abspath(s.graph.recipe_dir))
        base = Path(os.path.commonpath([str(recipe_dir)] + [str(p) for p in inputs.values()]))

        def tree(path: Path) -> str:
            rel = path.relative_to(base).as_posix()
            return "tree" if rel == "." else f"tree/{rel}"

        files: Dict[str, Path] = {}  # path under the node's root -> the file here
        for path in inputs.values():
            self._collect(path, tree(path), files)
        upstream: Dict[str, Dict[str, str]] = {}
        from buildgraph.engine.executor import FAILED_UPSTREAM

        for up in step.upstream:
            if ((decision.parts or {}).get("upstream") or {}).get(up) == FAILED_UPSTREAM:
                continue  # failed, and the step runs without it (--keep-going)
            outs = s.graph.steps[up].outputs
            upstream[up] = {n: f"build/{up}/{f}" for n, f in outs.items()}
            for n, f in outs.items():
                self._collect(s.build_dir / up / f, upstream[up][n], files)
        refs = self._push(files)
        parts = decision.parts or {}
        return {
            "version": SPEC_VERSION, "key": decision.key,
            "force": s.options.forces(step),
            "remote": {"name": self.remote.spec.name, "url": self.remote.spec.url,
                       "options": dict(self.remote.spec.options)},
            "step": step.id, "recipe": s.graph.name, "kind": step.kind, "parts": parts,
            "reasons": list(decision.reasons), "params": step.raw_params,
            "expand": bool(load_executor(step.kind).expand_params),
            "inputs": {n: tree(p) for n, p in inputs.items()}, "upstream": upstream,
            "outputs": dict(step.outputs),
            "upstream_kinds": {u: s.graph.steps[u].kind for u in step.upstream},
            "recipe_dir": tree(recipe_dir), "files": refs, "areas": list(description.areas),
            "threads": max(1, int(options.get("num_cpus") or 1)), "timeout": step.timeout,
            # upstream steps pulled unsigned: the node must not unpickle them either
            "untrusted": sorted(u for u in step.upstream
                                if u in s.pulled_untrusted),
        }

    @staticmethod
    def _collect(path: Path, rel: str, files: Dict[str, Path]) -> None:
        """``path`` (a file, or every file of a directory) at ``rel`` under the node's root."""
        if path.is_dir():
            for sub in sorted(p for p in path.rglob("*") if p.is_file()):
                files[f"{rel}/{sub.relative_to(path).as_posix()}"] = sub
        else:
            files[rel] = path

    def _push(self, files: Dict[str, Path]) -> List[Dict[str, Any]]:
        """Each file's reference (digest, BLAKE3 name, size, exec bit), uploading those the
        remote may lack (once per run)."""
        import stat as stat_module
        from concurrent.futures import ThreadPoolExecutor

        from buildgraph.engine.hashing import file_digest

        cache = self.run.store.stat_cache

        def ref(item: Tuple[str, Path]) -> Dict[str, Any]:
            rel, path = item
            st = os.stat(path)
            digest, size = file_digest(path, cache, st)
            with self._lock:
                known = self._known.get(digest)
            if known is None:
                known = self.remote.put_blob(path, size)
                with self._lock:
                    self._known[digest] = known
            return {"path": rel, "digest": digest, "b3": known["b3"], "size": size,
                    "exec": bool(st.st_mode & stat_module.S_IXUSR)}

        items = sorted(files.items())
        if len(items) <= 1:
            return [ref(i) for i in items]
        with ThreadPoolExecutor(max_workers=min(8, len(items)),
                                thread_name_prefix="buildgraph-send") as pool:
            return list(pool.map(ref, items))

    def _remember(self, doc: Optional[Dict[str, Any]]) -> None:
        blobs = (doc or {}).get("blobs") or {}
        with self._lock:
            for digest, ref in blobs.items():
                if isinstance(ref, dict) and "b3" in ref:
                    self._known[digest] = {"b3": ref["b3"], "size": int(ref.get("size", 0))}

    def _infeasible(self, options: Dict[str, Any]) -> str:
        """What no alive node offers at all ("" when some node can take the step)."""
        wanted = {"CPU": options.get("num_cpus", 1), "GPU": options.get("num_gpus", 0),
                  **(options.get("resources") or {})}
        wanted = {k: v for k, v in wanted.items() if v}
        if any(all(node.get(k, 0) >= v for k, v in wanted.items()) for node in self._nodes):
            return ""
        lacking = {k: v for k, v in wanted.items()
                   if not any(node.get(k, 0) >= v for node in self._nodes)}
        return str(lacking or wanted)


def _retries() -> int:
    raw = os.environ.get(ENV_RETRIES, "").strip()
    if not raw:
        return DEFAULT_RETRIES
    try:
        value = int(raw)
    except ValueError:
        raise ClusterError(f"${ENV_RETRIES}: expected a number of retries; got '{raw}'"
                           ) from None
    return max(0, value)


def _offer(node: Mapping[str, float]) -> str:
    shown = {k: (int(v) if float(v).is_integer() else v) for k, v in sorted(node.items())
             if not k.startswith("node:") and k not in ("memory", "object_store_memory")}
    return ", ".join(f"{k}: {v}" for k, v in shown.items()) or "nothing"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class _LogReader:
    """The driver's side of log streaming: takes what the node sent to the run's LogSink,
    about once a second and without ever waiting for it, and appends it to the step's log
    in ``build/<recipe>/.logs/`` (replaced by the complete log when the step ends)."""

    def __init__(self, ray: Any, sink: Any, key: str, dest: Path, every: float = 1.0):
        self.ray, self.sink, self.key, self.dest, self.every = ray, sink, key, dest, every
        self._asked: Any = None
        self._next = time.monotonic() + every
        self._started = False

    def poll(self) -> None:
        if self.sink is None:
            return
        try:
            if self._asked is not None:
                if not self.ray.wait([self._asked], timeout=0)[0]:
                    return
                data = self.ray.get(self._asked)
                self._asked = None
                if data:
                    self._append(data)
            if time.monotonic() >= self._next:
                self._next = time.monotonic() + self.every
                self._asked = self.sink.take.remote(self.key)
        except Exception:  # noqa: BLE001 - the log still arrives with the entry
            self.sink = None

    def _append(self, data: bytes) -> None:
        try:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            with open(self.dest, "wb" if not self._started else "ab") as fh:
                fh.write(data)
            self._started = True
        except OSError:
            pass


def _write_log(dest: Path, data: bytes) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    except OSError:
        pass
