"""The executor interface and the lazy registry of step kinds.

An executor wraps one tool (a shell command, torch.onnx.export, the TensorRT builder...). Its
interface is deliberately small and stable:

* ``kind`` and ``version`` (bump ``version`` whenever the executor's output may change: it is
  part of every action key);
* ``Params``: a pydantic model validating the step's ``with:`` block;
* ``fingerprint(params)``: the environment that can change the result (tool versions, target,
  GPU); it must be cheap and must not import heavy libraries;
* ``extra_inputs(params, ctx)``: files that are inputs without being named in the recipe, such as
  the source code of a model;
* ``run(task)``: do the work, write the declared outputs under ``task.outputs``, optionally return
  JSON-able metadata (node counts, errors measured) that is stored with the result.

Executors never touch the store or the lock file. The registry maps kinds to ``"module:Class"``
strings and imports a module only when a recipe uses that kind (doit's plugin pattern), so
``import buildgraph`` stays light. Third-party packages add kinds through the
``buildgraph.executors`` entry-point group.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Mapping, Optional, Tuple, Type, Union

from buildgraph.errors import BuildgraphError, StepFailed

if TYPE_CHECKING:  # pragma: no cover
    from pydantic import BaseModel

ENTRY_POINT_GROUP = "buildgraph.executors"

# One block per area so that each can be edited on its own.
_GENERIC_KINDS: Dict[str, str] = {
    "shell": "buildgraph.backends.generic.shell:ShellExecutor",
    "python": "buildgraph.backends.generic.python:PythonExecutor",
}
_TORCH_KINDS: Dict[str, str] = {
    "torch.save": "buildgraph.backends.torch.save:TorchSaveExecutor",
    "torchscript": "buildgraph.backends.torch.torchscript:TorchScriptExecutor",
    "torch.export": "buildgraph.backends.torch.export:TorchExportExecutor",
    "onnx.export": "buildgraph.backends.torch.onnx_export:OnnxExportExecutor",
    "onnx.simplify": "buildgraph.backends.onnx.simplify:OnnxSimplifyExecutor",
    "verify": "buildgraph.backends.evaluate.verify:VerifyExecutor",
    "benchmark": "buildgraph.backends.evaluate.benchmark:BenchmarkExecutor",
    "release": "buildgraph.backends.evaluate.benchmark:ReleaseExecutor",
}
_TVM_KINDS: Dict[str, str] = {
    "tvm.compile": "buildgraph.backends.tvm.compile:TvmCompileExecutor",
    "tvm.tune": "buildgraph.backends.tvm.tune:TvmTuneExecutor",
}
_TENSORRT_KINDS: Dict[str, str] = {
    "tensorrt.build": "buildgraph.backends.tensorrt.build:TensorRTBuildExecutor",
    "tensorrt.refit": "buildgraph.backends.tensorrt.refit:TensorRTRefitExecutor",
    "trtexec": "buildgraph.backends.tensorrt.trtexec:TrtexecExecutor",
    "onnx.autocast": "buildgraph.backends.onnx.precision:AutocastExecutor",
    "onnx.quantize": "buildgraph.backends.onnx.precision:QuantizeExecutor",
}
BUILTIN_KINDS: Dict[str, str] = {**_GENERIC_KINDS, **_TORCH_KINDS, **_TVM_KINDS,
                                 **_TENSORRT_KINDS}


def no_params_model() -> "Type[BaseModel]":
    """The Params of a kind that takes none: an empty model that rejects every key."""
    global _no_params
    if _no_params is None:
        from pydantic import BaseModel, ConfigDict

        class NoParams(BaseModel):
            model_config = ConfigDict(extra="forbid", frozen=True)

        _no_params = NoParams
    return _no_params


_no_params: Any = None


@dataclass(frozen=True)
class ResolveContext:
    """What an executor may look at while the recipe is being resolved (no I/O beyond it)."""

    recipe_dir: Path
    models: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Task:
    """Everything ``Executor.run`` gets. Picklable: it crosses into worker processes.

    ``inputs`` maps the names of the step's declared files and of its extra inputs to paths;
    ``upstream`` maps each upstream step id to its outputs; ``outputs`` maps each declared
    output to the path the executor must create (file or directory); ``threads`` is how many
    CPU slots the scheduler granted.
    """

    step_id: str
    kind: str
    params: Dict[str, Any]
    inputs: Dict[str, Path]
    upstream: Dict[str, Dict[str, Path]]
    outputs: Dict[str, Path]
    work_dir: Path
    recipe_dir: Path
    log_path: Path
    threads: int = 1
    models: Dict[str, Any] = field(default_factory=dict)
    upstream_meta: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    upstream_kinds: Dict[str, str] = field(default_factory=dict)
    timeout: Optional[float] = None
    cache_dir: Optional[Path] = None
    """The cache directory (absolute), for executors that keep shared records there
    (TVM tuning databases, TensorRT timing caches)."""

    def log(self, message: str) -> None:
        """Append one line to the step's log (kept under the build directory)."""
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(message.rstrip("\n") + "\n")


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
    expand_params: ClassVar[bool] = True
    """Substitute ``${in.*}``/``${out.*}`` in string params before ``run`` (shell does its own,
    with quoting)."""

    volatile_fingerprint: ClassVar[bool] = False
    """True when ``fingerprint`` reads something that can change between runs without the
    Python environment changing (the GPU in the machine): it is then recomputed at every plan
    instead of being cached with the resolved recipe."""

    def fingerprint_is_volatile(self, params: Dict[str, Any]) -> bool:
        """Whether this step's fingerprint must be recomputed at every plan (default: the
        class's ``volatile_fingerprint``); e.g. only a CUDA target without an explicit arch
        depends on the GPU present. This host's CPU and Python environment are covered by the
        resolved-recipe cache already."""
        return self.volatile_fingerprint

    def fingerprint(self, params: Dict[str, Any]) -> Dict[str, str]:
        """Versions and settings outside the params that can change the result.

        ``params`` is the validated ``with:`` block as plain data. Must be cheap and must not
        import heavy libraries (use ``importlib.metadata.version``)."""
        return {}

    def extra_inputs(self, params: Any, ctx: ResolveContext) -> Dict[str, Path]:
        """Files this step reads beyond its declared inputs (model source code, weights).

        ``params`` is the validated Params instance. Raise RecipeError for bad references."""
        return {}

    def key_data(self, params: Any, ctx: ResolveContext) -> Dict[str, Any]:
        """Settings from outside the step's ``with:`` that change its result, as JSON data
        (e.g. the recipe model a step builds: its kwargs, seed, example inputs). They enter the
        action key, and ``plan`` shows a change in them as a diff. Called when the recipe loads.
        """
        return {}

    def run(self, task: Task) -> Optional[Dict[str, Any]]:  # pragma: no cover - interface
        raise NotImplementedError


