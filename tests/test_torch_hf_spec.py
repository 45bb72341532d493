"""``source: transformers:CLASS`` at resolve time: what enters the key (the config, a config
file, a weights directory, the transformers version) and the recipe errors, without importing
torch or transformers."""

from __future__ import annotations

import importlib.util
import json

import pytest

from buildgraph.backends.torch.model import model_extra_inputs, model_key_data
from buildgraph.errors import RecipeError
from torch_helpers import MODEL, write_models

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="transformers is not installed")

CONFIG = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2}
INPUTS = {"input_ids": {"shape": [2, 8], "dtype": "int64"}}


def spec(**fields):
    return {"source": "transformers:BertModel", "inputs": INPUTS, **fields}


def test_config_dict_and_version_are_key_data_unset_fields_are_not(tmp_path):
    write_models(tmp_path)
    data = model_key_data("b", {"b": spec(config=CONFIG)}, tmp_path)["model"]
    assert data["spec"]["config"] == CONFIG
    assert set(data["packages"]) == {"transformers"}
    assert data["packages"]["transformers"][0].isdigit()
    changed = model_key_data("b", {"b": spec(config={**CONFIG, "hidden_size": 64})}, tmp_path)
    assert changed != model_key_data("b", {"b": spec(config=CONFIG)}, tmp_path)
    # a model that sets neither outputs nor config keeps the key data it had before them
    plain = model_key_data("tiny", {"tiny": {**MODEL, "outputs": None, "config": None}},
                           tmp_path)["model"]["spec"]
    assert "outputs" not in plain and "config" not in plain
    assert model_key_data("b", {"b": spec(config=CONFIG, outputs=["pooler_output"])},
                          tmp_path)["model"]["spec"]["outputs"] == ["pooler_output"]


def test_config_file_and_weights_directory_are_inputs(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(CONFIG))
    files = model_extra_inputs("b", {"b": spec(config="cfg")}, tmp_path)
    assert files == {"model:b:config": (tmp_path / "cfg" / "config.json").resolve()}
    (tmp_path / "ckpt").mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        (tmp_path / "ckpt" / name).write_text("{}")
    files = model_extra_inputs("b", {"b": spec(weights="ckpt")}, tmp_path)
    assert sorted(files) == ["model:b:weights:config.json",
                             "model:b:weights:generation_config.json",
                             "model:b:weights:model.safetensors"]


@pytest.mark.parametrize("fields, message", [
    ({}, "model 'b': a transformers model is built from a config, and this one has none"),
    ({"config": {"hidden_size": 32}},
     "model 'b': config: needs model_type (e.g. bert, vit, gpt2: the key of AutoConfig), "
     "beside the settings it changes"),
    ({"config": "nowhere"},
     "model 'b': config 'nowhere' is neither a config.json file nor a directory holding one"),
    ({"weights": "empty"},
     "model 'b': weights directory 'empty' holds no .safetensors or .bin file"),
])
def test_recipe_errors(tmp_path, fields, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecipeError) as exc:
        model_extra_inputs("b", {"b": spec(**fields)}, tmp_path)
    assert exc.value.message.startswith(message)
    assert exc.value.hint


def test_config_is_refused_on_other_sources(tmp_path):
    write_models(tmp_path)
    with pytest.raises(RecipeError) as exc:
        model_extra_inputs("tiny", {"tiny": {**MODEL, "config": CONFIG}}, tmp_path)
    assert exc.value.message == ("model 'tiny': config: is for 'transformers:CLASS' sources; "
                                 "this model's source is 'models/tiny.py:tiny'")


def test_outputs_listed_twice_is_a_recipe_error(project):
    project.write("r.yaml", """
        models:
          m: {source: transformers:BertModel, config: {model_type: bert}, outputs: [a, a]}
        steps:
          s: {uses: torch.save, with: {model: m}}
        """)
    proc = project.cli("plan", "r.yaml", check=2)
    assert "outputs: 'a' is listed twice" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_planning_a_transformers_model_imports_neither_torch_nor_transformers(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "r.yaml").write_text(
        "models:\n  m: " + json.dumps(spec(config=CONFIG, outputs=["last_hidden_state"]))
        + "\nsteps:\n  s: {uses: onnx.export, with: {model: m}}\n", encoding="utf-8")
    code = ("import sys, json\nfrom buildgraph.cli import run_cli\n"
            "assert run_cli(['plan', 'r.yaml', '--cache-dir', 'cache']) == 0\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "buildgraph.backends.torch.hf" in modules  # the model was resolved
    assert [m for m in ("torch", "transformers", "safetensors", "numpy") if m in modules] == []
