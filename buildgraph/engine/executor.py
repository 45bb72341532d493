"""The executor interface and the lazy registry of step kinds.

An executor wraps one tool (a shell command, torch.onnx.export, the TensorRT builder...). Its
interface is small and stable:

* ``kind`` and ``version`` (bump ``version`` whenever the executor's output may change: it is
  part of every action key);
* ``Params``: a pydantic model validating the step's ``with:`` block;
* ``describe(params, ctx) -> Description``: everything the step adds to its action key beyond
  its params, declared files and upstream outputs: files it reads that the recipe does not
  name, settings from outside ``with:`` (its model), the environment that can change the result
  (tool versions, target, GPU), whether that environment must be re-read at every plan, which
  view of an upstream output counts, and the shared record areas it uses. Only the planner calls
  it, and memoises it through the store;
* ``run(task)``: do the work, write the declared outputs under ``task.outputs``, optionally return
  JSON-able metadata (node counts, errors measured) that is stored with the result. A check
  against upstream files (TensorRT profiles against the ONNX inputs) is the first thing ``run``
  does: a RecipeError raised there is reported with the step's file and line.

A :class:`Task` holds only what is keyed: every field ``run`` can read is part of the action key
or derived from it, except the execution context listed in ``Task.CONTEXT_FIELDS`` (where to
log, scratch space, thread count), which by contract does not change the result.

Executors never touch the store or the lock file. The registry maps kinds to ``"module:Class"``
strings and imports a module only when a recipe uses that kind (doit's plugin pattern), so
``import buildgraph`` stays light. Third-party packages add kinds through the
``buildgraph.executors`` entry-point group.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Mapping, Optional, Tuple, Type, Union

from buildgraph.errors import BuildgraphError, StepFailed
from buildgraph.registry import STEP_KINDS, import_object

# Helpers for step kinds that lived here before the interface was split from them; modules
# written since import them from where they live (engine/artifacts, engine/timed).
from buildgraph.engine.artifacts import (MODEL_SUFFIXES, artifact_of, find_artifact,  # noqa: F401,E402
                                         model_spec, out_path, single_upstream, write_json)
from buildgraph.engine.timed import Timed  # noqa: F401,E402

if TYPE_CHECKING:  # pragma: no cover
    from pydantic import BaseModel

ENTRY_POINT_GROUP = "buildgraph.executors"

BUILTIN_KINDS: Dict[str, str] = STEP_KINDS
"""Step kind -> ``"module:Class"``: the table is :data:`buildgraph.registry.STEP_KINDS`."""

NONDETERMINISTIC_KINDS: Dict[str, str] = {
    "benchmark": "timings: every run measures this machine anew",
}
"""Built-in kinds known not to give the same bytes from the same inputs whose classes do not
say so themselves (``Executor.nondeterministic``); a kind's own attribute wins."""


def nondeterminism(cls: Type["Executor"], description: "Description") -> str:
    """Why a step of ``cls`` with ``description`` is not deterministic, or ""."""
    return description.nondeterministic or cls.nondeterministic or \
        NONDETERMINISTIC_KINDS.get(cls.kind, "")


def no_params_model() -> "Type[BaseModel]":
    """The Params of a kind that takes none: an empty model that rejects every key."""
    global _no_params
    if _no_params is None:
        from buildgraph.engine.params import StrictParams

        class NoParams(StrictParams):
            pass

        _no_params = NoParams
    return _no_params


_no_params: Any = None


@dataclass(frozen=True)
class DescribeContext:
    """What ``describe`` may look at: the recipe's directory and models, and the step's place
    in the graph. No I/O beyond it, except reading the files a description names."""

    recipe_dir: Path
    models: Mapping[str, Any] = field(default_factory=dict)
    """The recipe's models (name -> spec as plain data); a step picks its own."""
    upstream_kinds: Mapping[str, str] = field(default_factory=dict)
    """Each upstream step id -> its kind."""
    step_id: str = ""


