"""TensorRT release boundaries: the fake has a name only in the releases that have it, the
version table of ``spec.py`` (and docs/tensorrt.md's copy) says what NVIDIA's release tags say,
and a step asking for what the installed TensorRT lacks is a recipe error at plan time with the
step's file and line, naming the release it needs.

``tests/data/tensorrt_api_since.txt`` is made by ``tools/trt_api_names.py --since`` from
``python/src`` and ``sampleOptions.cpp`` at every release tag from v10.0.0 to v11.1 of
github.com/NVIDIA/TensorRT: each binding or trtexec option that is not in every release, with
the first and last release that has it."""

from __future__ import annotations

import importlib
import json
import re
from typing import Any, Dict, Optional, Tuple

import pytest

from buildgraph.backends.tensorrt import env as trt_env
from buildgraph.backends.tensorrt.build import TensorRTBuildExecutor
from buildgraph.backends.tensorrt.build_params import VERSION_TABLE, DescriptionError, TensorRTBuildParams, describe_build, parse_version, version_problems
from buildgraph.engine.executor import DescribeContext
from buildgraph.errors import RecipeError
from conftest import REPO
from trt_fake import make_test_onnx

PROFILE = {"x": {"min": [1, 3, 16, 16], "opt": [4, 3, 16, 16], "max": [8, 3, 16, 16]}}
RELEASES = ["8.6", "9.1", "9.2", "9.3", "10.0", "10.1", "10.2", "10.3", "10.4", "10.5", "10.6", "10.7", "10.8", "10.9",
            "10.10", "10.11", "10.12", "10.13", "10.14", "10.15", "10.16", "11.0", "11.1"]


