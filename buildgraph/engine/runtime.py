"""Runtimes: load a deployable artifact and run it on numpy inputs.

``verify`` compares every artifact of a recipe with the eager PyTorch model; each artifact
format runs through its own runtime. A runtime is a small class::

    class MyRuntime(Runtime):
        name = "tvm.relax"                 # registry name
        kinds = ("tvm.compile",)           # step kinds whose outputs it loads
        suffixes = (".so",)                # file suffixes it loads (when the kind is unknown)

        def _load(self):                   # read self.path; self.ctx has threads, device...
            ...
        def run(self, inputs):             # list of numpy arrays in forward() order
            return [...]                   # list of numpy arrays, in output order

Built-ins: ``torch.eager`` (the reference: the recipe's model, fp32), ``torch.save`` (state_dict,
checkpoint or whole-model pickle, told apart by reading the file), ``torchscript``
(``torch.jit.load``), ``torch.export`` (``torch.export.load(...).module()``),
``onnxruntime``, and, in their own modules, ``tvm.relax`` (TVM's relax VirtualMachine,
:mod:`buildgraph.backends.tvm.runtime`) and ``tensorrt`` (:mod:`buildgraph.backends.tensorrt.runtime`). More
come with :func:`register_runtime` or through the ``buildgraph.runtimes`` entry-point group
(``name = "module:Class"``); like executors, the registry holds strings and imports a
runtime's module only when it is used, and no runtime imports its library before ``load``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Type

from buildgraph.errors import StepFailed

ENTRY_POINT_GROUP = "buildgraph.runtimes"

RUNTIMES: Dict[str, str] = {
    "torch.eager": "buildgraph.engine.runtime:EagerRuntime",
    "torch.save": "buildgraph.engine.runtime:TorchSaveRuntime",
    "torchscript": "buildgraph.engine.runtime:TorchScriptRuntime",
    "torch.export": "buildgraph.engine.runtime:ExportedProgramRuntime",
    "onnxruntime": "buildgraph.engine.runtime:OnnxRuntime",
    "tvm.relax": "buildgraph.backends.tvm.runtime:TvmRuntime",
    "tensorrt": "buildgraph.backends.tensorrt.runtime:TensorRTRuntime",
}
"""Runtime name -> ``"module:Class"``."""

KIND_RUNTIMES: Dict[str, str] = {
    "torch.save": "torch.save",
    "torchscript": "torchscript",
    "torch.export": "torch.export",
    "onnx.export": "onnxruntime",
    "onnx.simplify": "onnxruntime",
    "onnx.autocast": "onnxruntime",
    "onnx.quantize": "onnxruntime",
    "tvm.compile": "tvm.relax",
    "tensorrt.build": "tensorrt",
    "tensorrt.refit": "tensorrt",
}
"""Step kind -> the runtime that loads its ``model`` output."""

SUFFIX_RUNTIMES: Dict[str, str] = {
    ".onnx": "onnxruntime",
    ".pt2": "torch.export",
    ".ts": "torchscript",
    ".pt": "torch.save",
    ".pth": "torch.save",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
}
"""File suffix -> runtime, for artifacts of other step kinds (``python``, ``shell``)."""


def register_runtime(name: str, target: str, kinds: Sequence[str] = (),
                     suffixes: Sequence[str] = ()) -> None:
    """Add a runtime (``target`` is ``"module:Class"``); a name may be registered once."""
    if name in RUNTIMES and RUNTIMES[name] != target:
        raise ValueError(f"runtime '{name}' is already registered ({RUNTIMES[name]})")
    RUNTIMES[name] = target
    for kind in kinds:
        KIND_RUNTIMES[kind] = name
    for suffix in suffixes:
        SUFFIX_RUNTIMES[suffix] = name


@dataclass
class RuntimeContext:
    """What a runtime may need beside the artifact's path."""

    model: Optional[str] = None
    """Name of the recipe model the artifact was made from (state_dicts need its code)."""
    model_spec: Optional[Mapping[str, Any]] = None
    recipe_dir: Optional[Path] = None
    kind: Optional[str] = None
    """Step kind that produced the artifact."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """That step's metadata, when known."""
    threads: int = 1
    device: str = "cpu"
    trusted: bool = False
    """Unpickling a whole model (runs code) is allowed: artifacts built by the same recipe."""


