"""A spread of Hugging Face architectures (tests/hf_archs.py: text encoders, decoder-only LMs,
a T5 encoder, vision transformers and CNNs, audio encoders) through ONNX (exporter: auto),
torch.export, TorchScript trace and tvm.compile from both with dims bound, each verified
against eager. Real transformers, torch, onnxruntime, onnxslim and TVM; nothing downloaded.

One recipe builds them all (the model of each is built once per worker and shared by its
forms); the breadth beyond it is behind the slow marker."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tvm")
pytest.importorskip("onnxslim")

import buildgraph  # noqa: E402
from hf_archs import ARCHS, FORMS, SLOW_ARCHS, arch_recipe  # noqa: E402

# beside the spread: what the mechanism promises, on models the recipe builds anyway
EXTRA_STEPS = """
  x_t5_dynamo: {uses: onnx.export, with: {model: t5_encoder, exporter: dynamo}}
  x_gpt2_tvm_seq: {uses: tvm.compile, from: gpt2_ep, with: {target: native, dims: {batch: 1}}}
  x_gpt2_tvm_typo: {uses: tvm.compile, from: gpt2_ep, with: {target: native, dims: {seqs: 8}}}
  x_gpt2_onnx_typo: {uses: tvm.compile, from: gpt2_onnx, with: {target: native, dims: {seqs: 8}}}
"""


def _build(root: Path, archs, extra: str = "", targets=()):
    (root / "r.yaml").write_text(arch_recipe(archs) + extra, encoding="utf-8")
    return buildgraph.run(root / "r.yaml", targets=targets, cache_dir=root / "cache",
                          build_dir=root / "build", keep_going=True)


@pytest.fixture(scope="module")
def spread(tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    return root, _build(root, ARCHS, EXTRA_STEPS)


def _check_arch(result, name: str) -> None:
    step = name.replace("-", "_")
    failed = {s: r.message for s, r in result.steps.items()
              if s.startswith(f"{step}_") and r.status not in ("built", "cached", "restored")}
    assert not failed, failed
    report = json.loads(result[f"{step}_verify"].outputs["report"].read_text())
    assert report["passed"], report
    assert sorted(report["candidates"]) == sorted(f"{step}_{f}" for f in FORMS)
    for cand, entry in report["candidates"].items():
        assert entry["passed"], (cand, entry)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_every_form_builds_and_verifies(spread, name):
    _check_arch(spread[1], name)


def test_the_spread_covers_every_family():
    kinds = [kind for kind, _ in ARCHS.values()]
    assert len(ARCHS) >= 5 and len(ARCHS) + len(SLOW_ARCHS) >= 22 and {"text", "image", "audio"} <= set(kinds)
    classes = {spec["source"] for _, spec in ARCHS.values()}
    assert {"transformers:T5EncoderModel", "transformers:GPT2LMHeadModel",
            "transformers:Wav2Vec2Model", "transformers:SwinModel"} <= classes
    slow = {spec["source"] for _, spec in SLOW_ARCHS.values()}
    assert {"transformers:ResNetModel", "transformers:LlamaForCausalLM"} <= slow


def test_exporter_auto_records_the_exporter_that_wrote_the_file(spread):
    root, result = spread
    assert result["bert_onnx"].meta["exporter"] == "dynamo"
    assert result["bert_onnx"].meta["exporter_failures"] == {}
    # T5's and Swin's views of the attention output fail the dynamo exporter, dynamic or not
    for step in ("t5_encoder_onnx", "swin_onnx"):
        meta = result[step].meta
        assert meta["exporter_requested"] == "auto" and meta["exporter"] == "legacy", meta
        assert sorted(meta["exporter_failures"]) == ["dynamo", "dynamo (static shapes)"]
        assert "Cannot view a tensor" in meta["exporter_failures"]["dynamo"]
    # an explicit exporter keeps its own failure
    message = result["x_t5_dynamo"].message
    assert result["x_t5_dynamo"].status == "failed"
    assert message.startswith("ONNX export (dynamo exporter, opset 18) failed: ValueError: "
                              "Cannot view a tensor with shape"), message
    # the key and the lock file hold the requested exporter; the chosen one is an outcome,
    # which comes back with the cached result
    lock = json.loads((root / "r.lock.json").read_text())["steps"]["swin_onnx"]
    assert lock["parts"]["params"]["exporter"] == "auto"
    again = _build(root, ARCHS, EXTRA_STEPS, targets=["swin_onnx"])
    assert again["swin_onnx"].status == "cached" and again["swin_onnx"].key == lock["key"]
    assert again["swin_onnx"].meta["exporter"] == "legacy"
    # the report shows which exporter wrote each ONNX file
    from buildgraph.html_report.collect import build
    from buildgraph.html_report.render import html_page

    doc, _ = build(root / "r.yaml", cache_dir=str(root / "cache"),
                   build_dir=str(root / "build"))
    assert doc["steps"]["swin_onnx"]["exporter"] == "legacy"
    assert doc["steps"]["bert_onnx"]["exporter"] == "dynamo"
    assert "onnx.export (legacy)" in html_page(doc)


def test_torch_export_records_dim_names_and_tvm_binds_them(spread):
    _, result = spread
    meta = result["gpt2_ep"].meta
    assert sorted(meta["dim_symbols"]) == ["batch", "seq"]
    assert all(s.startswith("s") for s in meta["dim_symbols"].values())
    with zipfile.ZipFile(result["gpt2_ep"].outputs["model"]) as zf:
        name = next(n for n in zf.namelist() if n.endswith("buildgraph_outputs.json"))
        record = json.loads(zf.read(name))
    assert record["dims"] == {"batch": [[0, 0], [1, 0]], "seq": [[0, 1], [1, 1]]}
    # batch bound, seq left dynamic under its own name (torch calls it s70)
    manifest = json.loads((result["x_gpt2_tvm_seq"].outputs["model"] / "model.json").read_text())
    assert manifest["dynamic_dims"] == ["seq"]
    assert [i["shape"] for i in manifest["inputs"]] == [[1, "seq"], [1, "seq"]]
    # a dim the model does not have: one line naming the ones it has, with a suggestion
    for step in ("x_gpt2_tvm_typo", "x_gpt2_onnx_typo"):
        assert result[step].status == "failed"
        assert result[step].message.startswith(
            "dims: the model has no dynamic dim 'seqs' (did you mean 'seq'?) (its dynamic "
            "dims: batch, seq)"), result[step].message


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_ARCHS))
def test_more_architectures(tmp_path_factory, name):
    root = tmp_path_factory.mktemp(name)
    _check_arch(_build(root, {name: SLOW_ARCHS[name]}), name)
