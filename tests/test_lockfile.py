"""The lock file as the release contract: stable text, ``run --frozen`` and ``run --locked``.

The drifted tool is real: a newer ``torch`` distribution's metadata put first on the path (as an
upgrade in another site-packages would), which changes the version the ``torch.save`` step keys
on; the edited source is the model's local import (``models/helpers.py``).
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import Project
from torch_helpers import write_recipe

STEPS = """
saved: {uses: torch.save, with: {model: tiny}}
copy:
  uses: shell
  from: saved
  with: {cmd: 'cp ${in.saved.model} ${out.pt}'}
  outputs: [pt]
"""
TORCH = version("torch")


def drift_torch(root: Path, monkeypatch: pytest.MonkeyPatch, version: str = "2.99.0") -> None:
    """A torch distribution of another version, found first on sys.path (a site-packages
    directory, as installed packages live in)."""
    site = root / "venv2" / "lib" / "site-packages"
    meta = site / f"torch-{version}.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One build, copied for each test: a torch step costs seconds, a copy does not."""
    root = tmp_path_factory.mktemp("locked")
    write_recipe(root, STEPS)
    Project(root).run()
    return root


@pytest.fixture
def built(project, template):
    shutil.copytree(template, project.root, dirs_exist_ok=True, symlinks=True)
    lock = project.root / "r.lock.json"
    assert project.statuses(project.run()) == {"saved": "cached", "copy": "cached"}
    return project, lock, lock.read_bytes()


def test_lock_text_holds_no_wall_time_and_paths_inside_the_build_dir(built):
    project, lock, text = built
    data = json.loads(text)
    assert set(data["steps"]) == {"saved", "copy"}
    for entry in data["steps"].values():
        assert set(entry) == {"uses", "key", "parts", "inputs", "outputs"}
    assert data["steps"]["saved"]["outputs"]["model"]["path"] == "saved/model.pt"
    # a forced rebuild to the same bytes, into another build directory, leaves it as it was
    project.run("r.yaml", "--force", "saved", "--build-dir", str(project.root / "elsewhere"))
    assert lock.read_bytes() == text


def test_frozen_refuses_a_drifted_tool_version_and_builds_nothing(built, monkeypatch):
    project, lock, text = built
    drift_torch(project.root, monkeypatch)
    proc = project.cli("run", "r.yaml", "--frozen", "--json")
    assert proc.returncode == 1, proc.stderr
    assert "--frozen: 1 of 2 steps differ from r.lock.json; nothing was built" in proc.stderr
    assert f"run     saved  (torch.save)\n          - torch {TORCH}→2.99.0" in proc.stderr
    assert "copy" not in proc.stderr.split("nothing was built")[1].split("hint:")[0]
    assert "step_started" not in proc.stdout
    assert lock.read_bytes() == text
    # without --frozen the same environment builds, and plan words the same diff
    assert f"torch {TORCH}→2.99.0" in project.cli("plan", "r.yaml", check=0).stdout


def test_frozen_refuses_an_edited_source_file(built):
    project, lock, text = built
    helpers = project.root / "models" / "helpers.py"
    helpers.write_text(helpers.read_text() + "\n# edited\n")
    proc = project.cli("run", "r.yaml", "--frozen")
    assert proc.returncode == 1
    assert "- input models/helpers.py changed" in proc.stderr
    assert lock.read_bytes() == text
    assert project.cli("run", "r.yaml", "--frozen", "--json", "copy").returncode == 1


def test_frozen_passes_a_build_that_matches_the_lock(built):
    project, lock, text = built
    statuses = project.statuses(project.run("r.yaml", "--frozen"))
    assert statuses == {"saved": "cached", "copy": "cached"}
    # a fresh cache rebuilds every step to the locked keys and bytes: still frozen-clean
    statuses = project.statuses(project.run("r.yaml", "--frozen", "--cache-dir",
                                            str(project.root / "fresh")))
    assert statuses == {"saved": "built", "copy": "built"}
    assert lock.read_bytes() == text


def test_frozen_refuses_a_step_whose_upstream_rebuilt_to_other_bytes(project):
    project.write("r.yaml", """
        name: n
        steps:
          stamp: {uses: shell, cache: false, with: {cmd: 'date +%s%N > ${out.t}'}, outputs: [t]}
          after: {uses: shell, from: stamp, with: {cmd: 'cat ${in.stamp.t} > ${out.t}'},
                  outputs: [t]}
    """)
    project.run()
    text = (project.root / "r.lock.json").read_bytes()
    proc = project.cli("run", "r.yaml", "--frozen", "--json")
    assert proc.returncode == 1
    statuses = project.statuses([json.loads(x) for x in proc.stdout.splitlines()])
    assert statuses == {"stamp": "built", "after": "failed"}
    assert "upstream output stamp.t changed); not built" in proc.stdout
    assert "stamp: same key, different output t" in proc.stderr
    assert (project.root / "r.lock.json").read_bytes() == text


def test_locked_builds_but_fails_and_keeps_the_lock_when_it_would_change(built, monkeypatch):
    project, lock, text = built
    assert project.cli("run", "r.yaml", "--locked").returncode == 0  # nothing would change
    helpers = project.root / "models" / "helpers.py"
    helpers.write_text(helpers.read_text() + "\n# edited\n")
    proc = project.cli("run", "r.yaml", "--locked", "--json")
    assert proc.returncode == 1
    statuses = project.statuses([json.loads(x) for x in proc.stdout.splitlines()])
    assert statuses["saved"] == "built"  # it builds ...
    assert "error: --locked: the lock file" in proc.stderr  # ... but will not change the lock
    assert "saved: key " in proc.stderr and "(input models/helpers.py changed)" in proc.stderr
    assert lock.read_bytes() == text
    drift_torch(project.root, monkeypatch)
    proc = project.cli("run", "r.yaml", "--locked", "saved")
    assert proc.returncode == 1 and f"torch {TORCH}→2.99.0" in proc.stderr
    assert lock.read_bytes() == text
    # a plain run then updates it, and --locked is clean again
    project.run()
    assert lock.read_bytes() != text
    assert project.cli("run", "r.yaml", "--locked").returncode == 0


def test_locked_names_a_step_missing_from_the_lock(project):
    project.write("r.yaml", """
        steps:
          a: {uses: shell, with: {cmd: 'echo a > ${out.o}'}, outputs: [o]}
    """)
    proc = project.cli("run", "r.yaml", "--locked")
    assert proc.returncode == 1 and "a: not in the lock file" in proc.stderr
    assert not (project.root / "r.lock.json").exists()
    proc = project.cli("run", "r.yaml", "--frozen")
    assert proc.returncode == 1 and "- not in the lock file" in proc.stderr
