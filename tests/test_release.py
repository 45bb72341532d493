"""The release bundle: what it selects, its manifest and loaders, and a byte-identical archive.

Real backends on the tiny CNN (ONNX through onnxruntime, TorchScript, torch.export), one build
shared by the tests of this module; each test rebuilds only the release step.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from buildgraph.backends.evaluate.bundle import write_archive  # noqa: E402
from buildgraph.engine.files import ARCHIVE_MTIME  # noqa: E402
from buildgraph.engine.lockfile import entries_digest  # noqa: E402
from torch_helpers import write_recipe  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

STEPS = """
onnx: {uses: onnx.export, with: {model: tiny, exporter: legacy}}
ts: {uses: torchscript, with: {model: tiny, mode: trace}}
pt2: {uses: torch.export, with: {model: tiny}}
ts_slow: {uses: torchscript, with: {model: tiny, mode: script}}
verify: {uses: verify, from: [onnx, ts, pt2, ts_slow], with: {model: tiny, random: 2}}
bench:
  uses: benchmark
  from: [onnx, ts, pt2, ts_slow]
  with: {model: tiny, dims: {batch: [1]}, warmup: 1, runs: 3}
ship:
  uses: release
  from: [bench, verify, onnx, ts, pt2, ts_slow]
  with: {select: '${vars.select}'}
