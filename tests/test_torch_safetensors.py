"""``weights: model.safetensors``: loaded without pickle, tied parameters stored once, and
one-line errors for a foreign file or a weights_key that cannot apply (real torch and
safetensors)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from buildgraph.backends.torch.model import load_model, model_extra_inputs  # noqa: E402
from buildgraph.errors import StepFailed  # noqa: E402
from torch_helpers import MODEL, model, write_models  # noqa: E402

TIED_PY = '''
from torch import nn


class Tied(nn.Module):
    """An embedding whose table is also the output projection (as in GPT-2)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.embed(ids))


def tied():
    return Tied()
'''


def test_safetensors_weights_load_into_the_architecture(tmp_path):
    write_models(tmp_path)
    torch.manual_seed(42)
    other = load_model("tiny", model(seed=7), tmp_path)
    safetensors_torch.save_file(other.state_dict(), str(tmp_path / "w.safetensors"))
    spec = model(weights="w.safetensors")
    assert model_extra_inputs("tiny", {"tiny": spec}, tmp_path)["model:tiny:weights"] == \
        (tmp_path / "w.safetensors").resolve()
    loaded = load_model("tiny", spec, tmp_path)
    for (name, a), (_, b) in zip(loaded.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), name
    assert not torch.equal(load_model("tiny", MODEL, tmp_path).fc.weight, loaded.fc.weight)


def test_a_tied_parameter_stored_once_still_loads(tmp_path):
    (tmp_path / "tied.py").write_text(TIED_PY, encoding="utf-8")
    spec = {"source": "tied.py:tied", "seed": 3}
    source = load_model("t", spec, tmp_path)
    safetensors_torch.save_model(source, str(tmp_path / "t.safetensors"))
    with safetensors_torch.safe_open(str(tmp_path / "t.safetensors"), "pt") as f:
        assert len(list(f.keys())) == 1  # the shared tensor is written once
    loaded = load_model("t", {**spec, "seed": 4, "weights": "t.safetensors"}, tmp_path)
    assert torch.equal(loaded.head.weight, source.head.weight)
    assert loaded.head.weight.data_ptr() == loaded.embed.weight.data_ptr()


def test_foreign_file_and_weights_key_fail_in_one_line(tmp_path):
    write_models(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(StepFailed) as exc:
        load_model("tiny", model(weights="bad.safetensors"), tmp_path)
    assert exc.value.message.startswith("model 'tiny': bad.safetensors cannot be read as "
                                        "safetensors: ")
    assert "\n" not in exc.value.message
    good = load_model("tiny", MODEL, tmp_path)
    safetensors_torch.save_file(good.state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(StepFailed) as exc:
        load_model("tiny", model(weights="w.safetensors", weights_key="state_dict"), tmp_path)
    assert exc.value.message == ("model 'tiny': weights_key 'state_dict' does not apply to "
                                 "w.safetensors: a safetensors file holds one flat set of "
                                 "tensors")
