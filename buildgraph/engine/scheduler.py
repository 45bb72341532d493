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

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from buildgraph.engine.execution import procs
from buildgraph.engine.executor import load_executor
from buildgraph.engine.graph import Graph, StepNode
from buildgraph.engine.lockfile import (check_frozen, frozen_refusal, lock_changes, lock_path,
                                        lock_updates, read_lock, write_lock)
from buildgraph.engine.planner import CACHED, PULL, RESTORE, Decision, Planner
from buildgraph.engine.results import (BUILT, CANCELLED, FAILED, RESTORED, SKIPPED,  # noqa: F401
                                       RunOptions, RunResult, StepResult)
from buildgraph.engine.execution.runner import LocalRunner, RunContext, StepRunner, restore
from buildgraph.engine.store.cache import Store
from buildgraph.errors import BuildgraphError

if TYPE_CHECKING:  # pragma: no cover
    from concurrent.futures import Future, ThreadPoolExecutor


@dataclass
class _LoopState:
    """What the loop knows between two looks at the pending steps."""

    pending: List[str]
    results: Dict[str, StepResult]
    free: Dict[str, int]
    """Room left in each pool (``cpu`` slots, ``gpu``...)."""
    outputs: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    decisions: Dict[str, Decision] = field(default_factory=dict)
    running: Dict[Future, Tuple[str, Dict[str, int]]] = field(default_factory=dict)
    stop: bool = False
    pool: Optional[ThreadPoolExecutor] = None


def default_build_dir(graph: Graph) -> Path:
    import os

    return Path(os.environ.get("BUILDGRAPH_BUILD_DIR") or "build") / graph.name


