"""What the PyTorch/ONNX step kinds share: the ``model:`` parameter, its key inputs, the
fingerprint of tool versions, and loading the model inside a worker.

Nothing here imports torch at module level: the recipe loader imports executor classes to
validate parameters, and ``import buildgraph`` + ``buildgraph plan`` must stay light.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field

from .. import torchmodel
from ..errors import StepFailed, did_you_mean
from . import Executor, ResolveContext, Task


class StrictParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(StrictParams):
    model: str = Field(description="name of a model in the recipe's 'models:' section")


class ModelExecutor(Executor):
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

    # --- run-time helpers -------------------------------------------------------------------
    def params(self, task: Task) -> Any:
        assert self.Params is not None
        return self.Params.model_validate(task.params)

    def model(self, task: Task, name: str) -> Tuple[Dict[str, Any], Any]:
        """(model spec, the model in eval mode), with the step's CPU slots applied."""
        torchmodel.set_threads(task.threads)
        spec = torchmodel.model_spec(task.models, name)
        return spec, torchmodel.load_model(name, spec, task.recipe_dir)


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

