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
        helper.make_node("Constant", [], ["i0"],
                         value=helper.make_tensor("i0", TensorProto.INT64, [1], [0])),
        helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
        helper.make_node("Constant", [], ["m1"],
                         value=helper.make_tensor("m1", TensorProto.INT64, [1], [-1])),
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


# --------------------------------------------------------------------------------------------
# .pt2: re-exported at the bound sizes, names from the archive's record
# --------------------------------------------------------------------------------------------

def _pt2(tmp_path):
    torch = pytest.importorskip("torch")
    from torch.export import Dim

    from buildgraph.backends.torch.outputs import NAMES_FILE, names_record

    class M(torch.nn.Module):
        def forward(self, ids, mask):
            cache = torch.cat([torch.zeros(0), ids.float()[0]])  # a cache's empty start
            return (ids * mask).reshape(-1) + cache.sum()

    batch, seq = Dim("batch", min=1, max=8), Dim("seq", min=2, max=16)
    example = (torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))
    program = torch.export.export(M(), example, dynamic_shapes=({0: batch, 1: seq},
                                                                {0: batch, 1: seq}))
    spec = {"inputs": {"ids": {"shape": ["batch", "seq"]}, "mask": {"shape": ["batch", "seq"]}}}
    path = tmp_path / "m.pt2"
    torch.export.save(program, str(path), extra_files={NAMES_FILE: names_record(
        spec, ["out"], {"ids": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}})})
    return torch, path


def _input_shapes(program):
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    return [list(nodes[n].meta["val"].shape) for n in program.graph_signature.user_inputs]


def test_a_bound_pt2_is_re_exported_and_keeps_the_other_dim_by_name(tmp_path):
    from buildgraph.backends.tvm.frontends import load_program

    torch, path = _pt2(tmp_path)
    lines = []
    program, names = load_program(path, {"seq": 4}, lines.append)
    shapes = _input_shapes(program)
    assert [s[1] for s in shapes] == [4, 4] and not isinstance(shapes[0][0], int)
    assert names == {str(shapes[0][0]): "batch"}
    assert lines[0] == "re-exported the program with dims {'seq': 4} bound; still dynamic: batch"
    assert "dropped empty 1-D inputs of 1 concatenations" in lines[-1]
    out = program.module()(torch.ones(3, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.long))
    assert out.shape == (12,)
    static, names = load_program(path, {"batch": 1, "seq": 4})
    assert _input_shapes(static) == [[1, 4], [1, 4]] and names == {}


def test_a_pt2_dim_is_bound_by_its_spec_name_not_torch_s_symbol(tmp_path):
    from buildgraph.backends.tvm.frontends import load_program

    _, path = _pt2(tmp_path)
    with pytest.raises(StepFailed) as exc:
        load_program(path, {"seqs": 4})
    assert exc.value.message == ("dims: the model has no dynamic dim 'seqs' (did you mean "
                                 "'seq'?) (its dynamic dims: batch, seq)")