@dataclass(frozen=True)
class Description:
    """Everything a step contributes to its action key beyond its kind, version, ``with:``
    block, declared files and upstream outputs (Bazel's "all that can change a result")."""

    inputs: Mapping[str, Path] = field(default_factory=dict)
    """Files the step reads that the recipe does not name (model source code, weights,
    calibration data, plugins); keyed by content."""
    data: Mapping[str, Any] = field(default_factory=dict)
    """Settings from outside ``with:`` as JSON data (the model the step builds: source, kwargs,
    seed, inputs). Keyed, and handed to ``run`` as ``task.data``: the only way such settings
    reach the executor."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Tool versions, target, GPU: what outside the recipe can change the result."""
    volatile: bool = False
    """True when ``env`` reads something that can change without the Python environment
    changing (the GPU present, a compiler appearing on PATH): the planner then describes the
    step again at every plan instead of reusing the memoised description."""
    watch: Tuple[str, ...] = ()
    """What a volatile description read, when it can name it all: ``$NAME`` for an environment
    variable, else a path (a folder's signature changes when a file in it appears or goes).
    It is still described again at every full plan; naming what it read lets a repeated no-op
    run be answered from its stamp (``engine/noop.py``), which a volatile description without
    ``watch`` prevents."""
    upstream_view: Optional[str] = None
    """``"module:function"``: ``function(path) -> str | None`` gives the digest of the part of an
    upstream output this step depends on (a weight-agnostic TensorRT build keys an ONNX model by
    its structure); None from the function, or no view, keys the whole output."""
    areas: Tuple[str, ...] = ()
    """Shared record areas of the store the step reads and adds to (``tvm-tunedb``,
    ``trt-timing``). They are outside the key on purpose: records make a build faster, not
    different (or the step keys what it used, as ``timing_cache: pinned`` does)."""
    nondeterministic: str = ""
    """Why this step's output bytes may differ between two runs with the same key (tuning by
    timing, a benchmark), or "" when the same inputs give the same bytes. Not keyed: it says
    what to expect, it does not change a result. ``buildgraph repro`` compares such a step's
    outputs by their numbers instead of their bytes, and a release manifest names it."""
    provenance: bool = False
    """The step records how its inputs were made (a release manifest): the planner adds to its
    key data, as ``data["provenance"]``, the recipe file's digest and, for every step it
    depends on (transitively), its kind, action key, environment and output digests, and why
    it is not deterministic if it is not."""

    def as_json(self) -> Dict[str, Any]:
        return {"inputs": {k: str(v) for k, v in self.inputs.items()},
                "data": dict(self.data), "env": {k: str(v) for k, v in self.env.items()},
                "volatile": self.volatile, "watch": list(self.watch),
                "upstream_view": self.upstream_view,
                "areas": list(self.areas), "nondeterministic": self.nondeterministic,
                "provenance": self.provenance}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Description":
        return cls(inputs={k: Path(v) for k, v in data.get("inputs", {}).items()},
                   data=dict(data.get("data") or {}), env=dict(data.get("env") or {}),
                   volatile=bool(data.get("volatile")), watch=tuple(data.get("watch") or ()),
                   upstream_view=data.get("upstream_view"),
                   areas=tuple(data.get("areas") or ()),
                   nondeterministic=str(data.get("nondeterministic") or ""),
                   provenance=bool(data.get("provenance")))


FAILED_UPSTREAM = "failed upstream"
"""The key's entry for an upstream step that failed, of a step that tolerates it (in place of
its output digests): the step keys which of its inputs it ran without."""


@dataclass
class Task:
    """Everything ``Executor.run`` gets. Picklable: it crosses into worker processes.

    Keyed fields (see ``KEYED_FIELDS``): ``params`` (the ``with:`` block, with ``${in.*}`` and
    ``${out.*}`` expanded to paths), ``inputs`` (declared and described files, by name),
    ``upstream`` (each upstream step id -> its outputs), ``upstream_kinds``, ``outputs`` (each
    declared output -> the path the executor must create), ``data`` and ``env`` (from the
    step's :class:`Description`). The rest is execution context that must not change the
    result: where to log, scratch space, how many CPU slots were granted, the shared record
    areas handed out by the store.
    """

    kind: str
    params: Dict[str, Any]
    inputs: Dict[str, Path]
    upstream: Dict[str, Dict[str, Path]]
    outputs: Dict[str, Path]
    upstream_kinds: Dict[str, str] = field(default_factory=dict)
    data: Dict[str, Any] = field(default_factory=dict)
    env: Dict[str, str] = field(default_factory=dict)
    # --- execution context -------------------------------------------------------------------
    step_id: str = ""
    work_dir: Path = Path(".")
    recipe_dir: Path = Path(".")
    log_path: Path = Path("step.log")
    threads: int = 1
    timeout: Optional[float] = None
    areas: Dict[str, Path] = field(default_factory=dict)
    untrusted: Tuple[str, ...] = ()
    """Upstream output paths pulled from the team cache without a trusted signature: never
    unpickled as code (see :mod:`buildgraph.engine.origin`)."""

    KEYED_FIELDS: ClassVar[Dict[str, str]] = {
        "kind": "kind", "params": "params", "inputs": "inputs", "upstream": "upstream",
        "outputs": "outputs", "upstream_kinds": "upstream_kinds", "data": "data", "env": "env"}
    """Task field -> the key part it comes from."""
    CONTEXT_FIELDS: ClassVar[Tuple[str, ...]] = (
        "step_id", "work_dir", "recipe_dir", "log_path", "threads", "timeout", "areas",
        "untrusted")
    """Fields deliberately outside the key: they cannot change a result (a step id only names
    things in messages; ``recipe_dir`` resolves paths whose contents are keyed; areas hold
    records that make a build faster, not different; ``untrusted`` can only refuse a load,
never change what a loaded file computes)."""

    def log(self, message: str) -> None:
        """Append one line to the step's log (kept under the build directory)."""
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(message.rstrip("\n") + "\n")



