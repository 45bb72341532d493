"""What the PyTorch/ONNX step kinds share: the ``model:`` parameter, its description (the
model's files and settings, tool versions), and loading the model inside a worker.

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

from pydantic import Field

from buildgraph.backends.torch import model as torchmodel
from buildgraph.errors import StepFailed, did_you_mean
from buildgraph.engine.environment import package_versions
from buildgraph.engine.params import StrictParams
from buildgraph.engine.executor import (DescribeContext, Description, Executor, Task, Timed,  # noqa: F401
                                       artifact_of, out_path, single_upstream, write_json)


class ModelParams(StrictParams):
    model: str = Field(description="name of a model in the recipe's 'models:' section")


class ModelExecutor(Timed, Executor):
    """Base of the step kinds that build a model from the recipe's ``models:`` section."""

    isolation = "worker"
    dists: ClassVar[Tuple[str, ...]] = ("torch",)
    needs_inputs: ClassVar[bool] = True

    def describe(self, params: Any, ctx: DescribeContext) -> Description:
        """The model's files (source code and its local imports, weights, samples) and
        settings (kwargs, seed, inputs, dims, installed packages it comes from), and the
        versions of the libraries this kind calls."""
        check_torch_model(params.model, ctx, self.kind)
        return describe_model(params.model, ctx, self.dists, need_inputs=self.needs_inputs)

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
        spec = model_spec_of(task, name)
        with self.timed("load_model"):
            return spec, _memo_model(task, name, spec)

def check_torch_model(name: str, ctx: DescribeContext, kind: str) -> None:
    """A PyTorch step kind given an ONNX or TensorFlow model says which kinds take it."""
    from buildgraph.backends.onnx.modelspec import model_framework
    from buildgraph.errors import RecipeError

    spec = torchmodel.model_spec(ctx.models, name)
    framework = model_framework(spec, ctx.recipe_dir)
    if framework == "onnx":
        raise RecipeError(f"{kind} takes a PyTorch model; model '{name}' is an ONNX file",
                          hint="onnx.simplify, onnx.autocast, onnx.quantize, tvm.compile, "
                               "tvm.tune and tensorrt.build take it directly (with: {model: "
                               f"{name}}}); verify and benchmark run it on onnxruntime")
    if framework == "tensorflow":
        raise RecipeError(f"{kind} takes a PyTorch model; model '{name}' is a TensorFlow "
                          "model", hint="keras.export and tf2onnx.convert take it; verify "
                                        "and benchmark run it on TensorFlow")


def describe_model(name: str, ctx: DescribeContext, dists: Tuple[str, ...] = ("torch",),
                   need_inputs: bool = True) -> Description:
    """The description of a step built from recipe model ``name`` (see ``ModelExecutor``)."""
    env = package_versions(*dists)
    env["python"] = "%d.%d" % sys.version_info[:2]
    return Description(
        inputs=torchmodel.model_extra_inputs(name, ctx.models, ctx.recipe_dir,
                                             need_inputs=need_inputs),
        data=torchmodel.model_key_data(name, ctx.models, ctx.recipe_dir), env=env)


def model_spec_of(task: Task, name: Optional[str] = None) -> Dict[str, Any]:
    """The resolved spec of the model a step builds, from its keyed description data (a step
    never sees the recipe's other models)."""
    data = task.data.get("model")
    if not isinstance(data, dict) or (name is not None and data.get("name") != name):
        raise StepFailed(f"step '{task.step_id}' was not described with model '{name}'")
    spec = dict(data["spec"])
    spec["inputs"] = {k: v for k, v in data.get("inputs") or []}
    return spec


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


def check_names(kind: str, given: Optional[List[str]], known: List[str], what: str) -> None:
    for name in given or []:
        if name not in known:
            raise StepFailed(f"{kind}: unknown {what} '{name}'{did_you_mean(name, known)}")


def meta_file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0

