"""The team cache's trust boundary through the CLI (issue 19): what a writer of the bucket can
no longer do to a teammate with the default configuration (no ``[trust] keys``), and what the
user is told. One test per numbered defect of the issue that is not held by
``test_remote_hostile.py``; a ``file://`` remote (the S3 path shares every check)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from remote_helpers import Machine, config, team


def _file_remote(tmp_path: Path):
    (tmp_path / "shared").mkdir(exist_ok=True)
    return f"file://{tmp_path / 'shared'}", {}, {}


def _entry_path(machine: Machine, step: str) -> Path:
    lock = json.loads((machine.root / "r.lock.json").read_text())["steps"][step]
    key = lock["key"]
    return machine.root.parent / "shared" / "v1" / "ac" / key[:2] / f"{key}.json"


def test_a_nan_in_an_entry_is_ignored_with_its_reason_everywhere(tmp_path):
    """Defect 5: a NaN in ``producer.time`` made every run and plan end in a traceback."""
    a, b = team(tmp_path, _file_remote(tmp_path))
    a.run()
    path = _entry_path(a, "write")
    doc = json.loads(path.read_text())
    doc["producer"]["time"] = float("nan")
    path.write_text(json.dumps(doc, allow_nan=True))
    upper = _entry_path(a, "upper")
    doc = json.loads(upper.read_text())
    doc["entry"]["meta"] = {"x": "[" * 5000 + "]" * 5000}
    upper.write_text(json.dumps(doc).replace('"[[[', "[[[").replace(']]]"', "]]]"))
    plan = b.plan()
    assert plan["write"]["action"] == "run"
    assert any("ignored: it holds NaN" in r for r in plan["write"]["reasons"]), plan["write"]
    verify = b.cli("remote", "verify", "--all", check=1)
    assert "it holds NaN, which JSON does not allow" in verify.stdout, verify.stdout
    assert "nested too deeply" in verify.stdout, verify.stdout
    pull = b.cli("cache", "pull", "r.yaml", check=None)
    results = b.run("--remote-read-only")
    assert results["write"]["status"] == "built"
    assert results["upper"]["status"] == "built"
    for proc in (verify, pull, b.last, b.cli("plan", "r.yaml"),
                 b.cli("report", "r.yaml", "-o", str(tmp_path / "report.html"), check=None)):
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr


EVIL_PY = """
import sys
import torch


class Evil:
    def __reduce__(self):
        return (open, (sys.argv[2], "w"))


torch.save({"model": Evil()}, sys.argv[1])
"""


def test_a_pulled_unsigned_pickle_is_never_unpickled(tmp_path):
    """Defect 4: a forged ``torch.save`` output pulled from the remote was unpickled by the
    downstream ``verify``, even though only outputs built here may be."""
    pytest.importorskip("torch")
    from torch_helpers import model, recipe, write_models

    marker = tmp_path / "unpickled.txt"
    steps = f"""
evil:
  uses: shell
  inputs: {{maker: make_evil.py}}
  with: {{cmd: "{sys.executable} ${{in.maker}} ${{out.model}} {marker}"}}
  outputs: {{model: model.pt}}
check: {{uses: verify, from: evil, with: {{model: tiny, random: 1}}}}
"""
    a, b = team(tmp_path, _file_remote(tmp_path))
    for m in (a, b):
        write_models(m.root)
        (m.root / "make_evil.py").write_text(EVIL_PY, encoding="utf-8")
        # trusted: true says "our own recipe's pickles may run code": not the remote's
        (m.root / "r.yaml").write_text(recipe(steps, {"tiny": model(trusted=True)}))
    a.cli("run", "r.yaml", "evil")  # the pickle reaches the remote (as a writer could put it)
    assert not marker.exists()
    proc = b.cli("run", "r.yaml", check=1)
    assert not marker.exists(), "a pulled pickle was unpickled"
    assert "came from the team cache without a signature by a key this project trusts" \
        in proc.stderr, proc.stderr
    assert "buildgraph trust keygen" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_discovery_stops_at_the_repository_and_skips_unsafe_files(tmp_path, capsys):
    """Defect 8: a buildgraph.toml in any parent (``/tmp``) set the remote results went to."""
    from buildgraph.engine.team import config as remote_config

    outer = tmp_path / "outer"
    repo = outer / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "sub").mkdir()
    (outer / "buildgraph.toml").write_text(config("file:///elsewhere"))
    assert remote_config.find_config(repo / "sub") is None  # stops at the repository root
    (repo / "buildgraph.toml").write_text(config("file:///ours"))
    assert remote_config.find_config(repo / "sub") == repo / "buildgraph.toml"
    os.chmod(repo / "buildgraph.toml", 0o666)
    assert remote_config.find_config(repo / "sub") is None
    err = capsys.readouterr().err
    assert "ignoring" in err and "writable by group or others" in err and "chmod go-w" in err
    os.chmod(repo / "buildgraph.toml", 0o644)
    if os.geteuid() == 0:  # another user's file: only root can make one here
        os.chown(repo / "buildgraph.toml", 4242, -1)
        remote_config._WARNED.clear()  # one warning per file and process
        assert remote_config.find_config(repo / "sub") is None
        assert "owned by another user (uid 4242)" in capsys.readouterr().err
        os.chown(repo / "buildgraph.toml", 0, -1)
    assert remote_config.find_config(repo / "sub") == repo / "buildgraph.toml"


def test_an_unsigned_remote_says_so_once_and_remote_add_can_sign(tmp_path):
    """Item 7 of the issue: unauthenticated entries are announced; --keygen signs."""
    a, b = team(tmp_path, _file_remote(tmp_path))
    a.run()
    b.run()
    said = [w for w in b.warnings() if "unauthenticated" in w]
    assert len(said) == 1 and "--keygen" in said[0], b.warnings()
    # remote add --keygen: a signing key, trusted by the project, used by the next push
    home = tmp_path / "home"
    c = Machine(tmp_path / "c", {"XDG_CONFIG_HOME": str(home), "HOME": str(home)})
    c.write("r.yaml", (a.root / "r.yaml").read_text())
    out = c.cli("remote", "add", "team", str(tmp_path / "signed"), "--keygen").stdout
    assert "wrote your signing key" in out and "trusting" in out, out
    assert (home / "buildgraph" / "signing_key").exists()
    assert "keys" in (c.root / "buildgraph.toml").read_text()
    c.run()
    assert not [w for w in c.warnings() if "unauthenticated" in w]
    entries = list((tmp_path / "signed" / "v1" / "ac").rglob("*.json"))
    assert entries and all("signature" in json.loads(p.read_text()) for p in entries)
