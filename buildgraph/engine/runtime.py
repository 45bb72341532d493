"""Runtimes: load a deployable artifact and run it on numpy inputs.

``verify`` compares every artifact of a recipe with the model's own reference (eager PyTorch,
onnxruntime fp32 for an ONNX file, TensorFlow for a Keras/SavedModel model); each artifact
format runs through its own runtime. A runtime is a small class::

    class MyRuntime(Runtime):
        name = "tvm.relax"                 # registry name
        kinds = ("tvm.compile",)           # step kinds whose outputs it loads
        suffixes = (".so",)                # file suffixes it loads (when the kind is unknown)

        def _load(self):                   # read self.path; self.ctx has threads, device...
            ...
        def run(self, inputs):             # list of numpy arrays in forward() order
            return [...]                   # list of numpy arrays, in output order

This module is the interface and the registry; the runtimes live with their backends. Built-ins:
``torch.eager`` (the reference: the recipe's model, fp32), ``torch.save`` (state_dict,
checkpoint or whole-model pickle, told apart by reading the file), ``torchscript``
(``torch.jit.load``), ``torch.export`` (``torch.export.load(...).module()``), all in
:mod:`buildgraph.backends.torch.runtime`; ``onnxruntime`` and ``onnxruntime.fp32`` (an ONNX
source's reference: graph optimizations off) (:mod:`buildgraph.backends.onnx.runtime`);
``tensorflow`` (Keras files, SavedModels and a TensorFlow model source,
:mod:`buildgraph.backends.tensorflow.runtime`);
``tvm.relax`` (TVM's relax VirtualMachine,
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

from buildgraph.errors import StepFailed, short_error

ENTRY_POINT_GROUP = "buildgraph.runtimes"

# The tables: buildgraph.registry (one line per runtime, per kind, per file suffix).
from buildgraph.registry import KIND_RUNTIMES, RUNTIMES, SUFFIX_RUNTIMES  # noqa: E402


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
    """The producing step's description of its artifact: its ``info`` output (JSON), a
    declared output and therefore part of the consumer's key (see :func:`artifact_info`)."""
    threads: int = 1
    """Intra-op threads: how many threads one operator may use."""
    interop_threads: int = 1
    """Inter-op threads: how many operators may run at once (torch, onnxruntime). A runtime
    records the counts its library reports in ``details["threads"]``."""
    device: str = "cpu"
    """Where the artifact must run: ``cpu``, ``cuda`` or ``cuda:N``. A runtime runs there or
    refuses with :class:`DeviceUnavailable`; it never falls back to the CPU."""
    math: str = "default"
    """fp32 math on a GPU: ``fp32`` (TF32 off), ``tf32`` (TF32 on) or ``default`` (the
    library's own default: PyTorch uses TF32 for cuDNN convolutions). ``verify`` sets it;
    a runtime records what ran in ``details["math"]``."""
    ort_provider: str = "cuda"
    """onnxruntime on a GPU: ``cuda`` (CUDAExecutionProvider) or ``tensorrt``
    (TensorrtExecutionProvider, then CUDA for what it does not take)."""
    trusted: bool = False
    """Unpickling a whole model (runs code) is allowed: artifacts built by the same recipe."""


INFO_OUTPUT = "info"
"""The output name under which a step describes its artifact for runtimes (engine flags,
profiles, precision)."""


def artifact_info(outputs: Mapping[str, Path]) -> Dict[str, Any]:
    """The JSON ``info`` output among a step's outputs, or {} when it has none."""
    import json

    path = outputs.get(INFO_OUTPUT)
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class DeviceUnavailable(StepFailed):
    """The artifact cannot run on the device asked for, on this machine (no CUDA torch, an
    onnxruntime without a CUDA provider, no GPU): the candidate is reported as not run, with
    this message, rather than run somewhere else under the device's name."""

    skip = True
    device_refusal = True


def is_cuda(device: str) -> bool:
    """``cuda`` or ``cuda:N``."""
    return device == "cuda" or device.startswith("cuda:")


def cuda_index(device: str) -> int:
    """N of ``cuda:N`` (0 for ``cuda``)."""
    _, _, index = device.partition(":")
    try:
        return int(index) if index else 0
    except ValueError:
        raise StepFailed(f"device '{device}': expected cpu, cuda or cuda:N") from None


def not_runnable(device: str, why: str) -> DeviceUnavailable:
    """The one refusal line every runtime gives: ``not runnable on cuda here: WHY``."""
    return DeviceUnavailable(f"not runnable on {device} here: {why}")


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
        """Anything worth reporting: the form of a torch.save file, providers... Every
        runtime sets ``device`` (what it actually runs on: ``cpu``, ``cuda:0 NVIDIA H200``)
        and ``provider`` (``torch``, ``CUDAExecutionProvider``, ``tvm``...)."""

    @classmethod
    def load(cls, path: Path, ctx: RuntimeContext) -> "Runtime":
        runtime = cls(path, ctx)
        runtime._load()
        return runtime

    def _load(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def input_shapes(self) -> List[List[Any]]:
        """The shapes the artifact accepts, in input order: ints for fixed dims, names or None
        for dynamic ones; [] when the runtime cannot tell (then any shape is tried)."""
        return []

    def run(self, inputs: Sequence[Any]) -> List[Any]:  # pragma: no cover - interface
        """Run on numpy arrays (forward() order); return numpy arrays (output order)."""
        raise NotImplementedError

    # --- timing (benchmark) --------------------------------------------------------------------
    def stage(self, inputs: Sequence[Any]) -> Any:
        """Inputs in the form :meth:`run_staged` takes, already on the device (copied once,
        before timing): a GPU benchmark times the model, not the host-to-device copy."""
        return list(inputs)

    def run_staged(self, staged: Any) -> Any:
        """One run on staged inputs; the outputs may stay on the device (not copied back)."""
        return self.run(staged)

    def synchronize(self) -> None:
        """Wait for the device's queued work (a CUDA kernel launch returns before it ends):
        the benchmark calls it after each timed run."""

    timing = "host"
    """What a timed run covers: ``host`` (numpy in, numpy out) or ``device`` (inputs staged
    on the device, outputs left there, synchronised after each run)."""

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
    """Load ``path`` with runtime ``name`` (default: chosen from ``ctx.kind`` and the suffix).
    A library's own error while loading becomes one line naming the file, so that verify
    records it against that candidate and goes on with the others."""
    cls = runtime_class(name or runtime_for(ctx.kind, path))
    try:
        return cls.load(path, ctx)
    except StepFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - torch, onnxruntime, TVM: no common error type
        raise StepFailed(f"{cls.name} cannot load {Path(path).name}: "
                         f"{short_error(exc)[:300]}") from None
