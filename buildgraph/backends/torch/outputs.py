"""A model's outputs as a fixed, named list of tensors."""

from __future__ import annotations

from typing import Any, List, Mapping, Tuple

from buildgraph.errors import StepFailed


def flatten_outputs(out: Any, prefix: str = "output") -> List[Tuple[str, Any]]:
    """Named tensors of a model's output: a tensor is ``output``; a tuple ``output_0``...;
    a dict keeps its keys (nested containers add ``_i`` suffixes)."""
    import torch

    if isinstance(out, torch.Tensor):
        return [(prefix, out)]
    if isinstance(out, Mapping):
        items: List[Tuple[str, Any]] = []
        for k, v in out.items():
            items += flatten_outputs(v, str(k) if prefix == "output" else f"{prefix}_{k}")
        return items
    if isinstance(out, (list, tuple)):
        items = []
        fields = getattr(out, "_fields", None)
        for i, v in enumerate(out):
            sub = fields[i] if fields else f"{prefix}_{i}"
            items += flatten_outputs(v, sub)
        return items
    if out is None:
        return []
    if isinstance(out, (int, float, bool)):
        return [(prefix, torch.tensor(out))]
    raise StepFailed(f"model output of type {type(out).__name__} is not a tensor, a "
                     "sequence or a dict of tensors")
