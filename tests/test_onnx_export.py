"""ONNX export with both exporters, external data, checker/shape inference, onnxsim node
counts, and the errors of an unsupported op (real torch, onnx, onnxruntime, onnxsim)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import buildgraph  # noqa: E402
from buildgraph.cli import run_cli  # noqa: E402
from buildgraph.backends.torch.model import load_model, make_inputs  # noqa: E402
from torch_helpers import MODEL, model, write_recipe  # noqa: E402

STEPS = """
dynamo: {uses: onnx.export, with: {model: tiny, output_names: [logits]}}
legacy:
  uses: onnx.export
  with: {model: tiny, exporter: legacy, opset: 17, constant_folding: false}
legacy_sim: {uses: onnx.simplify, from: legacy, with: {check_n: 2}}
dynamo_sim: {uses: onnx.simplify, from: dynamo}
external:
  uses: onnx.export
  with: {model: tiny, external_data: true, dynamic: {}}
  outputs: {model: model.onnx, data: model.onnx.data}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    write_recipe(root, STEPS)
    result = buildgraph.run(root / "r.yaml", cache_dir=root / "cache", build_dir=root / "build")
    assert result.ok, {s: r.message for s, r in result.steps.items()}
    return root, result


def ort_run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def expected(root, batch=3):
    import torch

    m = load_model("tiny", MODEL, root)
    x = make_inputs(MODEL, 11, {"batch": batch})[0]
    with torch.no_grad():
        return x, m(x).numpy()


@pytest.mark.parametrize("step", ["dynamo", "legacy", "legacy_sim", "dynamo_sim"])
def test_onnx_runs_with_a_dynamic_batch_and_matches_eager(built, step):
    import numpy as np

    root, _ = built
    x, want = expected(root, batch=3)
    got = ort_run(root / "build" / step / "model.onnx", x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    onnx.checker.check_model(str(root / "build" / step / "model.onnx"), full_check=True)


def test_metadata_names_opset_inputs_and_dynamic_dims(built):
    _, result = built
    dyn, leg = result["dynamo"].meta, result["legacy"].meta
    assert dyn["exporter"] == "dynamo" and dyn["opset"] == 18
    assert dyn["inputs"] == {"x": ["batch", 3, 16, 16]}
    assert list(dyn["outputs"]) == ["logits"]
    assert leg["exporter"] == "legacy" and leg["opset"] == 17
    assert leg["inputs"]["x"][0] == "batch" and leg["outputs"]["output"][0] == "batch"


def test_onnxsim_reports_node_counts(built):
    _, result = built
    sim = result["legacy_sim"].meta
    # the legacy exporter without constant folding leaves BatchNorm nodes: onnxsim folds them
    assert sim["nodes_before"] > sim["nodes_after"]
    assert sim["ops_changed"].get("BatchNormalization", 0) < 0
    assert result["legacy"].meta["nodes"] == sim["nodes_before"]
    assert result["dynamo_sim"].meta["nodes_before"] == result["dynamo"].meta["nodes"]


def test_external_data_sits_beside_the_model(built):
    import numpy as np

    root, result = built
    folder = root / "build" / "external"
    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data
                 if e.key == "location"}
    assert locations == {"model.onnx.data"}
    assert (folder / "model.onnx.data").stat().st_size > 1000
    x, want = expected(root, batch=1)
    np.testing.assert_allclose(ort_run(folder / "model.onnx", x), want, rtol=1e-4, atol=1e-5)
    assert result["external"].meta["inputs"] == {"x": [1, 3, 16, 16]}  # dynamic: {} is static


def test_external_data_without_a_data_output_is_a_clear_error(project, capsys):
    write_recipe(project.root, "e: {uses: onnx.export, with: {model: tiny, external_data: true}}")
    assert run_cli(["run", "r.yaml", "--build-dir", str(project.build)]) == 1
    assert "external_data: true needs a second output for the weights" in capsys.readouterr().err


def test_dynamo_below_opset_18_is_a_recipe_error(project, capsys):
    # (exporter: auto, the default, takes the legacy exporter below opset 18)
    write_recipe(project.root, "e: {uses: onnx.export, with: {model: tiny, exporter: dynamo, "
                               "opset: 17}}")
    assert run_cli(["run", "r.yaml"]) == 2
    err = capsys.readouterr().err
    assert "r.yaml:" in err and "the dynamo exporter writes opset 18 or newer" in err
    assert "exporter: legacy" in err


@pytest.mark.parametrize("exporter, needle", [
    ("dynamo", "operator aten.cummax is not supported"),
    ("legacy", "operator aten::cummax is not supported at opset 18"),
])
def test_unsupported_op_names_the_op_and_opset(project, capsys, exporter, needle):
    write_recipe(project.root, f"e: {{uses: onnx.export, with: {{model: m, exporter: {exporter}}}}}",
                 {"m": model(source="models/tiny.py:cummax", kwargs={},
                             inputs={"x": {"shape": [2, 5]}}, dims=None)})
    assert run_cli(["run", "r.yaml", "--build-dir", str(project.build)]) == 1
    err = capsys.readouterr().err
    assert needle in err and f"({exporter} exporter, opset 18)" in err
    assert "Traceback (most recent call last)" not in err
    assert not (project.build / "e").exists()


def test_onnxslim_backend_when_installed_else_named(project, capsys):
    import importlib.util

    write_recipe(project.root, "o: {uses: onnx.export, with: {model: tiny, exporter: legacy, "
                               "constant_folding: false}}\n"
                               "s: {uses: onnx.simplify, from: o, with: {backend: onnxslim}}")
    code = run_cli(["run", "r.yaml", "--build-dir", str(project.build)])
    err = capsys.readouterr().err
    if importlib.util.find_spec("onnxslim") is None:
        assert code == 1 and "backend: onnxslim needs the 'onnxslim' package" in err
        return
    assert code == 0, err
    x, want = expected(project.root, batch=2)
    import numpy as np

    np.testing.assert_allclose(ort_run(project.build / "s" / "model.onnx", x), want,
                               rtol=1e-4, atol=1e-5)
