"""TensorFlow/Keras models as sources: a Keras CNN (a factory, a .keras file, a SavedModel
directory), a Keras LSTM and a model mixing an NHWC image with a vector under a dynamic batch,
through keras.export, tf2onnx.convert, onnx.simplify, fp16 AutoCast, TVM, verify against
TensorFlow, benchmark and release; and the errors: an op tf2onnx cannot convert, a
SavedModel without the named signature, inputs that contradict the model, an RNN TVM cannot
import. Real TensorFlow, tf2onnx, onnxruntime, onnxsim, TVM and ModelOpt; one recipe, run once
per module (TensorFlow's import costs seconds per worker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed (pip install "
                    "'buildgraph[tensorflow]')")
pytest.importorskip("tf2onnx", reason="tf2onnx is not installed (pip install "
                    "'buildgraph[tensorflow]')")
pytest.importorskip("tvm", reason="TVM is not installed (pip install 'buildgraph[tvm]')")
pytest.importorskip("modelopt.onnx.autocast", reason="ModelOpt is not installed (pip install "
                    "'buildgraph[precision]')")
np = pytest.importorskip("numpy")

from conftest import REPO  # noqa: E402
from tf_helpers import recipe, save_cnn_sources, write_models  # noqa: E402

from buildgraph import api  # noqa: E402
from buildgraph.errors import RecipeError  # noqa: E402

CNN_INPUTS = "inputs: {image: {shape: [batch, 16, 16, 3]}}, dims: {batch: {min: 1, opt: 2, max: 8}}"
MODELS = f"""
cnn: {{source: models/nets.py:cnn, framework: tensorflow, seed: 7, {CNN_INPUTS}}}
cnn_file: {{source: cnn.keras, {CNN_INPUTS}}}
cnn_saved: {{source: cnn_saved, {CNN_INPUTS}}}
lstm: {{source: models/nets.py:lstm, framework: tensorflow, inputs: {{seq: {{shape: [batch, 6, 4]}}}}}}
lstm_rolled: {{source: models/nets.py:lstm, framework: tensorflow, kwargs: {{unroll: false}}, inputs: {{seq: {{shape: [batch, 6, 4]}}}}}}
mixed: {{source: models/nets.py:mixed, framework: tensorflow, inputs: {{image: {{shape: [batch, 8, 8, 3]}}, extra: {{shape: [batch, 4]}}}}}}
bad_op: {{source: models/nets.py:unsupported, framework: tensorflow, inputs: {{x: {{shape: [batch, 4]}}}}}}
no_sig: {{source: cnn_saved, signature: predict, {CNN_INPUTS}}}
"""

STEPS = """
# the CNN: factory -> SavedModel -> ONNX -> onnxsim -> TVM and fp16 -> verify against TF
cnn_savedmodel: {uses: keras.export, with: {model: cnn}}
cnn_onnx: {uses: tf2onnx.convert, from: cnn_savedmodel, with: {model: cnn}}
cnn_sim: {uses: onnx.simplify, from: cnn_onnx}
cnn_fp16: {uses: onnx.autocast, from: cnn_sim}
cnn_tvm: {uses: tvm.compile, from: cnn_sim, with: {dims: {batch: 1}}}
cnn_verify: {uses: verify, from: [cnn_savedmodel, cnn_onnx, cnn_sim, cnn_fp16, cnn_tvm], with: {model: cnn}}
cnn_bench: {uses: benchmark, from: [cnn_savedmodel, cnn_sim], with: {model: cnn, dims: {batch: [1]}, warmup: 1, runs: 3, window_s: 0.02, max_s: 2}}
cnn_release: {uses: release, from: [cnn_bench, cnn_verify, cnn_savedmodel, cnn_sim], with: {model: cnn, select: all_passed}}
# the same CNN saved by Keras as a .keras file and as a SavedModel
file_onnx: {uses: tf2onnx.convert, with: {model: cnn_file}}
file_tvm: {uses: tvm.compile, from: file_onnx, with: {dims: {batch: 1}}}
file_verify: {uses: verify, from: [file_onnx, file_tvm], with: {model: cnn_file}}
saved_onnx: {uses: tf2onnx.convert, with: {model: cnn_saved}}
saved_verify: {uses: verify, from: [saved_onnx], with: {model: cnn_saved}}
# an LSTM (unrolled: TVM has no ONNX LSTM; static for TVM)
lstm_onnx: {uses: tf2onnx.convert, with: {model: lstm}}
lstm_sim: {uses: onnx.simplify, from: lstm_onnx}
lstm_fp16: {uses: onnx.autocast, from: lstm_sim}
lstm_static: {uses: tf2onnx.convert, with: {model: lstm, dims: {batch: 1}}}
lstm_tvm: {uses: tvm.compile, from: lstm_static}
lstm_verify: {uses: verify, from: [lstm_onnx, lstm_sim, lstm_fp16, lstm_tvm], with: {model: lstm}}
rolled_onnx: {uses: tf2onnx.convert, with: {model: lstm_rolled, dims: {batch: 1}}}
rolled_tvm: {uses: tvm.compile, from: rolled_onnx}
# NHWC image + vector, dynamic batch through ONNX and TVM
mixed_onnx: {uses: tf2onnx.convert, with: {model: mixed}}
mixed_tvm: {uses: tvm.compile, from: mixed_onnx}
mixed_verify: {uses: verify, from: [mixed_onnx, mixed_tvm], with: {model: mixed, dims: {batch: [1, 3]}}}
# errors
bad_onnx: {uses: tf2onnx.convert, with: {model: bad_op}}
no_sig_onnx: {uses: tf2onnx.convert, with: {model: no_sig}}
"""

EXPECTED_FAILURES = {"rolled_tvm", "bad_onnx", "no_sig_onnx"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tf_sources")
    save_cnn_sources(root)
    path = recipe(root, MODELS, STEPS)
    result = api.run(path, cache_dir=root / ".cache", build_dir=root / "build", jobs=2,
                     keep_going=True)
    return root, path, result


def _report(result, step: str, output: str = "report") -> dict:
    return json.loads(Path(result[step].outputs[output]).read_text())


def _errors(report: dict) -> dict:
    return {c: e["outputs"][next(iter(e["outputs"]))]["max_abs"]
            for c, e in report["candidates"].items()}


def test_every_step_builds_and_the_expected_ones_fail(built):
    _, _, result = built
    failed = {s for s, r in result.steps.items() if not r.ok}
    assert failed == EXPECTED_FAILURES, {s: result[s].message for s in failed}


def test_the_keras_cnn_verifies_against_tensorflow_in_every_form(built):
    _, _, result = built
    report = _report(result, "cnn_verify")
    assert report["reference"]["runtime"] == "tensorflow"
    assert report["reference"]["framework"] == "tensorflow"
    assert report["reference"]["form"] == "keras"
    assert report["outputs"] == ["logits"]
    assert report["inputs"][0]["shapes"] == {"image": [2, 16, 16, 3]}  # NHWC as declared
    errors = _errors(report)
    assert set(errors) == {"cnn_savedmodel", "cnn_onnx", "cnn_sim", "cnn_fp16", "cnn_tvm"}
    assert report["candidates"]["cnn_savedmodel"]["runtime"] == "tensorflow"
    for cand in ("cnn_savedmodel", "cnn_onnx", "cnn_sim", "cnn_tvm"):
        assert errors[cand] < 1e-5, (cand, errors)
    assert report["candidates"]["cnn_fp16"]["precision"] == "fp16"
    assert errors["cnn_fp16"] < 5e-2
    bench = _report(result, "cnn_bench")
    assert bench["reference_runtime"] == "tensorflow"
    # the baseline of speedups: the Keras model in TensorFlow, built in a runner of its own
    assert bench["reference"]["runtime"] == "tensorflow"
    assert bench["reference"]["details"]["form"] == "keras"
    assert bench["reference"]["results"][0]["p50_ms"] > 0
    assert bench["candidates"]["cnn_savedmodel"]["runtime"] == "tensorflow"
    manifest = _report(result, "cnn_release", "manifest")
    assert manifest["verified_against"]["cnn_verify"]["runtime"] == "tensorflow"
    shipped = json.loads((Path(result["cnn_release"].outputs["bundle"]) / "manifest.json")
                         .read_text())
    assert {v["reference"]["runtime"] for a in shipped["artifacts"]
            for v in a["verification"]} == {"tensorflow"}


def test_the_release_bundle_loads_a_savedmodel_with_tensorflow_alone(built):
    _, _, result = built
    bundle = Path(result["cnn_release"].outputs["bundle"])
    loader = bundle / "loaders" / "load_tensorflow.py"
    assert loader.is_file()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, str(loader), "cnn_savedmodel"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1].startswith(
        "cnn_savedmodel (tensorflow): inputs [2, 16, 16, 3] -> outputs [2, 10]"), proc.stdout


def test_tf2onnx_keeps_nhwc_and_names_the_dynamic_dims_after_the_recipe(built):
    _, _, result = built
    meta = result["cnn_onnx"].meta
    assert meta["inputs"] == {"image": ["batch", 16, 16, 3]}
    assert list(meta["outputs"]) == ["output_0"]  # a SavedModel's output name
    assert result["file_onnx"].meta["inputs"] == {"image": ["batch", 16, 16, 3]}
    assert list(result["file_onnx"].meta["outputs"]) == ["logits"]  # the Keras layer's name
    assert result["lstm_static"].meta["inputs"] == {"seq": [1, 6, 4]}


def test_a_keras_file_and_a_savedmodel_are_their_own_references(built):
    root, _, result = built
    expected = np.load(root / "cnn_expected.npz")
    for step, form in (("file_verify", "keras"), ("saved_verify", "savedmodel")):
        report = _report(result, step)
        assert report["reference"]["runtime"] == "tensorflow"
        assert report["reference"]["form"] == form
        assert all(e < 1e-5 for e in _errors(report).values()), (step, _errors(report))
    assert _report(result, "saved_verify")["reference"]["signature"] == "serving_default"
    # the reference computes what Keras computes for the model that was saved
    from buildgraph.engine.runtime import RuntimeContext, load_runtime

    spec = {"inputs": {"image": {"shape": ["batch", 16, 16, 3]}}}
    runtime = load_runtime(result["file_onnx"].outputs["model"], RuntimeContext(model_spec=spec),
                           "onnxruntime")
    got = runtime.run([expected["x"]])[0]
    assert np.abs(got - expected["logits"]).max() < 1e-5


def test_the_lstm_converts_verifies_and_compiles_static(built):
    _, _, result = built
    report = _report(result, "lstm_verify")
    errors = _errors(report)
    assert set(errors) == {"lstm_onnx", "lstm_sim", "lstm_fp16", "lstm_tvm"}
    for cand in ("lstm_onnx", "lstm_sim", "lstm_tvm"):
        assert errors[cand] < 1e-5, (cand, errors)
    assert report["candidates"]["lstm_tvm"]["inputs"] == {"batch": 1}
    message = result["rolled_tvm"].message
    # a rolled LSTM becomes an ONNX Loop (static) or LSTM (dynamic): TVM imports neither
    assert "OpNotImplemented" in message and ("Loop" in message or "LSTM" in message), message
    assert "unroll=True" in message and "dims: {batch: 1}" in message, message


def test_nhwc_and_a_vector_under_one_dynamic_batch(built):
    _, _, result = built
    report = _report(result, "mixed_verify")
    assert [i["shapes"] for i in report["inputs"]][:2] == [
        {"image": [1, 8, 8, 3], "extra": [1, 4]}, {"image": [3, 8, 8, 3], "extra": [3, 4]}]
    errors = _errors(report)
    assert errors["mixed_onnx"] < 1e-5 and errors["mixed_tvm"] < 1e-5, errors
    assert "inputs" not in report["candidates"]["mixed_tvm"]  # dynamic: took every batch
    assert result["mixed_onnx"].meta["inputs"] == {"image": ["batch", 8, 8, 3],
                                                   "extra": ["batch", 4]}


def test_an_op_tf2onnx_cannot_convert_is_named_with_the_opset(built):
    _, _, result = built
    assert result["bad_onnx"].message.startswith(
        "tf2onnx cannot convert TensorFlow op 'Lgamma' at opset 17 (node "), \
        result["bad_onnx"].message


def test_a_savedmodel_without_the_signature_lists_those_it_has(built):
    _, _, result = built
    assert "model 'no_sig': the SavedModel cnn_saved has no signature 'predict' (it has: " \
           "serve, serving_default)" in result["no_sig_onnx"].message, \
        result["no_sig_onnx"].message


def test_a_rerun_is_cached_and_imports_no_tensorflow(built):
    root, path, _ = built
    code = ("import sys, json\nfrom buildgraph.cli import run_cli\n"
            f"run_cli(['plan', {str(path)!r}])\n"
            f"run_cli(['run', {str(path)!r}, '-k'])\n"
            "print(json.dumps(sorted(m for m in ('tensorflow', 'keras', 'tf2onnx', 'torch', "
            "'onnx', 'onnxruntime', 'tvm') if m in sys.modules)))")
    env = dict(os.environ, BUILDGRAPH_CACHE_DIR=str(root / ".cache"),
               BUILDGRAPH_BUILD_DIR=str(root / "build"),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, env=env, timeout=600)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [], proc.stdout + proc.stderr
    assert "0 built" in proc.stdout + proc.stderr, proc.stdout[-2000:]


def test_inputs_that_contradict_the_keras_model_are_one_error(tmp_path: Path):
    write_models(tmp_path)
    path = recipe(tmp_path, """
        m: {source: models/nets.py:cnn, framework: tensorflow, inputs: {image: {shape: [batch, 3, 16, 16]}}}
        """, "o: {uses: tf2onnx.convert, with: {model: m}}", name="nchw")
    result = api.run(path, cache_dir=tmp_path / ".cache", build_dir=tmp_path / "build")
    message = result["o"].message
    # a recipe error found when the model loads: located at the step, like one from plan
    assert message.startswith(f"{path}:5:"), message
    assert ("steps.o.with: model 'm': the Keras model's inputs do not match the recipe's "
            "inputs: input 'image' dim 1: the recipe says 3, the model 16; input 'image' dim 3: "
            "the recipe says 16, the model 3\n  hint: the model's inputs: image[?, 16, 16, 3] "
            "float32; declare them in the model's own layout (Keras images are NHWC") in message


def test_resolve_time_errors_of_tensorflow_models(tmp_path: Path):
    write_models(tmp_path)

    def error(models: str, steps: str = "o: {uses: tf2onnx.convert, with: {model: m}}") -> str:
        path = recipe(tmp_path, models, steps, name="bad")
        with pytest.raises(RecipeError) as info:
            api.plan(path, cache_dir=tmp_path / ".cache", build_dir=tmp_path / "build")
        return info.value.message + " | hint: " + str(info.value.hint)

    message = error("m: {source: models/nets.py:cnn, inputs: {image: {shape: [1, 16, 16, 3]}}}")
    assert message.startswith("tf2onnx.convert takes a TensorFlow/Keras model; model 'm' is "
                              "a PyTorch model | hint: a factory returning a tf.keras.Model "
                              "says framework: tensorflow"), message
    message = error("m: {source: models/nets.py:cnn, inputs: {image: {shape: [1, 16, 16, 3]}}}",
                    "v: {uses: verify, from: [], with: {model: m}}")
    assert message.startswith("model 'm': models/nets.py:cnn imports TensorFlow/Keras, not "
                              "torch"), message
    message = error("m: {source: models/nets.py:cnn, framework: tensorflow}")
    assert message.startswith("model 'm' declares no inputs; a TensorFlow model needs them")
    assert "NHWC" in message
    message = error("m: {source: models/nets.py:cnn, framework: tensorflow, "
                    "inputs: {image: {shape: [1, 16, 16, 3]}}}",
                    "o: {uses: onnx.export, with: {model: m}}")
    assert message.startswith("onnx.export takes a PyTorch model; model 'm' is a TensorFlow "
                              "model"), message


def test_a_savedmodel_is_rebuilt_bit_for_bit(built):
    """Keras's SavedModel export gave other bytes in every process (variable order from object
    addresses, a random UUID in fingerprint.pb, function names from a process-wide counter);
    a forced rebuild, in a fresh worker of another run, gives the same files."""
    root, path, result = built
    out = Path(result["cnn_savedmodel"].outputs["model"])
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert {str(p) for p in before} >= {"saved_model.pb", "fingerprint.pb"}
    again = api.run(path, ["cnn_savedmodel"], cache_dir=root / ".cache",
                    build_dir=root / "build", force=["cnn_savedmodel"])
    assert again["cnn_savedmodel"].status == "built"
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after.keys() == before.keys()
    assert [str(p) for p in before if before[p] != after[p]] == []
