"""Run a graph: ready queue, resource pools, parallel execution, keep-going, cancellation.

The main thread owns all decisions (keys, cache hits, materialization of hits); worker threads
only execute steps that must run. Resource pools follow ninja's ``pool``: every step holds
``cpu`` job slots (1, or all of ``-j`` for ``cpu: all``) plus whatever pools it declares (a
``gpu`` pool of capacity 1 by default), and a step starts only when all fit.

Crash safety: a step writes into a scratch directory under the cache; only after it succeeds
are its outputs moved into the object store, then its action entry written (last), then the
outputs materialized into the build directory by rename. A failure, Ctrl-C, SIGTERM or kill -9
at any point therefore leaves either the old state or the new one, never a half-written
artifact; the next run resumes from every step that completed.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Protocol, Sequence, Set, Tuple

from buildgraph.engine import procs
from buildgraph.errors import BuildgraphError, LockMismatch, RecipeError, StepFailed
from buildgraph.engine.executor import (FAILED_UPSTREAM, Description, Task, jsonable_meta,
                                        load_executor)
from buildgraph.engine.graph import Graph, StepNode
from buildgraph.engine.keys import explain_difference
from buildgraph.engine.lockfile import lock_changes, lock_path, read_lock, write_lock
from buildgraph.engine.planner import CACHED, PULL, RESTORE, RUN, Decision, Planner
from buildgraph.engine.references import expand_runtime
from buildgraph.engine.store import Store

if TYPE_CHECKING:  # pragma: no cover
    from concurrent.futures import Future, ThreadPoolExecutor

BUILT, RESTORED, FAILED, SKIPPED, CANCELLED = "built", "restored", "failed", "skipped", "cancelled"


@dataclass
class RunOptions:
    jobs: int = 0  # 0: number of CPU cores
    keep_going: bool = False
    force: Set[str] = field(default_factory=set)
    no_cache: bool = False
    link: str = "hardlink"
    build_dir: Optional[Path] = None
    write_lock: bool = True
    frozen: bool = False
    """Release CI: refuse to build when any step's key differs from the lock file (nothing
    runs; the error is the plan's diff), fail a step whose key turns out different once its
    upstream ran, and fail at the end, without writing, if the lock would change."""
    locked: bool = False
    """Build, but fail at the end, without writing, if the lock file would change."""
    cluster: Optional[str] = None
    """A Ray cluster's address (``engine.cluster.resolve_address``): the steps that must be
    built run there instead of here."""

    def resolved_jobs(self) -> int:
        return self.jobs if self.jobs and self.jobs > 0 else (os.cpu_count() or 1)


@dataclass
class StepResult:
    step_id: str
    status: str  # built | cached | restored | failed | skipped | cancelled
    key: Optional[str] = None
    wall_s: float = 0.0
    message: str = ""
    reasons: Tuple[str, ...] = ()
    log_path: Optional[Path] = None
    log_tail: str = ""
    outputs: Dict[str, Path] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)
    origin: Optional[str] = None
    """Where a cache hit came from when not this machine's cache (``remote``); see
    :mod:`buildgraph.engine.runrecord`."""

    @property
    def ok(self) -> bool:
        return self.status in (BUILT, CACHED, RESTORED)


@dataclass
class RunResult:
    recipe: str
    steps: Dict[str, StepResult]
    wall_s: float
    build_dir: Path
    interrupted: bool = False
    lock_changes: List[str] = field(default_factory=list)
    """With ``--locked``/``--frozen``: how the lock file would have changed (it was not
    written); a non-empty list fails the run."""
    noop_watch: Optional[Tuple[List[str], List[str], List[str], List[str]]] = None
    """When every step was cached and every volatile description named what it read: (inputs,
    products, cache entries, environment variables) the decision read, for a no-op stamp
    (:mod:`buildgraph.engine.noop`)."""

    @property
    def ok(self) -> bool:
        return not self.interrupted and not self.lock_changes and \
            all(r.ok for r in self.steps.values())

    def count(self, status: str) -> int:
        return sum(1 for r in self.steps.values() if r.status == status)

    def __getitem__(self, step_id: str) -> StepResult:
        return self.steps[step_id]


class StepRunner(Protocol):
    """Where a step that must be built runs: the executor boundary of the scheduler.

    The scheduler decides (keys, hits, pulls) and calls :meth:`build` for the rest, on a
    worker thread, holding the step's key lock. :class:`LocalRunner` runs the executor in this
    process or a persistent worker; ``engine.cluster.RayRunner`` on a Ray cluster."""

    def slots(self, jobs: int) -> int:
        """How many steps may be in flight at once (``-j`` locally)."""

    def needs(self, step: StepNode) -> Dict[str, int]:
        """The local pools a step holds while it runs (``cpu`` slots, ``gpu``...)."""

    def prepare(self) -> None:
        """Called on the main thread before the first step is submitted."""

    def build(self, step: StepNode, decision: Decision, threads: int, start: float
              ) -> StepResult:
        """Build the step; its outputs end in the local store and the build directory."""

    def close(self) -> None:
        """The run is over (however it ended)."""


class LocalRunner:
    """Steps run on this machine: in the engine's process or a persistent worker
    (``engine/workers.py``), within the local pools."""

    def __init__(self, scheduler: "Scheduler"):
        self.scheduler = scheduler

    def slots(self, jobs: int) -> int:
        return jobs

    def needs(self, step: StepNode) -> Dict[str, int]:
        return self.scheduler._needs(step)

    def prepare(self) -> None:
        pass

    def build(self, step: StepNode, decision: Decision, threads: int, start: float
              ) -> StepResult:
        return self.scheduler._build(step, decision, threads, start)

    def close(self) -> None:
        pass


def default_build_dir(graph: Graph) -> Path:
    return Path(os.environ.get("BUILDGRAPH_BUILD_DIR") or "build") / graph.name


class Scheduler:
    def __init__(self, graph: Graph, store: Store, options: RunOptions, reporter: Any,
                 remote: Any = None):
        self.graph = graph
        self.store = store
        self.options = options
        self.reporter = reporter
        self.remote = remote
        """The team cache (``engine.remote.TeamCache``) or None: read on a local miss,
        written after a build."""
        self.jobs = options.resolved_jobs()
        self.build_dir = (options.build_dir or default_build_dir(graph)).absolute()
        self.log_dir = self.build_dir / ".logs"
        self.lock_file = lock_path(graph.recipe_path)
        self._workers: Any = None
        self._workers_lock = threading.Lock()
        self._pulled: Dict[str, str] = {}
        self._pulled_untrusted: Set[str] = set()
        """Steps whose outputs came from the team cache unsigned by a trusted key."""
        self.runner: StepRunner = LocalRunner(self)
        if options.cluster:
            from buildgraph.engine.cluster import RayRunner

            self.runner = RayRunner(self, options.cluster)

    # --- public ------------------------------------------------------------------------------
    def run(self, targets: Sequence[str] = ()) -> RunResult:
        selected = self.graph.select(targets)
        start = time.monotonic()
        procs.reset()
        results: Dict[str, StepResult] = {}
        interrupted = False
        with self.store.using():
            if self.store.tmp.is_dir():
                self.store.clean_tmp()
            self.store.sweep_build_dir(self.build_dir)  # what a killed run left half-placed
            lock_entries = read_lock(self.lock_file, warn=self.reporter.warning)
            planner = Planner(self.graph, self.store, self.build_dir, lock_entries,
                              force=set(self.options.force), no_cache=self.options.no_cache,
                              remote=self.remote)
            try:
                planner.describe_all(selected)
                if self.options.frozen:
                    self._check_frozen(planner, selected)
            finally:
                self.store.memo.flush()
            self.reporter.start(self.graph, selected, self.jobs)
            try:
                if self.remote is not None:
                    self._prefetch(planner, selected)
                self._loop(selected, planner, results)
            except KeyboardInterrupt:
                interrupted = True
                for sid in selected:
                    results.setdefault(sid, StepResult(sid, CANCELLED, message="interrupted"))
            finally:
                if self._workers is not None:
                    self._workers.close()
                self.runner.close()
                if self.remote is not None:
                    self._finish_remote(interrupted)
                self.store.stat_cache.flush()
                self.store.memo.flush()
                changes: List[str] = []
                if self.options.frozen or self.options.locked:
                    if not interrupted:
                        changes = self._lock_changes(results, planner, lock_entries)
                elif self.options.write_lock:
                    self._write_lock(results, planner)
                if self.options.write_lock:
                    self._write_record(results)
        result = RunResult(self.graph.name, {sid: results[sid] for sid in selected if sid in results},
                           time.monotonic() - start, self.build_dir, interrupted, changes)
        if not interrupted and not changes and selected and \
                all(r.status == CACHED for r in result.steps.values()) and \
                len(result.steps) == len(selected):
            result.noop_watch = self._noop_watch(selected, planner, result)
        self.reporter.finish(result)
        return result

    def _noop_watch(self, selected: List[str], planner: Planner, result: RunResult
                    ) -> Optional[Tuple[List[str], List[str], List[str], List[str]]]:
        """What this all-cached run's decisions read (see engine/noop.py), or None when one of
        them must be asked again next time (a volatile description)."""
        from buildgraph.engine.environment import environment_paths
        from buildgraph.engine.remote_config import CONFIG_FILE, PYPROJECT
        from buildgraph.engine.runrecord import record_path

        watched: List[str] = []
        for sid in selected:
            description = planner.describe(self.graph.steps[sid])
            if description.volatile:
                if not description.watch:
                    return None  # it must be asked again: only the full decision can
                watched.extend(description.watch)
        products = [str(self.lock_file.absolute()), str(self.build_dir),
                    str(record_path(self.build_dir))]
        for sid in selected:  # outputs in place: every folder of them (a file added or gone)
            step_dir = self.build_dir / sid
            products.append(str(step_dir))
            for name in self.graph.steps[sid].outputs.values():
                out = step_dir / name
                products.append(str(out))
                if out.is_dir() and not out.is_symlink():
                    products += [root for root, _, _ in os.walk(out)]
        made = (str(self.build_dir), str(self.store.root.absolute()))
        inputs = [str(self.graph.recipe_path.absolute())]
        inputs += [str(Path(p).absolute()) for step in self.graph.steps.values()
                   for p in step.inputs.values()]
        inputs += environment_paths()
        here = Path(self.graph.recipe_dir).absolute()
        for directory in (here, *here.parents):
            inputs += [str(directory / CONFIG_FILE), str(directory / PYPROJECT)]
        for path in self.store.stat_cache.consulted:  # read by descriptions, or checked outputs
            absolute = os.path.abspath(path)
            (products if absolute.startswith(made) else inputs).append(absolute)
        inputs += [os.path.abspath(w) for w in watched if not w.startswith("$")]
        variables = sorted({w[1:] for w in watched if w.startswith("$")})
        entries = [str(self.store.action_path(r.key or "")) for r in result.steps.values()]
        return inputs, products, entries, variables

    # --- the loop ----------------------------------------------------------------------------
    def _loop(self, selected: List[str], planner: Planner, results: Dict[str, StepResult]) -> None:
        pending = list(selected)
        outputs: Dict[str, Dict[str, Any]] = {}
        decisions: Dict[str, Decision] = {}
        free = {"cpu": self.jobs, **self.graph.pools}
        running: Dict[Future, Tuple[str, Dict[str, int]]] = {}
        stop = False
        # Threads (and concurrent.futures, which imports logging) only once a step must run:
        # a fully cached run decides everything on this thread.
        pool: Optional[ThreadPoolExecutor] = None
        try:
            while True:
                progressed = True
                while progressed:
                    progressed = False
                    for sid in list(pending):
                        step = self.graph.steps[sid]
                        bad = [u for u in step.upstream if u in results and not results[u].ok]
                        tolerant = bool(bad) and self._tolerates_failed(step)
                        if bad and not tolerant:
                            results[sid] = StepResult(sid, SKIPPED,
                                                      message=f"upstream '{bad[0]}' failed")
                            self.reporter.step_finished(results[sid])
                            pending.remove(sid)
                            progressed = True
                            continue
                        if stop or not all(u in outputs or (tolerant and u in results)
                                           for u in step.upstream):
                            continue
                        decision = decisions.get(sid)
                        if decision is None:
                            try:  # a failed upstream (tolerated) is None: keyed as failed
                                decision = planner.decide(step, {u: outputs.get(u)
                                                                 for u in step.upstream})
                            except BuildgraphError as exc:
                                results[sid] = StepResult(sid, FAILED, message=exc.render())
                                self.reporter.step_finished(results[sid])
                                pending.remove(sid)
                                progressed = True
                                stop = stop or not self.options.keep_going
                                continue
                            if decision.action == PULL:
                                decision = self._pull(step, decision)
                            decisions[sid] = decision
                            if self.options.frozen:
                                refused = self._frozen_refusal(planner, step, decision)
                                if refused is not None:
                                    results[sid] = refused
                                    self.reporter.step_finished(refused)
                                    pending.remove(sid)
                                    progressed = True
                                    stop = stop or not self.options.keep_going
                                    continue
                        if decision.action in (CACHED, RESTORE):
                            results[sid] = self._hit(step, decision)
                            if results[sid].ok:
                                outputs[sid] = {n: decision.entry["outputs"][n]  # type: ignore[index]
                                                for n in step.outputs}
                            pending.remove(sid)
                            self.reporter.step_finished(results[sid])
                            progressed = True
                            continue
                        need = self.runner.needs(step)
                        if not all(free.get(k, 0) >= v for k, v in need.items()):
                            continue
                        if pool is None:
                            try:  # a cluster connects now, once a step must be built
                                self.runner.prepare()
                            except BuildgraphError as exc:
                                results[sid] = StepResult(sid, FAILED, decision.key,
                                                          message=exc.render())
                                self.reporter.step_finished(results[sid])
                                pending.remove(sid)
                                progressed = True
                                stop = stop or not self.options.keep_going
                                continue
                            from concurrent import futures

                            pool = futures.ThreadPoolExecutor(
                                max_workers=self.runner.slots(self.jobs),
                                thread_name_prefix="buildgraph")
                        for k, v in need.items():
                            free[k] -= v
                        pending.remove(sid)
                        self.reporter.step_started(sid, decision.reasons)
                        future = pool.submit(self._execute, step, decision, need.get("cpu", 1))
                        running[future] = (sid, need)
                        progressed = True
                if not running:
                    break
                from concurrent import futures

                done, _ = futures.wait(list(running), timeout=0.25,
                                       return_when=futures.FIRST_COMPLETED)
                for future in done:
                    sid, need = running.pop(future)
                    for k, v in need.items():
                        free[k] += v
                    result = future.result()
                    results[sid] = result
                    if result.ok:
                        outputs[sid] = result.meta.pop("_entries")
                    elif not self.options.keep_going:
                        stop = True
                    self.reporter.step_finished(result)
                self.reporter.tick()
            for sid in pending:
                results[sid] = StepResult(sid, SKIPPED, message="not started: an earlier step "
                                          "failed (use --keep-going to build what is possible)")
                self.reporter.step_finished(results[sid])
        except KeyboardInterrupt:
            procs.kill_all()
            for future, (sid, _) in running.items():
                try:
                    results[sid] = future.result()
                except BaseException:  # noqa: BLE001
                    results[sid] = StepResult(sid, CANCELLED, message="interrupted")
                if results[sid].status == FAILED:
                    results[sid].status = CANCELLED
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    def _tolerates_failed(self, step: StepNode) -> bool:
        """Under --keep-going, does this step's kind run without its failed upstream steps
        (``Executor.tolerates_failed_upstream``: verify, benchmark, release)?"""
        if not self.options.keep_going:
            return False
        try:
            return bool(load_executor(step.kind).tolerates_failed_upstream)
        except Exception:  # noqa: BLE001 - an unknown kind fails where it is built
            return False

    def _needs(self, step: StepNode) -> Dict[str, int]:
        from buildgraph.engine.slots import cpu_slots

        need = dict(step.resources)
        need["cpu"] = cpu_slots(need.get("cpu", 1), self.jobs)
        return need

    def _untrusted_inputs(self, upstream: Dict[str, Dict[str, Path]]) -> Tuple[str, ...]:
        """The upstream outputs that came from the team cache unsigned by a trusted key;
        marked in this process too (in-process executors), see ``engine.origin``."""
        from buildgraph.engine import origin

        paths = tuple(str(p) for u, outs in upstream.items() if u in self._pulled_untrusted
                      for p in outs.values())
        origin.mark(paths)
        return paths

    # --- cache hits ----------------------------------------------------------------------------
    def _hit(self, step: StepNode, decision: Decision) -> StepResult:
        entry = decision.entry or {}
        found_origin = entry.get("origin")
        if isinstance(found_origin, dict) and not found_origin.get("trusted"):
            self._pulled_untrusted.add(step.id)
        try:
            if decision.action == RESTORE:
                for name, filename in step.outputs.items():
                    dest = self.build_dir / step.id / filename
                    if not self.store.is_materialized(entry["outputs"][name], dest):
                        self.store.materialize(entry["outputs"][name], dest, self.options.link)
            self.store.touch_action(decision.key or "")
        except (OSError, BuildgraphError) as exc:
            return StepResult(step.id, FAILED, decision.key,
                              message=f"cannot restore outputs from the cache: {exc}")
        return StepResult(step.id, RESTORED if decision.action == RESTORE else CACHED,
                          decision.key, entry.get("wall_s", 0.0),
                          message=decision.note or self._pulled.get(step.id, ""),
                          reasons=decision.reasons,
                          outputs={n: self.build_dir / step.id / f for n, f in step.outputs.items()},
                          meta=dict(entry.get("meta") or {}))

    # --- the team cache ------------------------------------------------------------------------
    def _pull(self, step: StepNode, decision: Decision) -> Decision:
        """Download a team-cache hit into the local store (verified): a RESTORE decision, or
        RUN when its copy cannot be used (the team cache said why, once)."""
        self.reporter.step_started(step.id, decision.reasons)
        entry = None
        try:
            entry = self.remote.fetch(decision.key or "", self.store,
                                      lambda done, total: self.reporter.transfer(step.id, done,
                                                                                 total))
        except Exception as exc:  # noqa: BLE001 - a team cache never fails a build
            self.reporter.warning(f"{self.remote.label()}: could not pull {step.id}: "
                                  f"{type(exc).__name__}: {exc}")
        if entry is None or not all(n in entry["outputs"] and
                                    self.store.check_output(entry["outputs"][n])
                                    for n in step.outputs):
            return Decision(step.id, RUN, ("not in the local cache, and the team cache's copy "
                                           "could not be used",), decision.key, decision.parts,
                            description=decision.description)
        size = sum(int(o.get("size", 0)) for o in entry["outputs"].values())
        from buildgraph.engine.sizes import format_size

        return Decision(step.id, RESTORE, decision.reasons, decision.key, decision.parts, entry,
                        decision.description,
                        note=f"pulled from the {self.remote.label()} ({format_size(size)})")

    def _prefetch(self, planner: Planner, selected: List[str]) -> None:
        """Pull, in parallel, every step the team cache has and whose key is known before
        anything runs (a fully remote-cached run: all of them); the loop then restores them
        from the local store. Steps downstream of one that must run are pulled when decided."""
        try:
            decisions = planner.plan(selected)
        except BuildgraphError:
            return  # the loop decides again and reports it at the step
        pulls = [d for d in decisions.values() if d.action == PULL]
        if not pulls:
            return
        from concurrent.futures import ThreadPoolExecutor

        def pull(decision: Decision) -> None:
            done = self._pull(self.graph.steps[decision.step_id], decision)
            if done.action == RESTORE:
                self._pulled[decision.step_id] = done.note

        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="buildgraph-pull") as pool:
            list(pool.map(pull, pulls))

    def _finish_remote(self, interrupted: bool) -> None:
        """Wait for the background pushes (a run leaves nothing half-pushed behind it) and say
        what went where."""
        summary = self.remote.wait()
        if summary.entries or summary.records:
            from buildgraph.engine.sizes import format_size

            self.reporter.info(f"pushed {summary.entries} results ({summary.blobs} new objects, "
                               f"{format_size(summary.bytes)})"
                               + (f" and {summary.records} record segments"
                                  if summary.records else "")
                               + f" to the {self.remote.label()}")

    # --- execution (worker threads) -----------------------------------------------------------
    def _execute(self, step: StepNode, decision: Decision, threads: int) -> StepResult:
        key = decision.key or ""
        start = time.monotonic()
        lock = self.store.action_lock(key)
        waited = False
        while True:
            try:
                lock.acquire(timeout=0.2)
                break
            except Exception:  # filelock.Timeout
                if procs.cancelled():
                    return StepResult(step.id, CANCELLED, key, message="interrupted")
                if not waited:
                    waited = True
                    self.reporter.waiting(step.id)
        try:
            # Another process may have committed this key between our plan and our lock,
            # with or without making us wait: look again before building. A forced step
            # (--force, --no-cache, cache: false) ignores what was there when it was planned,
            # and takes only a result built while it waited.
            if waited or not self._forced(step):
                hit = self._committed_meanwhile(step, decision)
                if hit is not None:
                    return hit
            return self.runner.build(step, decision, threads, start)
        finally:
            lock.release()

    def _forced(self, step: StepNode) -> bool:
        force = self.options.force
        return step.id in force or step.base_id in force or self.options.no_cache \
            or not step.cache

    def _committed_meanwhile(self, step: StepNode, decision: Decision) -> Optional[StepResult]:
        key = decision.key or ""
        entry = self.store.get_action(key)
        if entry is None or not all(n in entry["outputs"] and
                                    self.store.check_output(entry["outputs"][n])
                                    for n in step.outputs):
            return None
        hit = Decision(step.id, RESTORE, ("built by another process",), key, decision.parts,
                       entry)
        result = self._hit(step, hit)
        result.status = CACHED if result.ok else result.status
        result.meta["_entries"] = {n: entry["outputs"][n] for n in step.outputs}
        return result

    def _build(self, step: StepNode, decision: Decision, threads: int, start: float
               ) -> StepResult:
        key = decision.key or ""
        cls = load_executor(step.kind)
        scratch = self.store.scratch_dir(key)
        out_dir, work_dir, log_path = scratch / "out", scratch / "work", scratch / "log.txt"
        out_dir.mkdir()
        work_dir.mkdir()
        final_log = self.log_dir / f"{step.id}.log"
        parts = decision.parts or {}
        upstream = {u: {n: self.build_dir / u / f
                        for n, f in self.graph.steps[u].outputs.items()} for u in step.upstream
                    if (parts.get("upstream") or {}).get(u) != FAILED_UPSTREAM}
        outputs = {n: out_dir / f for n, f in step.outputs.items()}
        description = decision.description or Description()
        inputs = {n: Path(p) for n, p in step.inputs.items()}
        inputs.update({n: Path(p) for n, p in description.inputs.items()})
        team_records: List[str] = []
        if self.remote is not None and description.areas:  # start from the team's records
            team_records = self.remote.pull_areas(self.store, description.areas)
        params = step.raw_params
        if cls.expand_params:
            params = expand_runtime(params, {n: str(p) for n, p in inputs.items()},
                                    {u: {n: str(p) for n, p in o.items()}
                                     for u, o in upstream.items()},
                                    {n: str(p) for n, p in outputs.items()})
        parts = decision.parts or {}
        task = Task(kind=step.kind, params=params, inputs=inputs, upstream=upstream,
                    outputs=outputs,
                    upstream_kinds={u: self.graph.steps[u].kind for u in step.upstream},
                    data=dict(parts.get("data") or {}), env=dict(parts.get("env") or {}),
                    step_id=step.id, work_dir=work_dir, recipe_dir=self.graph.recipe_dir,
                    log_path=log_path, threads=threads, timeout=step.timeout,
                    areas={a: self.store.area(a) for a in description.areas},
                    untrusted=self._untrusted_inputs(upstream))
        try:
            log_path.write_text(f"# step {step.id} ({step.kind}) key {key}\n"
                                f"# why: {'; '.join(decision.reasons)}\n"
                                + "".join(f"# team records: {line}\n" for line in team_records),
                                encoding="utf-8")
            meta = self._invoke(cls, step, task)
            if procs.cancelled():
                raise StepFailed("interrupted")
            entries = {}
            for name, path in outputs.items():
                if not path.exists() and not path.is_symlink():
                    raise StepFailed(f"declared output '{name}' ({path.name}) was not written")
                entries[name] = self.store.put_output(path)
            wall = time.monotonic() - start
            log_digest = self.store.put_bytes(log_path.read_bytes())
            meta = jsonable_meta(meta or {})
            self.store.put_action(key, {"step": step.id, "recipe": self.graph.name,
                                        "kind": step.kind, "parts": decision.parts,
                                        "outputs": entries, "log": log_digest,
                                        "meta": meta, "wall_s": round(wall, 3),
                                        "created": time.time()})
            if self.remote is not None:  # blobs, then the entry, then the records
                self.remote.push_later(key, self.store, description.areas)
            for name, entry in entries.items():
                self.store.materialize(entry, self.build_dir / step.id / step.outputs[name],
                                       self.options.link)
            self._keep_log(log_path, final_log)
            result = StepResult(step.id, BUILT, key, wall, reasons=decision.reasons,
                                log_path=final_log,
                                outputs={n: self.build_dir / step.id / f
                                         for n, f in step.outputs.items()},
                                meta=dict(meta))
            result.meta["_entries"] = entries
            return result
        except RecipeError as exc:  # a check against upstream files, made by run()
            if exc.location is None:
                exc.location = step.params_location or step.location
                exc.key = exc.key or f"steps.{step.base_id}.with"
            return self._failed(step, key, exc.render(), log_path, final_log, start)
        except BuildgraphError as exc:
            return self._failed(step, key, exc.message, log_path, final_log, start)
        except Exception as exc:  # noqa: BLE001 - executor bugs fail the step, not the run
            import traceback

            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(traceback.format_exc())
            return self._failed(step, key, f"{type(exc).__name__}: {exc}", log_path, final_log,
                                start)
        finally:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)

    def _invoke(self, cls: Any, step: StepNode, task: Task) -> Any:
        if cls.isolation == "worker":
            with self._workers_lock:  # two threads must not each start a pool
                if self._workers is None:
                    from buildgraph.engine.workers import WorkerPool

                    self._workers = WorkerPool(self.jobs)
            status, payload = self._workers.run(step.kind, task, step.timeout,
                                                fresh=cls.fresh_worker)
            if status == "recipe":
                message, hint = payload
                raise RecipeError(message, hint=hint)
            if status != "ok":
                raise StepFailed(payload)
            return payload
        return cls().run(task)

    def _failed(self, step: StepNode, key: str, message: str, log_path: Path, final_log: Path,
                start: float) -> StepResult:
        self._keep_log(log_path, final_log)
        tail = ""
        try:
            lines = final_log.read_text(encoding="utf-8", errors="replace").splitlines()
            tail = "\n".join(lines[-20:])
        except OSError:
            pass
        status = CANCELLED if procs.cancelled() else FAILED
        return StepResult(step.id, status, key, time.monotonic() - start,
                          message=message if status == FAILED else "interrupted",
                          log_path=final_log, log_tail=tail)

    def _keep_log(self, src: Path, dest: Path) -> None:
        import shutil

        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        except OSError:
            pass

    # --- lock file -----------------------------------------------------------------------------
    def _check_frozen(self, planner: Planner, selected: List[str]) -> None:
        """``--frozen``: before anything runs, every selected step's key, computed as if its
        upstream outputs were those the lock records, must be the lock's key."""
        differences = planner.lock_differences(selected)
        if not differences:
            return
        lines = []
        for sid, reasons in differences.items():
            lines.append(f"run     {sid}  ({self.graph.steps[sid].kind})")
            lines.extend(f"          - {r}" for r in reasons)
        raise LockMismatch(
            f"--frozen: {len(differences)} of {len(selected)} steps differ from "
            f"{self._lock_label()}; nothing was built\n" + "\n".join(lines),
            hint="run without --frozen to build and update the lock file, review its diff "
                 "and commit it")

    def _frozen_refusal(self, planner: Planner, step: StepNode, decision: Decision
                        ) -> Optional[StepResult]:
        """``--frozen``: a step whose key, now that its upstream ran, is not the lock's (an
        upstream rebuilt to other bytes) is not built."""
        entry = planner.lock.get(step.id)
        locked = entry.get("key") if isinstance(entry, dict) else None
        if decision.key is None or decision.key == locked:
            return None
        previous = entry.get("parts") if isinstance(entry, dict) else None
        reasons = explain_difference(previous, decision.parts or {}, planner.labels(step))
        return StepResult(step.id, FAILED, decision.key,
                          message=f"--frozen: key differs from {self._lock_label()} ("
                                  + "; ".join(reasons) + "); not built")

    def _lock_label(self) -> str:
        try:
            return str(self.lock_file.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(self.lock_file)

    def _lock_updates(self, results: Dict[str, StepResult]) -> Dict[str, Dict[str, Any]]:
        updates: Dict[str, Dict[str, Any]] = {}
        for sid, result in results.items():
            if not result.ok or not result.key:
                continue
            entry = self.store.get_action(result.key)
            if entry is None:
                continue
            step = self.graph.steps[sid]
            # no wall time and no path outside the build directory: a lock changes only
            # when a key or an output does
            updates[sid] = {
                "uses": step.kind, "key": result.key, "parts": entry.get("parts"),
                "inputs": dict(sorted(step.input_labels.items())),
                "outputs": {n: {"path": f"{sid}/{step.outputs[n]}",
                                "type": o["type"], "digest": o["digest"], "size": o["size"]}
                            for n, o in entry["outputs"].items() if n in step.outputs},
            }
        return updates

    def _lock_changes(self, results: Dict[str, StepResult], planner: Planner,
                      current: Dict[str, Any]) -> List[str]:
        """``--locked``/``--frozen``: how writing this run's entries would change the lock."""
        return lock_changes(current, self._lock_updates(results), self.graph.steps,
                            labels=lambda sid: planner.labels(self.graph.steps[sid]))

    def _write_lock(self, results: Dict[str, StepResult], planner: Planner) -> None:
        updates = self._lock_updates(results)
        if not updates:
            return
        try:
            write_lock(self.lock_file, self.graph.name, updates, keep=self.graph.steps)
        except OSError as exc:
            self.reporter.warning(f"could not write lock file {self.lock_file}: {exc}")

    def _write_record(self, results: Dict[str, StepResult]) -> None:
        from buildgraph.engine.runrecord import write_record

        try:
            write_record(self.build_dir, self.graph.name, results, keep=self.graph.steps)
        except OSError as exc:
            self.reporter.warning(f"could not write the run record in {self.build_dir}: {exc}")

