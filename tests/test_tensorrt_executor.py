"""``tensorrt.build`` / ``tensorrt.refit`` around the API call: run against the fake
``tensorrt`` module (:mod:`trt_fake`: the real API's names, types, refusals and return values;
it records calls and keeps JSON engines and timing caches), and without TensorRT at all through
the CLI (``plan`` shows the steps, ``run`` fails them with one line, ``--keep-going`` builds the
rest). The real API is covered by the conformance test (names on their classes) and by the GPU
tests (behaviour)."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from buildgraph.backends.tensorrt import env as trt_env
from buildgraph.errors import StepFailed
from buildgraph.engine.executor import Task
from buildgraph.backends.tensorrt.build import TensorRTBuildExecutor
from buildgraph.backends.tensorrt.build_params import TensorRTBuildParams
from buildgraph.backends.tensorrt.refit import TensorRTRefitExecutor
from trt_fake import make_test_onnx
from buildgraph.backends.tensorrt.structure import structure_digest

PROFILE = {"x": {"min": [1, 3, 16, 16], "opt": [4, 3, 16, 16], "max": [8, 3, 16, 16]}}


@pytest.fixture
def fake(monkeypatch):
    """The fake TensorRT (11.4 unless the test sets BUILDGRAPH_FAKE_TRT_VERSION first)."""
    monkeypatch.setenv(trt_env.MODULE_ENV, "trt_fake")

    def load(version: str = "11.4.0.106") -> Any:
        monkeypatch.setenv("BUILDGRAPH_FAKE_TRT_VERSION", version)
        import trt_fake as module

        module = importlib.reload(module)
        module.CALLS.clear()
        trt_env.probe(refresh=True)
        return module

    yield load
    monkeypatch.delenv(trt_env.MODULE_ENV)
    monkeypatch.delenv("BUILDGRAPH_FAKE_TRT_VERSION", raising=False)
    importlib.reload(importlib.import_module("trt_fake"))
    trt_env._cached = None


@pytest.fixture
def onnx_file(tmp_path) -> Path:
    path = tmp_path / "up" / "model.onnx"
    path.parent.mkdir()
    make_test_onnx(path)
    return path


def build_task(tmp_path: Path, params: Dict[str, Any], onnx_path: Path, name: str = "b",
               inputs: Optional[Dict[str, Path]] = None) -> Task:
    out = tmp_path / name / "out"
    work = tmp_path / name / "work"
    out.mkdir(parents=True)
    work.mkdir()
    validated = TensorRTBuildExecutor.Params.model_validate(params).model_dump(mode="json")
    return Task(step_id="engine", kind="tensorrt.build", params=validated, inputs=inputs or {},
                upstream={"onnx": {"model": onnx_path}},
                outputs={n: out / f for n, f in TensorRTBuildExecutor.outputs.items()},
                work_dir=work, recipe_dir=tmp_path, log_path=tmp_path / name / "log.txt",
                upstream_kinds={"onnx": "onnx.export"},
                areas={"trt-timing": tmp_path / "cache" / "trt-timing"})


def run(task: Task) -> Dict[str, Any]:
    return TensorRTBuildExecutor().run(task) or {}


def engine(task: Task) -> Dict[str, Any]:
    return json.loads(task.outputs["model"].read_bytes())


def test_build_applies_the_description_in_the_samples_order(fake, tmp_path, onnx_file):
    trt = fake()
    task = build_task(tmp_path, {"profiles": [PROFILE], "workspace": "1GiB",
                                 "optimization_level": 5, "hardware_compatibility":
                                 "ampere_plus", "refittable": True, "tf32": False,
                                 "max_aux_streams": 1}, onnx_file)
    meta = run(task)
    order = [c[0] for c in trt.CALLS]
    assert order[:5] == ["init_libnvinfer_plugins", "Builder", "create_network", "OnnxParser",
                         "parser.set_flag"]
    assert order.index("parse_from_file") < order.index("create_builder_config") < \
        order.index("add_optimization_profile") < order.index("set_timing_cache") < \
        order.index("build_serialized_network")
    e = engine(task)
    assert e["fake"] and e["strongly_typed"]
    assert e["flags"] == ["REFIT"]  # TF32 cleared, REFIT set
    assert e["pools"] == {"WORKSPACE": 2 ** 30}
    assert e["profiles"] == [{"x": [[1, 3, 16, 16], [4, 3, 16, 16], [8, 3, 16, 16]]}]
    assert e["optimization_level"] == 5 and e["hardware_compatibility"] == "AMPERE_PLUS"
    assert meta["tensorrt"] == "11.4.0.106" and meta["gpu"] == "Fake GPU"
    assert meta["compute_capability"] == "8.9" and meta["layers_parsed"] == 7
    assert json.loads(task.outputs["layers"].read_text())["Layers"][0]["Name"] == "conv1"
    log = task.outputs["log"].read_text()
    assert "[INFO] [fake] building 7 layers" in log and "# build_s:" in log
    assert task.outputs["timing_cache"].stat().st_size > 0


def test_description_is_volatile_and_names_the_gpu(fake, tmp_path):
    from buildgraph.engine.executor import DescribeContext

    fake()
    description = TensorRTBuildExecutor().describe(
        TensorRTBuildParams(hardware_compatibility="ampere_plus", profiles=[PROFILE]),
        DescribeContext(recipe_dir=tmp_path))
    assert description.volatile and description.areas == ("trt-timing",)
    assert description.env == {
        "tensorrt": "11.4.0.106", "cuda": "12.9", "gpu": "Fake GPU",
        "compute_capability": "8.9", "hardware_compatibility": "ampere_plus"}


def test_parser_errors_are_listed_node_by_node(fake, tmp_path):
    fake()
    bad = tmp_path / "bad.onnx"
    make_test_onnx(bad, extra_op="FakeUnsupported")
    task = build_task(tmp_path, {"profiles": [PROFILE]}, bad)
    with pytest.raises(StepFailed) as err:
        run(task)
    assert err.value.message == ("TensorRT's ONNX parser rejected 1 node (ops: FakeUnsupported): "
                                 "node 7 'odd' (FakeUnsupported): No importer registered for "
                                 "op: FakeUnsupported")
    assert "ONNX parser: node 7 'odd' (FakeUnsupported)" in task.outputs["log"].read_text()


def test_profiles_are_checked_against_the_onnx_before_building(fake, tmp_path, onnx_file):
    trt = fake()
    task = build_task(tmp_path, {"profiles": [{"images": PROFILE["x"]}]}, onnx_file)
    from buildgraph.errors import RecipeError

    with pytest.raises(RecipeError) as err:  # the scheduler adds the step's file and line
        run(task)
    assert err.value.message.startswith("profiles[0].images: the ONNX model (model.onnx) "
                                        "has no input 'images'")
    assert "Builder" not in [c[0] for c in trt.CALLS]


def test_default_profile_comes_from_the_models_dims(fake, tmp_path, onnx_file):
    fake()
    task = build_task(tmp_path, {"model": "tiny"}, onnx_file)
    task.data = {"model": {"name": "tiny", "inputs": [["x", {"shape": ["batch", 3, 16, 16]}]],
                           "dims": {"batch": {"min": 1, "opt": 2, "max": 4}}}}
    run(task)
    assert engine(task)["profiles"] == [{"x": [[1, 3, 16, 16], [2, 3, 16, 16],
                                               [4, 3, 16, 16]]}]


def test_trt11_refuses_builder_flag_precision(fake, tmp_path, onnx_file):
    fake()
    task = build_task(tmp_path, {"profiles": [PROFILE], "legacy_precision_flags": ["fp16"]},
                      onnx_file)
    with pytest.raises(StepFailed, match="TensorRT 11 builds strongly typed networks only.*"
                                         "onnx.autocast"):
        run(task)


def test_trt10_builds_weakly_typed_with_flags(fake, tmp_path, onnx_file):
    trt = fake("10.16.1.11")
    task = build_task(tmp_path, {"profiles": [PROFILE], "legacy_precision_flags":
                                 ["fp16", "int8"]}, onnx_file)
    run(task)
    e = engine(task)
    assert not e["strongly_typed"] and {"FP16", "INT8"} <= set(e["flags"])
    assert ("create_network", 0) in trt.CALLS


def test_trt9_gets_explicit_batch(fake, tmp_path, onnx_file):
    trt = fake("9.3.0.1")
    run(build_task(tmp_path, {"profiles": [PROFILE]}, onnx_file))
    flags = dict(c for c in trt.CALLS if c[0] == "create_network")["create_network"]
    assert flags & (1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    assert flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))


def test_plugins_are_loaded_and_a_missing_one_fails(fake, tmp_path, onnx_file):
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler (cc) to make a test plugin library")
    trt = fake()
    lib = Path(trt.make_plugin_library(tmp_path / "libmy.so", "dynamic", "BgExecRelu=Relu"))
    spec = {"path": "libmy.so", "kind": "dynamic"}
    run(build_task(tmp_path, {"profiles": [PROFILE], "plugins": [spec]}, onnx_file,
                   inputs={"plugin:libmy.so": lib}))
    assert ("load_library", str(lib)) in trt.CALLS
    # a REGISTER_TENSORRT_PLUGIN library has no getCreators: load_library returns None
    static = Path(trt.make_plugin_library(tmp_path / "libst.so", "static", "BgExecStatic=Relu"))
    with pytest.raises(StepFailed) as err:
        run(build_task(tmp_path, {"profiles": [PROFILE], "plugins": [
            {"path": "libst.so", "kind": "dynamic"}]}, onnx_file, name="b2",
            inputs={"plugin:libst.so": static}))
    assert err.value.message.startswith(
        "TensorRT could not load plugin library 'libst.so' (kind: dynamic): "
        "IPluginRegistry.load_library returned None. A dynamic library exports getCreators; "
        "one that registers its plugins with REGISTER_TENSORRT_PLUGIN is kind: static: ")
    assert "has no symbol getCreators" in err.value.message
    lib.unlink()
    with pytest.raises(StepFailed, match="plugin library 'libmy.so' cannot be read"):
        run(build_task(tmp_path, {"profiles": [PROFILE], "plugins": [spec]}, onnx_file,
                       name="b3", inputs={"plugin:libmy.so": lib}))


# --- timing caches ------------------------------------------------------------------------

def scope_dirs(tmp_path: Path):
    root = tmp_path / "cache" / "trt-timing"
    return sorted(p for p in root.iterdir()) if root.is_dir() else []


def test_shared_timing_cache_is_created_reused_and_reports_hit_rate(fake, tmp_path, onnx_file):
    fake()
    first = run(build_task(tmp_path, {"profiles": [PROFILE]}, onnx_file, "b1"))
    assert first["timing_cache"]["hit_rate"] == 0.0 and first["timing_cache"]["timed"] == 7
    assert first["timing_cache"]["shared"] == "created"
    (scope,) = scope_dirs(tmp_path)
    assert scope.name.startswith("fake-gpu-sm89-cuda12.9-trt11.4.0.106-")
    second = run(build_task(tmp_path, {"profiles": [PROFILE]}, onnx_file, "b2"))
    assert second["timing_cache"]["hit_rate"] == 1.0 and second["timing_cache"]["hits"] == 7
    assert second["timing_cache"]["timed"] == 0
    assert second["timing_cache"]["shared"].startswith("unchanged")
    # another network on the same GPU: first seen against a non-empty cache
    other = tmp_path / "other.onnx"
    make_test_onnx(other, extra_op="Softmax")
    third = run(build_task(tmp_path, {"profiles": [PROFILE]}, other, "b3"))
    assert third["timing_cache"]["hit_rate"] is None and third["timing_cache"]["timed"] == 1
    assert third["timing_cache"]["shared"] == "combined"
    meta = json.loads((scope / "meta.json").read_text())
    assert meta["entries"] == 8 and meta["builds"] == 2


def test_tactic_changing_flags_get_their_own_cache(fake, tmp_path, onnx_file):
    fake()
    run(build_task(tmp_path, {"profiles": [PROFILE]}, onnx_file, "b1"))
    run(build_task(tmp_path, {"profiles": [PROFILE], "sparsity": True}, onnx_file, "b2"))
    run(build_task(tmp_path, {"profiles": [PROFILE], "workspace": "1GiB"}, onnx_file, "b3"))
    assert len(scope_dirs(tmp_path)) == 2  # the workspace limit does not change tactics


def test_cache_tensorrt_cannot_read_is_reported_and_replaced(fake, tmp_path, onnx_file):
    fake()
    run(build_task(tmp_path, {"profiles": [PROFILE]}, onnx_file, "b1"))
    (scope,) = scope_dirs(tmp_path)
    garbage = b"\x00not a timing cache"
    (scope / "cache.bin").write_bytes(garbage)
    meta = json.loads((scope / "meta.json").read_text())
    import hashlib

    meta["sha256"] = hashlib.sha256(garbage).hexdigest()  # intact file, unreadable content
    (scope / "meta.json").write_text(json.dumps(meta))
    task = build_task(tmp_path, {"profiles": [PROFILE]}, onnx_file, "b2")
    result = run(task)
    assert result["timing_cache"]["start"].startswith("rejected: TensorRT cannot read it")
    assert result["timing_cache"]["shared"] == "replaced"
    assert (scope / "rejected").is_dir()
    assert json.loads((scope / "cache.bin").read_bytes())["entries"]


def test_timing_cache_off_and_readonly_leave_the_shared_cache_alone(fake, tmp_path, onnx_file,
                                                                     monkeypatch):
    fake()
    meta = run(build_task(tmp_path, {"profiles": [PROFILE], "timing_cache": "off"}, onnx_file))
    assert meta["timing_cache"]["mode"] == "off" and scope_dirs(tmp_path) == []
    monkeypatch.setenv("BUILDGRAPH_TRT_TIMING_CACHE", "readonly")
    meta = run(build_task(tmp_path, {"profiles": [PROFILE]}, onnx_file, "b2"))
    assert meta["timing_cache"]["mode"] == "readonly"
    assert not any((d / "cache.bin").exists() for d in scope_dirs(tmp_path))


def test_pinned_cache_rebuilds_without_timing_or_fails(fake, tmp_path, onnx_file):
    fake()
    first = build_task(tmp_path, {"profiles": [PROFILE], "timing_cache": "off"}, onnx_file)
    run(first)
    pinned = tmp_path / "pinned.cache"
    shutil.copyfile(first.outputs["timing_cache"], pinned)
    params = {"profiles": [PROFILE], "timing_cache": "pinned",
              "timing_cache_file": "pinned.cache"}
    again = build_task(tmp_path, params, onnx_file, "b2", inputs={"timing_cache_file": pinned})
    meta = run(again)
    assert meta["timing_cache"]["timed"] == 0 and meta["timing_cache"]["mode"] == "pinned"
    assert engine(again)["layers"] == engine(first)["layers"]
    other = tmp_path / "other.onnx"
    make_test_onnx(other, extra_op="Softmax")
    with pytest.raises(StepFailed, match="could not build the engine: \\[fake\\] timing cache "
                                         "miss for odd"):
        run(build_task(tmp_path, params, other, "b3", inputs={"timing_cache_file": pinned}))
    foreign = tmp_path / "foreign.cache"
    data = json.loads(pinned.read_bytes())
    data["header"]["gpu"] = "Another GPU"
    foreign.write_text(json.dumps(data))
    with pytest.raises(StepFailed, match="pinned cache was rejected: TensorRT refused it"):
        run(build_task(tmp_path, params, onnx_file, "b4", inputs={"timing_cache_file": foreign}))


# --- refit --------------------------------------------------------------------------------

def test_refit_keys_on_structure_and_refits_new_weights(fake, tmp_path, onnx_file):
    trt = fake()
    task = build_task(tmp_path, {"profiles": [PROFILE], "refit": True}, onnx_file)
    meta = run(task)
    assert "REFIT" in engine(task)["flags"]
    assert meta["structure_digest"] == structure_digest(onnx_file)
    new_weights = tmp_path / "new" / "model.onnx"
    new_weights.parent.mkdir()
    make_test_onnx(new_weights, seed=7)
    from buildgraph.engine.executor import DescribeContext, import_object

    executor = TensorRTBuildExecutor()
    ctx = DescribeContext(recipe_dir=tmp_path)
    refittable = executor.describe(TensorRTBuildParams(refit=True, profiles=[PROFILE]), ctx)
    view = import_object(refittable.upstream_view, "view")
    assert view(new_weights) == view(onnx_file)  # same structure, new weights: same view
    assert view(task.outputs["log"]) is None  # other files count whole
    assert executor.describe(TensorRTBuildParams(profiles=[PROFILE]), ctx).upstream_view is None

    out = tmp_path / "refit"
    out.mkdir()
    refit = Task(step_id="refit", kind="tensorrt.refit", params={"log_level": "warning"},
                 inputs={}, upstream={"engine": {n: p for n, p in task.outputs.items()},
                                      "weights": {"model": new_weights}},
                 outputs={"model": out / "model.engine", "log": out / "refit.log"},
                 work_dir=out, recipe_dir=tmp_path, log_path=out / "log.txt",
                 upstream_kinds={"engine": "tensorrt.build", "weights": "onnx.export"})
    result = TensorRTRefitExecutor().run(refit)
    refitted = json.loads((out / "model.engine").read_bytes())
    assert refitted["weights"] and refitted["digest"] == engine(task)["digest"]
    assert "build_s" in result and "saved_s" in result
    assert [c[0] for c in trt.CALLS][-6:] == [
        "deserialize_cuda_engine", "Refitter", "refit_from_file", "refit_cuda_engine",
        "create_serialization_config", "serialize_with_config"]
    wider = tmp_path / "wider" / "model.onnx"
    wider.parent.mkdir()
    make_test_onnx(wider, channels=(32, 48))
    refit.upstream["weights"] = {"model": wider}
    with pytest.raises(StepFailed) as err:
        TensorRTRefitExecutor().run(refit)
    assert err.value.message.startswith(
        "refit: TensorRT could not read the weights of model.onnx (is it the engine's "
        "architecture?): weights 'w2' have shape [48, 32, 3, 3]; the engine's have "
        "[64, 32, 3, 3]; ")


# --- no TensorRT, no GPU: the CLI ---------------------------------------------------------

RECIPE = """\
models:
  tiny:
    source: net.py:make
    inputs: {x: {shape: [batch, 3, 16, 16]}}
    dims: {batch: {min: 1, opt: 4, max: 8}}
