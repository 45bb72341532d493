"""The ``torch.aoti`` runtime: an AOTInductor package through
``torch._inductor.aoti_load_package``, for ``verify`` and ``benchmark``.

The package was compiled for one device (its ``info`` output says which): a CUDA package runs on
the GPU, its inputs moved there and its outputs back; asking a CPU package for ``cuda`` (or the
reverse) is one line that says so. No compiler runs at load time: the kernels are in the
package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Sequence

from buildgraph.engine.runtime import Runtime, RuntimeContext  # noqa: F401
from buildgraph.errors import StepFailed


class NotOnThisDevice(StepFailed):
    """A CUDA package on a machine without a GPU: verify reports it as skipped."""

    skip = True


class AotiRuntime(Runtime):
    """``torch._inductor.aoti_load_package(path)``, run with positional tensors."""

    name = "torch.aoti"
    kinds = ("torch.aoti",)

    def _load(self) -> None:
        import torch

        meta = dict(self.ctx.meta or {})
        built = str(meta.get("device") or "cpu")
        asked = self.ctx.device or "cpu"
        if built.startswith("cuda") != asked.startswith("cuda") and asked != "cpu":
            raise StepFailed(f"{self.path.name} was compiled for {built}; asked to run on "
                             f"{asked}: build it with device: {asked.split(':')[0]}")
        self.device = torch.device("cuda" if built.startswith("cuda") else "cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise NotOnThisDevice(f"{self.path.name} was compiled for CUDA; no GPU here")
        torch.set_num_threads(max(1, self.ctx.threads))
        self.details["threads"] = {"library": "torch", "intra": torch.get_num_threads(),
                                   "inter": torch.get_num_interop_threads()}
        self.details["device"] = str(self.device)
        try:
            self.model = torch._inductor.aoti_load_package(str(self.path))
        except Exception as exc:  # noqa: BLE001
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            raise StepFailed(f"aoti_load_package cannot load {self.path.name}: "
                             f"{(lines[0] if lines else type(exc).__name__)[:300]}") from None
        self.output_names = list(meta.get("outputs") or []) or None
        self.inputs = list(meta.get("inputs") or [])

    def input_shapes(self) -> List[List[Any]]:
        return [list(i.get("shape") or []) for i in self.inputs]

    def run(self, inputs: Sequence[Any]) -> List[Any]:
        import torch

        from buildgraph.backends.torch.model import flatten_outputs, to_numpy

        tensors = [(torch.from_numpy(x) if not isinstance(x, torch.Tensor) else x)
                   .to(self.device) for x in inputs]
        with torch.inference_mode():
            out = self.model(*tensors)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return [to_numpy(t) for _, t in flatten_outputs(out)]

    def close(self) -> None:
        self.model = None


def register() -> None:
    """Add the runtime to :mod:`buildgraph.engine.runtime` (for processes that load it by hand)."""
    from buildgraph.engine.runtime import register_runtime

    register_runtime(AotiRuntime.name, "buildgraph.backends.torch.aoti_runtime:AotiRuntime",
                     kinds=AotiRuntime.kinds)


__all__ = ["AotiRuntime", "NotOnThisDevice", "register", "Path"]
