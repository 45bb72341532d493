"""Example inputs and dynamic shapes, from the model spec's ``inputs:`` and ``dims:``.

Every step and runtime draws the same seeded tensors (:func:`make_inputs`); named dims become
``torch.export.Dim`` objects for torch.export and the dynamo ONNX exporter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from buildgraph.backends.onnx.modelspec import dim_sizes, input_shapes, input_specs  # noqa: F401
from buildgraph.backends.torch.failures import user_frame, log_failure, short_error
from buildgraph.errors import StepFailed, did_you_mean


def make_inputs(spec: Mapping[str, Any], seed: int,
                sizes: Optional[Mapping[str, int]] = None) -> List[Any]:
    """Random example inputs: floats ~ N(0, 1) (or uniform in [min, max]), ints in
    [min, max] (default [0, 9]), seeded so every step and runtime sees the same tensors."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    tensors = []
    for (name, shape, dtype), (_, tspec) in zip(input_shapes(spec, sizes), input_specs(spec)):
        tdtype = getattr(torch, dtype)
        lo, hi = tspec.get("min"), tspec.get("max")
        if dtype == "bool":
            t = torch.randint(0, 2, shape, generator=gen).bool()
        elif tdtype.is_floating_point:
            if lo is not None or hi is not None:
                lo = 0.0 if lo is None else float(lo)
                hi = lo + 1.0 if hi is None else float(hi)
                t = torch.rand(shape, generator=gen) * (hi - lo) + lo
            else:
                t = torch.randn(shape, generator=gen)
            t = t.to(tdtype)
        else:
            lo = 0 if lo is None else int(lo)
            hi = 9 if hi is None else int(hi)
            t = torch.randint(lo, hi + 1, shape, generator=gen).to(tdtype)
        tensors.append(t)
    return tensors


def load_samples(name: str, spec: Mapping[str, Any], recipe_dir: Path) -> List[Any]:
    """The model's real sample inputs (one tensor per input, in forward() order), from a
    ``.npy``/``.npz``, ``.safetensors`` (one tensor per input name) or ``.pt`` file."""
    import numpy as np
    import torch

    rel = spec.get("sample_inputs")
    if not rel:
        return []
    path = Path(recipe_dir) / rel
    names = [n for n, _ in input_specs(spec)]
    what = f"model '{name}': sample inputs {path.name}"
    try:
        if path.suffix == ".npy":
            arrays: List[Any] = [np.load(path, allow_pickle=False)]
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                keys = list(npz.keys())
                if set(names) <= set(keys):
                    arrays = [npz[n] for n in names]
                else:
                    arrays = [npz[k] for k in keys]
        else:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                obj = load_file(str(path), device="cpu")
            else:
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(obj, torch.Tensor):
                arrays = [obj]
            elif isinstance(obj, Mapping):
                missing = [n for n in names if n not in obj]
                if missing:
                    raise StepFailed(f"{what} has no entry '{missing[0]}' (has: "
                                     + ", ".join(map(str, obj)) + ")")
                arrays = [obj[n] for n in names]
            else:
                arrays = list(obj)
    except StepFailed:
        raise
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(f"{what} cannot be read: {short_error(exc)}") from None
    if len(arrays) != len(names):
        raise StepFailed(f"{what} holds {len(arrays)} array(s); the model has {len(names)} "
                         f"input(s) ({', '.join(names)})")
    return [a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
            for a in arrays]


def describe_inputs(spec: Mapping[str, Any], tensors: Sequence[Any]) -> str:
    return ", ".join(f"{n}: {str(t.dtype).replace('torch.', '')}{list(t.shape)}"
                     for (n, _), t in zip(input_specs(spec), tensors))


def run_eager(name: str, spec: Mapping[str, Any], model: Any, tensors: Sequence[Any],
              recipe_dir: Optional[Path] = None) -> Any:
    """Call the model once; an exception means it rejects these inputs (one-line error).

    Inputs go by position (forward() order), or by name for Hugging Face models
    (:func:`~buildgraph.backends.torch.outputs.call_model`)."""
    import torch

    from buildgraph.backends.torch.outputs import call_model

    try:
        with torch.inference_mode():
            return call_model(model, spec, tensors)
    except Exception as exc:  # noqa: BLE001 - user code
        if recipe_dir:
            log_failure(exc, [recipe_dir])
        where = user_frame(exc.__traceback__, [recipe_dir]) if recipe_dir else ""
        raise StepFailed(f"model '{name}' rejects its example inputs ({describe_inputs(spec, tensors)})"
                         f"{' at ' + where if where else ''}: {short_error(exc)}") from None


