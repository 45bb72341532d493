"""PyTorch runtimes for ``verify`` and ``benchmark``: the eager reference model and the
artifacts of ``torch.save``, ``torchscript`` and ``torch.export`` steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from buildgraph.errors import StepFailed
from buildgraph.engine.runtime import (Runtime, RuntimeContext, cuda_index,  # noqa: F401
                                       is_cuda, not_runnable)


def torch_device(device: str) -> Any:
    """The torch device for ``RuntimeContext.device``; a refusal (not a CPU run) when this
    torch has no CUDA or no such GPU."""
    import torch

    if not is_cuda(device):
        if device != "cpu":
            raise not_runnable(device, "the PyTorch runtimes run on cpu or cuda[:N]")
        return torch.device("cpu")
    index = cuda_index(device)
    if not torch.cuda.is_available():
        raise not_runnable(device, f"this torch ({torch.__version__}) has no CUDA device "
                                   "(torch.cuda.is_available() is False)")
    if index >= torch.cuda.device_count():
        raise not_runnable(device, f"torch sees {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def apply_math(mode: str) -> str:
    """Set PyTorch's fp32 math on CUDA for ``mode`` (fp32: TF32 off; tf32: on; default:
    untouched) and say what is in force. torch >= 2.9 has ``fp32_precision`` per backend
    (mixing it with the legacy ``allow_tf32`` flags is an error there); older ones only the
    flags."""
    import torch

    conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision") and \
            hasattr(matmul, "fp32_precision"):
        if mode in ("fp32", "tf32"):
            value = "ieee" if mode == "fp32" else "tf32"
            conv.fp32_precision = value
            matmul.fp32_precision = value
        return f"conv {conv.fp32_precision}, matmul {matmul.fp32_precision}"
    if mode in ("fp32", "tf32"):
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
        matmul.allow_tf32 = mode == "tf32"
    return (f"conv {'tf32' if torch.backends.cudnn.allow_tf32 else 'ieee'}, "
            f"matmul {'tf32' if matmul.allow_tf32 else 'ieee'}")


def device_label(dev: Any) -> str:
    """``cpu`` or ``cuda:0 NVIDIA H200``: what the report says a candidate ran on."""
    import torch

    if dev.type != "cuda":
        return "cpu"
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def records_tf32_convolutions(module: Any) -> bool:
    """Whether a TorchScript module's graph holds ``aten::_convolution`` nodes whose
    ``allow_tf32`` argument is the constant True. ``torch.jit.trace`` records the value
    ``torch.backends.cudnn.allow_tf32`` had at trace time (True by default), so on an Ampere or
    later GPU a traced artifact convolves in TF32 whatever the caller sets: seen on an H200,
    max |err| 0.047 against the fp32 reference where the .pt2 of the same model gave 2e-4. A
    scripted module calls ``aten::conv2d`` and follows the runtime flags."""
    try:
        for node in module.inlined_graph.nodes():
            if node.kind() == "aten::_convolution":
                args = list(node.inputs())
                if len(args) >= 13 and args[12].node().kind() == "prim::Constant" and \
                        args[12].toIValue() is True:
                    return True
    except Exception:  # noqa: BLE001 - a graph this torch cannot walk: assume the flags rule
        return False
    return False


def _torch_precision(module: Any) -> str:
    import torch

    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return {torch.float16: "fp16", torch.bfloat16: "bf16",
                    torch.float64: "fp64"}.get(t.dtype, "fp32")
    return "fp32"


class _TorchModuleRuntime(Runtime):
    module: Any = None
    exported: bool = False
    """An exported archive (TorchScript, .pt2): positional inputs, its outputs as they are.
    Otherwise the recipe's model: inputs go as the model spec says (by name for transformers)
    and its ``outputs:`` selection applies."""
    output_names: Optional[List[str]] = None
    """Names of ``run``'s outputs, in order, where the archive records them (buildgraph's
    exporters store them); verify matches outputs by name when they are the reference's."""

    device: Any = None
    """The torch device the module and its inputs are on (``ctx.device``)."""

    def _place(self) -> None:
        """Move the module to ``ctx.device`` (or refuse) and record where it runs."""
        self.device = torch_device(self.ctx.device)
        if self.device.type != "cpu":
            self.module = self.module.to(self.device)
            self.timing = "device"
            self.details["math"] = apply_math(self.ctx.math)
        self.details["device"] = device_label(self.device)
        self.details["provider"] = "torch"

    def stage(self, inputs: Sequence[Any]) -> List[Any]:
        import torch

        device = self.device if self.device is not None else torch.device("cpu")
        return [(torch.from_numpy(x) if not isinstance(x, torch.Tensor) else x).to(device)
                for x in inputs]

    def run_staged(self, staged: Any) -> Any:
        import torch

        from buildgraph.backends.torch.model import call_model, flatten_outputs, named_outputs

        spec = self.ctx.model_spec or {}
        with torch.inference_mode():
            if self.exported:
                return flatten_outputs(self.module(*staged))
            return named_outputs(call_model(self.module, spec, staged), spec)

    def run(self, inputs: Sequence[Any]) -> List[Any]:
        from buildgraph.backends.torch.model import to_numpy

        return [to_numpy(t) for _, t in self.run_staged(self.stage(inputs))]

    def synchronize(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def _set_threads(self) -> None:
        """Apply the intra-op count, and the inter-op count where torch still allows it: it
        can be set once per process, before any inter-op work (a fresh benchmark runner can;
        a verify worker that already ran models keeps what it has). The counts torch then
        reports are recorded."""
        import torch

        torch.set_num_threads(max(1, self.ctx.threads))
        inter = max(1, self.ctx.interop_threads)
        if torch.get_num_interop_threads() != inter:
            try:
                torch.set_num_interop_threads(inter)
            except RuntimeError:
                pass
        self.details["threads"] = {"library": "torch", "intra": torch.get_num_threads(),
                                   "inter": torch.get_num_interop_threads()}


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
        self._place()

    @classmethod
    def from_module(cls, module: Any, ctx: RuntimeContext) -> "EagerRuntime":
        runtime = cls(Path("."), ctx)
        runtime.module = module
        runtime._place()
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
            module = load_model(self.ctx.model, self.ctx.model_spec,
                                self.ctx.recipe_dir or Path("."), with_weights=False)
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
        self._place()


class TorchScriptRuntime(_TorchModuleRuntime):
    """``torch.jit.load``."""

    name = "torchscript"
    suffixes = (".ts",)
    exported = True

    def _load(self) -> None:
        import torch

        from buildgraph.backends.torch.model import NAMES_FILE, read_names_record

        self._set_threads()
        device = torch_device(self.ctx.device)  # refuse before reading a large file
        extra = {NAMES_FILE: ""}
        # map_location puts the constants the trace recorded on the device too, not only
        # the parameters that .to() would move
        self.module = torch.jit.load(str(self.path), map_location=device,
                                     _extra_files=extra).eval()
        self.output_names = read_names_record(extra[NAMES_FILE])
        self.precision = _torch_precision(self.module)
        if device.type == "cuda" and self.precision == "fp32" and \
                records_tf32_convolutions(self.module):
            # the trace fixed cuDNN's allow_tf32 (True by default) into every convolution:
            # on a GPU this artifact convolves in TF32 whatever the math mode asks
            self.precision = "tf32"
            self.details["tf32"] = ("convolutions recorded with allow_tf32=True at trace "
                                    "time: TF32 on a GPU whatever the math mode")
        self._place()


class ExportedProgramRuntime(_TorchModuleRuntime):
    """``torch.export.load(path).module()``."""

    name = "torch.export"
    suffixes = (".pt2",)
    exported = True

    def _load(self) -> None:
        import torch

        from buildgraph.backends.torch.model import NAMES_FILE, read_names_record

        self._set_threads()
        device = torch_device(self.ctx.device)
        extra = {NAMES_FILE: ""}
        try:
            program = torch.export.load(str(self.path), extra_files=extra)
        except Exception as exc:  # noqa: BLE001 - e.g. an output spec naming a missing class
            raise StepFailed(f"torch.export.load cannot load {self.path.name}: "
                             f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
                             ) from None
        self.output_names = read_names_record(extra[NAMES_FILE])
        if device.type != "cpu":
            # the graph holds device constants (a tensor made on cpu inside forward) that
            # .to() on its module would not move: torch's own pass rewrites them
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, device)
        self.module = program.module()
        self.precision = _torch_precision(self.module)
        self._place()


# --------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------

