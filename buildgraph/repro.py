"""``buildgraph repro``: rebuild steps with the cache bypassed and compare with the cached build.

The rebuild is an ordinary run of the engine (:class:`~buildgraph.engine.scheduler.Scheduler`)
into a scratch store and build directory under the cache's ``tmp/``: an empty cache, so every
selected step runs, and empty shared record areas, so TVM tunes again instead of reusing its
records. Then each step's outputs are compared with those of the cached build (the decisions a
plan makes against the real cache):

* the same digest: reproduced, bit for bit;
* another digest from the same key (the same inputs): the step is not deterministic. That is
  expected of a step that says so (``Description.nondeterministic``: tuning, a benchmark) and a
  failure otherwise; either way the drift is measured (:mod:`buildgraph.backends.evaluate.drift`,
  in a worker process): where the bytes first differ, and for a model artifact the numbers
  through the runtime ``verify`` uses;
* another key: the inputs differ, because an upstream step was not reproduced; the reasons are
  the plan's diff, and the outputs are compared all the same.

The exit status is non-zero when a step that should be deterministic is not, or a step fails.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from buildgraph.errors import BuildgraphError

IDENTICAL = "identical"
EXPECTED = "differs, as expected"
NOT_REPRODUCIBLE = "NOT REPRODUCIBLE"
INPUTS_DIFFER = "inputs differ"
FAILED = "failed"

DRIFT = "buildgraph.backends.evaluate.drift:compare_outputs"


@dataclass
class ReproRow:
    step: str
    kind: str
    verdict: str
    same_key: bool = True
    expected: str = ""
    """Why the step is not deterministic, when it says so."""
    reasons: List[str] = field(default_factory=list)
    """Why the rebuild's key differs (the plan's diff), when it does."""
    outputs: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    """Per output: ``identical`` and, when not, ``first_difference``, ``numbers``, ``json``."""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict not in (NOT_REPRODUCIBLE, FAILED)


@dataclass
class ReproResult:
    recipe: str
    rows: List[ReproRow]
    rebuild_s: float
    scratch: Optional[Path] = None
    """The scratch cache and build directory, when kept (``--keep``)."""

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def as_json(self) -> Dict[str, Any]:
        return {"recipe": self.recipe, "ok": self.ok, "rebuild_s": round(self.rebuild_s, 2),
                "scratch": str(self.scratch) if self.scratch else None,
                "steps": [dict(asdict(r), ok=r.ok) for r in self.rows]}


def default_targets(graph: Any) -> List[str]:
    """What the release depends on: the ``release`` steps and their upstream closure; every
    step when the recipe releases nothing."""
    releases = [sid for sid, s in graph.steps.items() if s.kind == "release"]
    return graph.select(releases) if releases else list(graph.steps)


def repro(graph: Any, targets: Sequence[str] = (), cache_dir: Optional[Path] = None,
          build_dir: Optional[Path] = None, jobs: int = 0, reporter: Any = None,
          keep: bool = False) -> ReproResult:
    """Rebuild ``targets`` (default: :func:`default_targets`) into a scratch store, compare."""
    from buildgraph.engine.lockfile import lock_path, read_lock
    from buildgraph.engine.planner import CACHED, RESTORE, Planner
    from buildgraph.engine.scheduler import RunOptions, Scheduler, default_build_dir
    from buildgraph.engine.store import Store
    from buildgraph.report import Reporter

    reporter = reporter or Reporter()
    selected = graph.select(list(targets)) if targets else default_targets(graph)
    store = Store(cache_dir, warn=reporter.warning)
    original_build = (build_dir or default_build_dir(graph)).absolute()
    scratch = store.tmp / f"repro-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with store.using():
            planner = Planner(graph, store, original_build, read_lock(lock_path(graph.recipe_path)))
            decisions = planner.plan(selected)
            missing = [sid for sid in selected if decisions[sid].action not in (CACHED, RESTORE)]
            if missing:
                raise BuildgraphError(
                    f"repro compares a rebuild with the cached build, and {len(missing)} of "
                    f"{len(selected)} steps are not cached: " + ", ".join(missing[:8])
                    + (" ..." if len(missing) > 8 else ""),
                    hint=f"build them first: buildgraph run {graph.recipe_path.name}")
            scratch.mkdir(parents=True)
            fresh = Store(scratch / "cache", warn=reporter.warning)
            try:
                options = RunOptions(jobs=jobs, build_dir=scratch / "build", write_lock=False,
                                     keep_going=True)
                rebuilt = Scheduler(graph, fresh, options, reporter).run(selected)
                if rebuilt.interrupted:
                    raise KeyboardInterrupt
                rows = _compare(graph, planner, decisions, rebuilt, store, fresh, scratch)
            finally:
                fresh.close()
        return ReproResult(graph.name, rows, rebuilt.wall_s, scratch if keep else None)
    finally:
        store.close()
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)


def _compare(graph: Any, planner: Any, decisions: Dict[str, Any], rebuilt: Any, store: Any,
             fresh: Any, scratch: Path) -> List[ReproRow]:
    from buildgraph.engine.keys import explain_difference
    from buildgraph.engine.workers import WorkerPool

    rows: List[ReproRow] = []
    pool: Optional[WorkerPool] = None
    try:
        for sid, decision in decisions.items():
            step = graph.steps[sid]
            expected = planner.describe(step).nondeterministic
            result = rebuilt.steps.get(sid)
            if result is None or not result.ok:
                rows.append(ReproRow(sid, step.kind, FAILED, expected=expected,
                                     message=result.message if result else "not rebuilt"))
                continue
            entry = fresh.get_action(result.key)
            old = decision.entry or {}
            same_key = result.key == decision.key
            row = ReproRow(sid, step.kind, IDENTICAL, same_key, expected)
            if not same_key:
                row.reasons = explain_difference(old.get("parts"), (entry or {}).get("parts") or {},
                                                 planner.labels(step))
            for name, filename in step.outputs.items():
                a, b = old["outputs"][name], (entry or {}).get("outputs", {}).get(name, {})
                if a.get("digest") == b.get("digest"):
                    row.outputs[name] = {"identical": True}
                    continue
                old_path = scratch / "cached" / sid / filename
                store.materialize(a, old_path)
                request = {"old": str(old_path),
                           "new": str(scratch / "build" / sid / filename),
                           "kind": step.kind, "recipe_dir": str(graph.recipe_dir),
                           "runtime": _runtime(step.kind, name, filename),
                           "model": _model_of(graph, planner, decisions, sid),
                           "info_old": _materialized(store, old, step, "info", scratch, sid),
                           "info_new": str(scratch / "build" / sid / step.outputs["info"])
                           if "info" in step.outputs else None}
                if pool is None:
                    pool = WorkerPool(1)
                status, payload = pool.call_function(DRIFT, request, str(scratch / "drift.log"))
                row.outputs[name] = dict(payload, identical=False) if status == "ok" else \
                    {"identical": False, "error": str(payload)}
            if any(not o["identical"] for o in row.outputs.values()):
                row.verdict = INPUTS_DIFFER if not same_key else (
                    EXPECTED if expected else NOT_REPRODUCIBLE)
            rows.append(row)
    finally:
        if pool is not None:
            pool.close()
    return rows


def _runtime(kind: str, name: str, filename: str) -> Optional[str]:
    """The runtime that loads output ``name`` of a ``kind`` step: its model output, or a file
    whose suffix a runtime loads; None for reports and records."""
    from buildgraph.engine.runtime import KIND_RUNTIMES, SUFFIX_RUNTIMES

    if name == "model" and kind in KIND_RUNTIMES:
        return KIND_RUNTIMES[kind]
    return SUFFIX_RUNTIMES.get(Path(filename).suffix)


def _model_of(graph: Any, planner: Any, decisions: Dict[str, Any], sid: str
              ) -> Optional[Dict[str, Any]]:
    """The model description (``task.data["model"]``) of ``sid`` or of the nearest step it
    comes from: the inputs a numeric comparison feeds its artifact."""
    queue, seen = [sid], set()
    while queue:
        current = queue.pop(0)
        if current in seen or current not in graph.steps:
            continue
        seen.add(current)
        decision = decisions.get(current)
        data = ((decision.parts if decision is not None else None) or {}).get("data") or {}
        if isinstance(data.get("model"), dict) and data["model"].get("spec"):
            return data["model"]
        queue.extend(graph.steps[current].upstream)
    return None


def _materialized(store: Any, entry: Dict[str, Any], step: Any, name: str, scratch: Path,
                  sid: str) -> Optional[str]:
    if name not in step.outputs or name not in entry.get("outputs", {}):
        return None
    path = scratch / "cached" / sid / step.outputs[name]
    if not path.exists():
        store.materialize(entry["outputs"][name], path)
    return str(path)


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------

def render(result: ReproResult) -> str:
    """The table a person reads: one line per step, then the details of what differed."""
    width = max([len(r.step) for r in result.rows] + [4])
    kinds = max([len(r.kind) for r in result.rows] + [4])
    lines = [f"{'step':<{width}}  {'kind':<{kinds}}  result"]
    for r in result.rows:
        lines.append(f"{r.step:<{width}}  {r.kind:<{kinds}}  {r.verdict}" + _summary(r))
    details = []
    for r in result.rows:
        if r.verdict == IDENTICAL:
            continue
        details.append(f"{r.step}:")
        if r.message:
            details.append(f"  {r.message}")
        if r.expected:
            details.append(f"  not deterministic by design: {r.expected}")
        for reason in r.reasons:
            details.append(f"  input: {reason}")
        for name, out in r.outputs.items():
            if out.get("identical"):
                continue
            if out.get("error"):
                details.append(f"  {name}: comparison failed: {out['error']}")
                continue
            details.append(f"  {name}: {out.get('first_difference')}")
            if out.get("numbers"):
                n = out["numbers"]
                details.append(f"  {name}: through {n['runtime']} on {n['input_sets']} input "
                               f"sets {n['inputs']}: max abs {n['max_abs']:.3g}, max rel "
                               f"{n['max_rel']:.3g}, cosine {n['cosine']:.9f}"
                               + (", within fp32 tolerance" if n["within_fp32_tolerance"]
                                  else ", OUTSIDE fp32 tolerance"))
            elif out.get("numbers_skipped"):
                details.append(f"  {name}: numbers not compared: {out['numbers_skipped']}")
            if out.get("json"):
                j = out["json"]
                details.append(f"  {name}: {j.get('values_differing')} JSON values differ "
                               f"({j.get('numbers_differing')} numbers, largest change "
                               f"{100 * j.get('max_rel_change', 0):.1f}%); first "
                               f"{j.get('first')}")
    bad = [r for r in result.rows if not r.ok]
    tail = (f"ok: {result.recipe}: {len(result.rows)} steps rebuilt in {result.rebuild_s:.1f} s; "
            f"{sum(r.verdict == IDENTICAL for r in result.rows)} bit-identical"
            if not bad else
            f"FAILED: {result.recipe}: {len(bad)} of {len(result.rows)} steps are not "
            f"reproducible or failed: " + ", ".join(r.step for r in bad))
    text = "\n".join(lines)
    if details:
        text += "\n\n" + "\n".join(details)
    if result.scratch:
        text += f"\n\nscratch cache and build kept in {result.scratch}"
    return text + "\n" + tail + "\n"


def _summary(row: ReproRow) -> str:
    numbers = [o["numbers"] for o in row.outputs.values() if o.get("numbers")]
    if numbers:
        worst = max(numbers, key=lambda n: n.get("max_abs") or 0)
        return f" (max abs {worst['max_abs']:.2g}, cosine {worst['cosine']:.6f})"
    if row.reasons:
        return f" ({row.reasons[0]})"
    return ""
