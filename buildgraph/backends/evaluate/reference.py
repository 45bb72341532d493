"""The model's own reference, whatever framework it comes from, for ``verify`` and
``benchmark``.

* a PyTorch model: the model in eager PyTorch, fp32 (``torch.eager``); example inputs drawn
  with torch's generator;
* an ONNX file: the file on onnxruntime's CPU provider in fp32 with every graph optimization
  off (``onnxruntime.fp32``); example inputs drawn with numpy's;
* a TensorFlow/Keras model: the model in TensorFlow (``tensorflow``); numpy inputs.

``verify``'s ``reference: STEP`` replaces the model by an upstream step's artifact on its own
runtime (an ONNX file on onnxruntime as the reference of a TensorRT engine, as Polygraphy
does); the inputs are still the model's.

:func:`describe_model_any` is the description of a step that reads a model of any framework
(PyTorch models keep exactly the description they always had).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from buildgraph.backends.onnx import modelspec
from buildgraph.backends.onnx.source import describe_onnx_source, model_spec
from buildgraph.engine.environment import package_versions
from buildgraph.engine.executor import DescribeContext, Description
from buildgraph.errors import StepFailed

REFERENCE_DISTS = {"onnx": ("onnx", "onnxruntime", "numpy"),
                   "tensorflow": ("numpy",)}
"""Libraries an ONNX or TensorFlow model's reference needs (TensorFlow's own versions come
from :func:`buildgraph.backends.tensorflow.model_key.tf_versions`)."""


def describe_model_any(name: str, ctx: DescribeContext, torch_dists: Tuple[str, ...],
                       need_inputs: bool = True) -> Description:
    """The description of a step that runs model ``name`` as a reference: a PyTorch model's
    as it always was (``torch_dists``' versions), an ONNX file's (the file, its external
    data, inputs from the graph; onnx and onnxruntime versions) or a TensorFlow model's (its
    files and inputs; TensorFlow and Keras versions)."""
    spec = model_spec(ctx.models, name)
    framework = modelspec.model_framework(spec, ctx.recipe_dir)
    if framework == "torch":
        from buildgraph.backends.torch.base import describe_model

        return describe_model(name, ctx, torch_dists, need_inputs=need_inputs)
    if framework == "onnx":
        files, data = describe_onnx_source(name, ctx.models, ctx.recipe_dir)
        env = package_versions(*REFERENCE_DISTS["onnx"])
    else:
        from buildgraph.backends.tensorflow.model_key import describe_tf_source, tf_versions

        files, data = describe_tf_source(name, ctx.models, ctx.recipe_dir,
                                         need_inputs=need_inputs)
        env = {**tf_versions(), **package_versions(*REFERENCE_DISTS["tensorflow"])}
    env["python"] = "%d.%d" % sys.version_info[:2]
    return Description(inputs=files, data=data, env=env)


def with_env(description: Description, **env: str) -> Description:
    return replace(description, env={**description.env, **env})


class Reference:
    """The model a step compares against: its example inputs (in the framework's own form:
    torch tensors or numpy arrays), the same as numpy, and its outputs, named."""

    name = ""
    precision = "fp32"

    def __init__(self, model: str, spec: Mapping[str, Any], framework: str, recipe_dir: Path):
        self.model = model
        self.spec = spec
        self.framework = framework
        self.recipe_dir = Path(recipe_dir)
        self.details: Dict[str, Any] = {}

    # --- inputs ------------------------------------------------------------------------------
    def make_inputs(self, seed: int, sizes: Optional[Mapping[str, int]] = None) -> List[Any]:
        if self.framework == "torch":
            from buildgraph.backends.torch import model as torchmodel

            return torchmodel.make_inputs(self.spec, seed, sizes)
        return modelspec.make_inputs(self.spec, seed, sizes)

    def samples(self) -> List[Any]:
        if self.framework == "torch":
            from buildgraph.backends.torch import model as torchmodel

            return torchmodel.load_samples(self.model, self.spec, self.recipe_dir)
        return modelspec.load_samples(self.model, self.spec, self.recipe_dir)

    def to_numpy(self, tensors: Sequence[Any]) -> List[Any]:
        if self.framework == "torch":
            from buildgraph.backends.torch import model as torchmodel

            return [torchmodel.to_numpy(t) for t in tensors]
        return list(tensors)

    # --- outputs -----------------------------------------------------------------------------
    def run(self, tensors: Sequence[Any]) -> Tuple[List[str], List[Any]]:
        """(output names, numpy outputs) on one input set."""
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        """What the report says about the reference."""
        return {"runtime": self.name, "precision": self.precision,
                "framework": self.framework, **self.details}

    def close(self) -> None:
        """Release what the reference holds."""


class TorchReference(Reference):
    """Eager PyTorch (fp32): the model module a ModelExecutor built."""

    name = "torch.eager"

    def __init__(self, model: str, spec: Mapping[str, Any], module: Any, recipe_dir: Path):
        super().__init__(model, spec, "torch", recipe_dir)
        self.module = module

    def run(self, tensors: Sequence[Any]) -> Tuple[List[str], List[Any]]:
        from buildgraph.backends.torch import model as torchmodel

        out = torchmodel.run_eager(self.model, self.spec, self.module, tensors, self.recipe_dir)
        flat = torchmodel.named_outputs(out, self.spec, f"model '{self.model}'")
        return [n for n, _ in flat], [torchmodel.to_numpy(t) for _, t in flat]


class RuntimeReference(Reference):
    """A runtime as the reference: onnxruntime fp32 on an ONNX model's file, TensorFlow on a
    TensorFlow model, or an upstream artifact on its runtime (``reference: STEP``)."""

    def __init__(self, model: str, spec: Mapping[str, Any], framework: str, recipe_dir: Path,
                 runtime: Any, step: Optional[str] = None):
        super().__init__(model, spec, framework, recipe_dir)
        self.runtime = runtime
        self.name = runtime.name
        self.precision = getattr(runtime, "precision", "fp32")
        self.details = dict(getattr(runtime, "details", {}))
        if step:
            self.details["step"] = step

    def run(self, tensors: Sequence[Any]) -> Tuple[List[str], List[Any]]:
        from buildgraph.backends.torch.failures import short_error

        arrays = self.to_numpy(tensors)
        try:
            outs = self.runtime.run(arrays)
        except StepFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - the model rejects these inputs
            shapes = ", ".join(f"{n}: {a.dtype}{list(a.shape)}" for (n, _), a in
                               zip(modelspec.input_specs(self.spec), arrays))
            raise StepFailed(f"the reference ({self.name}) of model '{self.model}' rejects "
                             f"its example inputs ({shapes}): {short_error(exc)[:300]}"
                             ) from None
        names = list(getattr(self.runtime, "output_names", None) or
                     [f"output_{i}" for i in range(len(outs))])
        return names, [_numpy(o) for o in outs]

    def close(self) -> None:
        self.runtime.close()


def _numpy(value: Any) -> Any:
    import numpy as np

    return value if isinstance(value, np.ndarray) else np.asarray(value)


def model_reference(task: Any, name: str, spec: Mapping[str, Any], threads: int) -> Reference:
    """The reference of a model that is not PyTorch (PyTorch's is built by the executor,
    which memoises models: :class:`TorchReference`)."""
    from buildgraph.engine.runtime import RuntimeContext, runtime_class

    framework = modelspec.framework_of_data(task.data)
    ctx = RuntimeContext(model=name, model_spec=spec, recipe_dir=task.recipe_dir,
                         threads=threads, trusted=bool(spec.get("trusted")))
    if framework == "onnx":
        path = Path(task.inputs[f"model:{name}:file"])
        runtime = runtime_class(modelspec.REFERENCES["onnx"]).load(path, ctx)
        return RuntimeReference(name, spec, framework, task.recipe_dir, runtime)
    if framework == "tensorflow":
        from buildgraph.backends.tensorflow.runtime import TensorFlowRuntime

        form = str(task.data["model"].get("form"))
        runtime = TensorFlowRuntime.for_model(name, spec, form, task.inputs, ctx)
        return RuntimeReference(name, spec, framework, task.recipe_dir, runtime)
    raise StepFailed(f"no reference for framework '{framework}'")


def artifact_reference(task: Any, name: str, spec: Mapping[str, Any], step: str,
                       threads: int) -> Reference:
    """Upstream ``step``'s artifact on its own runtime as the reference (ONNX on
    onnxruntime: fp32 with graph optimizations off, like an ONNX model's own reference)."""
    from buildgraph.engine.executor import artifact_of
    from buildgraph.engine.runtime import (RuntimeContext, artifact_info, load_runtime,
                                           runtime_for)

    path = artifact_of(task, step)
    kind = task.upstream_kinds.get(step)
    ctx = RuntimeContext(model=name, model_spec=spec, recipe_dir=task.recipe_dir, kind=kind,
                         meta=artifact_info(task.upstream[step]), threads=threads,
                         trusted=kind == "torch.save" or bool(spec.get("trusted")))
    runtime_name = runtime_for(kind, path)
    if runtime_name == "onnxruntime":
        runtime_name = modelspec.REFERENCES["onnx"]
    runtime = load_runtime(path, ctx, runtime_name)
    if getattr(runtime, "precision", "fp32") != "fp32":
        runtime.close()
        raise StepFailed(f"reference: '{step}' computes in {runtime.precision}; a reference "
                         "must be fp32")
    return RuntimeReference(name, spec, modelspec.framework_of_data(task.data),
                            task.recipe_dir, runtime, step=step)