def since_table() -> Dict[str, Tuple[str, str]]:
    rows = {}
    for line in (REPO / "tests" / "data" / "tensorrt_api_since.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, first, last = line.split("\t")
            rows[name] = (first, last)
    return rows


SINCE = since_table()


def fake_module(monkeypatch, version: str) -> Any:
    monkeypatch.setenv("BUILDGRAPH_FAKE_TRT_VERSION", version)
    import trt_fake

    return importlib.reload(trt_fake)


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv(trt_env.MODULE_ENV, "trt_fake")

    def load(version: str) -> Any:
        module = fake_module(monkeypatch, version)
        trt_env.probe(refresh=True)
        return module

    yield load
    monkeypatch.delenv("BUILDGRAPH_FAKE_TRT_VERSION", raising=False)
    importlib.reload(importlib.import_module("trt_fake"))
    trt_env._cached = None


# --- the fake ------------------------------------------------------------------------------

@pytest.mark.parametrize("version,query_keys,same_cc,include_refit", [
    ("10.7.0.23", False, False, False), ("10.8.0.43", True, False, False),
    ("10.9.0.34", True, True, False), ("10.13.3.9", True, True, False),
    ("10.14.1.48", True, True, True), ("11.4.0.106", True, True, True)])
def test_the_fake_has_a_name_only_from_its_release(monkeypatch, version, query_keys, same_cc,
                                                   include_refit):
    trt = fake_module(monkeypatch, version)
    try:
        assert hasattr(trt.ITimingCache, "queryKeys") is query_keys
        assert hasattr(trt, "TimingCacheKey") is query_keys
        assert hasattr(trt.HardwareCompatibilityLevel, "SAME_COMPUTE_CAPABILITY") is same_cc
        assert hasattr(trt.SerializationFlag, "INCLUDE_REFIT") is include_refit
        assert hasattr(trt.BuilderFlag, "FP16") is version.startswith("10.")
    finally:
        monkeypatch.delenv("BUILDGRAPH_FAKE_TRT_VERSION")
        importlib.reload(trt)


def test_the_fakes_boundaries_are_nvidias(monkeypatch):
    """Every boundary the fake draws is the one the release tags show."""
    trt = importlib.import_module("trt_fake")
    for name, (first, last) in trt._SINCE.items():
        want = SINCE[name]
        assert want[0] == ".".join(map(str, first)), (name, want)
        assert want[1] == (".".join(map(str, last)) if last else ""), (name, want)
    for name in trt._SINCE_10:
        assert SINCE[name] == ("10.0", ""), name
    # and the boundaries buildgraph relies on are all in it
    for name in ("ITimingCache.queryKeys", "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY",
                 "SerializationFlag.INCLUDE_REFIT", "tensorrt.TimingCacheKey"):
        assert name in trt._SINCE


# --- the version table ---------------------------------------------------------------------

def first_release(api: str) -> Optional[Tuple[str, str]]:
    """(first, last) release of the binding or trtexec option an ``api`` text names first; None
    when every release of the table's range (8.6 to 11.1) has it."""
    words = api.split()
    token = words[0] + words[1] if words[0] == "trtexec" else words[0].split("/")[0]
    return SINCE.get(token)


def test_the_version_table_is_what_the_release_tags_say():
    for req in VERSION_TABLE:
        found = first_release(req.api)
        # absent from the table: in every release since 8.6, the oldest the table reads
        assert (found[0] if found else RELEASES[0]) == req.first, (req.param, req.api, found)
        if req.removed:
            assert found is not None and found[1], req.api
            assert RELEASES[RELEASES.index(found[1]) + 1] == req.removed, (req.api, found)
        else:
            assert found is None or not found[1], (req.api, "removed in", found)
        m = re.search(r"trtexec (--\w+)=(\w+)", req.api)
        if m:  # the trtexec spelling of the same value appears in the same release
            assert SINCE[f"trtexec{m.group(1)}=~{m.group(2).lower()}"][0] == req.first


def test_docs_print_the_version_table():
    text = (REPO / "docs" / "tensorrt.md").read_text(encoding="utf-8")
    section = text.split("## Which TensorRT each parameter needs", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    assert header[:4] == ["parameter value", "step kinds", "first release", "removed in"]
    assert [(r[0], r[2], r[3] if r[3] != "–" else "") for r in body] == \
        [(req.param, req.first, req.removed) for req in VERSION_TABLE]


def test_version_problems_name_the_release_needed():
    p = TensorRTBuildParams.model_validate({"hardware_compatibility": "same_compute_capability",
                                            "strip_weights": True, "refit": True})
    assert version_problems(p, "10.8.0.43", "tensorrt.build") == [(
        "hardware_compatibility: same_compute_capability needs TensorRT 10.9 or later "
        "(HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY (trtexec "
        "--hardwareCompatibilityLevel=sameComputeCapability)); installed: TensorRT 10.8.0.43",
        "")]
    assert version_problems(p, "10.9.0.34", "tensorrt.build") == []
    assert [m for m, _ in version_problems(p, "9.3.0.1", "tensorrt.build")] == [
        "hardware_compatibility: same_compute_capability needs TensorRT 10.9 or later "
        "(HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY (trtexec "
        "--hardwareCompatibilityLevel=sameComputeCapability)); installed: TensorRT 9.3.0.1",
        "strip_weights needs TensorRT 10.0 or later (BuilderFlag.STRIP_PLAN (trtexec "
        "--stripWeights)); installed: TensorRT 9.3.0.1"]
    legacy = TensorRTBuildParams.model_validate({"legacy_precision_flags": ["fp16"]})
    (message, hint), = version_problems(legacy, "11.0.0.1", "tensorrt.build")
    assert message.startswith("legacy_precision_flags: TensorRT 11.0 removed BuilderFlag.FP16")
    assert "onnx.autocast" in hint
    assert version_problems(legacy, "10.16.1.11", "tensorrt.build") == []
    # unreadable versions are not guessed at plan time; the run fails closed
    assert version_problems(p, "unknown", "tensorrt.build") == []
    with pytest.raises(DescriptionError, match="cannot tell the TensorRT version"):
        describe_build(p, "unknown")


def test_describe_refuses_what_the_installed_tensorrt_lacks(fake, tmp_path):
    fake("10.8.0.43")
    executor = TensorRTBuildExecutor()
    params = TensorRTBuildParams(hardware_compatibility="same_compute_capability",
                                 profiles=[PROFILE])
    with pytest.raises(RecipeError) as err:
        executor.describe(params, DescribeContext(recipe_dir=tmp_path))
    assert err.value.message.startswith("hardware_compatibility: same_compute_capability needs "
                                        "TensorRT 10.9 or later")
    fake("10.9.0.34")
    assert executor.describe(params, DescribeContext(recipe_dir=tmp_path)).env["tensorrt"] == \
        "10.9.0.34"


RECIPE = """\
steps:
  engine:
    uses: tensorrt.build
    with:
      onnx: tiny.onnx
      hardware_compatibility: same_compute_capability
      profiles: [{x: {min: [1, 3, 16, 16], opt: [4, 3, 16, 16], max: [8, 3, 16, 16]}}]
"""


def test_plan_reports_the_missing_feature_at_the_steps_line(project, monkeypatch):
    monkeypatch.setenv(trt_env.MODULE_ENV, "trt_fake")
    monkeypatch.setenv("BUILDGRAPH_FAKE_TRT_VERSION", "10.8.0.43")
    make_test_onnx(project.root / "tiny.onnx")
    project.write("r.yaml", RECIPE)
    proc = project.cli("plan", "r.yaml", check=2)
    assert proc.stderr.strip() == (
        "error: r.yaml:4:5: steps.engine.with: hardware_compatibility: same_compute_capability "
        "needs TensorRT 10.9 or later (HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY "
        "(trtexec --hardwareCompatibilityLevel=sameComputeCapability)); installed: TensorRT "
        "10.8.0.43")
    monkeypatch.setenv("BUILDGRAPH_FAKE_TRT_VERSION", "10.9.0.34")
    project.cli("plan", "r.yaml", check=0)


# --- queryKeys: not before 10.8 ----------------------------------------------------------

def test_without_query_keys_the_build_has_no_hit_rate_and_says_why(fake, tmp_path):
    from buildgraph.engine.executor import Task

    fake("10.7.0.23")
    onnx = tmp_path / "m.onnx"
    make_test_onnx(onnx)
    metas = []
    for name in ("b1", "b2"):
        out = tmp_path / name
        out.mkdir()
        task = Task(step_id=name, kind="tensorrt.build",
                    params=TensorRTBuildParams(profiles=[PROFILE]).model_dump(mode="json"),
                    inputs={}, upstream={"onnx": {"model": onnx}},
                    outputs={n: out / f for n, f in TensorRTBuildExecutor.outputs.items()},
                    work_dir=out, recipe_dir=tmp_path, log_path=out / "log.txt",
                    upstream_kinds={"onnx": "onnx.export"},
                    areas={"trt-timing": tmp_path / "cache" / "trt-timing"})
        metas.append(TensorRTBuildExecutor().run(task))
    first, second = (m["timing_cache"] for m in metas)
    assert first["hit_rate"] is None and first["timed"] is None
    assert "ITimingCache.queryKeys comes with 10.8" in first["note"]
    assert first["shared"] == "created" and second["shared"] == "combined"
    assert "hit rate unknown (this TensorRT cannot list" in (tmp_path / "b1" / "log.txt").read_text()
    scope = next((tmp_path / "cache" / "trt-timing").iterdir())
    assert json.loads((scope / "meta.json").read_text())["entries"] is None


def test_every_trtexec_option_the_translation_writes_is_covered_by_the_table():
    """An option newer than the trtexec kind's floor (10.0) needs its own row, with the same
    first release; one that a release removed must not be written without a row saying so."""
    from buildgraph.backends.tensorrt import trtexec

    source = (REPO / "buildgraph" / "backends" / "tensorrt" / "trtexec.py").read_text()
    options = set(re.findall(r'"(--[A-Za-z][A-Za-z0-9]*)', source))
    values = {f"--hardwareCompatibilityLevel=~{v.lower()}" for v in trtexec.HWCOMPAT.values()}
    values |= {f"--memPoolSize={v}:*" for v in trtexec.POOLS.values()}
    floor = next(r for r in VERSION_TABLE if r.param == "(any trtexec step)")
    rows = {r.api: r for r in VERSION_TABLE if "trtexec" in r.kinds}
    unchecked = []
    for option in sorted(options | values):
        found = SINCE.get(f"trtexec{option}")
        if found is None:
            continue  # in every release since 8.6
        first, last = found
        if last:  # removed since: only the legacy precision options, behind their row
            assert option in ("--fp16", "--bf16", "--int8", "--fp8"), option
            assert RELEASES[RELEASES.index(last) + 1] == "11.0"
            continue
        if parse_version(first) <= parse_version(floor.first):
            continue
        if not any(r.first == first and option.split("=")[0] in api for api, r in rows.items()):
            unchecked.append(f"{option} (from {first})")
    assert not unchecked, f"trtexec options newer than the table says: {unchecked}"
