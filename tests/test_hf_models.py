"""Hugging Face models (tiny random-init BERT, ViT, GPT-2 configs; nothing downloaded) through
every export form, verify and TVM compile, one recipe per family (real transformers, torch,
onnxruntime, onnxsim and TVM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")
pytest.importorskip("tvm")

import buildgraph  # noqa: E402
from hf_helpers import BERT, GPT2, GPT2_CONFIG, VIT, recipe, write_vit_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FORMS = ["state", "trace", "ep", "onnx", "legacy", "sim"]


def _run(root: Path, text: str, keep_going: bool = False):
    (root / "r.yaml").write_text(text, encoding="utf-8")
    return buildgraph.run(root / "r.yaml", cache_dir=root / "cache", build_dir=root / "build",
                          keep_going=keep_going)


def _report(result) -> dict:
    return json.loads(result["verify"].outputs["report"].read_text())


def _onnx_outputs(path: Path) -> list:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


# --------------------------------------------------------------------------------------------
# BERT: a ModelOutput with two tensors, two integer inputs with dynamic batch and sequence
# --------------------------------------------------------------------------------------------

# TVM: from a static .pt2 (with dims left dynamic, TVM 0.27 imports BERT's ONNX export badly and
# fails to compile its .pt2; tests/test_hf_archs.py binds them; ViT and GPT-2 take the other
# routes)
BERT_STEPS = """
ep_static: {uses: torch.export, with: {model: m, dynamic: {}}}
tvm_pt2: {uses: tvm.compile, from: ep_static, with: {target: native}}
verify: {uses: verify, from: [state, trace, ep, onnx, legacy, sim, tvm_pt2], with: {model: m, random: 2}}
"""


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    result = _run(root, recipe(BERT, BERT_STEPS, {"input_ids": [2, 8],
                                                  "attention_mask": [2, 8]}))
    assert result.ok, {s: r.message for s, r in result.steps.items() if r.message}
    return root, result


def test_bert_every_form_builds_and_verifies_with_named_outputs(bert):
    _, result = bert
    names = ["last_hidden_state", "pooler_output"]
    report = _report(result)
    assert report["passed"] and report["outputs"] == names
    for cand in FORMS + ["tvm_pt2"]:
        entry = report["candidates"][cand]
        assert entry["passed"] and sorted(entry["outputs"]) == sorted(names), cand
        assert entry["outputs"]["last_hidden_state"]["max_abs"] < 1e-4, cand
    assert result["trace"].meta["outputs"] == names
    assert result["ep"].meta["outputs"] == names
    for onnx_step in ("onnx", "legacy", "sim"):
        assert _onnx_outputs(result[onnx_step].outputs["model"]) == names
    with zipfile.ZipFile(result["trace"].outputs["model"]) as zf:
        record = next(n for n in zf.namelist() if n.endswith("buildgraph_outputs.json"))
        assert json.loads(zf.read(record))["outputs"] == names


def test_bert_pt2_loads_where_transformers_cannot_be_imported(bert):
    """The .pt2's output spec is a plain tuple: no ModelOutput class to import."""
    _, result = bert
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import torch\n"
            f"extra = {{'buildgraph_outputs.json': ''}}\n"
            f"ep = torch.export.load({str(result['ep'].outputs['model'])!r}, extra_files=extra)\n"
            "ids = torch.randint(0, 99, (3, 5)); mask = torch.ones(3, 5, dtype=torch.long)\n"
            "out = ep.module()(ids, mask)\n"
            "print(len(out), tuple(out[0].shape), extra['buildgraph_outputs.json'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("2 (3, 5, 32) ")
    assert '"outputs": ["last_hidden_state", "pooler_output"]' in proc.stdout


# --------------------------------------------------------------------------------------------
# ViT: config from a directory; a dynamic batch, into TVM from the .pt2
# --------------------------------------------------------------------------------------------

VIT_STEPS = """
tvm_pt2: {uses: tvm.compile, from: ep, with: {target: native}}
verify: {uses: verify, from: [state, trace, ep, onnx, legacy, sim, tvm_pt2], with: {model: m, random: 2, dims: {batch: [1, 3]}}}
"""


def test_vit_every_form_builds_and_verifies_at_two_batch_sizes(tmp_path):
    write_vit_config(tmp_path)
    result = _run(tmp_path, recipe(VIT, VIT_STEPS, {"pixel_values": [2, 3, 32, 32]}))
    assert result.ok, {s: r.message for s, r in result.steps.items() if r.message}
    report = _report(result)
    assert report["passed"] and report["outputs"] == ["last_hidden_state", "pooler_output"]
    assert [i["shapes"]["pixel_values"][0] for i in report["inputs"]] == [1, 3]
    assert sorted(report["candidates"]) == sorted(FORMS + ["tvm_pt2"])


# --------------------------------------------------------------------------------------------
# GPT-2: safetensors weights (tied embedding stored once), the logits selected out of a
# ModelOutput that also holds a DynamicCache; static shapes, into TVM from the ONNX export
# (with dims bound, the .pt2 route works too: tests/test_hf_archs.py)
# --------------------------------------------------------------------------------------------

GPT2_STEPS = """
tvm_onnx: {uses: tvm.compile, from: onnx, with: {target: native}}
cache_ep: {uses: torch.export, with: {model: cached}}
script: {uses: torchscript, with: {model: m, mode: script}}
verify: {uses: verify, from: [state, trace, ep, onnx, legacy, sim, tvm_onnx], with: {model: m, random: 2}}
"""


