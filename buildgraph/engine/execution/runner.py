"""Where a step that must be built runs, and what a cache hit gives back.

The scheduler (:mod:`buildgraph.engine.scheduler`) decides; a :class:`StepRunner` builds what
it decided to build: :class:`LocalRunner` here, in this process or a persistent worker
(:mod:`buildgraph.engine.execution.pool`), or ``engine.cluster.driver.RayRunner`` on a Ray cluster. Both read
the run they serve from one :class:`RunContext`, never the scheduler itself.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Protocol, Set, Tuple

from buildgraph.engine.execution import procs
from buildgraph.engine.executor import (FAILED_UPSTREAM, Description, Task, jsonable_meta,
                                        load_executor)
from buildgraph.engine.graph import Graph, StepNode
from buildgraph.engine.planner import CACHED, RESTORE, Decision
from buildgraph.engine.references import expand_runtime
from buildgraph.engine.results import BUILT, CANCELLED, FAILED, RESTORED, RunOptions, StepResult
from buildgraph.engine.store.cache import Store
from buildgraph.errors import BuildgraphError, RecipeError, StepFailed


@dataclass(frozen=True)
class RunContext:
    """What a run's parts share: the graph, the caches, the options, where outputs and logs
    go, and where events are reported."""

    graph: Graph
    store: Store
    options: RunOptions
    reporter: Any
    remote: Any
    """The team cache (``engine.team.remote.TeamCache``) or None: read on a local miss, written
    after a build."""
    jobs: int
    build_dir: Path
    pulled_untrusted: Set[str] = field(default_factory=set)
    """Steps whose outputs came from the team cache unsigned by a trusted key (the set fills
    as hits are restored)."""

    @property
    def log_dir(self) -> Path:
        return self.build_dir / ".logs"


class StepRunner(Protocol):
    """Where a step that must be built runs: the executor boundary of the scheduler.

    The scheduler decides (keys, hits, pulls) and calls :meth:`build` for the rest, on a
    worker thread, holding the step's key lock. :class:`LocalRunner` runs the executor in this
    process or a persistent worker; ``engine.cluster.driver.RayRunner`` on a Ray cluster."""

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
    (``engine/execution/pool.py``), within the local pools."""

    def __init__(self, run: RunContext):
        self.run = run
        self._workers: Any = None
        self._workers_lock = threading.Lock()

    def slots(self, jobs: int) -> int:
        return jobs

    def needs(self, step: StepNode) -> Dict[str, int]:
        from buildgraph.engine.slots import cpu_slots

        need = dict(step.resources)
        need["cpu"] = cpu_slots(need.get("cpu", 1), self.run.jobs)
        return need

    def prepare(self) -> None:
        pass

    def build(self, step: StepNode, decision: Decision, threads: int, start: float
              ) -> StepResult:
        """Run the step's executor in a scratch directory under the cache; on success its
        outputs go into the store, then its action entry (last), then the build directory."""
        key = decision.key or ""
        cls = load_executor(step.kind)
        scratch = self.run.store.scratch_dir(key)
        final_log = self.run.log_dir / f"{step.id}.log"
        log_path = scratch / "log.txt"
        try:
            task = self._task(cls, step, decision, scratch, threads)
            meta = self._invoke(cls, step, task)
            if procs.cancelled():
                raise StepFailed("interrupted")
            return self._commit(step, decision, task, meta, start, final_log)
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

    def _task(self, cls: Any, step: StepNode, decision: Decision, scratch: Path, threads: int
              ) -> Task:
        """The step's ``Task`` (only what is keyed, plus where to work and log), its scratch
        folders made and its log begun (the team's records for its areas pulled first)."""
        run = self.run
        out_dir, work_dir, log_path = scratch / "out", scratch / "work", scratch / "log.txt"
        out_dir.mkdir()
        work_dir.mkdir()
        parts = decision.parts or {}
        upstream = {u: {n: run.build_dir / u / f for n, f in run.graph.steps[u].outputs.items()}
                    for u in step.upstream
                    if (parts.get("upstream") or {}).get(u) != FAILED_UPSTREAM}
        outputs = {n: out_dir / f for n, f in step.outputs.items()}
        description = decision.description or Description()
        inputs = {n: Path(p) for n, p in step.inputs.items()}
        inputs.update({n: Path(p) for n, p in description.inputs.items()})
        team_records: List[str] = []
        if run.remote is not None and description.areas:  # start from the team's records
            team_records = run.remote.pull_areas(run.store, description.areas)
        params = step.raw_params
        if cls.expand_params:
            params = expand_runtime(params, {n: str(p) for n, p in inputs.items()},
                                    {u: {n: str(p) for n, p in o.items()}
                                     for u, o in upstream.items()},
                                    {n: str(p) for n, p in outputs.items()})
        task = Task(kind=step.kind, params=params, inputs=inputs, upstream=upstream,
                    outputs=outputs,
                    upstream_kinds={u: run.graph.steps[u].kind for u in step.upstream},
                    data=dict(parts.get("data") or {}), env=dict(parts.get("env") or {}),
                    step_id=step.id, work_dir=work_dir, recipe_dir=run.graph.recipe_dir,
                    log_path=log_path, threads=threads, timeout=step.timeout,
                    areas={a: run.store.area(a) for a in description.areas},
                    untrusted=self._untrusted_inputs(upstream))
        log_path.write_text(f"# step {step.id} ({step.kind}) key {decision.key or ''}\n"
                            f"# why: {'; '.join(decision.reasons)}\n"
                            + "".join(f"# team records: {line}\n" for line in team_records),
                            encoding="utf-8")
        return task

    def _untrusted_inputs(self, upstream: Dict[str, Dict[str, Path]]) -> Tuple[str, ...]:
        """The upstream outputs that came from the team cache unsigned by a trusted key;
        marked in this process too (in-process executors), see ``engine.origin``."""
        from buildgraph.engine import origin

        paths = tuple(str(p) for u, outs in upstream.items() if u in self.run.pulled_untrusted
                      for p in outs.values())
        origin.mark(paths)
        return paths

    def _commit(self, step: StepNode, decision: Decision, task: Task, meta: Any, start: float,
                final_log: Path) -> StepResult:
        """Outputs into the store, then the action entry (last: a crash before it leaves no
        result), the push queued, the outputs placed in the build directory."""
        run, key = self.run, decision.key or ""
        entries = {}
        for name, path in task.outputs.items():
            if not path.exists() and not path.is_symlink():
                raise StepFailed(f"declared output '{name}' ({path.name}) was not written")
            entries[name] = run.store.put_output(path)
        wall = time.monotonic() - start
        log_digest = run.store.put_bytes(task.log_path.read_bytes())
        meta = jsonable_meta(meta or {})
        run.store.put_action(key, {"step": step.id, "recipe": run.graph.name,
                                   "kind": step.kind, "parts": decision.parts,
                                   "outputs": entries, "log": log_digest,
                                   "meta": meta, "wall_s": round(wall, 3),
                                   "created": time.time()})
        if run.remote is not None:  # blobs, then the entry, then the records
            run.remote.push_later(key, run.store, (decision.description or Description()).areas)
        for name, entry in entries.items():
            run.store.materialize(entry, run.build_dir / step.id / step.outputs[name],
                                  run.options.link)
        self._keep_log(task.log_path, final_log)
        result = StepResult(step.id, BUILT, key, wall, reasons=decision.reasons,
                            log_path=final_log,
                            outputs={n: run.build_dir / step.id / f
                                     for n, f in step.outputs.items()},
                            meta=dict(meta))
        result.meta["_entries"] = entries
        return result

    def _invoke(self, cls: Any, step: StepNode, task: Task) -> Any:
        if cls.isolation == "worker":
            with self._workers_lock:  # two threads must not each start a pool
                if self._workers is None:
                    from buildgraph.engine.execution.pool import WorkerPool

                    self._workers = WorkerPool(self.run.jobs)
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

    def close(self) -> None:
        if self._workers is not None:
            self._workers.close()


def restore(run: "RunContext", step: StepNode, decision: Decision, note: str = "") -> StepResult:
    """A cache hit's result: its outputs placed in the build directory (RESTORE) and its
    entry marked used."""
    entry = decision.entry or {}
    found_origin = entry.get("origin")
    if isinstance(found_origin, dict) and not found_origin.get("trusted"):
        run.pulled_untrusted.add(step.id)
    try:
        if decision.action == RESTORE:
            for name, filename in step.outputs.items():
                dest = run.build_dir / step.id / filename
                if not run.store.is_materialized(entry["outputs"][name], dest):
                    run.store.materialize(entry["outputs"][name], dest, run.options.link)
        run.store.touch_action(decision.key or "")
    except (OSError, BuildgraphError) as exc:
        return StepResult(step.id, FAILED, decision.key,
                          message=f"cannot restore outputs from the cache: {exc}")
    return StepResult(step.id, RESTORED if decision.action == RESTORE else CACHED,
                      decision.key, entry.get("wall_s", 0.0),
                      message=decision.note or note,
                      reasons=decision.reasons,
                      outputs={n: run.build_dir / step.id / f for n, f in step.outputs.items()},
                      meta=dict(entry.get("meta") or {}))