steps:
  onnx:
    uses: shell
    inputs: {m: tiny.onnx}
    with: {cmd: "cp ${in.m} ${out.model}"}
    outputs: {model: model.onnx}
  engine:
    uses: tensorrt.build
    from: onnx
    matrix: {level: [3, 5]}
    with: {model: tiny, optimization_level: "${matrix.level}"}
  after:
    uses: shell
    from: onnx
    with: {cmd: "wc -c < ${in.onnx.model} > ${out.size}"}
    outputs: [size]
"""


@pytest.fixture
def trt_project(project):
    project.write("net.py", "def make():\n    raise RuntimeError('not used')\n")
    make_test_onnx(project.root / "tiny.onnx")
    project.write("r.yaml", RECIPE)
    return project


def test_plan_shows_tensorrt_steps_without_tensorrt(trt_project):
    proc = trt_project.cli("plan", "r.yaml", check=0)
    assert "engine@3" in proc.stdout and "engine@5" in proc.stdout


def test_run_fails_trt_steps_with_one_line_and_keep_going_builds_the_rest(trt_project):
    events = trt_project.run("r.yaml", "--keep-going", check=1)
    statuses = trt_project.statuses(events)
    assert statuses == {"onnx": "built", "engine@3": "failed", "engine@5": "failed",
                        "after": "built"}
    for e in events:
        if e["event"] == "step_finished" and e["status"] == "failed":
            assert e["message"].startswith("needs an NVIDIA GPU and TensorRT; found: ")
            assert "\n" not in e["message"]


def test_profile_errors_are_recipe_errors_with_file_and_line(trt_project):
    trt_project.write("r.yaml", RECIPE.replace("{model: tiny, optimization_level",
                                               "{model: tiny, profiles: [{images: {min: [1], "
                                               "opt: [1], max: [1]}}], optimization_level"))
    proc = trt_project.cli("plan", "r.yaml", check=2)
    assert proc.stderr.strip() == (
        "error: r.yaml:16:5: steps.engine.with: profiles[0].images: model 'tiny' has no "
        "input 'images'; its inputs: x [batch, 3, 16, 16] (and 1 more)")


def test_onnx_file_param_is_checked_when_the_recipe_loads(trt_project):
    trt_project.write("r2.yaml", """\
