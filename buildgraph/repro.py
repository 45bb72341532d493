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
* another key: the inputs differ, because an upstream step was not reproduced (the reasons are
  the plan's diff); the outputs are compared all the same. Such a step, unless it says it is
  not deterministic itself, is then rebuilt a second time in a second scratch store seeded
  with the cached build's outputs of everything else, so that it gets the inputs it had: a TVM
  library compiled again from the cached tuning records, not from the records of a new tuning
  run. That second rebuild decides its verdict.

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
    first_rebuild: Optional[Dict[str, Any]] = None
    """When the step was rebuilt a second time from the cached inputs: what the first rebuild,
    from the rebuilt inputs, gave (``reasons`` and ``outputs``)."""

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
    from buildgraph.engine.scheduler import default_build_dir
    from buildgraph.engine.store.cache import Store
    from buildgraph.reporters import Reporter

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
            comparer = _Comparer(graph, planner, decisions, store, scratch)
            try:
                rebuilt = _rebuild(graph, scratch / "first", selected, (), store, decisions,
                                   jobs, reporter)
                rows = comparer.rows(selected, rebuilt, scratch / "first")
                again = [r.step for r in rows if r.verdict == INPUTS_DIFFER and not r.expected]
                wall = rebuilt.wall_s
                if again:
                    reporter.warning("rebuilding " + ", ".join(again) + " again, from the "
                                     "cached build's inputs")
                    seeded = [sid for sid in graph.select(again) if sid not in again]
                    second = _rebuild(graph, scratch / "again", again, seeded, store, decisions,
                                      jobs, reporter)
                    wall += second.wall_s
                    by_step = {r.step: r for r in comparer.rows(again, second, scratch / "again")}
                    for i, row in enumerate(rows):
                        if row.step in by_step:
                            redone = by_step[row.step]
                            redone.first_rebuild = {"reasons": row.reasons,
                                                    "outputs": row.outputs}
                            rows[i] = redone
            finally:
                comparer.close()
        return ReproResult(graph.name, rows, wall, scratch if keep else None)
    finally:
        store.close()
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)


def _rebuild(graph: Any, where: Path, targets: Sequence[str], seeded: Sequence[str],
             store: Any, decisions: Dict[str, Any], jobs: int, reporter: Any) -> Any:
    """A run of ``targets`` on an empty store under ``where`` holding only the cached build's
    results of the ``seeded`` steps (hits, so their outputs are the cached ones)."""
    from buildgraph.engine.scheduler import RunOptions, Scheduler
    from buildgraph.engine.store.cache import Store

    fresh = Store(where / "cache", warn=reporter.warning)
    try:
        for sid in seeded:
            _seed(store, fresh, decisions[sid])
        options = RunOptions(jobs=jobs, build_dir=where / "build", write_lock=False,
                             keep_going=True)
        result = Scheduler(graph, fresh, options, reporter).run(list(targets))
    finally:
        fresh.close()
    if result.interrupted:
        raise KeyboardInterrupt
    return result


def _seed(source: Any, dest: Any, decision: Any) -> None:
    """Put the cached result of one step into ``dest``: its action entry and its blobs (hard
    links: both stores are under the same cache directory)."""
    entry = decision.entry or {}
    for digest in source.referenced_blobs(entry):
        target = dest.blob_path(digest)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source.blob_path(digest), target)
        except OSError:
            shutil.copy2(source.blob_path(digest), target)
        dest.stat_cache.put(str(target), os.stat(target), digest)
    dest.put_action(decision.key, entry)


