"""Each way a PyTorch model can be wrong gives one clear message, a non-zero exit, no
traceback, and nothing half-written (real torch; tiny models)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from buildgraph.cli import run_cli  # noqa: E402
from torch_helpers import model, write_recipe  # noqa: E402

TRACEBACK = "Traceback (most recent call last)"


def run(project, capsys, steps: str, models=None, code: int = 1) -> str:
    write_recipe(project.root, steps, models)
    rc = run_cli(["run", "r.yaml", "--cache-dir", str(project.cache),
                  "--build-dir", str(project.build)])
    err = capsys.readouterr().err
    assert rc == code, err
    assert TRACEBACK not in err
    return err


def assert_nothing_written(project: Path, step: str) -> None:
    assert not (project.build / step).exists()
    actions = list((project.cache / "actions").rglob("*")) if (project.cache / "actions").is_dir() \
        else []
    assert not [a for a in actions if a.is_file() and step in a.read_text(errors="ignore")]


def test_missing_model_file_suggests_the_close_name(project, capsys):
    err = run(project, capsys, "s: {uses: torch.save, with: {model: tiny}}",
              {"tiny": model(source="models/tiyn.py:tiny")}, code=2)
    assert "source file 'models/tiyn.py' does not exist" in err
    assert "did you mean 'tiny.py'?" in err
    assert "r.yaml:" in err  # points at the recipe


def test_missing_factory_suggests_the_close_name(project, capsys):
    err = run(project, capsys, "s: {uses: torch.save, with: {model: tiny}}",
              {"tiny": model(source="models/tiny.py:tinny")}, code=2)
    assert "defines no factory 'tinny' (did you mean 'tiny'?)" in err


def test_unknown_model_name_in_a_step(project, capsys):
    err = run(project, capsys, "s: {uses: torch.save, with: {model: tinny}}", code=2)
    assert "unknown model 'tinny' (did you mean 'tiny'?)" in err


def test_factory_not_returning_a_module(project, capsys):
    err = run(project, capsys, "s: {uses: torch.save, with: {model: tiny}}",
              {"tiny": model(source="models/tiny.py:not_a_module", kwargs={})})
    assert "model 'tiny': models/tiny.py:not_a_module returned a dict, not a " \
           "torch.nn.Module" in err
    assert_nothing_written(project, "s")


def test_weights_that_do_not_match_list_the_first_keys(project, capsys):
    import torch

    write_recipe(project.root, "s: {uses: torch.save, with: {model: tiny}}")
    import sys

    sys.path.insert(0, str(project.root / "models"))
    try:
        from buildgraph.backends.torch.model import load_model

        other = load_model("tiny", model(kwargs={"num_classes": 7, "width": 4}), project.root)
    finally:
        sys.path.remove(str(project.root / "models"))
    torch.save(other.state_dict(), project.root / "w.pt")
    err = run(project, capsys, "s: {uses: torch.save, with: {model: tiny}}",
              {"tiny": model(weights="w.pt")})
    assert "model 'tiny': weights w.pt do not match the architecture:" in err
    assert "shape mismatches: stem.0.weight (file [4, 3, 3, 3] vs model [8, 3, 3, 3])" in err


def test_checkpoint_without_weights_key_says_which_key(project, capsys):
    import torch

    torch.save({"epoch": 3, "state_dict": {"a": torch.zeros(1)}}, project.root / "ck.pt")
    err = run(project, capsys, "s: {uses: torch.save, with: {model: tiny}}",
              {"tiny": model(weights="ck.pt")})
    assert "ck.pt looks like a checkpoint, not a state_dict" in err
    assert "set weights_key: state_dict" in err


def test_input_shape_the_model_rejects(project, capsys):
    err = run(project, capsys, "s: {uses: torch.export, with: {model: tiny}}",
              {"tiny": model(inputs={"x": {"shape": [2, 4, 16, 16]}})})
    assert "model 'tiny' rejects its example inputs (x: float32[2, 4, 16, 16])" in err
    assert "at models/tiny.py:" in err
    assert "to have 3 channels, but got 4 channels" in err


def test_torchscript_script_failure_shows_the_source_line(project, capsys):
    err = run(project, capsys, "s: {uses: torchscript, with: {model: m, mode: script}}",
              {"m": model(source="models/tiny.py:unscriptable", kwargs={})})
    assert "torch.jit.script failed: Dict expansion" in err
    assert "at models/tiny.py:" in err
    assert '`parts = {**{"y": self.conv(x)}}`' in err


def test_trace_divergence_fails_and_names_the_tracer_warning(project, capsys):
    err = run(project, capsys, "s: {uses: torchscript, with: {model: m}}",
              {"m": model(source="models/tiny.py:branchy", kwargs={})})
    assert "traced module diverges from eager on a second input" in err
    assert "TracerWarning at models/tiny.py:" in err
    assert "Converting a tensor to a Python boolean" in err


def test_untrusted_whole_model_pickle_is_refused_with_the_reason(project, capsys):
    write_recipe(project.root, "make: {uses: torch.save, with: {model: tiny, form: model}}")
    assert run_cli(["run", "r.yaml", "--cache-dir", str(project.cache),
                    "--build-dir", str(project.build)]) == 0
    capsys.readouterr()
    (project.root / "whole.pt").write_bytes((project.build / "make" / "model.pt").read_bytes())
    err = run(project, capsys, "s: {uses: torch.save, with: {model: m}}",
              {"m": model(source="whole.pt", kwargs={})}, code=2)
    assert "'whole.pt' is a pickled whole model" in err
    assert "loading it runs code from the file" in err
    assert "trusted: true" in err


def test_hub_source_without_the_package(project, capsys):
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here")
    err = run(project, capsys, "s: {uses: torch.save, with: {model: m}}",
              {"m": model(source="torchvision:resnet18", kwargs={})}, code=2)
    assert "source 'torchvision:resnet18' needs the 'torchvision' package, which is not " \
           "installed here" in err