steps:
  engine:
    uses: tensorrt.build
    with:
      onnx: tiny.onnx
      profiles:
        - x: {min: [1, 3, 16], opt: [2, 3, 16], max: [4, 3, 16]}
""")
    proc = trt_project.cli("plan", "r2.yaml", check=2)
    out = proc.stderr + proc.stdout
    assert "r2.yaml:4:" in out
    assert "profiles[0].x: rank 3 given, but input 'x' of tiny.onnx has rank 4" in out


def test_an_unwritable_shared_cache_never_fails_the_build(fake, tmp_path, onnx_file,
                                                           monkeypatch):
    fake()
    from buildgraph.backends.tensorrt import timing_cache as trt_timing_cache

    def broken(*args, **kwargs):
        raise OSError("read-only file system")

    monkeypatch.setattr(trt_timing_cache.TimingCacheStore, "merge", broken)
    monkeypatch.setattr(trt_timing_cache.TimingCacheStore, "load", broken)
    task = build_task(tmp_path, {"profiles": [PROFILE]}, onnx_file)
    meta = run(task)
    assert meta["timing_cache"]["shared"] == "not updated (OSError)"
    assert "could not update the shared timing cache" in task.log_path.read_text()
    assert task.outputs["model"].exists()


def test_profiles_are_checked_against_the_upstream_onnx_first(tmp_path, onnx_file):
    from buildgraph.errors import RecipeError

    executor = TensorRTBuildExecutor()

    names = iter(range(100))

    def check(params, data=None):
        task = build_task(tmp_path, params, onnx_file, name=f"b{next(names)}")
        task.data = data or {}
        executor.validate_profiles(task, TensorRTBuildParams.model_validate(params), onnx_file)

    check({"profiles": [PROFILE]})
    with pytest.raises(RecipeError) as err:
        check({"profiles": [{"images": PROFILE["x"]}]})
    assert err.value.message.startswith("profiles[0].images: the ONNX model (model.onnx) has "
                                        "no input 'images'")
    check({"model": "tiny"}, {"model": {"dims": {"batch": {"min": 1, "opt": 2, "max": 4}}}})
    with pytest.raises(RecipeError, match="no optimization profile"):
        check({})


def test_cli_run_with_the_fake_builds_in_workers_and_shares_the_cache(trt_project,
                                                                      monkeypatch):
    monkeypatch.setenv(trt_env.MODULE_ENV, "trt_fake")
    events = trt_project.run("r.yaml")
    assert trt_project.statuses(events) == {"onnx": "built", "engine@3": "built",
                                            "engine@5": "built", "after": "built"}
    finished = {e["step"]: e for e in events if e["event"] == "step_finished"}
    engine = json.loads((trt_project.build / "r" / "engine@5" / "model.engine").read_bytes())
    assert engine["optimization_level"] == 5
    assert engine["profiles"] == [{"x": [[1, 3, 16, 16], [4, 3, 16, 16], [8, 3, 16, 16]]}]
    scopes = list((trt_project.cache / "trt-timing").iterdir())
    assert len(scopes) == 1 and (scopes[0] / "cache.bin").is_file()
    assert set(finished) == {"onnx", "engine@3", "engine@5", "after"}
    again = trt_project.run("r.yaml")
    assert set(trt_project.statuses(again).values()) == {"cached"}


HOOK_RECIPE = """\
vars: {weights: tiny.onnx}
steps:
  onnx:
    uses: shell
    inputs: {a: tiny.onnx, b: tiny_retrained.onnx}
    with: {cmd: "cp $BUILDGRAPH_RECIPE_DIR/${vars.weights} ${out.model}"}
    outputs: {model: model.onnx}
  engine:
    uses: tensorrt.build
    from: onnx
    with:
      refit: true
      refittable: true
      profiles: [{PROFILE: {min: [1, 3, 16, 16], opt: [4, 3, 16, 16], max: [8, 3, 16, 16]}}]