def task_fields() -> Tuple[str, ...]:
    return tuple(f.name for f in fields(Task))


class Executor:
    """Base class of step kinds. Subclasses set the class attributes and implement ``run``."""

    kind: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Params: ClassVar[Optional[Type["BaseModel"]]] = None
    """pydantic model of the ``with:`` block (None: the kind takes no parameters)."""
    outputs: ClassVar[Dict[str, str]] = {}
    """Default outputs (name -> file name) when the recipe declares none."""
    resources: ClassVar[Dict[str, Union[int, str]]] = {}
    """Default pools held while running, e.g. ``{"gpu": 1}``; the recipe may override."""
    isolation: ClassVar[str] = "thread"
    """``"thread"``: run in the engine process (the executor spawns its own processes);
    ``"worker"``: run in a persistent worker process, so a crash fails one step only."""
    fresh_worker: ClassVar[bool] = False
    """With ``isolation = "worker"``: run in a worker that has run nothing before and is not
    reused, for a library whose output depends on process-wide counters (TensorFlow names
    each traced function from one, so a SavedModel exported after other TensorFlow work in
    the same process has other bytes). Costs the library's import in that worker."""
    expand_params: ClassVar[bool] = True
    """Substitute ``${in.*}``/``${out.*}`` in string params before ``run`` (shell does its own,
    with quoting)."""
    nondeterministic: ClassVar[str] = ""
    """Why the same inputs can give other bytes, for every step of this kind ("" when they
    cannot); a description may say it for one step only (see ``Description.nondeterministic``)."""
    tolerates_failed_upstream: ClassVar[bool] = False
    """Under ``--keep-going``, run this step when some upstream steps failed instead of
    skipping it (verify, benchmark, release: one failed candidate must not hide the others).
    The failed ones are absent from ``task.upstream`` but present in ``task.upstream_kinds``,
    and keyed as :data:`FAILED_UPSTREAM`."""

    def describe(self, params: Any, ctx: DescribeContext) -> Description:
        """What this step adds to its key beyond its params (see :class:`Description`).

        ``params`` is the validated Params instance. Must be cheap and must not import heavy
        libraries (use ``importlib.metadata.version``). Raise RecipeError for a bad reference;
        the planner adds the step's file and line."""
        return Description()

    def run(self, task: Task) -> Optional[Dict[str, Any]]:  # pragma: no cover - interface
        raise NotImplementedError


def jsonable_meta(meta: Any) -> Any:
    """An executor's metadata as an action entry stores it: as is when it is JSON, else with
    what JSON cannot hold written as text (paths, numpy scalars)."""
    import json

    try:
        json.dumps(meta)
        return meta
    except (TypeError, ValueError):
        return json.loads(json.dumps(meta, default=str))


_cache: Dict[str, Type[Executor]] = {}
_entry_points: Optional[Dict[str, str]] = None


def _plugin_kinds() -> Dict[str, str]:
    global _entry_points
    if _entry_points is None:
        from importlib.metadata import entry_points

        _entry_points = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return _entry_points


def known_kinds() -> Dict[str, str]:
    """All step kinds: built-ins and those of installed plugins, ``kind -> "module:Class"``."""
    kinds = dict(_plugin_kinds())
    kinds.update(BUILTIN_KINDS)
    return dict(sorted(kinds.items()))


def is_known(kind: str) -> bool:
    return kind in BUILTIN_KINDS or kind in _plugin_kinds()


def load_executor(kind: str) -> Type[Executor]:
    """Import the executor class of ``kind`` (once per process)."""
    cls = _cache.get(kind)
    if cls is not None:
        return cls
    target = BUILTIN_KINDS.get(kind) or _plugin_kinds().get(kind)
    if target is None:
        raise KeyError(kind)
    cls = import_object(target, what=f"step kind '{kind}'")
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        raise BuildgraphError(f"step kind '{kind}' points at {target}, which is not an "
                              "Executor subclass")
    _cache[kind] = cls
    return cls


__all__ = ["Executor", "Task", "Description", "DescribeContext", "no_params_model", "StepFailed", "known_kinds",
           "load_executor", "is_known", "BUILTIN_KINDS", "ENTRY_POINT_GROUP"]
