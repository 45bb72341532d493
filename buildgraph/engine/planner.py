"""Decide what each step needs, and say why: one code path for ``run`` and ``plan``.

Like ninja's ``RecomputeOutputDirty``, every branch that makes a step stale records a reason.
A decision is pure data (:class:`Decision`); ``explain`` renders it, and the scheduler acts on
it. A step whose upstream will run has no key yet (its inputs are unknown until the upstream
finishes, and an upstream that rebuilds to identical bytes leaves it cached); the planner says
``waits`` and still lists the reasons it can already see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from buildgraph.errors import RecipeError, StepFailed
from buildgraph.engine.executor import load_executor
from buildgraph.engine.graph import Graph, StepNode
from buildgraph.engine.hashing import digest_json, path_digest
from buildgraph.engine.keys import action_key, explain_difference, make_parts
from buildgraph.engine.store import Store, atomic_write

CACHED = "cached"      # in the cache and in the build directory: nothing to do
RESTORE = "restore"    # in the cache; the build directory copy is missing or changed
RUN = "run"            # must execute
WAITS = "waits"        # depends on a step that will run; decided once that one finishes


@dataclass(frozen=True)
class Decision:
    step_id: str
    action: str
    reasons: Tuple[str, ...] = ()
    key: Optional[str] = None
    parts: Optional[Dict[str, Any]] = None
    entry: Optional[Dict[str, Any]] = field(default=None, compare=False)


class Planner:
    """Computes keys and decisions for the steps of one graph."""

    def __init__(self, graph: Graph, store: Store, build_dir: Path,
                 lock_entries: Mapping[str, Any], force: Set[str] = frozenset(),
                 no_cache: bool = False):
        self.graph = graph
        self.store = store
        self.build_dir = build_dir
        self.lock = lock_entries
        self.force = force
        self.no_cache = no_cache
        self._fingerprints: Dict[str, Dict[str, str]] = {}

    def output_path(self, step: StepNode, name: str) -> Path:
        return self.build_dir / step.id / step.outputs[name]

    def fingerprint(self, step: StepNode) -> Dict[str, str]:
        if step.fingerprint is not None:
            return step.fingerprint
        cached = self._fingerprints.get(step.id)
        if cached is None:
            executor = load_executor(step.kind)()
            cached = {k: str(v) for k, v in executor.fingerprint(step.raw_params).items()}
            self._fingerprints[step.id] = cached
        return cached

    def input_digests(self, step: StepNode) -> Dict[str, str]:
        digests = {}
        for name, path in step.inputs.items():
            try:
                digests[name] = path_digest(path, self.store.stat_cache).digest
            except FileNotFoundError:
                raise StepFailed(f"input '{step.input_labels.get(name, name)}' of step "
                                 f"'{step.id}' no longer exists") from None
        return digests

    def upstream_path(self, up: str, name: str, entry: Mapping[str, Any]) -> Path:
        """Where an upstream output can be read now: the build directory, else the store."""
        step = self.graph.steps[up]
        path = self.build_dir / up / step.outputs[name]
        if path.exists() or entry.get("type") != "file":
            return path
        return self.store.blob_path(entry["digest"])

    def check_upstream(self, step: StepNode, upstream: Mapping[str, Mapping[str, Any]]) -> None:
        """Run the executor's ``check_upstream`` hook; a RecipeError gets the step's location."""
        if "check_upstream" not in step.hooks:
            return
        paths = {u: {n: self.upstream_path(u, n, e) for n, e in upstream[u].items()}
                 for u in step.upstream}
        try:
            load_executor(step.kind)().check_upstream(step.raw_params, paths,  # type: ignore[attr-defined]
                                                      dict(self.graph.models))
        except RecipeError as exc:
            if exc.location is None:
                exc.location = step.location
                exc.key = exc.key or f"steps.{step.base_id}.with"
            raise

    def _upstream_digest(self, step: StepNode, up: str, name: str,
                         entry: Mapping[str, Any]) -> str:
        if "upstream_digest" not in step.hooks:
            return entry["digest"]
        memo_key = digest_json({"kind": step.kind, "version": step.executor_version,
                                "params": step.raw_params, "output": name,
                                "digest": entry["digest"]})
        memo = self.store.root / "derived" / memo_key[:2] / memo_key[2:]
        try:
            return memo.read_text(encoding="utf-8")
        except OSError:
            pass
        derived = load_executor(step.kind)().upstream_digest(  # type: ignore[attr-defined]
            step.raw_params, name, self.upstream_path(up, name, entry), entry["digest"])
        try:
            atomic_write(memo, str(derived).encode("utf-8"))
        except OSError:
            pass
        return str(derived)

    def parts(self, step: StepNode, upstream: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
        """Key parts; ``upstream`` maps each upstream id to its output manifest entries."""
        up_digests = {f"{up}.{name}": self._upstream_digest(step, up, name, entry)
                      for up in step.upstream for name, entry in upstream[up].items()}
        return make_parts(step.kind, step.executor_version, step.raw_params, step.outputs,
                          self.input_digests(step), up_digests, self.fingerprint(step),
                          self.graph.cache_salt, step.key_data)

    def decide(self, step: StepNode,
               upstream: Optional[Mapping[str, Mapping[str, Any]]]) -> Decision:
        """Decide one step; ``upstream`` is None when some upstream has yet to run."""
        previous = self.lock.get(step.id, {}).get("parts") if isinstance(
            self.lock.get(step.id), dict) else None
        labels = dict(step.input_labels)
        if upstream is None:
            reasons = ["upstream " + ", ".join(f"'{u}'" for u in step.upstream) + " may change"]
            if previous:
                partial = make_parts(step.kind, step.executor_version,
                                     step.raw_params, step.outputs, self.input_digests(step),
                                     previous.get("upstream", {}), self.fingerprint(step),
                                     self.graph.cache_salt, step.key_data)
                diff = explain_difference(previous, partial, labels)
                if diff != ["not in the cache (evicted, or built elsewhere)"]:
                    reasons = diff + reasons
            else:
                reasons = ["never built"]
            return Decision(step.id, WAITS, tuple(reasons))
        self.check_upstream(step, upstream)
        parts = self.parts(step, upstream)
        key = action_key(parts)
        forced = []
        if step.id in self.force or step.base_id in self.force:
            forced.append("forced (--force)")
        if self.no_cache:
            forced.append("--no-cache")
        if not step.cache:
            forced.append("cache: false")
        if forced:
            return Decision(step.id, RUN, tuple(forced), key, parts)
        entry = self.store.get_action(key)
        if entry is not None and all(name in entry["outputs"] for name in step.outputs) and \
                all(self.store.check_output(entry["outputs"][name]) for name in step.outputs):
            stale = [name for name in step.outputs
                     if not self.store.is_materialized(entry["outputs"][name],
                                                       self.output_path(step, name))]
            if stale:
                return Decision(step.id, RESTORE,
                                tuple(f"output {n} missing or modified in the build directory"
                                      for n in stale), key, parts, entry)
            return Decision(step.id, CACHED, (), key, parts, entry)
        reasons = explain_difference(previous, parts, labels)
        if entry is not None:
            reasons = ["cached result is incomplete or corrupt"]
        return Decision(step.id, RUN, tuple(reasons), key, parts)

    def plan(self, selected: List[str]) -> Dict[str, Decision]:
        """Decisions for ``selected`` (topological order), as if nothing ran in between."""
        decisions: Dict[str, Decision] = {}
        outputs: Dict[str, Dict[str, Any]] = {}
        for sid in selected:
            step = self.graph.steps[sid]
            known = all(up in outputs for up in step.upstream)
            decision = self.decide(step, {u: outputs[u] for u in step.upstream} if known else None)
            decisions[sid] = decision
            if decision.action in (CACHED, RESTORE) and decision.entry is not None:
                outputs[sid] = {n: decision.entry["outputs"][n] for n in step.outputs}
        return decisions
