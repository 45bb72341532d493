"""What the PyTorch/ONNX step kinds share: the ``model:`` parameter, its key inputs, the
fingerprint of tool versions, and loading the model inside a worker.

Nothing here imports torch at module level: the recipe loader imports executor classes to
validate parameters, and ``import buildgraph`` + ``buildgraph plan`` must stay light.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field

from buildgraph.backends.torch import model as torchmodel
from buildgraph.errors import StepFailed, did_you_mean
from buildgraph.engine.executor import Executor, ResolveContext, Task


class StrictParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(StrictParams):
    model: str = Field(description="name of a model in the recipe's 'models:' section")


class Timed:
    """Records the time of library calls by phase (see ``seconds``)."""

    @property
    def seconds(self) -> Dict[str, float]:
        """Time spent in library calls, by phase (returned as metadata ``seconds``): the step's
        wall time minus their sum is buildgraph's overhead."""
        if not hasattr(self, "_seconds"):
            self._seconds: Dict[str, float] = {}
        return self._seconds

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = round(self.seconds.get(phase, 0.0)
                                        + time.perf_counter() - start, 4)


class ModelExecutor(Timed, Executor):
    """Base of the step kinds that build a model from the recipe's ``models:`` section."""

    isolation = "worker"
    dists: ClassVar[Tuple[str, ...]] = ("torch",)
    needs_inputs: ClassVar[bool] = True

    def fingerprint(self, params: Dict[str, Any]) -> Dict[str, str]:
        versions = torchmodel.package_versions(*self.dists)
        versions["python"] = "%d.%d" % sys.version_info[:2]
        return versions

    def extra_inputs(self, params: Any, ctx: ResolveContext) -> Dict[str, Path]:
        return torchmodel.model_extra_inputs(params.model, ctx.models, ctx.recipe_dir,
                                             need_inputs=self.needs_inputs)

    def key_data(self, params: Any, ctx: ResolveContext) -> Dict[str, Any]:
        return torchmodel.model_key_data(params.model, ctx.models, ctx.recipe_dir)

    # --- run-time helpers -------------------------------------------------------------------
    def params(self, task: Task) -> Any:
        assert self.Params is not None
        return self.Params.model_validate(task.params)

    def import_torch(self) -> Any:
        """``torch``; its import time is recorded when this worker had not imported it."""
        import_torch(self.seconds)
        import torch

        return torch

    def model(self, task: Task, name: str) -> Tuple[Dict[str, Any], Any]:
        """(model spec, the model in eval mode), with the step's CPU slots applied.

        A persistent worker keeps the last models it built and hands out deep copies: the
        steps of one recipe build the same model several times, and copying is several times
        cheaper than running the factory and its initialisation again."""
        import_torch(self.seconds)
        torchmodel.set_threads(task.threads)
        spec = torchmodel.model_spec(task.models, name)
        with self.timed("load_model"):
            return spec, _memo_model(task, name, spec)

_MODELS: "OrderedDict[str, Any]" = OrderedDict()
_MEMO_SIZE = 2


def _memo_model(task: Task, name: str, spec: Dict[str, Any]) -> Any:
    import copy
    import json
    import os

    if torchmodel.source_kind(spec["source"]) == "file":
        return torchmodel.load_model(name, spec, task.recipe_dir)  # scripted/exported: no copy
    files = sorted((str(p), os.stat(p).st_mtime_ns, os.stat(p).st_size)
                   for k, p in task.inputs.items() if k.startswith(f"model:{name}:"))
    key = json.dumps([str(task.recipe_dir), name, spec, files], sort_keys=True, default=str)
    cached = _MODELS.get(key)
    if cached is not None:
        try:
            import torch

            torch.manual_seed(int(spec.get("seed", 0)))  # same global RNG state as a build
            model = copy.deepcopy(cached)
            _MODELS.move_to_end(key)
            return model
        except Exception:  # noqa: BLE001 - a module that cannot be copied is built again
            _MODELS.pop(key, None)
    model = torchmodel.load_model(name, spec, task.recipe_dir)
    try:
        _MODELS[key] = copy.deepcopy(model)
        while len(_MODELS) > _MEMO_SIZE:
            _MODELS.popitem(last=False)
    except Exception:  # noqa: BLE001
        pass
    return model


def import_torch(seconds: Dict[str, float]) -> None:
    """Import torch, recording the time when this worker had not imported it yet."""
    if "torch" in sys.modules:
        return
    start = time.perf_counter()
    import torch  # noqa: F401

    seconds["import"] = round(time.perf_counter() - start, 4)


def artifact_of(task: Task, step: str) -> Path:
    """The model file an upstream step produced: its output named ``model``, else its only
    output, else the one whose name ends like a model file."""
    outs = task.upstream[step]
    if "model" in outs:
        return outs["model"]
    if len(outs) == 1:
        return next(iter(outs.values()))
    suffixes = (".onnx", ".pt2", ".ts", ".pt", ".pth", ".so", ".engine", ".plan")
    found = [p for p in outs.values() if str(p).endswith(suffixes)]
    if len(found) == 1:
        return found[0]
    raise StepFailed(f"cannot tell which output of step '{step}' is the model: it has "
                     + ", ".join(outs) + " (name the model output 'model')")


def single_upstream(task: Task, what: str) -> str:
    if len(task.upstream) != 1:
        have = ", ".join(task.upstream) or "none"
        raise StepFailed(f"{what} takes exactly one upstream step (from: STEP); got {have}")
    return next(iter(task.upstream))


def write_json(path: Path, data: Any) -> None:
    import json

    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n",
                    encoding="utf-8")


def check_names(kind: str, given: Optional[List[str]], known: List[str], what: str) -> None:
    for name in given or []:
        if name not in known:
            raise StepFailed(f"{kind}: unknown {what} '{name}'{did_you_mean(name, known)}")


def out_path(task: Task, name: str = "model") -> Path:
    try:
        return task.outputs[name]
    except KeyError:
        raise StepFailed(f"this step must declare an output named '{name}' (declared: "
                         + ", ".join(task.outputs) + ")") from None


def meta_file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0

