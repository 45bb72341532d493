"""``verify``: metrics and tolerances (numpy), and whole runs against real artifacts that pass,
and ones that must fail (real torch, onnxruntime)."""

from __future__ import annotations

import json
import re

import pytest

np = pytest.importorskip("numpy")

from buildgraph.backends.evaluate.verify import PRECISION_DEFAULTS, VerifyParams, compare, resolve_tolerance, statistic

FP32 = {**PRECISION_DEFAULTS["fp32"], "min_top1": None, "min_topk": None}


def test_identical_outputs_pass_with_zero_error():
    ref = [np.arange(12, dtype=np.float32).reshape(3, 4)]
    m = compare(ref, [r.copy() for r in ref], FP32, topk=2, classifier=None)
    assert m["passed"] and m["max_abs"] == 0 and m["cosine"] == pytest.approx(1.0)
    assert m["top1"] == 1.0 and m["topk"] == 1.0 and m["k"] == 2
    assert m["min_passing"]["atol"] == 0.0


def test_error_beyond_tolerance_fails_and_gives_the_passing_atol():
    ref = [np.ones((2, 5), dtype=np.float32)]
    got = [ref[0] + np.array([[0, 0, 0, 0, 0.01], [0] * 5], dtype=np.float32)]
    tol = {**FP32, "atol": 1e-4, "rtol": 0.0}
    m = compare(ref, got, tol, topk=5, classifier=False)
    assert not m["passed"]
    assert m["max_abs"] == pytest.approx(0.01, rel=1e-3)
    assert m["min_passing"]["atol"] == pytest.approx(0.01, rel=1e-3)
    assert m["min_passing"]["rtol"] == pytest.approx(0.00990, rel=1e-2)
    assert "> atol 0.0001" in m["failures"][0]
    assert "top1" not in m  # classifier: false
    # with the suggested atol it passes
    assert compare(ref, got, {**tol, "atol": m["min_passing"]["atol"]}, 5, False)["passed"]


def test_statistic_quantile_ignores_a_single_outlier():
    ref = [np.zeros(1000, dtype=np.float64)]
    got = [ref[0].copy()]
    got[0][0] = 1.0
    strict = compare(ref, got, {**FP32, "rtol": 0.0, "min_cosine": None}, 5, False)
    loose = compare(ref, got, {**FP32, "rtol": 0.0, "statistic": "p99", "min_cosine": None},
                    5, False)
    assert not strict["passed"] and loose["passed"] and loose["stat_value"] == 0.0
    assert statistic([1, 2, 3, 4], "median") == 2.5 and statistic([1, 2, 3], "mean") == 2.0


def test_nan_and_shape_mismatch_fail():
    ref = [np.ones((2, 2), dtype=np.float32)]
    nan = compare(ref, [np.full((2, 2), np.nan, dtype=np.float32)], FP32, 5, False)
    assert not nan["passed"] and "NaN" in nan["failures"][0]
    shape = compare(ref, [np.ones((2, 3), dtype=np.float32)], FP32, 5, False)
    assert not shape["passed"] and shape["failures"] == ["shape [2, 3] vs reference [2, 2]"]


def test_cosine_and_top1_bounds():
    rng = np.random.default_rng(0)
    ref = [rng.normal(size=(8, 10))]
    got = [ref[0] * -1]
    m = compare(ref, got, {**FP32, "atol": None, "rtol": None, "min_top1": 0.5}, 3, True)
    assert not m["passed"]
    assert m["cosine"] == pytest.approx(-1.0) and m["top1"] == 0.0
    assert any(f.startswith("cosine") for f in m["failures"])
    assert any(f.startswith("top-1 agreement") for f in m["failures"])


def test_tolerance_layers_precision_defaults_then_default_candidate_output():
    params = VerifyParams.model_validate({
        "model": "m",
        "tolerances": {"default": {"rtol": 0.5},
                       "onnx": {"precision": "fp16", "outputs": {"logits": {"atol": 0.2}}},
                       "trt": {"precision": "int8", "min_top1": 0.9, "atol": "off"}}})
    fp32 = resolve_tolerance(params, "ts", "logits", "fp32")
    assert fp32["atol"] == 1e-4 and fp32["rtol"] == 0.5 and fp32["precision"] == "fp32"
    fp16 = resolve_tolerance(params, "onnx", "logits", "fp32")
    assert fp16["precision"] == "fp16" and fp16["atol"] == 0.2 and fp16["rtol"] == 0.5
    assert fp16["min_cosine"] == PRECISION_DEFAULTS["fp16"]["min_cosine"]
    assert resolve_tolerance(params, "onnx", "other", "fp32")["atol"] == 5e-2
    int8 = resolve_tolerance(params, "trt@a", "logits", "fp32")  # matrix ids use the base id
    assert int8["atol"] is None and int8["min_top1"] == 0.9 and int8["statistic"] == "p99"
    detected = resolve_tolerance(params, "x", "y", "bf16")
    assert detected["precision"] == "bf16" and detected["atol"] == 1e-1


def test_bad_statistic_is_rejected():
    with pytest.raises(Exception, match="statistic must be max, mean, median or pNN"):
        VerifyParams.model_validate({"model": "m", "tolerances": {"a": {"statistic": "p"}}})


# --- whole runs --------------------------------------------------------------------------------

torch = pytest.importorskip("torch")

import buildgraph  # noqa: E402
from buildgraph.cli import run_cli  # noqa: E402
from torch_helpers import write_recipe  # noqa: E402

