"""Every PyTorch export form on a tiny CNN, reloaded the way docs/torch.md tells users to, and
compared with the eager model (real torch; no mocks)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import buildgraph  # noqa: E402
from buildgraph.cli import run_cli  # noqa: E402
from buildgraph.backends.torch.model import load_model, make_inputs  # noqa: E402
from torch_helpers import MODEL, model, write_recipe  # noqa: E402

STEPS = """
state: {uses: torch.save, with: {model: tiny, form: state_dict}}
whole: {uses: torch.save, with: {model: tiny, form: model}}
ckpt:
  uses: torch.save
  with: {model: tiny, form: checkpoint, epoch: 3, optimizer: SGD,
         optimizer_args: {lr: 0.1, momentum: 0.9}, extra: {best_top1: 0.5}}
trace: {uses: torchscript, with: {model: tiny, mode: trace}}
script: {uses: torchscript, with: {model: tiny, mode: script}}
ep: {uses: torch.export, with: {model: tiny}}
ep_fixed: {uses: torch.export, with: {model: fixed, dynamic: {x: {0: batch}}}}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    write_recipe(root, STEPS, {"tiny": MODEL,
                               "fixed": model(inputs={"x": {"shape": [1, 3, 16, 16]}}, dims=None)})
    result = buildgraph.run(root / "r.yaml", cache_dir=root / "cache", build_dir=root / "build")
    assert result.ok, {s: r.message for s, r in result.steps.items()}
    return root, result


def reference(root: Path):
    """The eager model (same seed, so same weights) and an input of batch 3."""
    m = load_model("tiny", MODEL, root)
    x = make_inputs(MODEL, 7, {"batch": 3})[0]
    with torch.no_grad():
        return m, x, m(x)


def test_every_form_builds_then_everything_is_cached(built):
    root, result = built
    assert result.count("built") == 7
    again = buildgraph.run(root / "r.yaml", cache_dir=root / "cache", build_dir=root / "build")
    assert again.ok and again.count("built") == 0


def test_state_dict_loads_into_the_model_built_by_the_same_code(built):
    root, _ = built
    sys.path.insert(0, str(root / "models"))
    try:
        import tiny  # the loader snippet of docs/torch.md

        net = tiny.tiny(num_classes=10, width=8)
    finally:
        sys.path.remove(str(root / "models"))
    net.load_state_dict(torch.load(root / "build/state/model.pt", weights_only=True))
    net.eval()
    _, x, expected = reference(root)
    with torch.no_grad():
        assert torch.equal(net(x), expected)


def test_whole_model_needs_weights_only_false(built):
    root, result = built
    path = root / "build/whole/model.pt"
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        torch.load(path, weights_only=True)
    sys.path.insert(0, str(root / "models"))
    try:
        net = torch.load(path, weights_only=False)
    finally:
        sys.path.remove(str(root / "models"))
    _, x, expected = reference(root)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), expected)
    assert result["whole"].meta["class"] == "tiny.TinyCNN"


def test_checkpoint_restores_optimizer_and_continues_training(built):
    root, result = built
    ckpt = torch.load(root / "build/ckpt/model.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["best_top1"] == 0.5
    net, x, _ = reference(root)
    net.load_state_dict(ckpt["state_dict"])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    optimizer.load_state_dict(ckpt["optimizer"])
    assert optimizer.param_groups[0]["lr"] == 0.1 and optimizer.param_groups[0]["momentum"] == 0.9
    net.train()
    before = net.fc.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([1, 2, 3]))
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, net.fc.weight)
    assert optimizer.state_dict()["state"]  # momentum buffers now exist
    assert result["ckpt"].meta["keys"] == ["epoch", "state_dict", "optimizer", "best_top1"]


@pytest.mark.parametrize("step", ["trace", "script"])
def test_torchscript_loads_and_matches(built, step):
    root, result = built
    ts = torch.jit.load(str(root / f"build/{step}/model.ts"))
    _, x, expected = reference(root)
    with torch.no_grad():
        torch.testing.assert_close(ts(x), expected, rtol=1e-5, atol=1e-6)
    if step == "trace":
        assert result[step].meta["tracer_warnings"] == []
        assert result[step].meta["divergence"]["diverged"] is False


def test_pt2_keeps_the_dynamic_batch(built):
    root, result = built
    program = torch.export.load(str(root / "build/ep/model.pt2"))
    _, x, expected = reference(root)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), expected, rtol=1e-5, atol=1e-6)
        assert program.module()(x[:1]).shape == (1, 10)
    meta = result["ep"].meta
    assert meta["dynamic"] == {"x": {"0": "batch"}}
    assert "[1, 8]" in "".join(meta["range_constraints"].values())
    assert meta["example"] == "x: float32[2, 3, 16, 16]"  # batch 1 raised to 2 for export


def test_a_step_can_make_an_integer_dim_dynamic(built):
    root, result = built
    program = torch.export.load(str(root / "build/ep_fixed/model.pt2"))
    with torch.no_grad():
        assert program.module()(torch.randn(3, 3, 16, 16)).shape == (3, 10)
    assert result["ep_fixed"].meta["example"] == "x: float32[2, 3, 16, 16]"