# --- dynamic dims -------------------------------------------------------------------------------

def dynamic_dims(spec: Mapping[str, Any], step_dynamic: Optional[Mapping[str, Mapping[Any, str]]]
                 ) -> Dict[str, Dict[int, str]]:
    """``{input: {axis: dim name}}``: the step's ``dynamic:`` if given, else the model's named
    dims (strings in its input shapes)."""
    names = [n for n, _ in input_specs(spec)]
    if step_dynamic is not None:
        result: Dict[str, Dict[int, str]] = {}
        for inp, axes in step_dynamic.items():
            if inp not in names:
                raise StepFailed(f"dynamic: the model has no input '{inp}'"
                                 f"{did_you_mean(inp, names)} (inputs: {', '.join(names)})")
            rank = len(dict(input_specs(spec))[inp]["shape"])
            result[inp] = {}
            for axis, dim in axes.items():
                a = int(axis)
                if not -rank <= a < rank:
                    raise StepFailed(f"dynamic: input '{inp}' has {rank} dims; axis {a} is out "
                                     "of range")
                result[inp][a % rank] = str(dim)
        return result
    result = {}
    for inp, tspec in input_specs(spec):
        axes = {i: d for i, d in enumerate(tspec["shape"]) if isinstance(d, str)}
        if axes:
            result[inp] = axes
    return result


def export_sizes(spec: Mapping[str, Any], dynamic: Mapping[str, Mapping[int, str]],
                 log: Any = None) -> Dict[str, int]:
    """Example dim sizes for export: dynamic dims below 2 are raised to 2 (torch.export
    specializes sizes 0 and 1, and would then reject the dim as dynamic)."""
    sizes = dim_sizes(spec)
    shapes = dict((n, t["shape"]) for n, t in input_specs(spec))
    overrides: Dict[str, int] = {}
    for inp, axes in dynamic.items():
        for axis, dim in axes.items():
            declared = shapes[inp][axis]
            size = sizes[declared] if isinstance(declared, str) else int(declared)
            if size < 2:
                if isinstance(declared, str):
                    overrides[declared] = 2
                else:
                    overrides[f"{inp}:{axis}"] = 2
                if log:
                    log(f"example {inp}[{axis}] ({dim}) raised from {size} to 2: torch.export "
                        "specializes size-1 dims")
    return {**sizes, **overrides}


def shaped_inputs(spec: Mapping[str, Any], seed: int, sizes: Mapping[str, int]) -> List[Any]:
    """:func:`make_inputs` where ``sizes`` may also hold ``"input:axis"`` overrides for
    integer dims made dynamic by a step."""
    named = {k: v for k, v in sizes.items() if ":" not in k}
    per_axis = {k: v for k, v in sizes.items() if ":" in k}
    if not per_axis:
        return make_inputs(spec, seed, named)
    patched = dict(spec)
    inputs = {}
    for n, t in input_specs(spec):
        shape = [per_axis.get(f"{n}:{i}", d) for i, d in enumerate(t["shape"])]
        inputs[n] = {**t, "shape": shape}
    patched["inputs"] = inputs
    return make_inputs(patched, seed, named)


def torch_dynamic_shapes(spec: Mapping[str, Any], dynamic: Mapping[str, Mapping[int, str]]
                         ) -> Optional[Tuple[Any, ...]]:
    """``dynamic_shapes`` for torch.export / the dynamo ONNX exporter: one entry per input
    (positional), one ``torch.export.Dim`` per dim name, shared across inputs, with the
    model's ``dims`` ranges."""
    if not dynamic:
        return None
    from torch.export import Dim

    ranges = spec.get("dims") or {}
    made: Dict[str, Any] = {}
    shapes = []
    for inp, _ in input_specs(spec):
        axes = dynamic.get(inp) or {}
        entry = {}
        for axis, dim in axes.items():
            if dim not in made:
                r = ranges.get(dim) or {}
                kwargs = {}
                if r.get("min") is not None:
                    kwargs["min"] = int(r["min"])
                if r.get("max") is not None:
                    kwargs["max"] = int(r["max"])
                made[dim] = Dim(dim, **kwargs)
            entry[axis] = made[dim]
        shapes.append(entry or None)
    return tuple(shapes)


def to_numpy(tensor: Any) -> Any:
    import torch

    t = tensor.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()
