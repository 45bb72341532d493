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

from buildgraph.errors import BuildgraphError, RecipeError, StepFailed
from buildgraph.engine.executor import DescribeContext, Description, load_executor, nondeterminism
from buildgraph.engine.graph import Graph, StepNode
from buildgraph.engine.hashing import digest_json, path_digest
from buildgraph.engine.keys import action_key, explain_difference, make_parts
from buildgraph.engine.store.cache import Store
from buildgraph.registry import import_object

CACHED = "cached"      # in the cache and in the build directory: nothing to do
RESTORE = "restore"    # in the cache; the build directory copy is missing or changed
RUN = "run"            # must execute
WAITS = "waits"        # depends on a step that will run; decided once that one finishes
PULL = "pull"          # not here, in the team cache: download, verify, restore

DESCRIBE_MEMO = "describe/1"
VIEW_MEMO = "view/1"


@dataclass(frozen=True)
class Decision:
    step_id: str
    action: str
    reasons: Tuple[str, ...] = ()
    key: Optional[str] = None
    parts: Optional[Dict[str, Any]] = None
    entry: Optional[Dict[str, Any]] = field(default=None, compare=False)
    description: Optional[Description] = field(default=None, compare=False)
    """What the executor contributed to the key; the scheduler builds the Task from it."""
    note: str = field(default="", compare=False)
    """A line for the step's result (where a pulled result came from)."""


