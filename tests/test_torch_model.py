"""Model sources, weights, example inputs and the runtime registry (real torch, in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildgraph.errors import RecipeError, StepFailed
from buildgraph.backends.torch import model as torchmodel
from torch_helpers import MODEL, model, write_models


def test_source_kinds():
    assert torchmodel.source_kind("models/tiny.py:tiny") == "callable"
    assert torchmodel.source_kind("pkg.module:factory") == "callable"
    assert torchmodel.source_kind("torchvision:resnet50") == "torchvision"
    assert torchmodel.source_kind("timm:vit_tiny_patch16_224") == "timm"
    assert torchmodel.source_kind("weights/model.pt2") == "file"
    assert torchmodel.source_kind("model.ts") == "file"


def test_extra_inputs_follow_local_imports_without_torch(tmp_path):
    write_models(tmp_path)
    files = torchmodel.model_extra_inputs("tiny", {"tiny": MODEL}, tmp_path)
    labels = sorted(k for k in files if ":source:" in k)
    assert labels == ["model:tiny:source:models/helpers.py", "model:tiny:source:models/tiny.py"]
    assert not [k for k in files if k.endswith(":spec")]  # settings are key data, not files
    data = torchmodel.model_key_data("tiny", {"tiny": MODEL}, tmp_path)
    assert data == torchmodel.model_key_data("tiny", {"tiny": MODEL}, tmp_path)
    other = model(kwargs={"num_classes": 3})
    assert torchmodel.model_key_data("tiny", {"tiny": other}, tmp_path)["model"]["spec"][
        "kwargs"] == {"num_classes": 3}


def test_changing_a_model_setting_reruns_its_steps_and_plan_names_it(tmp_path):
    import json

    from buildgraph.cli import run_cli

    write_models(tmp_path)
    recipe = tmp_path / "r.yaml"
    text = (
        "vars: {classes: 4}\n"
        "models:\n  tiny:\n    source: models/tiny.py:tiny\n"
        "    kwargs: {num_classes: '${vars.classes}'}\n"
        "    inputs: {x: {shape: [1, 3, 8, 8]}}\n"
        "steps:\n  sd: {uses: torch.save, with: {model: tiny, form: state_dict}}\n")
    recipe.write_text(text)
    import buildgraph

    plan = buildgraph.plan(recipe, cache_dir=tmp_path / "c", set={"classes": 3})
    assert plan["sd"].parts["data"]["model"]["spec"]["kwargs"] == {"num_classes": 3}
    first = buildgraph.plan(recipe, cache_dir=tmp_path / "c")
    assert first["sd"].key != plan["sd"].key
    assert buildgraph.run(recipe, cache_dir=tmp_path / "c", build_dir=tmp_path / "b").ok
    again = buildgraph.plan(recipe, cache_dir=tmp_path / "c", build_dir=tmp_path / "b",
                            set={"classes": 3})
    assert again["sd"].action == "run"
    assert "model spec.kwargs.num_classes 4→3" in again["sd"].reasons


def test_extra_inputs_errors(tmp_path):
    write_models(tmp_path)
    with pytest.raises(RecipeError, match="weights file 'w.pt' does not exist"):
        torchmodel.model_extra_inputs("tiny", {"tiny": model(weights="w.pt")}, tmp_path)
    with pytest.raises(RecipeError, match="declares no example inputs"):
        torchmodel.model_extra_inputs("tiny", {"tiny": model(inputs={})}, tmp_path)
    with pytest.raises(RecipeError, match="no module 'nosuchpkg.mod'"):
        torchmodel.model_extra_inputs("m", {"m": model(source="nosuchpkg.mod:f")}, tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(RecipeError, match="cannot tell what 'junk.pt' is"):
        torchmodel.model_extra_inputs("m", {"m": model(source="junk.pt")}, tmp_path)


torch = pytest.importorskip("torch")


def test_saved_formats_and_pickle_globals(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    torch.save(net, tmp_path / "whole.pt")
    torch.save({"epoch": 1, "state_dict": net.state_dict(),
                "optimizer": torch.optim.SGD(net.parameters(), lr=0.1).state_dict()},
               tmp_path / "ck.pt")
    torch.jit.save(torch.jit.script(net), str(tmp_path / "m.ts"))
    torch.export.save(torch.export.export(net, (torch.randn(2, 2),)), str(tmp_path / "m.pt2"))
    fmt = {p.name: torchmodel.saved_format(p) for p in tmp_path.iterdir()}
    assert fmt == {"sd.pt": "pickle", "whole.pt": "pickle", "ck.pt": "pickle",
                   "m.ts": "torchscript", "m.pt2": "pt2"}
    code = lambda name: torchmodel.code_globals(torchmodel.pickle_globals(tmp_path / name))  # noqa: E731
    assert code("sd.pt") == [] and code("ck.pt") == []
    assert "torch.nn.modules.container.Sequential" in code("whole.pt")


def test_checkpoint_weights_with_key_and_dataparallel_prefix(tmp_path):
    write_models(tmp_path)
    ref = torchmodel.load_model("tiny", model(seed=5), tmp_path)
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}
    torch.save({"epoch": 2, "model": state}, tmp_path / "ck.pt")
    loaded = torchmodel.load_model("tiny", model(weights="ck.pt", weights_key="model"), tmp_path)
    for k, v in ref.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    with pytest.raises(StepFailed, match="has no key 'modl' \\(did you mean 'model'\\?\\)"):
        torchmodel.load_model("tiny", model(weights="ck.pt", weights_key="modl"), tmp_path)


def test_missing_keys_are_allowed_when_not_strict(tmp_path):
    write_models(tmp_path)
    ref = torchmodel.load_model("tiny", MODEL, tmp_path)
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(StepFailed, match="2 missing keys: fc.weight, fc.bias"):
        torchmodel.load_model("tiny", model(weights="partial.pt"), tmp_path)
    torchmodel.load_model("tiny", model(weights="partial.pt", strict=False), tmp_path)


def test_seeded_init_and_inputs_are_reproducible(tmp_path):
    write_models(tmp_path)
    a = torchmodel.load_model("tiny", MODEL, tmp_path).state_dict()
    b = torchmodel.load_model("tiny", MODEL, tmp_path).state_dict()
    c = torchmodel.load_model("tiny", model(seed=1), tmp_path).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc.weight"], c["fc.weight"])
    x1 = torchmodel.make_inputs(MODEL, 3)[0]
    assert x1.shape == (1, 3, 16, 16)  # opt of the batch dim
    assert torch.equal(x1, torchmodel.make_inputs(MODEL, 3)[0])
    spec = {"inputs": {"ids": {"shape": [2, 7], "dtype": "int64", "min": 5, "max": 9},
                       "mask": {"shape": [2, 7], "dtype": "bool"},
                       "u": {"shape": [100], "min": -2, "max": 3}}}
    ids, mask, u = torchmodel.make_inputs(spec, 0)
    assert ids.dtype == torch.int64 and 5 <= int(ids.min()) and int(ids.max()) <= 9
    assert mask.dtype == torch.bool
    assert -2 <= float(u.min()) and float(u.max()) <= 3


def test_dim_sizes_and_dynamic_dims():
    spec = {"inputs": {"x": {"shape": ["batch", 3, "size", "size"]}},
            "dims": {"batch": {"min": 1, "max": 8}, "size": {"opt": 32}}}
    assert torchmodel.dim_sizes(spec) == {"batch": 2, "size": 32}
    assert torchmodel.dynamic_dims(spec, None) == {"x": {0: "batch", 2: "size", 3: "size"}}
    assert torchmodel.dynamic_dims(spec, {}) == {}
    assert torchmodel.dynamic_dims(spec, {"x": {"-1": "w"}}) == {"x": {3: "w"}}
    with pytest.raises(StepFailed, match="no input 'y'"):
        torchmodel.dynamic_dims(spec, {"y": {0: "b"}})
    with pytest.raises(StepFailed, match="axis 4 is out of range"):
        torchmodel.dynamic_dims(spec, {"x": {4: "b"}})
    shapes = torchmodel.torch_dynamic_shapes(spec, torchmodel.dynamic_dims(spec, None))
    assert shapes[0][2] is shapes[0][3]  # one Dim per name, shared


@pytest.mark.parametrize("kind", ["npy", "npz", "pt"])
def test_sample_inputs(tmp_path, kind):
    import numpy as np

    x = np.full((2, 3, 16, 16), 0.5, dtype=np.float32)
    if kind == "npy":
        np.save(tmp_path / "s.npy", x)
    elif kind == "npz":
        np.savez(tmp_path / "s.npz", x=x)
    else:
        torch.save({"x": torch.from_numpy(x)}, tmp_path / "s.pt")
    (sample,) = torchmodel.load_samples("tiny", model(sample_inputs=f"s.{kind}"), tmp_path)
    assert sample.shape == (2, 3, 16, 16) and float(sample[0, 0, 0, 0]) == 0.5


def test_flatten_outputs_names():
    t = torch.zeros(1)
    assert [n for n, _ in torchmodel.flatten_outputs(t)] == ["output"]
    assert [n for n, _ in torchmodel.flatten_outputs((t, [t, t]))] == \
        ["output_0", "output_1_0", "output_1_1"]
    assert [n for n, _ in torchmodel.flatten_outputs({"logits": t, "aux": (t,)})] == \
        ["logits", "aux_0"]


def test_runtime_registry(tmp_path):
    from buildgraph.engine import runtime as runtimes

    assert runtimes.runtime_for("onnx.simplify", Path("m.onnx")) == "onnxruntime"
    assert runtimes.runtime_for("python", Path("x.pt2")) == "torch.export"
    assert runtimes.runtime_for(None, Path("x.ts")) == "torchscript"
    assert runtimes.runtime_for("tensorrt.build", Path("x.engine")) == "tensorrt"
    assert runtimes.runtime_for("tvm.compile", Path("lib.so")) == "tvm.relax"
    with pytest.raises(StepFailed, match="no runtime loads x.bin \\(made by a 'mystery' step\\)"):
        runtimes.runtime_for("mystery", Path("x.bin"))
    runtimes.register_runtime("echo", "test_torch_model:EchoRuntime", kinds=("echo.kind",),
                              suffixes=(".echo",))
    try:
        assert runtimes.runtime_for("echo.kind", Path("a.bin")) == "echo"
        rt = runtimes.load_runtime(tmp_path / "a.echo", runtimes.RuntimeContext())
        assert rt.run([1, 2]) == [1, 2] and rt.precision == "fp16"
        with pytest.raises(ValueError, match="already registered"):
            runtimes.register_runtime("echo", "elsewhere:Echo")
    finally:
        runtimes.RUNTIMES.pop("echo")
        runtimes.KIND_RUNTIMES.pop("echo.kind")
        runtimes.SUFFIX_RUNTIMES.pop(".echo")


class EchoRuntime:
    """A stand-in runtime for the registry test (what TVM or TensorRT would add)."""

    @classmethod
    def load(cls, path, ctx):
        rt = cls()
        rt.precision = "fp16"
        return rt

    def run(self, inputs):
        return list(inputs)