class Runtime:
    """Base class: ``Runtime.load(path, ctx)`` then ``run(inputs) -> outputs``."""

    name: ClassVar[str] = ""
    kinds: ClassVar[Tuple[str, ...]] = ()
    suffixes: ClassVar[Tuple[str, ...]] = ()

    def __init__(self, path: Path, ctx: RuntimeContext):
        self.path = Path(path)
        self.ctx = ctx
        self.precision = "fp32"
        """Numeric precision the artifact computes in (fp32, fp16, bf16, int8...)."""
        self.details: Dict[str, Any] = {}
        """Anything worth reporting: the form of a torch.save file, providers..."""

    @classmethod
    def load(cls, path: Path, ctx: RuntimeContext) -> "Runtime":
        runtime = cls(path, ctx)
        runtime._load()
        return runtime

    def _load(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def run(self, inputs: Sequence[Any]) -> List[Any]:  # pragma: no cover - interface
        """Run on numpy arrays (forward() order); return numpy arrays (output order)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the artifact (sessions, device memory)."""


def _plugins() -> Dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def runtime_class(name: str) -> Type[Runtime]:
    target = RUNTIMES.get(name) or _plugins().get(name)
    if target is None:
        raise StepFailed(f"no runtime named '{name}' (known: {', '.join(sorted(RUNTIMES))})")
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(f"cannot load runtime '{name}' from {target}: "
                         f"{type(exc).__name__}: {exc}") from None
    return cls


def runtime_for(kind: Optional[str], path: Path) -> str:
    """The runtime that loads ``path``, made by a step of ``kind``."""
    if kind and kind in KIND_RUNTIMES:
        return KIND_RUNTIMES[kind]
    suffix = "".join(Path(path).suffixes[-1:])
    if suffix in SUFFIX_RUNTIMES:
        return SUFFIX_RUNTIMES[suffix]
    for name, target in _plugins().items():
        try:
            cls = runtime_class(name)
        except StepFailed:
            continue
        if (kind and kind in cls.kinds) or suffix in cls.suffixes:
            return name
    raise StepFailed(f"no runtime loads {Path(path).name}"
                     + (f" (made by a '{kind}' step)" if kind else "")
                     + "; runtimes: " + ", ".join(sorted(RUNTIMES)))


def load_runtime(path: Path, ctx: RuntimeContext, name: Optional[str] = None) -> Runtime:
    """Load ``path`` with runtime ``name`` (default: chosen from ``ctx.kind`` and the suffix)."""
    cls = runtime_class(name or runtime_for(ctx.kind, path))
    return cls.load(path, ctx)


# --------------------------------------------------------------------------------------------
# torch runtimes
# --------------------------------------------------------------------------------------------

def _torch_precision(module: Any) -> str:
    import torch

    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return {torch.float16: "fp16", torch.bfloat16: "bf16",
                    torch.float64: "fp64"}.get(t.dtype, "fp32")
    return "fp32"


class _TorchModuleRuntime(Runtime):
    module: Any = None

    def run(self, inputs: Sequence[Any]) -> List[Any]:
        import torch

        from buildgraph.backends.torch.model import flatten_outputs, to_numpy

        tensors = [torch.from_numpy(x) if not isinstance(x, torch.Tensor) else x for x in inputs]
        with torch.inference_mode():
            out = self.module(*tensors)
        return [to_numpy(t) for _, t in flatten_outputs(out)]

    def _set_threads(self) -> None:
        import torch

        torch.set_num_threads(max(1, self.ctx.threads))


class EagerRuntime(_TorchModuleRuntime):
    """The recipe's model in eager PyTorch, fp32: the reference of ``verify``."""

    name = "torch.eager"

    def _load(self) -> None:
        from buildgraph.backends.torch.model import load_model

        self._set_threads()
        if self.ctx.model is None or self.ctx.model_spec is None:
            raise StepFailed("the eager runtime needs the model's recipe entry")
        self.module = load_model(self.ctx.model, self.ctx.model_spec,
                                 self.ctx.recipe_dir or Path("."))
        self.module.float()

    @classmethod
    def from_module(cls, module: Any, ctx: RuntimeContext) -> "EagerRuntime":
        runtime = cls(Path("."), ctx)
        runtime.module = module
        return runtime


class TorchSaveRuntime(_TorchModuleRuntime):
    """A torch.save file: state_dict or checkpoint (into the recipe model's architecture) or
    a pickled whole model (only when ``ctx.trusted``)."""

    name = "torch.save"
    suffixes = (".pt", ".pth")

    def _load(self) -> None:
        import torch

        from buildgraph.backends.torch.model import load_model, load_saved

        self._set_threads()
        obj = load_saved(self.path, self.ctx.trusted, f"{self.path.name}", self.ctx.recipe_dir)
        if isinstance(obj, torch.nn.Module):
            self.details["form"] = "model"
            self.module = obj.eval()
        elif isinstance(obj, Mapping):
            if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
                form, state = "state_dict", obj
            else:
                key = next((k for k in ("state_dict", "model_state_dict", "model")
                            if isinstance(obj.get(k), Mapping)), None)
                if key is None:
                    raise StepFailed(f"{self.path.name}: a dict with neither tensors nor a "
                                     "state_dict entry (keys: "
                                     + ", ".join(map(str, list(obj)[:6])) + ")")
                form, state = "checkpoint", obj[key]
                self.details["state_dict_key"] = key
            if self.ctx.model is None or self.ctx.model_spec is None:
                raise StepFailed(f"{self.path.name} holds a {form}: loading it needs the "
                                 "model's code (verify's 'model:')")
            spec = {k: v for k, v in self.ctx.model_spec.items() if k not in ("weights",)}
            module = load_model(self.ctx.model, spec, self.ctx.recipe_dir or Path("."))
            try:
                module.load_state_dict(state)
            except RuntimeError as exc:
                raise StepFailed(f"{self.path.name} does not fit model '{self.ctx.model}': "
                                 f"{str(exc).splitlines()[0]}") from None
            self.details["form"] = form
            self.module = module.eval()
        else:
            raise StepFailed(f"{self.path.name} holds a {type(obj).__name__}, not a model, "
                             "a state_dict or a checkpoint")
        self.precision = _torch_precision(self.module)


class TorchScriptRuntime(_TorchModuleRuntime):
    """``torch.jit.load``."""

    name = "torchscript"
    suffixes = (".ts",)

    def _load(self) -> None:
        import torch

        self._set_threads()
        self.module = torch.jit.load(str(self.path), map_location="cpu").eval()
        self.precision = _torch_precision(self.module)


class ExportedProgramRuntime(_TorchModuleRuntime):
    """``torch.export.load(path).module()``."""

    name = "torch.export"
    suffixes = (".pt2",)

    def _load(self) -> None:
        import torch

        self._set_threads()
        program = torch.export.load(str(self.path))
        self.module = program.module()
        self.precision = _torch_precision(self.module)


# --------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16",
              "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


class OnnxRuntime(Runtime):
    """onnxruntime ``InferenceSession`` on the CPU execution provider (or the providers
    named by ``ctx.device``: ``cuda`` puts CUDAExecutionProvider first)."""

    name = "onnxruntime"
    suffixes = (".onnx",)

    def _load(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, self.ctx.threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if self.ctx.device.startswith("cuda"):
            providers.insert(0, "CUDAExecutionProvider")
        self._fp8 = self._has_fp8()
        if self._fp8:
            # onnxruntime's extended CPU fusions compute float8 Q/DQ graphs wrongly (measured
            # with onnxruntime 1.32: top-1 agreement 62 % instead of 100 %); basic ones do not
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            self.details["graph_optimization"] = "basic (float8 Q/DQ)"
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001
            raise StepFailed(f"onnxruntime cannot load {self.path.name}: "
                             f"{str(exc).strip().splitlines()[0][:300]}") from None
        self.inputs = self.session.get_inputs()
        self.details["providers"] = self.session.get_providers()
        self.precision = self._precision()

    def _has_fp8(self) -> bool:
        """Does the model hold float8 Q/DQ (its zero points are float8 initializers)?"""
        if self.ctx.meta.get("precision") == "fp8":
            return True
        ops = self.ctx.meta.get("ops")
        if isinstance(ops, Mapping) and "QuantizeLinear" not in ops:
            return False
        import onnx

        fp8 = {getattr(onnx.TensorProto, n) for n in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ",
                                                      "FLOAT8E5M2", "FLOAT8E5M2FNUZ")
               if hasattr(onnx.TensorProto, n)}
        model = onnx.load(str(self.path), load_external_data=False)
        return any(i.data_type in fp8 for i in model.graph.initializer)

    def _precision(self) -> str:
        import onnx

        if self._fp8:
            return "fp8"

        quantized = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"}
        if self.ctx.meta.get("precision") in ("fp32", "fp16", "bf16", "int8", "fp8"):
            return str(self.ctx.meta["precision"])
        known_ops = self.ctx.meta.get("ops")
        floats = {i.type for i in self.inputs}
        if isinstance(known_ops, Mapping) and not set(known_ops) & quantized:
            # the producing step listed its ops (no parse of a large file needed)
            return "fp16" if floats == {"tensor(float16)"} else "fp32"
        model = onnx.load(str(self.path), load_external_data=False)
        ops = {n.op_type for n in model.graph.node}
        if ops & quantized:
            return "int8"
        types = {i.data_type for i in model.graph.initializer}
        # mixed precision (AutoCast keeps some fp32) counts as the lower one
        if onnx.TensorProto.FLOAT16 in types:
            return "fp16"
        if onnx.TensorProto.BFLOAT16 in types:
            return "bf16"
        return "fp32"

    def run(self, inputs: Sequence[Any]) -> List[Any]:
        import numpy as np

        if len(inputs) != len(self.inputs):
            raise StepFailed(f"{self.path.name} takes {len(self.inputs)} inputs; got "
                             f"{len(inputs)}")
        feed = {}
        for meta, value in zip(self.inputs, inputs):
            arr = np.asarray(value)
            want = _ORT_TYPES.get(meta.type)
            if want and arr.dtype != np.dtype(want):
                arr = arr.astype(want)
            feed[meta.name] = arr
        return list(self.session.run(None, feed))

    def close(self) -> None:
        self.session = None
