"""Writes recipes/models/small_cnn.onnx, the checked-in ONNX model of recipes/onnx_model.yaml:
an ONNX file made without any training framework (onnx.helper and numpy), as a model zoo or a
vendor would hand one over.

NCHW images [batch, 3, 32, 32] -> logits [batch, 10]: three Conv + BatchNormalization + Relu
stages (16, 32, 64 channels; strides 1, 2, 2), global average pooling, Gemm. The BatchNorm
nodes are left unfolded, so onnx.simplify has work to do; weights are seeded, so running this
again writes the same bytes.

    python recipes/models/make_onnx_model.py
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(seed: int = 0, classes: int = 10) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    cin, x = 3, "image"
    for i, (cout, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
        fan_in = cin * 9
        w = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        bn = {"scale": rng.uniform(0.5, 1.5, cout), "bias": rng.uniform(-0.2, 0.2, cout),
              "mean": rng.uniform(-0.2, 0.2, cout), "var": rng.uniform(0.5, 1.5, cout)}
        inits.append(numpy_helper.from_array(w, f"conv{i}.weight"))
        inits += [numpy_helper.from_array(v.astype(np.float32), f"bn{i}.{k}")
                  for k, v in bn.items()]
        nodes += [
            helper.make_node("Conv", [x, f"conv{i}.weight"], [f"c{i}"], pads=[1, 1, 1, 1],
                             strides=[stride, stride], name=f"conv{i}"),
            helper.make_node("BatchNormalization", [f"c{i}"] + [f"bn{i}.{k}" for k in bn],
                             [f"b{i}"], epsilon=1e-5, name=f"bn{i}"),
            helper.make_node("Relu", [f"b{i}"], [f"r{i}"], name=f"relu{i}")]
        cin, x = cout, f"r{i}"
    fc_w = (rng.standard_normal((classes, cin)) * np.sqrt(1.0 / cin)).astype(np.float32)
    inits += [numpy_helper.from_array(fc_w, "fc.weight"),
              numpy_helper.from_array(np.zeros(classes, np.float32), "fc.bias")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"),
              helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1,
                               name="fc")]
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="buildgraph make_onnx_model.py")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "small_cnn.onnx"
    onnx.save(build(), str(out))
    print(f"wrote {out} ({out.stat().st_size} bytes)")