STEPS = """
state: {uses: torch.save, with: {model: tiny}}
ts: {uses: torchscript, with: {model: tiny}}
ep: {uses: torch.export, with: {model: tiny}}
onnx: {uses: onnx.export, with: {model: tiny, exporter: legacy}}
sim: {uses: onnx.simplify, from: onnx, with: {check_n: 0}}
check:
  uses: verify
  from: [state, ts, ep, onnx, sim]
  with: {model: tiny, random: 3, dims: {batch: [1, 4]}, topk: 3}
"""


@pytest.fixture(scope="module")
def verified(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    write_recipe(root, STEPS)
    np.savez(root / "sample.npz", x=np.linspace(-1, 1, 2 * 3 * 16 * 16, dtype=np.float32)
             .reshape(2, 3, 16, 16))
    (root / "r.yaml").write_text((root / "r.yaml").read_text().replace(
        '"dims":', '"sample_inputs": "sample.npz", "dims":'))
    result = buildgraph.run(root / "r.yaml", cache_dir=root / "cache", build_dir=root / "build")
    assert result.ok, {s: r.message for s, r in result.steps.items()}
    return root, result


def test_report_covers_every_candidate_output_and_input(verified):
    root, result = verified
    report = json.loads((root / "build/check/report.json").read_text())
    assert report["passed"] is True and report["schema"] == 1
    assert set(report["candidates"]) == {"state", "ts", "ep", "onnx", "sim"}
    assert [i["name"] for i in report["inputs"]] == ["random0", "random1", "random2", "sample"]
    assert [i["shapes"]["x"][0] for i in report["inputs"]] == [1, 4, 1, 2]
    runtimes = {c: e["runtime"] for c, e in report["candidates"].items()}
    assert runtimes == {"state": "torch.save", "ts": "torchscript", "ep": "torch.export",
                        "onnx": "onnxruntime", "sim": "onnxruntime"}
    assert report["candidates"]["state"]["form"] == "state_dict"
    out = report["candidates"]["onnx"]["outputs"]["output"]
    for key in ("max_abs", "max_rel", "mean_abs", "statistic", "stat_value", "cosine", "top1",
                "topk", "min_passing", "tolerance", "passed"):
        assert key in out
    assert out["k"] == 3 and out["max_abs"] < 1e-4 and out["cosine"] > 0.9999
    assert report["candidates"]["state"]["outputs"]["output"]["max_abs"] == 0.0
    assert result["check"].meta["passed"] is True


def test_tensors_hold_inputs_and_reference_outputs(verified):
    root, _ = verified
    with np.load(root / "build/check/tensors.npz") as data:
        assert {"random0.x", "random0.reference.output", "sample.x",
                "sample.reference.output"} <= set(data.keys())
        assert data["sample.x"][0, 0, 0, 0] == -1.0
        assert data["random1.reference.output"].shape == (4, 10)


def test_a_broken_artifact_fails_the_step_with_the_worst_errors(project, capsys):
    (project.root / "perturb.py").write_text(
        "import torch\n\n"
        "def perturb(inputs, outputs):\n"
        "    state = torch.load(inputs['state.model'], weights_only=True)\n"
        "    state['fc.bias'] += 0.05\n"
        "    torch.save(state, outputs['model'])\n")
    write_recipe(project.root, """
state: {uses: torch.save, with: {model: tiny}}
broken: {uses: python, from: state, with: {function: perturb.py:perturb}, outputs: {model: bad.pt}}
onnx: {uses: onnx.export, with: {model: tiny, exporter: legacy}}
check: {uses: verify, from: [broken, onnx], with: {model: tiny, random: 2}}
""")
    assert run_cli(["run", "r.yaml", "--build-dir", str(project.build)]) == 1
    err = capsys.readouterr().err
    assert "verification failed: broken.output:" in err
    assert re.search(r"passes with atol >= 0\.0(5|49)", err)
    assert "Traceback (most recent call last)" not in err
    log = (project.build / ".logs" / "check.log").read_text()
    table = log[log.index("worst errors"):]
    assert table.index("broken") < table.index("onnx")  # worst first
    assert "FAIL" in table and ">= 0.05" in table
    assert not (project.build / "check").exists()  # no report of a failed verification ships


def test_tolerance_contract_per_candidate(project, capsys):
    write_recipe(project.root, """
onnx: {uses: onnx.export, with: {model: tiny, exporter: legacy}}
check:
  uses: verify
  from: onnx
  with: {model: tiny, random: 1, tolerances: {onnx: {atol: 0, rtol: 0}}}
""")
    assert run_cli(["run", "r.yaml"]) == 1
    err = capsys.readouterr().err
    assert "verification failed: onnx.output: max(|err| - 0*|ref|)" in err
    assert "> atol 0; passes with atol >= " in err


def test_unknown_candidate_and_tolerance_keys_are_recipe_errors_before_any_build(project,
                                                                                 capsys):
    import re

    write_recipe(project.root, """
state: {uses: torch.save, with: {model: tiny}}
check: {uses: verify, from: state, with: {model: tiny, tolerances: {stat: {atol: 1}}}}
""")
    assert run_cli(["run", "r.yaml"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"r\.yaml:\d+:\d+: steps\.check\.with: tolerances: 'stat' names no "
                     r"candidate \(did you mean 'state'\?\)", err), err
    assert not (project.root / "build").exists()  # reported before the upstream was built
    write_recipe(project.root, """
state: {uses: torch.save, with: {model: tiny}}
check: {uses: verify, from: state, with: {model: tiny, candidates: [stat]}}
""")
    assert run_cli(["plan", "r.yaml"]) == 2
    assert "candidates: 'stat' is not an upstream step (did you mean 'state'?)" in \
        capsys.readouterr().err
