"""Run a ``tvm.compile`` library with the TVM runtime: ``tvm.runtime.load_module`` and
``relax.VirtualMachine`` (what ``verify`` uses for TVM artifacts).

The artifact is the ``model`` directory ``tvm.compile`` writes (``model.so`` + ``model.json``),
or a bare ``.so``. A library built for another CPU architecture, or exported as object files,
is not run: :class:`NotRunnableHere` (a :class:`~buildgraph.errors.StepFailed` with
``skip = True``) says why, so that a verification can report it as skipped rather than failed.

Loading it yourself takes three lines (the same as :func:`load_library`)::

    lib = tvm.runtime.load_module("build/RECIPE/lib/model/model.so")
    vm = tvm.relax.VirtualMachine(lib, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy()
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from buildgraph.errors import StepFailed
from buildgraph.engine.runtime import (DeviceUnavailable, Runtime, RuntimeContext, cuda_index,
                                       is_cuda, not_runnable)
from buildgraph.backends.tvm.target import host_arch, runnable_here

MANIFEST = "model.json"


class NotRunnableHere(StepFailed):
    """The library exists but cannot run on this machine (cross-compiled, object files,
    a GPU target without a GPU). ``skip`` tells callers to report it as skipped."""

    skip = True


def locate(path: Path) -> Tuple[Path, Dict[str, Any]]:
    """(library file, manifest) for a ``tvm.compile`` output directory or a library file."""
    path = Path(path)
    if path.is_dir():
        manifest_path = path / MANIFEST
        manifest: Dict[str, Any] = {}
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        name = manifest.get("library")
        lib = path / name if name else next(iter(sorted(path.glob("*.so"))), path / "model.so")
        return lib, manifest
    manifest_path = path.parent / MANIFEST
    manifest = {}
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except ValueError:
            manifest = {}
    return path, manifest


def check_runnable(lib: Path, manifest: Dict[str, Any]) -> None:
    """Raise NotRunnableHere when the library cannot run on this machine."""
    target = manifest.get("target")
    if isinstance(target, dict):
        ok, why = runnable_here(target)
        if not ok:
            raise NotRunnableHere(why)
    if lib.suffix == ".tar":
        raise NotRunnableHere(f"{lib.name} holds object files to link on the device, not a "
                              "loadable library")
    if isinstance(target, dict):
        if target.get("kind") == "cuda":
            import tvm

            if not tvm.cuda(0).exist:
                raise NotRunnableHere("built for CUDA; no NVIDIA GPU on this machine")
    elif manifest.get("host_arch") and manifest["host_arch"] != host_arch():
        raise NotRunnableHere(f"built on {manifest['host_arch']}; this machine is "
                              f"{host_arch()}")


def check_device(manifest: Dict[str, Any], device: str) -> None:
    """A library runs on the device its target was compiled for: a CUDA library on
    ``device: cuda``, an llvm one on ``device: cpu``; anything else is a refusal, never a run
    on the other device. (A library without a manifest is taken to match.)"""
    target = manifest.get("target")
    kind = target.get("kind") if isinstance(target, dict) else None
    if kind is None:
        return
    if is_cuda(device) and kind != "cuda":
        raise not_runnable(device, f"the library was compiled for target kind '{kind}', not "
                                   "cuda (compile it with target: cuda)")
    if not is_cuda(device) and kind == "cuda":
        raise DeviceUnavailable(f"not runnable on {device}: the library was compiled for "
                                "cuda (set device: cuda on this step)")


def load_library(path: Path, device: str = "cpu") -> Tuple[Any, Any]:
    """(VirtualMachine, tvm device) for a library; raises NotRunnableHere when it cannot run,
    DeviceUnavailable when it was not compiled for ``device``."""
    lib_path, manifest = locate(path)
    if not lib_path.is_file():
        raise StepFailed(f"no TVM library at {lib_path}")
    check_device(manifest, device)
    try:
        check_runnable(lib_path, manifest)
    except NotRunnableHere as exc:
        if is_cuda(device):  # the device's refusal line: what the verify report lists
            raise not_runnable(device, exc.message) from None
        raise
    import tvm
    from tvm import relax

    target = manifest.get("target") or {}
    dev = tvm.cuda(cuda_index(device)) if is_cuda(device) else tvm.cpu(0)
    if is_cuda(device) and not dev.exist:
        raise not_runnable(device, f"TVM sees no CUDA device {cuda_index(device)}")
    try:
        lib = tvm.runtime.load_module(str(lib_path))
        vm = relax.VirtualMachine(lib, dev)
    except Exception as exc:  # noqa: BLE001
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        raise StepFailed(f"the TVM runtime cannot load {lib_path.name}: "
                         f"{(lines[-1] if lines else type(exc).__name__)[:300]}") from None
    return vm, dev


def _to_numpy(value: Any) -> List[Any]:
    if hasattr(value, "numpy"):
        return [value.numpy()]
    if isinstance(value, (list, tuple)) or type(value).__name__ in ("Array", "List", "Tuple"):
        out: List[Any] = []
        for item in value:
            out.extend(_to_numpy(item))
        return out
    import numpy as np

    return [np.asarray(value)]


class TvmRuntime(Runtime):
    """A ``tvm.compile`` library through ``relax.VirtualMachine``."""

    name = "tvm.relax"
    kinds = ("tvm.compile",)
    suffixes = (".so",)

    def _load(self) -> None:
        import os

        threads = max(1, self.ctx.threads)
        # TVM's CPU thread pool reads this when it first starts. (runtime.config_threadpool
        # would resize it later, but it also pins the calling thread to cores, which then
        # slows everything else this process runs.)
        os.environ["TVM_NUM_THREADS"] = str(threads)
        self.vm, self.dev = load_library(self.path, self.ctx.device)
        self.details["threads"] = {"library": "tvm", "intra": _pool_threads(threads),
                                   "inter": 1}  # the Relax VM runs one operator at a time
        lib, manifest = locate(self.path)
        self.manifest = manifest
        if is_cuda(self.ctx.device):
            self.details["device"] = f"cuda:{self.dev.index} {self.dev.device_name}"
            self.timing = "device"
        else:
            self.details["device"] = "cpu"
        self.details["provider"] = "tvm"
        self.details["target"] = manifest.get("target_text", "")
        self.details["tuned_functions"] = manifest.get("with_record")
        self.details["functions"] = manifest.get("functions")
        self.inputs: List[Dict[str, Any]] = list(manifest.get("inputs") or [])

    def input_shapes(self) -> List[List[Any]]:
        return [list(i.get("shape") or []) for i in self.inputs]

    def run(self, inputs: Sequence[Any]) -> List[Any]:
        return _to_numpy(self.run_staged(self.stage(inputs)))

    def stage(self, inputs: Sequence[Any]) -> Any:
        """The inputs as TVM tensors on the library's device (copied once)."""
        import numpy as np
        import tvm

        if self.inputs and len(inputs) != len(self.inputs):
            raise StepFailed(f"the library takes {len(self.inputs)} inputs; got {len(inputs)}")
        args = []
        for i, value in enumerate(inputs):
            arr = np.ascontiguousarray(value)
            want = self.inputs[i].get("dtype") if i < len(self.inputs) else None
            if want and arr.dtype != np.dtype(want):
                arr = arr.astype(want)
            args.append(tvm.runtime.tensor(arr, self.dev))
        return args

    def run_staged(self, staged: Any) -> Any:
        return self.vm["main"](*staged)

    def synchronize(self) -> None:
        self.dev.sync()

    def close(self) -> None:
        self.vm = None