OPTIONAL_HOOKS = ("check_upstream", "upstream_digest")
"""Methods an executor may define, called by the planner once upstream outputs exist:

* ``check_upstream(params, upstream, models) -> None``: validate the step against its upstream
  files (e.g. TensorRT profiles against the ONNX model's inputs); raise RecipeError, and the
  planner attaches the step's file and line;
* ``upstream_digest(params, output, path, digest) -> str``: the digest of an upstream output
  that enters this step's key, when the executor depends on only part of it (a weight-agnostic
  TensorRT build keys an ONNX model by its structure). Results are memoised per digest.
"""


def implemented_hooks(cls: Type[Executor]) -> Tuple[str, ...]:
    return tuple(h for h in OPTIONAL_HOOKS if callable(getattr(cls, h, None)))


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


def import_object(target: str, what: str) -> Any:
    """Import ``"module:attr"``; a failure names the plugin, not just the module."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr) if attr else module
    except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
        raise BuildgraphError(f"cannot load {what} from '{target}': {type(exc).__name__}: {exc}",
                              hint="is the package that provides it installed in this "
                                   "environment?") from None


__all__ = ["Executor", "Task", "ResolveContext", "no_params_model", "StepFailed", "known_kinds",
           "load_executor", "is_known", "BUILTIN_KINDS", "ENTRY_POINT_GROUP"]
