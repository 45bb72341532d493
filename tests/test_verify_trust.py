"""What ``verify`` and ``benchmark`` may unpickle: a whole-model ``.pt`` runs code when it
loads, so only a ``torch.save`` step's output, or a model marked ``trusted: true``, is loaded
with ``weights_only=False``. A ``shell`` step's ``.pt`` is data of unknown origin."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("torch")

from buildgraph.backends.evaluate.verify import candidate_trusted  # noqa: E402
from buildgraph.cli import run_cli  # noqa: E402
from torch_helpers import MODEL, model, write_recipe  # noqa: E402

# a pickle whose loading creates a file: what a malicious .pt would do instead
EVIL_PY = """
import sys
import torch


class Evil:
    def __reduce__(self):
        return (open, (sys.argv[2], "w"))


torch.save({"model": Evil()}, sys.argv[1])
"""


def evil_recipe(root, trusted: bool, check: str = "verify") -> None:
    (root / "make_evil.py").write_text(EVIL_PY, encoding="utf-8")
    marker = root / "unpickled.txt"
    models = {"tiny": model(trusted=True) if trusted else MODEL}
    with_ = "{model: tiny, random: 1}" if check == "verify" else "{model: tiny, runs: 1, warmup: 0}"
    write_recipe(root, f"""
evil:
  uses: shell
  inputs: {{maker: make_evil.py}}
  with: {{cmd: "{sys.executable} ${{in.maker}} ${{out.model}} {marker}"}}
  outputs: {{model: model.pt}}
check: {{uses: {check}, from: evil, with: {with_}}}
""", models)


def test_a_shell_steps_pickle_is_not_unpickled_and_verify_says_why(project, capsys):
    evil_recipe(project.root, trusted=False)
    assert run_cli(["run", "r.yaml", "--build-dir", str(project.build)]) == 1
    assert not (project.root / "unpickled.txt").exists()
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "verification failed" in ln)
    assert "model.pt is a pickled whole model; loading it runs code from the file, so it is " \
           "refused unless the model says trusted: true" in line
    assert "Traceback" not in err


def test_benchmark_does_not_unpickle_it_either(project, capsys):
    evil_recipe(project.root, trusted=False, check="benchmark")
    assert run_cli(["run", "r.yaml", "--build-dir", str(project.build)]) == 1
    assert not (project.root / "unpickled.txt").exists()
    assert "refused unless the model says trusted: true" in capsys.readouterr().err


def test_trusted_true_is_what_lets_it_load(project, capsys):
    """The same file with the model marked trusted: true is unpickled (and then is no model):
    the refusal above comes from the trust decision, not from a broken file."""
    evil_recipe(project.root, trusted=True)
    assert run_cli(["run", "r.yaml", "--build-dir", str(project.build)]) == 1
    assert (project.root / "unpickled.txt").exists()
    assert "a dict with neither tensors nor a state_dict entry" in capsys.readouterr().err


def test_who_is_trusted():
    assert candidate_trusted("torch.save", {})
    for kind in ("shell", "python", None, "onnx.export", "tensorrt.build"):
        assert not candidate_trusted(kind, {}), kind
        assert candidate_trusted(kind, {"trusted": True}), kind
