"""An ONNX file as a model source (written with onnx.helper: no torch anywhere): simplify,
TVM, fp16 AutoCast, verify against onnxruntime (fp32, graph optimizations off), benchmark and
release; its inputs from the graph; its external data keyed; the errors of a recipe that
contradicts the file or hands a model to a step that cannot take it. Real onnx, onnxruntime,
onnxsim, TVM and ModelOpt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxsim")
np = pytest.importorskip("numpy")

from conftest import REPO  # noqa: E402
from onnx_helpers import recipe, reference_logits, tiny_cnn  # noqa: E402

from buildgraph import api  # noqa: E402
from buildgraph.errors import RecipeError  # noqa: E402

MODELS = """
tiny: {source: models/tiny.onnx, dims: {N: {min: 1, opt: 2, max: 8}}}
"""

STEPS = """
sim: {uses: onnx.simplify, with: {model: tiny}}
lib: {uses: tvm.compile, with: {model: tiny, dims: {N: 1}}}
lib_dyn: {uses: tvm.compile, from: sim}
fp16: {uses: onnx.autocast, with: {model: tiny}}
verify: {uses: verify, from: [sim, lib, lib_dyn, fp16], with: {model: tiny}}
verify_vs_sim: {uses: verify, from: [sim, lib_dyn], with: {model: tiny, reference: sim, dims: {N: [1, 3]}}}
bench: {uses: benchmark, from: [sim, lib, fp16], with: {model: tiny, dims: {N: [1]}, warmup: 1, runs: 3, window_s: 0.02, max_s: 2}}
release: {uses: release, from: [bench, verify, sim, lib, fp16]}
"""


def _needs(*modules: str) -> None:
    for m in modules:
        pytest.importorskip(m, reason=f"{m} is not installed (pip install 'buildgraph[all]')")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    _needs("tvm", "modelopt.onnx.autocast")
    root = tmp_path_factory.mktemp("onnx_source")
    tiny_cnn(root / "models" / "tiny.onnx", external_data=True)
    path = recipe(root, STEPS, MODELS)
    result = api.run(path, cache_dir=root / ".cache", build_dir=root / "build", jobs=2)
    return root, path, result


def _report(result, step: str, output: str = "report") -> dict:
    return json.loads(Path(result[step].outputs[output]).read_text())


def test_an_onnx_file_is_simplified_compiled_verified_benchmarked_and_released(built):
    root, _, result = built
    assert result.ok, {s: r.message for s, r in result.steps.items() if not r.ok}
    report = _report(result, "verify")
    assert report["reference"]["runtime"] == "onnxruntime.fp32"
    assert report["reference"]["framework"] == "onnx"
    assert report["reference"]["graph_optimization"] == "off"
    cands = report["candidates"]
    assert {c: e["runtime"] for c, e in cands.items()} == {
        "sim": "onnxruntime", "lib": "tvm.relax", "lib_dyn": "tvm.relax", "fp16": "onnxruntime"}
    assert cands["fp16"]["precision"] == "fp16"
    for cand in ("sim", "lib", "lib_dyn"):
        assert cands[cand]["outputs"]["logits"]["max_abs"] < 1e-5, cand
    assert cands["fp16"]["outputs"]["logits"]["max_abs"] < 5e-2
    bench = _report(result, "bench")
    assert bench["reference_runtime"] == "onnxruntime.fp32"
    # the baseline of speedups: the file on unoptimised onnxruntime, in a runner of its own
    assert bench["reference"]["runtime"] == "onnxruntime.fp32"
    assert bench["reference"]["results"][0]["p50_ms"] > 0
    assert bench["reference"]["details"]["graph_optimization"] == "off"
    manifest = _report(result, "release", "manifest")
    assert manifest["chosen"] in ("sim", "lib", "fp16")
    assert manifest["verified_against"]["verify"]["runtime"] == "onnxruntime.fp32"
    shipped = json.loads((Path(result["release"].outputs["bundle"]) / "manifest.json").read_text())
    assert {v["reference"]["runtime"] for a in shipped["artifacts"]
            for v in a["verification"]} == {"onnxruntime.fp32"}


def test_the_reference_is_the_file_itself_on_unoptimised_onnxruntime(built):
    root, _, result = built
    with np.load(result["verify"].outputs["tensors"]) as t:
        x, ref = t["random0.x"], t["random0.reference.logits"]
    # the model's own shapes: N is dynamic in the file, drawn at its opt size 2
    assert x.shape == (2, 3, 16, 16) and x.dtype == np.float32
    assert np.array_equal(ref, reference_logits(root / "models" / "tiny.onnx", x))


def test_inputs_and_dims_come_from_the_graph(built):
    _, _, result = built
    report = _report(result, "verify")
    assert report["inputs"][0]["shapes"] == {"x": [2, 3, 16, 16]}
    assert report["outputs"] == ["logits"]


def test_verify_against_an_upstream_artifact(built):
    _, _, result = built
    report = _report(result, "verify_vs_sim")
    assert report["reference"]["runtime"] == "onnxruntime.fp32"
    assert report["reference"]["step"] == "sim"
    assert list(report["candidates"]) == ["lib_dyn"]  # the reference is not a candidate
    assert [i["shapes"]["x"][0] for i in report["inputs"]] == [1, 3, 1, 3]


def test_the_file_and_its_external_data_are_in_the_key(built):
    root, path, _ = built
    data = root / "models" / "tiny.onnx.data"
    before = data.read_bytes()
    try:
        data.write_bytes(before[:-4] + b"\x00\x00\x80\x3f")  # the last bias becomes 1.0
        decisions = api.plan(path, cache_dir=root / ".cache", build_dir=root / "build")
        assert decisions["sim"].action == "run" and decisions["lib"].action == "run"
        assert any("tiny.onnx.data" in r for r in decisions["sim"].reasons), \
            decisions["sim"].reasons
    finally:
        data.write_bytes(before)
    decisions = api.plan(path, cache_dir=root / ".cache", build_dir=root / "build")
    assert {d.action for d in decisions.values()} == {"cached"}


def _plan_error(root: Path, models: str, steps: str = "s: {uses: onnx.simplify, "
                "with: {model: m}}") -> str:
    path = recipe(root, steps, models, name="bad")
    with pytest.raises(RecipeError) as info:
        api.plan(path, cache_dir=root / ".cache", build_dir=root / "build")
    return info.value.message + " | hint: " + str(info.value.hint)


def test_recipe_inputs_may_rename_or_fix_dynamic_dims(tmp_path: Path):
    from buildgraph.backends.onnx.source import describe_onnx_source

    tiny_cnn(tmp_path / "m.onnx")
    models = {"m": {"source": "m.onnx", "inputs": {"x": {"shape": ["batch", 3, 16, 16]}}}}
    files, data = describe_onnx_source("m", models, tmp_path)
    assert data["model"]["inputs"] == [["x", {"shape": ["batch", 3, 16, 16],
                                              "dtype": "float32", "min": None, "max": None}]]
    assert set(files) == {"model:m:file"}
    models["m"]["inputs"]["x"]["shape"][0] = 4
    assert describe_onnx_source("m", models, tmp_path)[1]["model"]["inputs"][0][1]["shape"] \
        == [4, 3, 16, 16]


def test_inputs_that_contradict_the_file_name_every_difference(tmp_path: Path):
    tiny_cnn(tmp_path / "m.onnx")
    message = _plan_error(tmp_path, """
        m: {source: m.onnx, inputs: {img: {shape: [N, 3, 16, 16]}}}""")
    assert message.startswith(
        "model 'm': m.onnx's inputs do not match the recipe's inputs: the recipe declares "
        "input 'img', which the file does not have; the file has input "
        "'x' [N, 3, 16, 16] float32, which the recipe does not declare"), message
    message = _plan_error(tmp_path, """
        m: {source: m.onnx, inputs: {x: {shape: [N, 4, 16], dtype: float16}}}""")
    assert "input 'x': the recipe gives 3 dims [N, 4, 16], the file 4 [N, 3, 16, 16]" in message
    assert "input 'x': the recipe says float16, the file float32" in message
    message = _plan_error(tmp_path, """
        m: {source: m.onnx, inputs: {x: {shape: [N, 4, h, 16]}}}""")
    assert ("input 'x' dim 1: the recipe says 4, the file 3; input 'x' dim 2: the recipe "
            "names it 'h' (dynamic), but the file fixes it to 16") in message
    assert "hint: the file's inputs: x[N, 3, 16, 16] float32" in message


def test_the_error_points_at_the_recipe(tmp_path: Path):
    tiny_cnn(tmp_path / "m.onnx")
    recipe(tmp_path, "s: {uses: onnx.simplify, with: {model: m}}",
           "m: {source: m.onnx, inputs: {x: {shape: [N, 3, 16]}}}", name="bad")
    proc = subprocess.run([sys.executable, "-m", "buildgraph", "plan", "bad.yaml"],
                          cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: bad.yaml:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_steps_refuse_a_model_of_another_framework_and_say_what_takes_it(tmp_path: Path):
    tiny_cnn(tmp_path / "m.onnx")
    (tmp_path / "net.py").write_text("import torch\n\ndef net():\n    return "
                                     "torch.nn.Linear(2, 2)\n")
    message = _plan_error(tmp_path, "m: {source: m.onnx}",
                          "e: {uses: onnx.export, with: {model: m}}")
    assert message.startswith("onnx.export takes a PyTorch model; model 'm' is an ONNX file")
    assert "take it directly (with: {model: m})" in message
    message = _plan_error(tmp_path, "t: {source: net.py:net, inputs: {x: {shape: [1, 2]}}}",
                          "c: {uses: tvm.compile, with: {model: t}}")
    assert message.startswith("tvm.compile: model 't' is a PyTorch model, not an ONNX file: "
                              "export it with an onnx.export step"), message
    message = _plan_error(tmp_path, "m: {source: m.onnx, weights: w.pt}")
    assert message.startswith("model 'm': weights: does not apply to an ONNX file")
    message = _plan_error(tmp_path, "m: {source: m.onnx}",
                          "c: {uses: tvm.compile, with: {model: mm}}")
    assert message.startswith("model: 'mm' is neither a model of the recipe nor a file "
                              "(did you mean 'm'?)"), message


def test_missing_external_data_is_a_recipe_error(tmp_path: Path):
    tiny_cnn(tmp_path / "m.onnx", external_data=True)
    (tmp_path / "m.onnx.data").unlink()
    message = _plan_error(tmp_path, "m: {source: m.onnx}")
    assert message.startswith("model 'm': m.onnx keeps weights in external data file "
                              "'m.onnx.data', which does not exist beside it")


NO_TORCH = """
import sys


