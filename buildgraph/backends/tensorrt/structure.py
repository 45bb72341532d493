"""A digest of an ONNX network's structure with the weights' values left out.

``tensorrt.build`` with ``refit: true`` is keyed on this digest instead of the file's bytes, so a
new checkpoint of the same architecture keeps the engine and goes through the cheap
``tensorrt.refit`` step (TensorRT's Refitter) instead of a full build.

What counts as a weight (its values are left out): a floating-point initializer with more than
:data:`WEIGHT_MIN_ELEMENTS` elements that is not a Q/DQ scale or zero point. Everything else
stays in the digest with its values: integer initializers (shapes, axes, indices), small float
constants (Clip bounds, Resize scales, epsilons), quantization scales (TensorRT does not refit
them), ``Constant`` nodes, the graph's nodes, attributes, names, shapes and types. A small float
that is really a weight (the 2-element bias of a 2-class head) only makes a weight change cost a
rebuild instead of a refit: the error is always on the safe side.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, Set, Tuple, Union

WEIGHT_MIN_ELEMENTS = 8
DIGEST_SCHEMA = "onnx-structure-1"

_QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def _float_types() -> Set[int]:
    import onnx

    tp = onnx.TensorProto
    types = {tp.FLOAT, tp.FLOAT16, tp.DOUBLE, tp.BFLOAT16}
    for name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ"):
        if hasattr(tp, name):
            types.add(getattr(tp, name))
    return types


def _numel(dims: Any) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def weight_names(model: Any) -> Set[str]:
    """Initializers whose values :func:`structure_digest` ignores."""
    floats = _float_types()
    qdq_params: Set[str] = set()
    for node in model.graph.node:
        if node.op_type in _QDQ:
            qdq_params.update(node.input[1:])
    return {init.name for init in model.graph.initializer
            if init.data_type in floats and _numel(init.dims) > WEIGHT_MIN_ELEMENTS
            and init.name not in qdq_params}


def strip_weights(model: Any) -> Tuple[Any, Dict[str, Tuple[int, ...]]]:
    """A copy of ``model`` whose weight initializers keep name, type and shape but no data."""
    import onnx

    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    names = weight_names(model)
    shapes: Dict[str, Tuple[int, ...]] = {}
    for init in stripped.graph.initializer:
        if init.name not in names:
            continue
        shapes[init.name] = tuple(int(d) for d in init.dims)
        for attr in ("raw_data", "float_data", "double_data", "int32_data", "int64_data",
                     "external_data", "data_location", "doc_string"):
            init.ClearField(attr)
    for attr in ("producer_name", "producer_version", "doc_string", "model_version"):
        stripped.ClearField(attr)
    stripped.graph.ClearField("doc_string")
    return stripped, shapes


def structure_digest(model: Union[Any, str, Path]) -> str:
    """sha256 of the network's structure (see the module's doc); ``model`` is a ModelProto or
    a path (external weight files are not read)."""
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model), load_external_data=False)
    stripped, _ = strip_weights(model)
    h = hashlib.sha256(DIGEST_SCHEMA.encode() + b"\0")
    h.update(stripped.SerializeToString(deterministic=True))
    return h.hexdigest()


def onnx_structure_view(path: Path) -> "str | None":
    """The upstream view of a refittable engine build: an ONNX model counts by its structure
    (weights left out), so a new checkpoint of the same architecture keeps the engine and only
    ``tensorrt.refit`` runs again. Other files count whole (None)."""
    if not str(path).endswith(".onnx"):
        return None
    return "structure:" + structure_digest(Path(path))