class Scheduler:
    def __init__(self, graph: Graph, store: Store, options: RunOptions, reporter: Any,
                 remote: Any = None):
        self.graph = graph
        self.store = store
        self.options = options
        self.reporter = reporter
        self.remote = remote
        """The team cache (``engine.team.remote.TeamCache``) or None: read on a local miss,
        written after a build."""
        self.jobs = options.resolved_jobs()
        self.build_dir = (options.build_dir or default_build_dir(graph)).absolute()
        self.log_dir = self.build_dir / ".logs"
        self.lock_file = lock_path(graph.recipe_path)
        self.run_context = RunContext(graph, store, options, reporter, remote, self.jobs,
                                      self.build_dir)
        self._pulled: Dict[str, str] = {}
        self.runner: StepRunner = LocalRunner(self.run_context)
        if options.cluster:
            from buildgraph.engine.cluster.driver import RayRunner

            self.runner = RayRunner(self.run_context, options.cluster)

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
                    check_frozen(planner, selected, self.lock_file)
            finally:
                self.store.memo.flush()
            self.reporter.start(self.graph, selected, self.jobs)
            try:
                if self.remote is not None:
                    from buildgraph.engine.team.prefetch import prefetch

                    self._pulled = prefetch(self.run_context, planner, selected)
                self._loop(selected, planner, results)
            except KeyboardInterrupt:
                interrupted = True
                for sid in selected:
                    results.setdefault(sid, StepResult(sid, CANCELLED, message="interrupted"))
            finally:
                changes = self._finish(results, planner, lock_entries, interrupted)
        result = RunResult(self.graph.name, {sid: results[sid] for sid in selected if sid in results},
                           time.monotonic() - start, self.build_dir, interrupted, changes)
        if not interrupted and not changes and selected and \
                all(r.status == CACHED for r in result.steps.values()) and \
                len(result.steps) == len(selected):
            from buildgraph.engine.noop import watch

            result.noop_watch = watch(self.run_context, planner, selected, result.steps,
                                      self.lock_file)
        self.reporter.finish(result)
        return result

    def _finish(self, results: Dict[str, StepResult], planner: Planner,
                lock_entries: Dict[str, Any], interrupted: bool) -> List[str]:
        """However the run ended: close the runner, wait for the pushes, flush the caches,
        then the lock file (or, with --locked/--frozen, how it would change) and the run
        record."""
        self.runner.close()
        if self.remote is not None:
            from buildgraph.engine.team.prefetch import report_pushes

            report_pushes(self.run_context)
        self.store.stat_cache.flush()
        self.store.memo.flush()
        changes: List[str] = []
        updates = lambda: lock_updates(self.store, self.graph.steps, results)  # noqa: E731
        if self.options.frozen or self.options.locked:
            if not interrupted:
                changes = lock_changes(lock_entries, updates(), self.graph.steps,
                                       labels=lambda sid: planner.labels(self.graph.steps[sid]))
        elif self.options.write_lock:
            entries = updates()
            if entries:
                try:
                    write_lock(self.lock_file, self.graph.name, entries, keep=self.graph.steps)
                except OSError as exc:
                    self.reporter.warning(f"could not write lock file {self.lock_file}: {exc}")
        if self.options.write_lock:
            from buildgraph.engine.runrecord import write_record

            try:
                write_record(self.build_dir, self.graph.name, results, keep=self.graph.steps)
            except OSError as exc:
                self.reporter.warning(f"could not write the run record in {self.build_dir}: "
                                      f"{exc}")
        return changes

    # --- the loop ----------------------------------------------------------------------------
    def _loop(self, selected: List[str], planner: Planner, results: Dict[str, StepResult]) -> None:
        state = _LoopState(list(selected), results, {"cpu": self.jobs, **self.graph.pools})
        try:
            while True:
                while any([self._advance(state, planner, sid) for sid in list(state.pending)]):
                    pass
                if not state.running:
                    break
                self._collect(state)
                self.reporter.tick()
            for sid in list(state.pending):
                self._settle(state, sid, StepResult(
                    sid, SKIPPED, message="not started: an earlier step failed (use "
                                          "--keep-going to build what is possible)"))
        except KeyboardInterrupt:
            procs.kill_all()
            for future, (sid, _) in state.running.items():
                try:
                    results[sid] = future.result()
                except BaseException:  # noqa: BLE001
                    results[sid] = StepResult(sid, CANCELLED, message="interrupted")
                if results[sid].status == FAILED:
                    results[sid].status = CANCELLED
            raise
        finally:
            if state.pool is not None:
                state.pool.shutdown(wait=True)

    def _advance(self, state: _LoopState, planner: Planner, sid: str) -> bool:
        """Move pending step ``sid`` on if it can: skipped (an upstream failed), decided,
        restored from the cache, or submitted once the pools have room for it. True when it
        moved (the loop then looks at every pending step again)."""
        step = self.graph.steps[sid]
        bad = [u for u in step.upstream if u in state.results and not state.results[u].ok]
        tolerant = bool(bad) and self._tolerates_failed(step)
        if bad and not tolerant:
            self._settle(state, sid, StepResult(sid, SKIPPED,
                                                message=f"upstream '{bad[0]}' failed"))
            return True
        if state.stop or not all(u in state.outputs or (tolerant and u in state.results)
                                  for u in step.upstream):
            return False
        decision = state.decisions.get(sid)
        if decision is None:
            decision, refused = self._decide(planner, step, state.outputs)
            if refused is not None or decision is None:
                self._settle(state, sid, refused, stops=True)  # type: ignore[arg-type]
                return True
            state.decisions[sid] = decision
        if decision.action in (CACHED, RESTORE):
            result = restore(self.run_context, step, decision, self._pulled.get(step.id, ""))
            if result.ok:
                state.outputs[sid] = {n: decision.entry["outputs"][n]  # type: ignore[index]
                                      for n in step.outputs}
            self._settle(state, sid, result)
            return True
        need = self.runner.needs(step)
        if not all(state.free.get(k, 0) >= v for k, v in need.items()):
            return False
        if state.pool is None:
            try:  # a cluster connects now, once a step must be built
                self.runner.prepare()
            except BuildgraphError as exc:
                self._settle(state, sid, StepResult(sid, FAILED, decision.key,
                                                    message=exc.render()), stops=True)
                return True
            # Threads (and concurrent.futures, which imports logging) only once a step must
            # run: a fully cached run decides everything on this thread.
            from concurrent import futures

            state.pool = futures.ThreadPoolExecutor(max_workers=self.runner.slots(self.jobs),
                                                    thread_name_prefix="buildgraph")
        for k, v in need.items():
            state.free[k] -= v
        state.pending.remove(sid)
        self.reporter.step_started(sid, decision.reasons)
        future = state.pool.submit(self._execute, step, decision, need.get("cpu", 1))
        state.running[future] = (sid, need)
        return True

    def _collect(self, state: _LoopState) -> None:
        """Wait (a quarter second at most) for running steps; give back their pool slots."""
        from concurrent import futures

        done, _ = futures.wait(list(state.running), timeout=0.25,
                               return_when=futures.FIRST_COMPLETED)
        for future in done:
            sid, need = state.running.pop(future)
            for k, v in need.items():
                state.free[k] += v
            result = future.result()
            state.results[sid] = result
            if result.ok:
                state.outputs[sid] = result.meta.pop("_entries")
            elif not self.options.keep_going:
                state.stop = True
            self.reporter.step_finished(result)

    def _settle(self, state: _LoopState, sid: str, result: StepResult,
                stops: bool = False) -> None:
        """A step is done without running (result, report, remove); with ``stops``, a failure
        stops the run unless --keep-going."""
        state.results[sid] = result
        self.reporter.step_finished(result)
        state.pending.remove(sid)
        if stops and not result.ok:
            state.stop = state.stop or not self.options.keep_going

    def _tolerates_failed(self, step: StepNode) -> bool:
        """Under --keep-going, does this step's kind run without its failed upstream steps
        (``Executor.tolerates_failed_upstream``: verify, benchmark, release)?"""
        if not self.options.keep_going:
            return False
        try:
            return bool(load_executor(step.kind).tolerates_failed_upstream)
        except Exception:  # noqa: BLE001 - an unknown kind fails where it is built
            return False

    def _decide(self, planner: Planner, step: StepNode, outputs: Dict[str, Dict[str, Any]]
                ) -> Tuple[Optional[Decision], Optional[StepResult]]:
        """The step's decision now that its upstream is done (a team-cache hit pulled), or the
        failed result that stands for it: a decision that raised, or --frozen's refusal."""
        try:  # a failed upstream (tolerated) is None: keyed as failed
            decision = planner.decide(step, {u: outputs.get(u) for u in step.upstream})
        except BuildgraphError as exc:
            return None, StepResult(step.id, FAILED, message=exc.render())
        if decision.action == PULL:
            from buildgraph.engine.team.prefetch import pull

            decision = pull(self.run_context, step, decision)
        if self.options.frozen:
            refused = frozen_refusal(planner, step, decision, self.lock_file)
            if refused is not None:
                return decision, StepResult(step.id, FAILED, decision.key, message=refused)
        return decision, None

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
            if waited or not self.options.forces(step):
                hit = self._committed_meanwhile(step, decision)
                if hit is not None:
                    return hit
            return self.runner.build(step, decision, threads, start)
        finally:
            lock.release()

    def _committed_meanwhile(self, step: StepNode, decision: Decision) -> Optional[StepResult]:
        key = decision.key or ""
        entry = self.store.get_action(key)
        if entry is None or not all(n in entry["outputs"] and
                                    self.store.check_output(entry["outputs"][n])
                                    for n in step.outputs):
            return None
        hit = Decision(step.id, RESTORE, ("built by another process",), key, decision.parts,
                       entry)
        result = restore(self.run_context, step, hit)
        result.status = CACHED if result.ok else result.status
        result.meta["_entries"] = {n: entry["outputs"][n] for n in step.outputs}
        return result
