"""Model outputs as a fixed, named list of tensors: naming of dicts, dataclasses and named
tuples, the ``outputs:`` selection, non-tensor outputs, and exports of dict-returning models
(traced, and scripted with their control flow) whose names reach the artifacts and verify."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from typing import NamedTuple, Optional

import pytest

torch = pytest.importorskip("torch")

import buildgraph  # noqa: E402
from buildgraph.backends.torch.outputs import select_outputs  # noqa: E402
from buildgraph.errors import StepFailed  # noqa: E402


class Pair(NamedTuple):
    logits: "torch.Tensor"
    probs: "torch.Tensor"


@dataclasses.dataclass
class Output:
    last_hidden_state: "torch.Tensor"
    pooler_output: Optional["torch.Tensor"] = None
    hidden_states: Optional[tuple] = None


class Cache:
    """Stands for transformers' DynamicCache: an object that is not a tensor."""


T = torch.zeros(1)


def names(out, selection=None):
    return [n for n, _ in select_outputs(out, selection)]


def test_names_follow_the_structure():
    assert names(T) == ["output"]
    assert names((T, T)) == ["output_0", "output_1"]
    assert names({"a": T, "b": (T, T)}) == ["a", "b_0", "b_1"]
    assert names(Pair(T, T)) == ["logits", "probs"]
    assert names({"x": Pair(T, T)}) == ["x_logits", "x_probs"]
    # a dataclass (ModelOutput is one) keeps its field names; unset fields are left out
    assert names(Output(T, hidden_states=(T, T))) == ["last_hidden_state", "hidden_states_0",
                                                      "hidden_states_1"]


def test_selection_by_name_path_or_subtree_in_the_given_order():
    out = Output(T, T, hidden_states=(T, T, T))
    assert names(out, ["pooler_output", "last_hidden_state"]) == ["pooler_output",
                                                                  "last_hidden_state"]
    assert names(out, ["hidden_states.2", "hidden_states_0"]) == ["hidden_states_2",
                                                                  "hidden_states_0"]
    assert names(out, ["hidden_states"]) == ["hidden_states_0", "hidden_states_1",
                                             "hidden_states_2"]


def test_unknown_or_repeated_selection_says_what_there_is():
    with pytest.raises(StepFailed) as exc:
        select_outputs({"logits": T, "cache": Cache()}, ["logit"], "model 'g'")
    assert exc.value.message == ("model 'g': outputs: no output 'logit' (did you mean "
                                 "'logits'?); it returns logits, cache (a Cache)")
    with pytest.raises(StepFailed, match="'output_0' selects output_0 again"):
        select_outputs((T, T), ["0", "output_0"])


def test_an_object_that_is_not_a_tensor_is_named_with_both_ways_out():
    out = {"logits": T, "past": (Cache(),)}
    with pytest.raises(StepFailed) as exc:
        select_outputs(out, None, "model 'g'")
    assert exc.value.message == (
        "model 'g': output 'past.0' is a Cache, not a tensor; exporters and runtimes need "
        "tensors: select the tensor outputs in the model spec (outputs: [logits]), or turn "
        "that output off with an argument (e.g. use_cache: false in a transformers config)")
    assert names(out, ["logits"]) == ["logits"]


DICT_PY = '''
from typing import Dict

import torch
from torch import nn


class DictNet(nn.Module):
    """Returns a dict; with ``branch``, its first output depends on the sign of the input's
    mean (which torch.export refuses, and tracing would bake in)."""

    def __init__(self, branch: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.branch = branch

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        y = self.conv(x)
        if not self.branch or bool(x.mean() > 0):
            a = y * 2
        else:
            a = y - 1
        return {"a": a, "b": y.mean(dim=(2, 3))}


def dictnet(branch=True):
    return DictNet(branch)
'''

STEPS = """
  script: {uses: torchscript, with: {model: dn, mode: script}}
  trace_ba: {uses: torchscript, with: {model: dn_ba, mode: trace}}
  ep_ba: {uses: torch.export, with: {model: dn_ba}}
  onnx_ba: {uses: onnx.export, with: {model: dn_ba, exporter: legacy, opset: 17}}
  verify_ba: {uses: verify, from: [trace_ba, ep_ba, onnx_ba], with: {model: dn_ba, random: 2}}
  verify: {uses: verify, from: [script], with: {model: dn, random: 2}}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    (root / "dictnet.py").write_text(DICT_PY, encoding="utf-8")
    dn = {"source": "dictnet.py:dictnet", "inputs": {"x": {"shape": ["batch", 3, 8, 8]}}}
    models = {"dn": dn, "dn_ba": {**dn, "kwargs": {"branch": False}, "outputs": ["b", "a"]}}
    (root / "r.yaml").write_text(f"name: o\nmodels: {json.dumps(models)}\nsteps:{STEPS}",
                                 encoding="utf-8")
    result = buildgraph.run(root / "r.yaml", cache_dir=root / "cache", build_dir=root / "build")
    assert result.ok, {s: r.message for s, r in result.steps.items() if r.message}
    return root, result


def test_dict_outputs_export_in_the_selected_order_and_verify_by_name(built):
    import onnx

    _, result = built
    report = json.loads(result["verify_ba"].outputs["report"].read_text())
    assert report["passed"] and report["outputs"] == ["b", "a"]
    assert result["trace_ba"].meta["outputs"] == ["b", "a"]
    assert result["ep_ba"].meta["outputs"] == ["b", "a"]
    model = onnx.load(str(result["onnx_ba"].outputs["model"]))
    assert [o.name for o in model.graph.output] == ["b", "a"]
    with zipfile.ZipFile(result["ep_ba"].outputs["model"]) as zf:
        record = next(n for n in zf.namelist() if n.endswith("buildgraph_outputs.json"))
        # with where each named dim sits (input 0, axis 0), so TVM can bind it by name
        assert json.loads(zf.read(record)) == {"inputs": ["x"], "outputs": ["b", "a"],
                                               "dims": {"batch": [[0, 0]]}}


def test_a_scripted_dict_model_keeps_its_control_flow_and_names(built):
    _, result = built
    extra = {"buildgraph_outputs.json": ""}
    ts = torch.jit.load(str(result["script"].outputs["model"]), _extra_files=extra)
    assert json.loads(extra["buildgraph_outputs.json"])["outputs"] == ["a", "b"]
    x = torch.ones(1, 3, 8, 8)
    a_pos, b_pos = ts(x)
    a_neg, b_neg = ts(-x)
    # both branches are in the archive: a = 2y for a positive mean, y - 1 for a negative one
    assert torch.allclose(a_pos.mean(dim=(2, 3)), 2 * b_pos, atol=1e-5)
    assert torch.allclose(a_neg.mean(dim=(2, 3)), b_neg - 1, atol=1e-5)
    assert json.loads(result["verify"].outputs["report"].read_text())["passed"]
