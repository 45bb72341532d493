"""ONNX files written with ``onnx.helper`` (no torch anywhere), for the ONNX-source tests (not
a test module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence


def tiny_cnn(path: Path, dims: Sequence[Any] = ("N", 3, 16, 16), classes: int = 10,
             external_data: bool = False, seed: int = 0, producer: str = "onnx.helper"
             ) -> Path:
    """Conv 3->8 (3x3) + Relu + GlobalAveragePool + Flatten + Gemm -> ``logits`` [N, classes],
    seeded weights; ``external_data`` keeps the weights in ``<name>.data`` beside it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "w1": (rng.standard_normal((8, dims[1], 3, 3)) * 0.3).astype(np.float32),
        "b1": (rng.standard_normal(8) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((classes, 8)) * 0.3).astype(np.float32),
        "b2": (rng.standard_normal(classes) * 0.1).astype(np.float32),
    }
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], transB=1)]
    batch = dims[0]
    graph = helper.make_graph(
        nodes, "tiny_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(a, n) for n, a in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name=producer)
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=path.name + ".data",
                        size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def reference_logits(path: Path, x: Any, optimized: bool = False) -> Any:
    """The file's output on onnxruntime (CPU; graph optimizations off unless ``optimized``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def recipe(root: Path, steps: str, models: str, name: str = "ox",
           filename: Optional[str] = None) -> Path:
    import textwrap

    text = (f"name: {name}\nmodels:\n" + textwrap.indent(textwrap.dedent(models).strip("\n"),
                                                          "  ")
            + "\nsteps:\n" + textwrap.indent(textwrap.dedent(steps).strip("\n"), "  ") + "\n")
    path = root / (filename or f"{name}.yaml")
    path.write_text(text, encoding="utf-8")
    return path