"""


def test_planner_checks_profiles_against_the_upstream_onnx_with_file_and_line(project):
    make_test_onnx(project.root / "tiny.onnx")
    make_test_onnx(project.root / "tiny_retrained.onnx", seed=1)
    project.write("r.yaml", HOOK_RECIPE.replace("PROFILE", "images"))
    events = project.run("r.yaml", "--keep-going", check=1)
    engine = [e for e in events if e.get("step") == "engine" and e["event"] == "step_finished"]
    assert engine[0]["status"] == "failed"
    assert engine[0]["message"].startswith("r.yaml:11:5: steps.engine.with: ")
    assert "images" in engine[0]["message"]


def test_refit_engine_is_keyed_on_structure_so_new_weights_keep_it(project, monkeypatch):
    monkeypatch.setenv(trt_env.MODULE_ENV, "trt_fake")
    make_test_onnx(project.root / "tiny.onnx")
    make_test_onnx(project.root / "tiny_retrained.onnx", seed=1)  # same structure, new weights
    project.write("r.yaml", HOOK_RECIPE.replace("PROFILE", "x"))
    assert project.statuses(project.run("r.yaml")) == {"onnx": "built", "engine": "built"}
    again = project.statuses(project.run("r.yaml", "--set", "weights=tiny_retrained.onnx"))
    assert again == {"onnx": "built", "engine": "cached"}
    # without refit the engine is keyed on the full ONNX bytes
    project.write("r.yaml", HOOK_RECIPE.replace("PROFILE", "x").replace("refit: true",
                                                                         "refit: false"))
    project.run("r.yaml")
    assert project.statuses(project.run("r.yaml", "--set", "weights=tiny_retrained.onnx")) == \
        {"onnx": "restored", "engine": "built"}


def test_an_onnx_model_of_the_recipe_is_built_directly(fake, tmp_path, onnx_file):
    """``with: {model: m}`` where m is an ONNX model and no upstream gives an ONNX file: the
    model's file is described (keyed) and built; with an upstream ONNX output, that one is."""
    from buildgraph.backends.tensorrt.build import source_onnx
    from buildgraph.engine.executor import DescribeContext

    trt = fake()
    models = {"m": {"source": "up/model.onnx", "dims": {"batch": {"min": 1, "opt": 2,
                                                                  "max": 4}}}}
    description = TensorRTBuildExecutor().describe(
        TensorRTBuildParams(model="m"), DescribeContext(recipe_dir=tmp_path, models=models))
    assert description.inputs == {"model:m:file": onnx_file.resolve()}
    task = build_task(tmp_path, {"model": "m"}, onnx_file, inputs=dict(description.inputs))
    task.upstream, task.upstream_kinds = {}, {}
    task.data = dict(description.data)
    assert source_onnx(task, TensorRTBuildParams(model="m"), "tensorrt.build") == \
        onnx_file.resolve()
    run(task)
    parsed = [c for c in trt.CALLS if c[0] == "parse_from_file"]
    assert parsed == [("parse_from_file", onnx_file.name)]
    assert engine(task)["profiles"] == [{"x": [[1, 3, 16, 16], [2, 3, 16, 16],
                                               [4, 3, 16, 16]]}]
    other = tmp_path / "other.onnx"
    make_test_onnx(other)
    task.upstream, task.upstream_kinds = {"sim": {"model": other}}, {"sim": "onnx.simplify"}
    assert source_onnx(task, TensorRTBuildParams(model="m"), "tensorrt.build") == other
