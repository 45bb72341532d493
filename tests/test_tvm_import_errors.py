"""The one-line error when TVM cannot import a model names the importer's reason and the other
route into TVM (texts as TVM 0.27 and torch 2.13 raise them on GPT-2; no TVM needed here)."""

from __future__ import annotations

from pathlib import Path

from buildgraph.backends.tvm.relax import import_error_message


class InternalError(Exception):
    pass


def test_an_onnx_import_failure_points_at_the_pt2_route():
    exc = InternalError("Check failed: (data_ty->shape.has_value()) is false: Reshape expects "
                        "the input tensor to have known shape when there is some dimension "
                        "length to infer. However, the given input has no shape.")
    assert import_error_message(Path("model.onnx"), exc) == (
        "TVM cannot import model.onnx: InternalError: Check failed: (data_ty->shape.has_value())"
        " is false: Reshape expects the input tensor to have known shape when there is some "
        "dimension length to infer. However, the given input has no shape; a .pt2 from "
        "torch.export is the other route into TVM (from: <the torch.export step>), and an ONNX "
        "export with static shapes (dynamic: {}) often imports where a dynamic one does not")


def test_a_pt2_import_failure_keeps_torchs_reason_not_its_advert():
    exc = ValueError(
        "Cannot view a tensor with shape torch.Size([2, 8, 32]) and strides (32, 64, 1) as a "
        "tensor with shape (16, 32)!\n\nWhile executing %view_6 : [num_users=1] = "
        "call_function[target=torch.ops.aten.view.default](args = (%reshape_1, [-1, 32]))\n"
        "Original traceback:\n  File \"modeling_gpt2.py\", line 683, in forward\n"
        "Use tlparse to see full graph. (https://github.com/pytorch/tlparse)")
    assert import_error_message(Path("model.pt2"), exc) == (
        "TVM cannot import model.pt2: ValueError: Cannot view a tensor with shape "
        "torch.Size([2, 8, 32]) and strides (32, 64, 1) as a tensor with shape (16, 32)!; an "
        "ONNX file from onnx.export is the other route into TVM (from: <the onnx.export step>; "
        "static shapes import most often)")


def test_a_tf2onnx_graph_points_at_static_shapes_and_unrolled_rnns():
    exc = InternalError("OpNotImplemented: The following operators are not supported for "
                        "frontend ONNX: Loop")
    assert import_error_message(Path("model.onnx"), exc, producer="tf2onnx") == (
        "TVM cannot import model.onnx: InternalError: OpNotImplemented: The following operators "
        "are not supported for frontend ONNX: Loop; convert with static shapes (tf2onnx.convert"
        " dims: {batch: 1}) and Keras RNN layers with unroll=True, which tf2onnx writes as "
        "plain ops TVM imports")
    other = import_error_message(Path("model.onnx"), exc, producer="onnx.helper")
    assert other.endswith("; an ONNX file with static shapes (onnx.simplify "
                          "overwrite_input_shapes) often imports where a dynamic one does not")