class Planner:
    """Computes keys and decisions for the steps of one graph."""

    def __init__(self, graph: Graph, store: Store, build_dir: Path,
                 lock_entries: Mapping[str, Any], force: Set[str] = frozenset(),
                 no_cache: bool = False, remote: Any = None):
        self.graph = graph
        self.store = store
        self.build_dir = build_dir
        self.lock = lock_entries
        self.force = force
        self.no_cache = no_cache
        self.remote = remote
        """The team cache (``engine.team.remote.TeamCache``), asked only on a local miss."""
        self._described: Dict[str, Tuple[Description, Dict[str, str]]] = {}
        self._keys: Dict[str, str] = {}
        self._outputs: Dict[str, Dict[str, str]] = {}
        """Keys decided and output digests seen so far, for the provenance of later steps."""

    def output_path(self, step: StepNode, name: str) -> Path:
        return self.build_dir / step.id / step.outputs[name]

    # --- descriptions -----------------------------------------------------------------------
    def describe(self, step: StepNode) -> Description:
        """The executor's description of ``step``, memoised in the store.

        A memoised description is reused when nothing it was computed from changed (kind,
        version, params, the recipe's models, upstream kinds, the Python environment) and the
        files it named still have the digests they had; a volatile one is asked for again.
        A RecipeError gets the step's file and line."""
        return self._describe(step)[0]

    def describe_all(self, selected: List[str]) -> None:
        """Describe every selected step up front, so that a bad reference in any step is
        reported before anything runs."""
        for sid in selected:
            self._describe(self.graph.steps[sid])

    def _describe(self, step: StepNode) -> Tuple[Description, Dict[str, str]]:
        done = self._described.get(step.id)
        if done is not None:
            return done
        from buildgraph.engine.environment import environment_token

        upstream_kinds = {u: self.graph.steps[u].kind for u in step.upstream}
        memo_key = digest_json({"kind": step.kind, "executor": step.executor_version,
                                "params": step.raw_params, "models": self.graph.models,
                                "recipe_dir": str(self.graph.recipe_dir), "step": step.base_id,
                                "upstream_kinds": upstream_kinds, "env": environment_token()})
        memo = self.store.memo.get(DESCRIBE_MEMO, memo_key)
        if memo is not None and not memo["description"].get("volatile"):
            description = Description.from_json(memo["description"])
            digests = self._digests(description.inputs, missing_ok=True)
            if digests is not None and digests == memo["digests"]:
                self._described[step.id] = (description, digests)
                return description, digests
        description = self._ask_executor(step, upstream_kinds)
        digests = self._digests(description.inputs, step=step)
        assert digests is not None
        self.store.memo.put(DESCRIBE_MEMO, memo_key, {"description": description.as_json(),
                                                      "digests": digests})
        self._described[step.id] = (description, digests)
        return description, digests

    def _ask_executor(self, step: StepNode, upstream_kinds: Dict[str, str]) -> Description:
        cls = load_executor(step.kind)
        ctx = DescribeContext(recipe_dir=self.graph.recipe_dir, models=self.graph.models,
                              upstream_kinds=upstream_kinds, step_id=step.id)
        where = f"steps.{step.base_id}.with"
        try:
            params = cls.Params.model_validate(step.raw_params) if cls.Params else None
            description = cls().describe(params, ctx)
            if not isinstance(description, Description):
                raise TypeError(f"describe() returned {type(description).__name__}, not a "
                                "Description")
            why = nondeterminism(cls, description)
            if why != description.nondeterministic:
                from dataclasses import replace

                description = replace(description, nondeterministic=why)
        except BuildgraphError as exc:
            if exc.location is None:
                exc.location = step.params_location or step.location
                exc.key = exc.key or where
            raise
        except Exception as exc:  # noqa: BLE001 - an executor bug must not be a traceback
            raise RecipeError(f"step kind '{step.kind}' could not describe this step: "
                              f"{type(exc).__name__}: {exc}", location=step.params_location or step.location,
                              key=where, hint="this is a bug in the step kind's executor; "
                                              "please report it") from None
        return description

    def _digests(self, inputs: Mapping[str, Path], step: Optional[StepNode] = None,
                 missing_ok: bool = False) -> Optional[Dict[str, str]]:
        digests = {}
        for name, path in inputs.items():
            try:
                digests[name] = path_digest(path, self.store.stat_cache).digest
            except FileNotFoundError:
                if missing_ok:
                    return None
                assert step is not None
                raise RecipeError(f"file '{_label(path, self.graph.recipe_dir)}' needed by "
                                  "this step does not exist", location=step.params_location or step.location,
                                  key=f"steps.{step.base_id}.with") from None
        return digests

    def labels(self, step: StepNode) -> Dict[str, str]:
        """Input names -> paths as a person reads them (relative to the recipe)."""
        labels = dict(step.input_labels)
        for name, path in self.describe(step).inputs.items():
            labels.setdefault(name, _label(path, self.graph.recipe_dir))
        return labels

    def task_inputs(self, step: StepNode) -> Dict[str, Path]:
        """Declared and described input files, by name: what the Task gets."""
        inputs = dict(step.inputs)
        inputs.update({n: Path(p) for n, p in self.describe(step).inputs.items()})
        return inputs

    # --- keys -------------------------------------------------------------------------------
    def input_digests(self, step: StepNode) -> Dict[str, str]:
        digests = {}
        for name, path in step.inputs.items():
            try:
                digests[name] = path_digest(path, self.store.stat_cache).digest
            except FileNotFoundError:
                raise StepFailed(f"input '{step.input_labels.get(name, name)}' of step "
                                 f"'{step.id}' no longer exists") from None
        digests.update(self._describe(step)[1])
        return digests

    def upstream_path(self, up: str, name: str, entry: Mapping[str, Any]) -> Path:
        """Where an upstream output can be read now: the build directory, else the store."""
        step = self.graph.steps[up]
        path = self.build_dir / up / step.outputs[name]
        if path.exists() or entry.get("type") != "file":
            return path
        return self.store.blob_path(entry["digest"])

    def _upstream_digest(self, view: Optional[str], up: str, name: str,
                         entry: Mapping[str, Any]) -> str:
        """The digest of the view of an upstream output the step depends on (memoised per
        view and output digest)."""
        if view is None:
            return entry["digest"]
        memo_key = digest_json({"view": view, "digest": entry["digest"]})
        known = self.store.memo.get(VIEW_MEMO, memo_key)
        if isinstance(known, dict):
            return known.get("digest") or entry["digest"]
        function = import_object(view, what=f"upstream view '{view}'")
        derived = function(self.upstream_path(up, name, entry))
        self.store.memo.put(VIEW_MEMO, memo_key, {"digest": derived})
        return str(derived) if derived else entry["digest"]

    def parts(self, step: StepNode, upstream: Mapping[str, Optional[Mapping[str, Any]]]
              ) -> Dict[str, Any]:
        """Key parts; ``upstream`` maps each upstream id to its output manifest entries (None:
        it failed, for a step that tolerates that)."""
        description = self.describe(step)
        # an upstream given as None failed, and the step tolerates it (--keep-going): keyed
        from buildgraph.engine.executor import FAILED_UPSTREAM

        built = [up for up in step.upstream if upstream[up] is not None]
        for up in built:
            self._outputs[up] = {name: entry["digest"] for name, entry in upstream[up].items()}
        up_digests = {f"{up}.{name}": self._upstream_digest(description.upstream_view, up,
                                                            name, entry)
                      for up in built for name, entry in upstream[up].items()}
        up_digests.update({up: FAILED_UPSTREAM for up in step.upstream if up not in built})
        return self._make_parts(step, description, up_digests,
                                self.provenance(step) if description.provenance else None)

    def _make_parts(self, step: StepNode, description: Description,
                    up_digests: Mapping[str, str],
                    provenance: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        data = _jsonable(description.data)
        if description.provenance and provenance is not None:
            data["provenance"] = _jsonable(provenance)
        return make_parts(step.kind, step.executor_version, step.raw_params, step.outputs,
                          self.input_digests(step), up_digests,
                          {k: str(v) for k, v in description.env.items()},
                          self.graph.cache_salt, data,
                          {u: self.graph.steps[u].kind for u in step.upstream})

    def provenance(self, step: StepNode) -> Dict[str, Any]:
        """How the inputs of ``step`` were made (see ``Description.provenance``): the recipe
        file's digest, and per step it depends on its kind, key, upstream steps, environment,
        output digests and why it is not deterministic (when it is not). Known once every one of them is
        decided, which is when ``step`` itself can be."""
        steps: Dict[str, Any] = {}
        for sid in self.graph.select([step.id]):
            if sid == step.id:
                continue
            up = self.graph.steps[sid]
            description = self.describe(up)
            record: Dict[str, Any] = {"kind": up.kind, "key": self._keys.get(sid),
                                      "upstream": list(up.upstream),
                                      "env": {k: str(v) for k, v in description.env.items()},
                                      "outputs": dict(self._outputs.get(sid) or {})}
            if description.nondeterministic:
                record["nondeterministic"] = description.nondeterministic
            steps[sid] = record
        recipe = self.graph.recipe_path
        return {"recipe": {"name": self.graph.name, "file": recipe.name,
                           "digest": path_digest(recipe, self.store.stat_cache).digest},
                "steps": steps}

    def decide(self, step: StepNode,
               upstream: Optional[Mapping[str, Optional[Mapping[str, Any]]]]) -> Decision:
        """Decide one step; ``upstream`` is None when some upstream has yet to run."""
        previous = self.lock.get(step.id, {}).get("parts") if isinstance(
            self.lock.get(step.id), dict) else None
        description = self.describe(step)
        labels = self.labels(step)
        if upstream is None:
            reasons = ["upstream " + ", ".join(f"'{u}'" for u in step.upstream) + " may change"]
            if previous:
                partial = self._make_parts(step, description, previous.get("upstream", {}),
                                           (previous.get("data") or {}).get("provenance"))
                diff = explain_difference(previous, partial, labels)
                if diff != ["not in the cache (evicted, or built elsewhere)"]:
                    reasons = diff + reasons
            else:
                reasons = ["never built"]
            return Decision(step.id, WAITS, tuple(reasons), description=description)
        parts = self.parts(step, upstream)
        key = action_key(parts)
        self._keys[step.id] = key
        forced = []
        if step.id in self.force or step.base_id in self.force:
            forced.append("forced (--force)")
        if self.no_cache:
            forced.append("--no-cache")
        if not step.cache:
            forced.append("cache: false")
        if forced:
            return Decision(step.id, RUN, tuple(forced), key, parts, description=description)
        entry = self.store.get_action(key)
        if entry is not None and all(name in entry["outputs"] for name in step.outputs) and \
                all(self.store.check_output(entry["outputs"][name]) for name in step.outputs):
            stale = [name for name in step.outputs
                     if not self.store.is_materialized(entry["outputs"][name],
                                                       self.output_path(step, name))]
            if stale:
                return Decision(step.id, RESTORE,
                                tuple(f"output {n} missing or modified in the build directory"
                                      for n in stale), key, parts, entry, description)
            return Decision(step.id, CACHED, (), key, parts, entry, description)
        reasons = explain_difference(previous, parts, labels)
        if entry is not None:
            reasons = ["cached result is incomplete or corrupt"]
        if self.remote is not None:
            found = self.remote.lookup(key)
            if found.entry is not None and all(n in found.entry["outputs"]
                                               for n in step.outputs):
                return Decision(step.id, PULL, (found.reason,), key, parts, found.entry,
                                description)
            if found.reason:
                reasons.append(found.reason)
        return Decision(step.id, RUN, tuple(reasons), key, parts, description=description)

    def lock_differences(self, selected: List[str]) -> Dict[str, List[str]]:
        """Steps whose key differs from the lock file's, with the reasons (``run --frozen``).

        Each step is keyed as if its upstream outputs were those the lock records for it, so
        only the steps that changed themselves are named (a tool version, a source file, a
        parameter), not everything downstream of them; an upstream that rebuilds to other
        bytes is caught when it has run."""
        differences: Dict[str, List[str]] = {}
        for sid in selected:
            step = self.graph.steps[sid]
            entry = self.lock.get(sid)
            previous = entry.get("parts") if isinstance(entry, dict) else None
            if not isinstance(previous, dict):
                differences[sid] = ["not in the lock file"]
                continue
            parts = self._make_parts(step, self.describe(step), previous.get("upstream") or {},
                                     (previous.get("data") or {}).get("provenance"))
            if action_key(parts) != entry.get("key"):
                differences[sid] = explain_difference(previous, parts, self.labels(step))
        return differences

    def plan(self, selected: List[str]) -> Dict[str, Decision]:
        """Decisions for ``selected`` (topological order), as if nothing ran in between."""
        decisions: Dict[str, Decision] = {}
        outputs: Dict[str, Dict[str, Any]] = {}
        pulled: Set[str] = set()
        self.describe_all(selected)
        for sid in selected:
            step = self.graph.steps[sid]
            known = all(up in outputs for up in step.upstream)
            if known and self.describe(step).upstream_view and pulled & set(step.upstream):
                # its key reads an upstream file that is still in the team cache
                known = all(self._view_known(step, up, outputs[up]) for up in step.upstream)
            decision = self.decide(step, {u: outputs[u] for u in step.upstream} if known else None)
            decisions[sid] = decision
            if decision.action in (CACHED, RESTORE, PULL) and decision.entry is not None:
                outputs[sid] = {n: decision.entry["outputs"][n] for n in step.outputs}
            if decision.action == PULL:
                pulled.add(sid)
        return decisions

    def _view_known(self, step: StepNode, up: str, entries: Mapping[str, Any]) -> bool:
        """Can the view of ``up``'s outputs be had without the files (memoised, or here)?"""
        view = self.describe(step).upstream_view
        for name, entry in entries.items():
            if self.store.memo.get(VIEW_MEMO, digest_json({"view": view,
                                                           "digest": entry["digest"]})) is None \
                    and not self.upstream_path(up, name, entry).exists():
                return False
        return True


def _label(path: Path, base: Path) -> str:
    """A label for a path: relative to the recipe, else to the working directory."""
    resolved = Path(path).resolve()
    for root in (base.resolve(), Path.cwd().resolve()):
        try:
            return str(resolved.relative_to(root))
        except ValueError:
            continue
    return str(path)


def _jsonable(data: Mapping[str, Any]) -> Dict[str, Any]:
    """Description data as it round-trips through JSON (tuples become lists), so that a
    memoised description and a fresh one give the same key."""
    if not data:
        return {}
    import json

    return json.loads(json.dumps(dict(data), sort_keys=True, default=str))
