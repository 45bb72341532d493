"""Which framework a recipe model comes from, and numpy example inputs for models that are not
PyTorch (pure functions: no torch, TensorFlow or onnx)."""

from __future__ import annotations

from pathlib import Path

import pytest

np = pytest.importorskip("numpy")

from buildgraph.backends.onnx.modelspec import (framework_of_data, make_inputs,  # noqa: E402
                                                model_framework)


def test_the_framework_comes_from_the_source_unless_given(tmp_path: Path):
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "plain").mkdir()
    cases = {"m.onnx": "onnx", "M.ONNX": "onnx", "m.keras": "tensorflow", "m.h5": "tensorflow",
             "sm": "tensorflow", "plain": "torch", "m.pt": "torch", "m.pt2": "torch",
             "nets.py:cnn": "torch", "torchvision:resnet18": "torch"}
    for source, framework in cases.items():
        assert model_framework({"source": source}, tmp_path) == framework, source
    assert model_framework({"source": "nets.py:cnn", "framework": "tensorflow"},
                           tmp_path) == "tensorflow"
    assert model_framework({"source": "sm"}) == "torch"  # no directory to look at
    assert framework_of_data({"model": {"name": "m"}}) == "torch"  # PyTorch data predates it
    assert framework_of_data({"model": {"framework": "onnx"}}) == "onnx"


def test_numpy_inputs_are_seeded_typed_and_shaped():
    spec = {"inputs": {"image": {"shape": ["batch", 4, 4, 3]},
                       "ids": {"shape": ["batch", 5], "dtype": "int64", "max": 3},
                       "scale": {"shape": [1], "dtype": "float16", "min": 2, "max": 4},
                       "mask": {"shape": [2], "dtype": "bool"}},
            "dims": {"batch": {"min": 1, "opt": 3, "max": 8}}}
    a = make_inputs(spec, 5)
    b = make_inputs(spec, 5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], make_inputs(spec, 6)[0])
    assert [x.shape for x in a] == [(3, 4, 4, 3), (3, 5), (1,), (2,)]
    assert [x.dtype.name for x in a] == ["float32", "int64", "float16", "bool"]
    assert a[1].min() >= 0 and a[1].max() <= 3
    assert 2 <= float(a[2][0]) <= 4
    assert make_inputs(spec, 5, {"batch": 1})[0].shape == (1, 4, 4, 3)
