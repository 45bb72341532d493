"""Binding dims before TVM imports a model (buildgraph/backends/tvm/frontends.py): the ONNX half,
on small graphs made here (real onnx and onnxslim; TVM itself is exercised by
test_hf_archs.py)."""

from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxslim")

from onnx import TensorProto, helper  # noqa: E402

from buildgraph.backends.tvm.frontends import bind_onnx  # noqa: E402
from buildgraph.errors import StepFailed  # noqa: E402


def _reshaping_graph(dims=("batch", "seq", 4)):
    """y = reshape(x, [shape(x)[0], -1]): the target shape is computed in the graph, as
    dynamic transformer exports do, which TVM's importer cannot convert."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], "flat"])
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Constant", [], ["i0"], value=helper.make_tensor("i0", TensorProto.INT64, [1], [0])),
        helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
        helper.make_node("Constant", [], ["m1"], value=helper.make_tensor("m1", TensorProto.INT64, [1], [-1])),
        helper.make_node("Concat", ["b", "m1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y])
    # a stale intermediate shape, as exporters record them
    graph.value_info.append(helper.make_tensor_value_info("b", TensorProto.INT64, [1]))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_binding_every_dim_folds_the_shape_arithmetic():
    model, static = bind_onnx(_reshaping_graph(), {"batch": 2, "seq": 3})
    assert static == {"x": [2, 3, 4]}
    ops = [n.op_type for n in model.graph.node]
    assert "Shape" not in ops and "Gather" not in ops and "Reshape" in ops
    assert _dims(model.graph.output[0]) == [2, 12]


def test_a_dim_left_unbound_stays_symbolic_under_its_name():
    model, static = bind_onnx(_reshaping_graph(), {"seq": 3})
    assert static is None
    assert _dims(model.graph.input[0]) == ["batch", 3, 4]


def test_batch_names_an_unnamed_leading_dim():
    model, static = bind_onnx(_reshaping_graph(("N", "seq", 4)), {"batch": 1, "seq": 5})
    assert static == {"x": [1, 5, 4]}


def test_an_unknown_dim_is_one_line_with_a_suggestion():
    with pytest.raises(StepFailed) as exc:
        bind_onnx(_reshaping_graph(), {"sq": 3})
    assert exc.value.message == ("dims: the model has no dynamic dim 'sq' (did you mean "
                                 "'seq'?) (its dynamic dims: batch, seq)")


def test_dims_on_a_static_model_are_ignored_and_logged():
    lines = []
    model, static = bind_onnx(_reshaping_graph((1, 8, 4)), {"batch": 1}, lines.append)
    assert static == {"x": [1, 8, 4]}
    assert lines == ["dims: batch ignored: the model has static shapes"]
