"""ONNX models as data: their inputs, a summary, saving and checking them.

Shared by every step that reads or writes ONNX (the torch exporters, simplify, the precision
transforms, the TensorRT builder); imports onnx only inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from buildgraph.errors import StepFailed, short_error

PROTOBUF_LIMIT = 2 ** 31 - 1
"""protobuf's limit on one message: larger models need external data."""


@dataclass(frozen=True)
class InputSpec:
    """One graph input: dims are ints (static) or strings/None (dynamic)."""

    name: str
    dims: Tuple[Union[int, str, None], ...]
    dtype: str = "float32"

    @property
    def dynamic_axes(self) -> List[int]:
        return [i for i, d in enumerate(self.dims) if not isinstance(d, int) or d < 0]

    def describe(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.dims) + "]"


def onnx_inputs(path: Path) -> Dict[str, InputSpec]:
    """The real inputs of an ONNX file (initializers listed as inputs are left out)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return onnx_model_inputs(model)


def onnx_model_inputs(model: Any) -> Dict[str, InputSpec]:
    import onnx

    inits = {i.name for i in model.graph.initializer}
    specs: Dict[str, InputSpec] = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        tensor = value.type.tensor_type
        dims: List[Union[int, str, None]] = []
        for d in tensor.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        except Exception:  # noqa: BLE001 - unusual element types
            dtype = str(tensor.elem_type)
        specs[value.name] = InputSpec(value.name, tuple(dims), dtype)
    return specs


def graph_summary(model: Any) -> Dict[str, Any]:
    """Node and op counts, opset, and the inputs/outputs with their (symbolic) shapes."""
    from collections import Counter

    def shape(v: Any) -> List[Any]:
        dims = v.type.tensor_type.shape.dim
        return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in dims]

    ops = Counter(n.op_type for n in model.graph.node)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    inits = {i.name for i in model.graph.initializer}
    return {"nodes": len(model.graph.node), "ops": dict(sorted(ops.items())),
            "opset": opsets.get("ai.onnx"),
            "inputs": {i.name: shape(i) for i in model.graph.input if i.name not in inits},
            "outputs": {o.name: shape(o) for o in model.graph.output}}


def save_onnx(model: Any, dest: Path, data: Optional[Path]) -> None:
    """Save a ModelProto, its weights in ``data`` (same directory) when given."""
    import onnx

    if data is not None:
        if data.parent != dest.parent:
            raise StepFailed("the 'data' output must be in the same directory as the model")
        onnx.save_model(model, str(dest), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
        return
    if model.ByteSize() > PROTOBUF_LIMIT:
        raise StepFailed(f"the ONNX model is {model.ByteSize() / 2**30:.1f} GiB, over "
                         "protobuf's 2 GiB limit: set external_data: true and declare outputs "
                         "{model: model.onnx, data: model.onnx.data}")
    onnx.save_model(model, str(dest))


def check_onnx(path: Path, log: Any) -> None:
    """Strict shape inference (written back into the file) and the full onnx.checker."""
    import onnx

    try:
        onnx.shape_inference.infer_shapes_path(str(path), str(path), check_type=True,
                                               strict_mode=True)
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001 - checker and inference errors
        log(str(exc))
        raise StepFailed(f"the exported ONNX model is invalid: "
                         f"{short_error(exc, lines=2)[:400]}") from None