def test_trace_divergence_can_be_a_warning(project, capsys):
    write_recipe(project.root, "s: {uses: torchscript, with: {model: m, divergence: warn}}",
                 {"m": model(source="models/tiny.py:branchy", kwargs={})})
    result = buildgraph.run("r.yaml", cache_dir=project.cache, build_dir=project.build)
    assert result.ok
    meta = result["s"].meta
    assert meta["divergence"]["diverged"] is True
    assert any("Converting a tensor to a Python boolean" in w for w in meta["tracer_warnings"])
    log = (project.build / ".logs" / "s.log").read_text()
    assert "TracerWarning: models/tiny.py:" in log and "warning: traced module diverges" in log


def test_a_program_that_does_not_load_back_fails_its_export_in_one_line(project, capsys):
    """torch.export succeeds on a model with a submodule named ``meta``, but the program does
    not unlift (torch 2.13): the export step says so and why, instead of every consumer of the
    .pt2 failing later with torch's traceback."""
    write_recipe(project.root, "ep: {uses: torch.export, with: {model: m}}",
                 {"m": model(source="models/tiny.py:meta_named", kwargs={})})
    program = torch.export.export(load_model("m", model(source="models/tiny.py:meta_named",
                                                        kwargs={}), project.root),
                                  (torch.randn(2, 3, 16, 16),))
    try:
        program.module()
        loads_back = True
    except RuntimeError:
        loads_back = False
    result = buildgraph.run("r.yaml", cache_dir=project.cache, build_dir=project.build)
    if loads_back:  # a torch that fixed it: the step builds
        assert result.ok
        return
    assert not result.ok
    message = result["ep"].message
    assert message.startswith("torch.export made a program that does not load back")
    assert "submodule named 'meta'" in message and "rename it" in message
    assert "\n" not in message and "Traceback" not in capsys.readouterr().err


def test_an_artifact_its_library_cannot_load_is_one_line_naming_it(tmp_path):
    """A library's own error while loading (a truncated .pt2 here) becomes a StepFailed naming
    the file: verify records it against that candidate and checks the others."""
    from buildgraph.engine.runtime import RuntimeContext, load_runtime
    from buildgraph.errors import StepFailed

    bad = tmp_path / "model.pt2"
    bad.write_bytes(b"PK\x03\x04 not a zip archive")
    with pytest.raises(StepFailed) as info:
        load_runtime(bad, RuntimeContext(kind="torch.export"))
    assert "cannot load model.pt2: " in info.value.message
    assert "\n" not in info.value.message


def test_saved_files_are_model_sources(built, project):
    """TorchScript, .pt2 and (trusted) whole-model files feed later steps like code does."""
    root, _ = built
    (project.root / "models").mkdir()
    # a whole-model pickle's classes are looked up beside it and in the recipe's directory
    for name, step, file in (("ts.file", "trace", "model.ts"), ("pt2.file", "ep", "model.pt2"),
                             ("models/whole.file", "whole", "model.pt")):
        (project.root / name).write_bytes((root / "build" / step / file).read_bytes())
    models = {"ts": model(source="ts.file", kwargs={}),
              "pt2": model(source="pt2.file", kwargs={}),
              "whole": model(source="models/whole.file", kwargs={}, trusted=True)}
    write_recipe(project.root, "s: {uses: torchscript, with: {model: pt2}}\n"
                               "w: {uses: torch.save, with: {model: whole}}\n"
                               "t: {uses: torch.save, with: {model: ts}}", models)
    result = buildgraph.run("r.yaml", cache_dir=project.cache, build_dir=project.build)
    assert result.ok, {s: r.message for s, r in result.steps.items()}
    # the whole-model pickle runs models/tiny.py and helpers.py when loaded: both are inputs
    decision = buildgraph.plan("r.yaml", cache_dir=project.cache, build_dir=project.build)["w"]
    labels = {str(Path(p).resolve().relative_to(project.root.resolve()))
              for p in decision.description.inputs.values()}
    assert {"models/tiny.py", "models/helpers.py", "models/whole.file"} <= labels


def test_editing_a_local_module_makes_exactly_its_steps_stale(project, capsys):
    models = {"tiny": MODEL, "other": model(source="other.py:make", kwargs={})}
    write_recipe(project.root, "a: {uses: torch.save, with: {model: tiny}}\n"
                               "b: {uses: torch.save, with: {model: other}}", models)
    (project.root / "other.py").write_text("import torch\n\ndef make():\n"
                                           "    return torch.nn.Linear(2, 2)\n")
    args = ["--cache-dir", str(project.cache), "--build-dir", str(project.build)]
    assert run_cli(["run", "r.yaml", *args]) == 0
    helpers = project.root / "models" / "helpers.py"
    helpers.write_text(helpers.read_text() + "\n# edited\n")
    capsys.readouterr()
    assert run_cli(["plan", "r.yaml", *args]) == 0
    out = capsys.readouterr().out
    assert "input models/helpers.py changed" in out
    decisions = buildgraph.plan("r.yaml", cache_dir=project.cache, build_dir=project.build)
    assert decisions["a"].action == "run" and decisions["b"].action == "cached"


def test_changing_model_kwargs_reruns_its_steps(project):
    write_recipe(project.root, "a: {uses: torch.save, with: {model: tiny}}")
    result = buildgraph.run("r.yaml", cache_dir=project.cache, build_dir=project.build)
    assert result.ok
    write_recipe(project.root, "a: {uses: torch.save, with: {model: tiny}}",
                 {"tiny": model(kwargs={"num_classes": 5, "width": 8})})
    decisions = buildgraph.plan("r.yaml", cache_dir=project.cache, build_dir=project.build)
    assert decisions["a"].action == "run"