"""


class Built:
    def __init__(self, root: Path):
        self.root = root

    def run(self, *args: str, check: int = 0) -> subprocess.CompletedProcess:
        env = dict(os.environ, BUILDGRAPH_CACHE_DIR=str(self.root / ".cache"))
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.run([sys.executable, "-m", "buildgraph", "run", "r.yaml", *args],
                              cwd=self.root, capture_output=True, text=True, env=env,
                              timeout=600)
        assert proc.returncode == check, proc.stderr[-3000:]
        return proc

    @property
    def ship(self) -> Path:
        return self.root / "build" / "t" / "ship"

    def manifest(self) -> dict:
        return json.loads((self.ship / "bundle" / "manifest.json").read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    path = write_recipe(root, STEPS)
    path.write_text(path.read_text().replace("steps:\n", "vars: {select: best}\nsteps:\n", 1))
    project = Built(root)
    project.run()
    return project


def test_the_same_inputs_give_a_byte_identical_archive(built):
    first = (built.ship / "bundle.tar.gz").read_bytes()
    manifest = (built.ship / "bundle" / "manifest.json").read_bytes()
    time.sleep(1.1)  # other mtimes for everything the rebuild writes
    old_umask = os.umask(0o077)  # and other modes
    try:
        proc = built.run("--force", "ship", "ship", "--json")
    finally:
        os.umask(old_umask)
    assert '"step": "ship", "status": "built"' in proc.stdout
    assert (built.ship / "bundle.tar.gz").read_bytes() == first
    assert (built.ship / "bundle" / "manifest.json").read_bytes() == manifest
    with tarfile.open(built.ship / "bundle.tar.gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and names[0] == "tiny"
    assert {m.mtime for m in members} == {ARCHIVE_MTIME}
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}
    assert {m.mode for m in members if m.isfile()} == {0o644}
    assert first[4:8] == b"\0\0\0\0"  # gzip header: no time (and no file name flag)
    assert first[3] & 0x08 == 0


def test_write_archive_depends_on_content_only(tmp_path):
    def tree(root: Path, order, mode: int, mtime: float) -> Path:
        for rel in order:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"content of {rel}\n")
            path.chmod(mode)
            os.utime(path, (mtime, mtime))
        return root

    files = ["b.txt", "a/z.bin", "a/c.json", "loaders/x.py"]
    one = tree(tmp_path / "one", files, 0o600, 1_000_000)
    two = tree(tmp_path / "two", list(reversed(files)), 0o664, 2_000_000)
    write_archive(one, tmp_path / "one.tar.gz", top="bundle")
    write_archive(two, tmp_path / "two.tar.gz", top="bundle")
    assert (tmp_path / "one.tar.gz").read_bytes() == (tmp_path / "two.tar.gz").read_bytes()
    assert (tmp_path / "one.tar.gz").read_bytes()[4:8] == b"\0\0\0\0"  # no gzip time
    with gzip.open(tmp_path / "one.tar.gz") as fh:  # a valid archive of the same files
        with tarfile.open(fileobj=fh) as tar:
            assert tar.extractfile("bundle/a/c.json").read() == b"content of a/c.json\n"


def test_manifest_holds_signature_errors_figures_and_provenance(built):
    manifest = built.manifest()
    lock = json.loads((built.root / "r.lock.json").read_text())
    bench = json.loads((built.root / "build" / "t" / "bench" / "benchmark.json").read_text())
    [art] = manifest["artifacts"]
    fastest = min(bench["candidates"],
                  key=lambda c: bench["candidates"][c]["results"][0]["median_ms"])
    assert art["step"] == fastest
    assert art["benchmark"]["results"] == bench["candidates"][fastest]["results"]
    assert art["precision"] == "fp32"
    [check] = art["verification"]
    out = next(iter(check["outputs"].values()))
    assert check["passed"] and out["passed"] and out["max_abs"] < 1e-4
    assert out["tolerance"]["atol"] == 1e-4 and out["tolerance"]["statistic"] == "max"
    io = art["io"]
    assert io["inputs"][0]["name"] == "x" and io["inputs"][0]["dtype"] == "float32"
    assert io["inputs"][0]["shape"][1:] == [3, 16, 16]
    assert io["dynamic_dims"] == {"batch": {"min": 1, "opt": 1, "max": 8}}
    prov = manifest["provenance"]
    steps = prov["steps"]
    assert set(steps) == {"onnx", "ts", "pt2", "ts_slow", "verify", "bench"}
    for sid, rec in steps.items():
        assert rec["key"] == lock["steps"][sid]["key"]
    assert prov["lock"]["file"] == "r.lock.json"
    assert prov["lock"]["digest"] == entries_digest({s: lock["steps"][s] for s in steps})
    assert prov["tools"]["torch"] and prov["host"]["cpu"]
    assert prov["stamp"]["git_commit"] is None  # the test project is no git checkout
    assert manifest["nondeterministic"] == {"bench": "timings: every run measures this "
                                                     "machine anew"}
    assert art["reproducible"].startswith("bit-identical")
    sha = art["files"][Path(art["path"]).name]["sha256"]
    import hashlib

    assert hashlib.sha256((built.ship / "bundle" / art["path"]).read_bytes()).hexdigest() == sha
    readme = (built.ship / "bundle" / "README.md").read_text()
    assert f"`{art['path']}`" in readme and "## Provenance" in readme


@pytest.mark.parametrize("mode", ["best_per_runtime", "all_passed"])
def test_selection_modes(built, mode):
    built.run("--set", f"select={mode}", "ship")
    manifest = built.manifest()
    steps = [a["step"] for a in manifest["artifacts"]]
    ranking = [r["step"] for r in manifest["selection"]["ranking"]]
    assert set(ranking) == {"onnx", "ts", "pt2", "ts_slow"}
    if mode == "all_passed":
        assert steps == ranking
    else:  # the faster of the two TorchScript modules only
        runtimes = [a["runtime"] for a in manifest["artifacts"]]
        assert sorted(runtimes) == ["onnxruntime", "torch.export", "torchscript"]
        ts_first = next(s for s in ranking if s in ("ts", "ts_slow"))
        assert ts_first in steps and ({"ts", "ts_slow"} - {ts_first}).isdisjoint(steps)
    decision = json.loads((built.ship / "release.json").read_text())
    assert decision["mode"] == mode and decision["selected"] == steps


def test_loaders_run_each_artifact_from_the_extracted_archive(built, tmp_path):
    built.run("--set", "select=all_passed", "ship")
    with tarfile.open(built.ship / "bundle.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    bundle = tmp_path / "tiny"
    assert sorted(p.name for p in (bundle / "loaders").iterdir()) == [
        "load_onnxruntime.py", "load_torch_export.py", "load_torchscript.py"]
    for art in json.loads((bundle / "manifest.json").read_text())["artifacts"]:
        proc = subprocess.run([sys.executable, str(bundle / art["loader"]), art["step"]],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"{art['step']} ({art['runtime']}): inputs [1, 3, 16, 16] -> outputs [1, 10]" \
            in proc.stdout


@pytest.mark.parametrize("bad", ["../../outside.onnx", "/etc/passwd", "artifacts/../../x",
                                 "a\\b", "", 7])
def test_a_loader_refuses_a_manifest_path_outside_the_bundle(built, tmp_path, bad):
    """A bundle that was copied or downloaded is data: a manifest whose path leads out of the
    bundle makes its loader stop in one line before it opens anything."""
    built.run("--set", "select=all_passed", "ship")
    with tarfile.open(built.ship / "bundle.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    bundle = tmp_path / "tiny"
    (tmp_path / "outside.onnx").write_bytes(b"not the bundle's")  # what '../../' names
    manifest = json.loads((bundle / "manifest.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["runtime"] == "onnxruntime")
    art["path"] = bad
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.run([sys.executable, str(bundle / art["loader"]), art["step"]],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("refusing manifest path"), proc.stderr[-2000:]


@pytest.mark.slow
def test_default_recipe_release_is_a_byte_identical_bundle(tmp_path):
    """The README's first command, cold, then the release rebuilt from the same inputs: the
    same archive, byte for byte; its manifest's lock digest matches the lock file written."""
    import shutil

    pytest.importorskip("tvm")
    shutil.copytree(REPO / "recipes" / "models", tmp_path / "models")
    shutil.copy(REPO / "recipes" / "resnet_cpu.yaml", tmp_path / "resnet_cpu.yaml")
    env = dict(os.environ, BUILDGRAPH_CACHE_DIR=str(tmp_path / ".cache"))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")

    def run(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "buildgraph", "run", "resnet_cpu.yaml",
                               *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]

    run()
    release = tmp_path / "build" / "resnet_cpu" / "release"
    first = (release / "bundle.tar.gz").read_bytes()
    run("--force", "release", "release")
    assert (release / "bundle.tar.gz").read_bytes() == first
    manifest = json.loads((release / "bundle" / "manifest.json").read_text())
    lock = json.loads((tmp_path / "resnet_cpu.lock.json").read_text())["steps"]
    steps = manifest["provenance"]["steps"]
    assert len(steps) == 16
    assert manifest["provenance"]["lock"]["digest"] == entries_digest({s: lock[s] for s in steps})
    assert set(manifest["nondeterministic"]) == {"tvm_tune", "benchmark"}
    # every candidate that passed, each through its loader (onnxruntime, TorchScript,
    # torch.export, the TVM runtime)
    recipe = tmp_path / "resnet_cpu.yaml"
    recipe.write_text(recipe.read_text() + "    with: {select: all_passed}\n")
    run("release")
    manifest = json.loads((release / "bundle" / "manifest.json").read_text())
    runtimes = {a["runtime"] for a in manifest["artifacts"]}
    assert runtimes == {"onnxruntime", "torchscript", "torch.export", "tvm.relax"}
    for art in manifest["artifacts"]:
        proc = subprocess.run([sys.executable, str(release / "bundle" / art["loader"]),
                               art["step"]], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "inputs [1, 3, 224, 224] -> outputs [1, 1000]" in proc.stdout