def _gpt2_weights(root: Path):
    """A GPT-2 seeded apart from the recipe's model, saved as safetensors; its logits."""
    import transformers
    from safetensors.torch import save_model

    torch.manual_seed(123)
    config = transformers.AutoConfig.for_model(**GPT2_CONFIG)
    model = transformers.GPT2LMHeadModel._from_config(config).eval()
    save_model(model, str(root / "gpt2.safetensors"))  # drops lm_head.weight (tied)
    ids = torch.arange(16).reshape(2, 8) % 100
    with torch.no_grad():
        return ids, model(input_ids=ids).logits


def test_gpt2_safetensors_logits_every_form_and_the_cache_is_named(tmp_path):
    ids, logits = _gpt2_weights(tmp_path)
    cached = {k: v for k, v in GPT2.items() if k not in ("outputs", "weights")}
    result = _run(tmp_path, recipe(GPT2, GPT2_STEPS, {"input_ids": [2, 8]},
                                   extra_models={"cached": cached}), keep_going=True)
    failed = {s: r.message for s, r in result.steps.items() if r.status == "failed"}
    assert set(failed) == {"cache_ep", "script"}, failed
    assert failed["script"].startswith("torch.jit.script failed: ")
    assert failed["script"].endswith("; transformers models are not scriptable (their code "
                                     "uses Python TorchScript does not compile): use mode: "
                                     "trace, or torch.export")
    # without outputs:, the DynamicCache is named, with both ways out
    assert failed["cache_ep"] == (
        "model 'cached': output 'cache' is a DynamicCache, not a tensor; exporters and "
        "runtimes need tensors: select the tensor outputs in the model spec (outputs: "
        "[logits]), or turn that output off with an argument (e.g. use_cache: false in a "
        "transformers config)")
    report = _report(result)
    assert report["passed"] and report["outputs"] == ["logits"]
    assert sorted(report["candidates"]) == sorted(FORMS + ["tvm_onnx"])
    # the safetensors weights were loaded, tied lm_head included
    program = torch.export.load(str(result["ep"].outputs["model"]))
    (got,) = program.module()(ids)
    torch.testing.assert_close(got, logits, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# building from a config in-process: a save_pretrained directory, and one-line errors
# --------------------------------------------------------------------------------------------

def test_a_save_pretrained_directory_loads_its_weights_offline(tmp_path):
    import transformers

    from buildgraph.backends.torch.model import load_model, model_extra_inputs

    torch.manual_seed(9)
    config = transformers.AutoConfig.for_model(**BERT["config"])
    saved = transformers.BertModel._from_config(config).eval()
    saved.save_pretrained(str(tmp_path / "ckpt"))
    spec = {"source": "transformers:AutoModel", "weights": "ckpt", "inputs": BERT["inputs"]}
    assert "model:b:weights:model.safetensors" in model_extra_inputs("b", {"b": spec}, tmp_path)
    loaded = load_model("b", spec, tmp_path)
    assert type(loaded).__name__ == "BertModel" and not loaded.training
    for (name, a), (_, b) in zip(loaded.state_dict().items(), saved.state_dict().items()):
        assert torch.equal(a, b), name
    # the architecture alone (a state_dict runtime loads into it): seeded, not the checkpoint's
    bare = load_model("b", spec, tmp_path, with_weights=False)
    assert not torch.equal(bare.pooler.dense.weight, saved.pooler.dense.weight)


@pytest.mark.parametrize("change, message", [
    ({"source": "transformers:BertModle"},
     "model 'b': transformers {v} has no class 'BertModle' (did you mean 'BertModel'?)"),
    ({"config": {"model_type": "brt"}},
     "model 'b': config: transformers {v} has no model_type 'brt' (did you mean 'bert'?)"),
    ({"config": {"model_type": "bert", "hiden_size": 32}},
     "model 'b': config: bert has no setting 'hiden_size' (did you mean 'hidden_size'?)"),
])
def test_config_and_class_errors_are_one_line(tmp_path, change, message):
    import transformers

    from buildgraph.backends.torch.model import load_model
    from buildgraph.errors import StepFailed

    with pytest.raises(StepFailed) as exc:
        load_model("b", {**BERT, **change}, tmp_path)
    assert exc.value.message == message.format(v=transformers.__version__)


@pytest.mark.parametrize("config", [
    {"model_type": "segformer", "num_labels": 3},
    {"model_type": "bert", "hidden_size": 32, "id2label": {0: "no", 1: "yes"},
     "label2id": {"no": 0, "yes": 1}, "output_hidden_states": True, "torch_dtype": "float32"},
    {"model_type": "vit", "dtype": "float32", "output_attentions": True, "problem_type":
     "single_label_classification", "return_dict": True},
])
def test_generic_config_settings_are_valid_for_every_model_type(tmp_path, config):
    """num_labels, id2label, dtype... are PretrainedConfig's, not in a type's own defaults."""
    from buildgraph.backends.torch.hf import make_config

    made = make_config("m", {"config": config}, tmp_path)
    assert made.model_type == config["model_type"]
    if "num_labels" in config:
        assert made.num_labels == config["num_labels"] and len(made.id2label) == 3
    if "id2label" in config:
        assert made.num_labels == 2