def reference_name(data: Mapping[str, Any]) -> str:
    """The runtime a step's model is its own reference on (from its keyed data)."""
    return modelspec.REFERENCES[modelspec.framework_of_data(data)]


def described_spec(description: Description) -> Dict[str, Any]:
    """The model spec a description keyed, its inputs resolved (an ONNX file's from its
    graph)."""
    model = description.data.get("model") or {}
    return {**(model.get("spec") or {}), "inputs": {k: v for k, v in model.get("inputs") or []}}


TF_MODEL_JOB = "tensorflow.model"
"""A benchmark runner job that loads a TensorFlow model from its source (not an artifact)."""


def reference_job(task: Any, name: str) -> Dict[str, Any]:
    """What a benchmark runner needs to load model ``name``'s own reference in a fresh
    process: ``{"name": runtime name, "runtime": how to load it, "path": ..., ...}``."""
    framework = modelspec.framework_of_data(task.data)
    runtime = modelspec.REFERENCES[framework]
    if framework == "onnx":
        return {"name": runtime, "runtime": runtime,
                "path": str(task.inputs[f"model:{name}:file"])}
    if framework == "tensorflow":
        return {"name": runtime, "runtime": TF_MODEL_JOB, "path": "",
                "form": str(task.data["model"].get("form")),
                "inputs": {k: str(v) for k, v in task.inputs.items()
                           if k.startswith(f"model:{name}:")}}
    return {"name": runtime, "runtime": runtime, "path": ""}


def load_job_runtime(job: Mapping[str, Any], ctx: Any) -> Any:
    """The runtime a benchmark runner job names: the model's reference (eager PyTorch, a
    TensorFlow model from its source) or an artifact on its runtime."""
    from buildgraph.engine.runtime import load_runtime

    if job["runtime"] == "torch.eager":
        from buildgraph.backends.torch.runtime import EagerRuntime

        return EagerRuntime.load(Path("."), ctx)
    if job["runtime"] == TF_MODEL_JOB:
        from buildgraph.backends.tensorflow.runtime import TensorFlowRuntime

        return TensorFlowRuntime.for_model(str(ctx.model), dict(ctx.model_spec or {}),
                                           str(job["form"]),
                                           {k: Path(v) for k, v in job["inputs"].items()}, ctx)
    return load_runtime(Path(job["path"]), ctx, job["runtime"])
