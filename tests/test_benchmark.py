"""benchmark and release with real runtimes (torch, onnxruntime) on a tiny CNN: stable windows,
pinned threads, the runner's own peak memory, the batch sweep, ``run --rebench``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import buildgraph  # noqa: E402
from buildgraph.backends.evaluate import bench_runner  # noqa: E402
from buildgraph.backends.evaluate.measure import WindowPolicy  # noqa: E402
from conftest import REPO  # noqa: E402
from torch_helpers import MODEL, write_models, write_recipe  # noqa: E402

FAST = "warmup: 2, runs: 5, window_s: 0.02, max_s: 2"

STEPS = f"""
onnx: {{uses: onnx.export, with: {{model: tiny, exporter: legacy}}}}
ts: {{uses: torchscript, with: {{model: tiny, mode: trace}}}}
verify: {{uses: verify, from: [onnx, ts], with: {{model: tiny, random: 2}}}}
bench:
  uses: benchmark
  from: [onnx, ts]
  with: {{model: tiny, dims: {{batch: [1, 4]}}, {FAST}, threads: {{intra: 1, inter: 1}}}}
ship: {{uses: release, from: [bench, verify, onnx, ts], with: {{batch: 4}}}}
"""


def _bench(root, step="bench", build="b"):
    return json.loads((root / build / step / "benchmark.json").read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """STEPS built once: the tests below read it, or build beside it on the same cache."""
    root = tmp_path_factory.mktemp("bench")
    write_models(root)
    write_recipe(root, STEPS)
    result = buildgraph.run(root / "r.yaml", cache_dir=root / "c", build_dir=root / "b")
    assert result.ok, {s: r.message for s, r in result.steps.items() if not r.ok}
    return root


def test_benchmark_times_every_artifact_and_release_ships_the_fastest(built):
    report = _bench(built)
    assert set(report["candidates"]) == {"onnx", "ts"}
    assert report["host_load"]["cpus"] == os.cpu_count()
    assert report["host_load"]["before"] >= 0 and report["host_load"]["after"] >= 0
    for entry in list(report["candidates"].values()) + [report["reference"]]:
        assert [r["batch"] for r in entry["results"]] == [1, 4]
        for r in entry["results"]:
            assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
            assert r["median_ms"] == r["p50_ms"]
            assert r["windows"] >= 2 and r["samples"] == 2 * r["runs_per_window"]
            # stable means the last two windows agreed within the stated spread
            assert r["stable"] == (r["spread"] <= r["spread_limit"])
            assert r["items_per_s"] == pytest.approx(r["batch"] / (r["p50_ms"] / 1e3), rel=1e-3)
            assert r["load_1m"] >= 0
    manifest = json.loads((built / "b" / "ship" / "release.json").read_text())
    fastest = min(report["candidates"],
                  key=lambda c: report["candidates"][c]["results"][1]["median_ms"])
    assert manifest["chosen"] == fastest
    shipped = built / "b" / "ship" / "artifact" / manifest["artifact"]
    assert shipped.read_bytes() == (built / "b" / fastest / manifest["artifact"]).read_bytes()
    assert [r["step"] for r in manifest["ranking"]] == sorted(
        report["candidates"], key=lambda c: report["candidates"][c]["results"][1]["median_ms"])


def test_release_only_considers_verified_candidates(built):
    write_recipe(built, STEPS.replace("verify, from: [onnx, ts]", "verify, from: [ts]"),
                 filename="r2.yaml")
    result = buildgraph.run(built / "r2.yaml", cache_dir=built / "c", build_dir=built / "b2")
    assert result.ok
    assert result["bench"].status in ("cached", "restored")  # the same measurement
    manifest = json.loads((built / "b2" / "ship" / "release.json").read_text())
    assert manifest["chosen"] == "ts"
    assert manifest["not_eligible"] == ["onnx"]


def test_thread_counts_are_pinned_and_recorded_as_each_library_reports_them(built):
    """One intra-op and one inter-op thread were asked for; on a machine with 2+ cores every
    library's default is more (torch: a thread per core for both pools; onnxruntime: a
    thread per core), so these figures come from the pinning."""
    report = _bench(built)
    assert report["threads"] == {"intra": 1, "inter": 1}
    got = {c: e["threads"] for c, e in report["candidates"].items()}
    got["eager"] = report["reference"]["threads"]
    assert got == {"onnx": {"library": "onnxruntime", "intra": 1, "inter": 1},
                   "ts": {"library": "torch", "intra": 1, "inter": 1},
                   "eager": {"library": "torch", "intra": 1, "inter": 1}}
    # and the peak memory is each runner's own
    for entry in list(report["candidates"].values()) + [report["reference"]]:
        assert 20 < entry["rss_before_load_mb"] <= entry["rss_after_load_mb"] \
            <= entry["peak_rss_mb"] < 4000
    # an onnxruntime runner never imported torch: its peak is far below a torch one's
    assert report["candidates"]["onnx"]["peak_rss_mb"] < report["reference"]["peak_rss_mb"]


def test_the_runner_reports_its_own_peak_memory_not_its_parents(tmp_path):
    """Linux carries ``ru_maxrss`` over fork and exec: a runner started by a worker holding
    400 MB would report 400 MB. ``rss_mb`` must not."""
    if not sys.platform.startswith("linux"):
        pytest.skip("VmHWM is Linux's; elsewhere ru_maxrss is all there is")
    code = ("import resource, subprocess, sys\n"
            "big = bytearray(400 * 1024 * 1024)\n"
            "out = subprocess.run([sys.executable, '-c', 'from buildgraph.backends.evaluate."
            "bench_runner import rss_mb; import resource; print(rss_mb(), "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)'], capture_output=True,"
            " text=True, check=True).stdout\n"
            "print(out)\n")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    own, inherited = float(out[0]), float(out[1])
    assert inherited > 390  # what ru_maxrss says: the parent's 400 MB
    assert own < 100


class FakeRuntime:
    """A runtime whose run costs ``cost(batch)`` seconds of a fake clock."""

    def __init__(self, clock, cost, fail_at=None):
        self.clock, self.cost, self.fail_at = clock, cost, fail_at

    def run(self, inputs):
        batch = inputs[0].shape[0]
        if self.fail_at is not None and batch >= self.fail_at:
            raise MemoryError(f"cannot allocate a batch of {batch}")
        self.clock[0] += self.cost(batch)

    def stage(self, inputs):
        return inputs

    def run_staged(self, staged):
        return self.run(staged)

    def synchronize(self):
        pass


def _sweep(monkeypatch, cost, fixed=None, fail_at=None, saturation=0.05, max_size=64):
    now = [0.0]
    monkeypatch.setattr(bench_runner, "CLOCK", lambda: now[0])
    events = []
    emit = lambda event, **fields: events.append((event, fields))  # noqa: E731
    policy = WindowPolicy(warmup=1, runs=5, window_s=0.0, max_s=5)
    outcome = bench_runner._sweep(FakeRuntime(now, cost, fail_at), MODEL, 0, {},
                                  {"dim": "batch", "start": 1, "factor": 2, "max": max_size,
                                   "saturation": saturation}, fixed or {}, policy, emit)
    return outcome, [f["batch"] for e, f in events if e == "result"]


def test_sweep_stops_when_throughput_saturates(monkeypatch):
    # 1 ms of overhead + 0.25 ms per item up to 8 items, then 1 ms per item beyond: throughput
    # grows until batch 8 and falls after it
    def cost(b):
        return 0.001 + 0.00025 * min(b, 8) + 0.001 * max(0, b - 8)

    outcome, sizes = _sweep(monkeypatch, cost)
    assert sizes == [1, 2, 4, 8, 16]
    assert outcome["stop"] == "saturated" and outcome["best"] == 8
    # a flat cost per item saturates at once; a falling one never does before max
    assert _sweep(monkeypatch, lambda b: 0.001 * b)[1] == [1, 2]
    outcome, sizes = _sweep(monkeypatch, lambda b: 0.001, max_size=16)
    assert sizes == [1, 2, 4, 8, 16] and outcome["stop"] == "max" and outcome["best"] == 16


def test_sweep_keeps_the_sizes_before_one_that_fails_and_stays_at_a_fixed_size(monkeypatch):
    outcome, sizes = _sweep(monkeypatch, lambda b: 0.001, fail_at=8)
    assert sizes == [1, 2, 4] and outcome["stop"] == "failed"
    assert "batch=8" in outcome["detail"] and "cannot allocate" in outcome["detail"]
    outcome, sizes = _sweep(monkeypatch, lambda b: 0.001, fixed={"batch": 1})
    assert sizes == [1] and outcome == {"stop": "fixed", "detail": "built for batch=1",
                                        "best": 1}


def test_sweep_runs_through_real_runtimes_and_a_static_artifact_keeps_its_size(tmp_path):
    write_models(tmp_path)
    write_recipe(tmp_path, f"""
    dyn: {{uses: onnx.export, with: {{model: tiny, exporter: legacy}}}}
    static: {{uses: onnx.export, with: {{model: tiny, exporter: legacy, dynamic: {{}}}}}}
    bench:
      uses: benchmark
      from: [dyn, static]
      with: {{model: tiny, sweep: {{max: 4}}, reference: false, {FAST}}}
    """)
    result = buildgraph.run(tmp_path / "r.yaml", cache_dir=tmp_path / "c",
                            build_dir=tmp_path / "b")
    assert result.ok, {s: r.message for s, r in result.steps.items() if not r.ok}
    report = _bench(tmp_path)
    assert "reference" not in report
    dyn, static = report["candidates"]["dyn"], report["candidates"]["static"]
    batches = [r["batch"] for r in dyn["results"]]
    assert batches == [1, 2, 4][:len(batches)] and len(batches) >= 2
    assert dyn["sweep"]["stop"] in ("saturated", "max") and dyn["sweep"]["best"] in batches
    assert [r["batch"] for r in static["results"]] == [1]
    assert static["sweep"]["stop"] == "fixed"


def test_bad_sweep_and_dims_are_refused_before_anything_runs(project):
    write_recipe(project.root, """
    onnx: {uses: onnx.export, with: {model: tiny, exporter: legacy}}
    bench: {uses: benchmark, from: onnx, with: {model: tiny, sweep: {dim: btach}}}
    """)
    proc = project.cli("run", "r.yaml")
    assert proc.returncode == 2
    assert "no named dim 'btach' (did you mean 'batch'?)" in proc.stderr
    assert "Traceback" not in proc.stderr
    write_recipe(project.root, """
    onnx: {uses: onnx.export, with: {model: tiny, exporter: legacy}}
    bench: {uses: benchmark, from: onnx, with: {model: tiny, sweep: {}, dims: {batch: [2]}}}
    """)
    proc = project.cli("run", "r.yaml")
    assert proc.returncode == 2 and "'batch' is both swept" in proc.stderr


def test_rebench_measures_again_and_builds_nothing_else(built, capsys, monkeypatch):
    from buildgraph.cli import run_cli

    before = _bench(built)
    result = buildgraph.run(built / "r.yaml", cache_dir=built / "c", build_dir=built / "b3",
                            rebench=True)
    assert {s: r.status for s, r in result.steps.items()} == {
        "onnx": "restored", "ts": "restored", "verify": "restored", "bench": "built",
        "ship": "built"}
    after = _bench(built, build="b3")
    assert after["candidates"]["onnx"]["results"] != before["candidates"]["onnx"]["results"]
    # an artifact out of date: --rebench refuses, names it, and runs nothing
    write_recipe(built, STEPS.replace("mode: trace", "mode: script"), filename="r3.yaml")
    monkeypatch.setenv("BUILDGRAPH_CACHE_DIR", str(built / "c"))
    assert run_cli(["run", str(built / "r3.yaml"), "--rebench", "--build-dir",
                    str(built / "b4")]) == 2
    err = capsys.readouterr().err
    assert "--rebench measures what is built" in err and "ts (" in err
    assert not (built / "b4").exists()
    # a recipe without a benchmark step
    (built / "nob.yaml").write_text("steps:\n  a: {uses: shell, with: {cmd: 'echo > ${out.o}'},"
                                    " outputs: [o]}\n")
    assert run_cli(["run", str(built / "nob.yaml"), "--rebench"]) == 2
    assert "no benchmark step" in capsys.readouterr().err