class _Comparer:
    """Compares rebuilt outputs with the cached build's; the numbers in one worker process."""

    def __init__(self, graph: Any, planner: Any, decisions: Dict[str, Any], store: Any,
                 scratch: Path):
        self.graph, self.planner, self.decisions = graph, planner, decisions
        self.store, self.scratch = store, scratch
        self.pool: Any = None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def rows(self, sids: Sequence[str], rebuilt: Any, where: Path) -> List[ReproRow]:
        from buildgraph.engine.store.cache import Store

        fresh = Store(where / "cache")
        try:
            return [self._row(sid, rebuilt.steps.get(sid), fresh, where / "build")
                    for sid in sids]
        finally:
            fresh.close()

    def _row(self, sid: str, result: Any, fresh: Any, build: Path) -> ReproRow:
        from buildgraph.engine.keys import explain_difference

        step, decision = self.graph.steps[sid], self.decisions[sid]
        expected = self.planner.describe(step).nondeterministic
        if result is None or not result.ok:
            return ReproRow(sid, step.kind, FAILED, expected=expected,
                            message=result.message if result else "not rebuilt")
        entry = fresh.get_action(result.key) or {}
        old = decision.entry or {}
        same_key = result.key == decision.key
        row = ReproRow(sid, step.kind, IDENTICAL, same_key, expected)
        if not same_key:
            row.reasons = explain_difference(old.get("parts"), entry.get("parts") or {},
                                             self.planner.labels(step))
        for name, filename in step.outputs.items():
            a, b = old["outputs"][name], entry.get("outputs", {}).get(name, {})
            if a.get("digest") == b.get("digest"):
                row.outputs[name] = {"identical": True}
                continue
            request = {"old": self._cached(old, step, name), "new": str(build / sid / filename),
                       "kind": step.kind, "recipe_dir": str(self.graph.recipe_dir),
                       "runtime": _runtime(step.kind, name, filename),
                       "model": _model_of(self.graph, self.planner, self.decisions, sid),
                       "info_old": self._cached(old, step, "info"),
                       "info_new": str(build / sid / step.outputs["info"])
                       if "info" in step.outputs else None}
            if self.pool is None:
                from buildgraph.engine.execution.pool import WorkerPool

                self.pool = WorkerPool(1)
            status, payload = self.pool.call_function(DRIFT, request,
                                                      str(self.scratch / "drift.log"))
            row.outputs[name] = dict(payload, identical=False) if status == "ok" else \
                {"identical": False, "error": str(payload)}
        if any(not o["identical"] for o in row.outputs.values()):
            row.verdict = INPUTS_DIFFER if not same_key else (
                EXPECTED if expected else NOT_REPRODUCIBLE)
        return row

    def _cached(self, entry: Dict[str, Any], step: Any, name: str) -> Optional[str]:
        """The cached build's output ``name``, placed under the scratch directory."""
        if name not in step.outputs or name not in entry.get("outputs", {}):
            return None
        path = self.scratch / "cached" / step.id / step.outputs[name]
        if not path.exists():
            self.store.materialize(entry["outputs"][name], path)
        return str(path)


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
        if r.verdict == IDENTICAL and not r.first_rebuild:
            continue
        details.append(f"{r.step}:")
        if r.message:
            details.append(f"  {r.message}")
        if r.expected:
            details.append(f"  not deterministic by design: {r.expected}")
        if r.first_rebuild:
            details.append("  first rebuild, from the rebuilt upstream steps:")
            details.extend(f"    input: {reason}" for reason in r.first_rebuild["reasons"])
            for name, out in r.first_rebuild["outputs"].items():
                details.extend("  " + line for line in _output_lines(name, out))
            details.append(f"  rebuilt again from the cached build's inputs: {r.verdict}")
        details.extend(f"  input: {reason}" for reason in r.reasons)
        for name, out in r.outputs.items():
            details.extend(_output_lines(name, out))
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


def _output_lines(name: str, out: Dict[str, Any]) -> List[str]:
    if out.get("identical"):
        return []
    if out.get("error"):
        return [f"  {name}: comparison failed: {out['error']}"]
    lines = [f"  {name}: {out.get('first_difference')}"]
    if out.get("numbers"):
        n = out["numbers"]
        lines.append(f"  {name}: through {n['runtime']} on {n['input_sets']} input sets "
                     f"{n['inputs']}: max abs {n['max_abs']:.3g}, max rel {n['max_rel']:.3g}, "
                     f"cosine {n['cosine']:.9f}"
                     + (", within fp32 tolerance" if n["within_fp32_tolerance"]
                        else ", OUTSIDE fp32 tolerance"))
    elif out.get("numbers_skipped"):
        lines.append(f"  {name}: numbers not compared: {out['numbers_skipped']}")
    if out.get("json"):
        j = out["json"]
        lines.append(f"  {name}: {j.get('values_differing')} JSON values differ "
                     f"({j.get('numbers_differing')} numbers, largest change "
                     f"{100 * j.get('max_rel_change', 0):.1f}%); first {j.get('first')}")
    return lines


def _summary(row: ReproRow) -> str:
    """The table's note: the numeric drift, or why the inputs differed; for a step rebuilt a
    second time, what the first rebuild (from rebuilt inputs) measured."""
    rows = [row.outputs] + ([row.first_rebuild["outputs"]] if row.first_rebuild else [])
    numbers = [o["numbers"] for outputs in rows for o in outputs.values() if o.get("numbers")]
    note = ""
    if numbers:
        worst = max(numbers, key=lambda n: n.get("max_abs") or 0)
        note = f"max abs {worst['max_abs']:.2g}, cosine {worst['cosine']:.6f}"
    if row.first_rebuild:
        why = (row.first_rebuild["reasons"] or ["inputs differ"])[0]
        return f" from the cached inputs; from rebuilt ones: {why}" + (f", {note}" if note else "")
    if note:
        return f" ({note})"
    if row.reasons:
        return f" ({row.reasons[0]})"
    return ""