class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None


sys.meta_path.insert(0, _Refuse())
"""


def test_an_onnx_model_builds_and_verifies_without_torch(tmp_path: Path):
    """Nothing on the ONNX route needs torch (ModelOpt does: onnx.autocast/quantize are left
    out); a sitecustomize in every process of the run refuses to import it."""
    _needs("tvm")
    tiny_cnn(tmp_path / "m.onnx")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NO_TORCH)
    recipe(tmp_path, """
        sim: {uses: onnx.simplify, with: {model: m}}
        lib: {uses: tvm.compile, with: {model: m, dims: {N: 1}}}
        verify: {uses: verify, from: [sim, lib], with: {model: m, random: 2}}
        bench: {uses: benchmark, from: [sim], with: {model: m, runs: 2, warmup: 0, window_s: 0.02, max_s: 1}}
        """, "m: {source: m.onnx}", name="nt")
    env = dict(os.environ, BUILDGRAPH_CACHE_DIR=str(tmp_path / ".cache"),
               PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(REPO),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "buildgraph", "run", "nt.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "build" / "nt" / "verify" / "report.json").read_text())
    assert report["passed"] and report["reference"]["runtime"] == "onnxruntime.fp32"
    bench = json.loads((tmp_path / "build" / "nt" / "bench" / "benchmark.json").read_text())
    assert bench["reference"]["runtime"] == "onnxruntime.fp32"  # its runner needs no torch


def test_every_onnx_step_describes_the_model_file_it_takes(tmp_path: Path):
    """``with: {model: m}`` makes the file and its external data inputs of the step (keyed
    by content); without it, the description is what it always was."""
    from buildgraph.engine.executor import DescribeContext, load_executor

    tiny_cnn(tmp_path / "m.onnx", external_data=True)
    models = {"m": {"source": "m.onnx"}}
    ctx = DescribeContext(recipe_dir=tmp_path, models=models)
    want = {"model:m:file": (tmp_path / "m.onnx").resolve(),
            "model:m:data:m.onnx.data": (tmp_path / "m.onnx.data").resolve()}
    for kind, extra in (("onnx.simplify", {}), ("onnx.autocast", {}),
                        ("onnx.quantize", {"calibration": "${in.c.data}"}),
                        ("tvm.compile", {"target": "native"}),
                        ("tvm.tune", {"target": "native"})):
        cls = load_executor(kind)
        described = cls().describe(cls.Params.model_validate({"model": "m", **extra}), ctx)
        assert {k: v for k, v in described.inputs.items() if k.startswith("model:")} == want, \
            kind
        plain = cls().describe(cls.Params.model_validate(extra), ctx)
        assert not [k for k in plain.inputs if k.startswith("model:")], kind


def test_verify_reference_must_be_an_upstream_step(tmp_path: Path):
    tiny_cnn(tmp_path / "m.onnx")
    message = _plan_error(tmp_path, "m: {source: m.onnx}", """
        s: {uses: onnx.simplify, with: {model: m}}
        v: {uses: verify, from: s, with: {model: m, reference: ss}}""")
    assert message.startswith("reference: 'ss' is not an upstream step (did you mean 's'?)")