def _pool_threads(asked: int) -> int:
    """The size of TVM's CPU thread pool as the runtime reports it (it reads
    ``TVM_NUM_THREADS`` once, when the pool starts: in a process that ran TVM code before with
    another count, that count stays)."""
    import tvm

    try:
        return int(tvm.get_global_func("runtime.NumThreads")())
    except Exception:  # noqa: BLE001 - an older TVM without it
        return asked


def runnable(path: Path) -> Tuple[bool, str]:
    """Whether the library at ``path`` can run here, and why not (no TVM import)."""
    lib, manifest = locate(Path(path))
    try:
        if lib.suffix == ".tar" or isinstance(manifest.get("target"), dict) and \
                manifest["target"].get("kind") != "cuda":
            check_runnable(lib, manifest)
    except NotRunnableHere as exc:
        return False, exc.message
    return True, ""


def register() -> None:
    """Add the runtime to :mod:`buildgraph.engine.runtime` (for processes that load it by hand)."""
    from buildgraph.engine.runtime import register_runtime

    register_runtime(TvmRuntime.name, "buildgraph.backends.tvm.runtime:TvmRuntime",
                     kinds=TvmRuntime.kinds)


__all__ = ["TvmRuntime", "NotRunnableHere", "load_library", "locate", "runnable", "register",
           "RuntimeContext"]
