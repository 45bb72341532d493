"""benchmark and release with real runtimes (torch, onnxruntime) on a tiny CNN."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import buildgraph  # noqa: E402
from torch_helpers import write_models, write_recipe  # noqa: E402

STEPS = """
onnx: {uses: onnx.export, with: {model: tiny, exporter: legacy}}
ts: {uses: torchscript, with: {model: tiny, mode: trace}}
verify: {uses: verify, from: [onnx, ts], with: {model: tiny, random: 2}}
bench:
  uses: benchmark
  from: [onnx, ts]
  with: {model: tiny, dims: {batch: [1, 4]}, warmup: 1, runs: 5}
ship: {uses: release, from: [bench, verify, onnx, ts], with: {batch: 4}}
"""


def test_benchmark_times_every_artifact_and_release_ships_the_fastest(tmp_path):
    write_models(tmp_path)
    write_recipe(tmp_path, STEPS)
    result = buildgraph.run(tmp_path / "r.yaml", cache_dir=tmp_path / "c",
                            build_dir=tmp_path / "b")
    assert result.ok, {s: r.message for s, r in result.steps.items() if not r.ok}
    report = json.loads((tmp_path / "b" / "bench" / "benchmark.json").read_text())
    assert set(report["candidates"]) == {"onnx", "ts"}
    for entry in report["candidates"].values():
        assert [r["batch"] for r in entry["results"]] == [1, 4]
        assert all(r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] for r in entry["results"])
    manifest = json.loads((tmp_path / "b" / "ship" / "release.json").read_text())
    fastest = min(report["candidates"],
                  key=lambda c: report["candidates"][c]["results"][1]["median_ms"])
    assert manifest["chosen"] == fastest
    shipped = tmp_path / "b" / "ship" / "artifact" / manifest["artifact"]
    assert shipped.read_bytes() == (tmp_path / "b" / fastest / manifest["artifact"]).read_bytes()
    assert [r["step"] for r in manifest["ranking"]] == sorted(
        report["candidates"], key=lambda c: report["candidates"][c]["results"][1]["median_ms"])


def test_release_only_considers_verified_candidates(tmp_path):
    write_models(tmp_path)
    write_recipe(tmp_path, STEPS.replace("verify, from: [onnx, ts]", "verify, from: [ts]"))
    result = buildgraph.run(tmp_path / "r.yaml", cache_dir=tmp_path / "c",
                            build_dir=tmp_path / "b")
    assert result.ok
    manifest = json.loads((tmp_path / "b" / "ship" / "release.json").read_text())
    assert manifest["chosen"] == "ts"
    assert manifest["not_eligible"] == ["onnx"]
