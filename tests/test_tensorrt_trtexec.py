"""``trtexec``: the option translation, checked against argv written here by hand and against
trtexec's own grammar; and runs through a stand-in trtexec that, like the real one, refuses
options ``samples/common/sampleOptions.cpp`` does not read.

The grammar is ``tests/data/trtexec_options.txt`` (11.1; ``_10``: 10.16.1), made by
``tools/trt_api_names.py`` from NVIDIA's ``sampleOptions.cpp``: the options
``AllOptions::parse`` reads, and the values of the enumerated ones. The stand-in also models the
checks of ``BuildOptions::parse`` that the translation can reach: ``--memPoolSize`` pool names
and units, shapes right behind their ``--profile``, repeated options, and
``--pluginInstanceNorm`` refused with ``--versionCompatible`` or ``ampere+``."""

from __future__ import annotations

import importlib
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest
from pydantic import ValidationError

from buildgraph.backends.tensorrt import env as trt_env
from buildgraph.backends.tensorrt.build_params import DescriptionError, TensorRTBuildParams, describe_build
from buildgraph.backends.tensorrt.trtexec import TrtexecExecutor, _versions, trtexec_args, version_from_output
from buildgraph.engine.executor import DescribeContext, Task
from buildgraph.errors import RecipeError, StepFailed
from conftest import REPO
from trt_fake import make_test_onnx

PROFILE = {"x": {"min": [1, 3, 16, 16], "opt": [4, 3, 16, 16], "max": [8, 3, 16, 16]}}
STATIC = {"x": {"min": [1, 3, 16, 16], "opt": [1, 3, 16, 16], "max": [1, 3, 16, 16]}}
TABLES = {11: REPO / "tests" / "data" / "trtexec_options.txt",
          10: REPO / "tests" / "data" / "trtexec_options_10.txt"}
REPEATABLE = {"--staticPlugins", "--plugins", "--setPluginsToSerialize", "--dynamicPlugins",
              "--safetyPlugins", "--profile", "--minShapes", "--optShapes", "--maxShapes"}

# The stand-in: trtexec's parse, from the table; then what the real one writes. Its errors are
# trtexec's ("Unknown option: NAME VALUE", std::invalid_argument texts), exit status 1.
STANDIN = r'''
import fnmatch, os, re, sys
table, args = sys.argv[1], sys.argv[2:]
options = {}
for line in open(table):
    if line.startswith("--"):
        name, _, values = line.strip().partition("=")
        options[name] = values.split("|") if values else []
banner = os.environ.get("STANDIN_BANNER", "[TensorRT v110400] [b106]")
print("&&&& RUNNING TensorRT.trtexec " + banner + " # trtexec " + " ".join(args))
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "args.txt"), "a") as fh:
    fh.write("\n".join(args) + "\n")
def fail(message):
    print("[E] " + message)
    print("&&&& FAILED TensorRT.trtexec")
    sys.exit(1)
def allowed(value, patterns):
    for p in patterns:
        if p.startswith("~") and value.lower() == p[1:]:
            return True
        if not p.startswith("~") and fnmatch.fnmatchcase(value, p):
            return True
    return False
seen, parsed = {}, []
for pos, arg in enumerate(args):
    name, _, value = arg.partition("=")
    if name not in options:
        fail(f"Unknown option: {name} {value}")
    if name in seen and name not in REPEATABLE:
        fail(f"Unknown option: {name} {value}")  # the second one is left unread
    seen[name] = value
    values = options[name]
    items = value.split(",") if any(":" in v for v in values) else [value]
    for item in items:
        if values and not allowed(item, values):
            fail(f"{name}: unknown value {item}")
        if name == "--memPoolSize" and not re.fullmatch(r"\w+:\d+(\.\d+)?[BKMGbkmg]?", item):
            fail(f"{item}: invalid unit specifier")
    if name in ("--minShapes", "--optShapes", "--maxShapes"):
        # getShapesBuild: split at ',' first; splitNameAndValue: 'name':dims, else the name is
        # everything before the last ':'; dims: ints joined by 'x' (stoi throws otherwise)
        for item in value.split(","):
            quoted = item.split("'")
            if len(quoted) not in (1, 3):
                fail(f"Found invalid number of 's when parsing {item}. Expected: 2, received: "
                     f"{len(quoted) - 1}.")
            tensor, dims = (quoted[0] + quoted[1], quoted[2][1:]) if len(quoted) == 3 else \
                item.rpartition(":")[::2]
            if not all(d.isdigit() for d in dims.split("x")):
                fail("stoi")
            with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "shapes.txt"),
                      "a") as fh:
                fh.write(f"{name} {tensor} {dims}\n")
    parsed.append((name, value))
# getOptimizationProfiles: each --profile takes the shape options right behind it
SHAPES = ("--minShapes", "--optShapes", "--maxShapes")
consumed, profiles = set(), {}
for pos, (name, value) in enumerate(parsed):
    if name != "--profile":
        continue
    got = set()
    for k in range(1, 4):
        if pos + k < len(parsed) and parsed[pos + k][0] in SHAPES and \
                parsed[pos + k][0] not in got:
            got.add(parsed[pos + k][0])
            consumed.add(pos + k)
        else:
            break
    if int(value) in profiles:
        fail("Optimization profile index cannot be the same.")
    profiles[int(value)] = got
for index in range(max(profiles) + 1 if profiles else 0):
    if not profiles.get(index):
        fail(f"Found invalid or missing shape spec at profile index {index}. ")
if not profiles:  # one of each, without --profile
    for shape in SHAPES:
        first = next((i for i, (n, _) in enumerate(parsed) if n == shape), None)
        if first is not None:
            consumed.add(first)
if any(n in SHAPES and i not in consumed for i, (n, _) in enumerate(parsed)):
    fail("Multiple --minShapes/--optShapes/--maxShapes without --profile are not allowed. ")
if ("--pluginInstanceNorm" in seen or "--pi" in seen) and (
        "--versionCompatible" in seen or "--vc" in seen
        or seen.get("--hardwareCompatibilityLevel", "").lower() == "ampere+"):
    fail("Plugin InstanceNorm cannot be used with version compatible or hardware compatible "
         "engines!")
if "--onnx" in seen and not os.path.isfile(seen["--onnx"]):
    fail(f"Cannot open ONNX file {seen['--onnx']}")
for name, value in parsed:
    if name == "--saveEngine":
        open(value, "w").write('{"fake": "trtexec"}\n')
    elif name == "--exportLayerInfo":
        open(value, "w").write('{"Layers": []}\n')
    elif name == "--timingCacheFile":
        old = open(value).read() if os.path.exists(value) else ""
        open(value, "w").write(old + "timed\n")
print("&&&& PASSED TensorRT.trtexec")
'''.replace("REPEATABLE", repr(sorted(REPEATABLE)).replace("[", "{").replace("]", "}"))


def grammar(major: int) -> Dict[str, Set[str]]:
    out: Dict[str, Set[str]] = {}
    for line in TABLES[major].read_text(encoding="utf-8").splitlines():
        if line.startswith("--"):
            name, _, values = line.partition("=")
            out[name] = set(values.split("|")) if values else set()
    return out


def trtexec_accepts(args: List[str], major: int = 11) -> List[str]:
    """The arguments trtexec of that major version would not read (name, or value)."""
    table = grammar(major)
    bad = []
    for arg in args:
        name, _, value = arg.partition("=")
        values = table.get(name)
        if values is None:
            bad.append(arg)
        elif values and not any(v == value or (v.startswith("~") and v[1:] == value.lower())
                                or (v.endswith(":*") and all(i.split(":")[0] + ":*" in values
                                                             for i in value.split(",")))
                                for v in values):
            bad.append(arg)
    return bad


def test_every_option_translates_as_written_here():
    p = TensorRTBuildParams.model_validate({
        "profiles": [PROFILE, STATIC], "workspace": "1GiB",
        "memory_pools": {"tactic_shared_memory": "48KiB"}, "optimization_level": 5,
        "hardware_compatibility": "ampere_plus", "version_compatible": True, "refit": True,
        "tf32": False, "max_aux_streams": 0})
    desc = describe_build(p, "11.4.0", plugins=[("/p/libx.so", "static"),
                                                 ("/p/liby.so", "dynamic")])
    args = trtexec_args(desc, Path("m.onnx"), Path("e.engine"), Path("l.json"), Path("t.cache"))
    assert args == [
        "--onnx=m.onnx",                        # BaseModelOptions::parse
        "--saveEngine=e.engine",
        "--skipInference",                      # build only
        "--stronglyTyped",
        "--refit",                              # refit: true -> BuilderFlag REFIT
        "--versionCompatible",
        "--noTF32",                             # tf32: false (getAndDelNegOption)
        # pools by TensorRT member name; sizes in bytes ('B' unit)
        "--memPoolSize=tacticSharedMem:49152B,workspace:1073741824B",
        "--builderOptimizationLevel=5",
        "--hardwareCompatibilityLevel=ampere+",
        "--staticPlugins=/p/libx.so",          # REGISTER_TENSORRT_PLUGIN: trtexec dlopens it
        "--dynamicPlugins=/p/liby.so",         # getCreators: IPluginRegistry::loadLibrary
        "--maxAuxStreams=0",
        "--profilingVerbosity=detailed",
        # each profile's shapes right behind its --profile (getAndDelOptionBehind)
        "--profile=0", "--minShapes=x:1x3x16x16", "--optShapes=x:4x3x16x16",
        "--maxShapes=x:8x3x16x16",
        "--profile=1", "--minShapes=x:1x3x16x16", "--optShapes=x:1x3x16x16",
        "--maxShapes=x:1x3x16x16",
        "--timingCacheFile=t.cache",
        "--exportLayerInfo=l.json"]
    assert trtexec_accepts(args) == []


def test_other_options_translate_as_written_here():
    p = TensorRTBuildParams.model_validate({
        "profiles": [PROFILE], "strip_weights": True, "refittable": True, "sparsity": False,
        "dla_core": 1, "profiling_verbosity": "layer_names_only", "native_instancenorm": False,
        "memory_pools": {"dla_managed_sram": "1MiB", "dla_local_dram": 1024,
                         "dla_global_dram": "2KiB"}, "log_level": "verbose"})
    args = trtexec_args(describe_build(p, "11.4"), Path("m.onnx"), Path("e"), None, None)
    assert args == [
        "--onnx=m.onnx", "--saveEngine=e", "--skipInference", "--stronglyTyped",
        "--refit", "--stripWeights", "--allowGPUFallback",
        "--memPoolSize=dlaGlobalDRAM:2048B,dlaLocalDRAM:1024B,dlaSRAM:1048576B",
        "--useDLACore=1", "--profilingVerbosity=layer_names_only", "--pluginInstanceNorm",
        "--minShapes=x:1x3x16x16", "--optShapes=x:4x3x16x16", "--maxShapes=x:8x3x16x16",
        "--verbose"]
    assert trtexec_accepts(args) == []
    sparse = describe_build(TensorRTBuildParams.model_validate(
        {"profiles": [PROFILE], "sparsity": True, "timing_cache": "pinned",
         "timing_cache_file": "t.cache"}), "11.4")
    args = trtexec_args(sparse, Path("m.onnx"), Path("e"), None, Path("t.cache"))
    assert args[4:6] == ["--sparsity=enable", "--errorOnTimingCacheMiss"]
    assert trtexec_accepts(args) == []
    same = describe_build(TensorRTBuildParams.model_validate(
        {"profiles": [PROFILE], "hardware_compatibility": "same_compute_capability"}), "11.4")
    args = trtexec_args(same, Path("m.onnx"), Path("e"), None, None)
    assert "--hardwareCompatibilityLevel=sameComputeCapability" in args
    assert trtexec_accepts(args) == []


def test_legacy_precision_flags_are_trtexec_10_options():
    legacy = describe_build(TensorRTBuildParams.model_validate(
        {"legacy_precision_flags": ["fp16", "int8"], "profiles": [PROFILE]}), "10.16")
    args = trtexec_args(legacy, Path("m.onnx"), Path("e"), None, None)
    assert args[:5] == ["--onnx=m.onnx", "--saveEngine=e", "--skipInference", "--fp16",
                        "--int8"]
    assert trtexec_accepts(args, 10) == []
    assert trtexec_accepts(["--fp16", "--int8"], 11) == ["--fp16", "--int8"]  # gone in 11


def test_what_trtexec_has_no_option_for_is_refused_in_one_line():
    desc = describe_build(TensorRTBuildParams.model_validate(
        {"memory_pools": {"tactic_dram": "1GiB"}}), "11.4")
    with pytest.raises(DescriptionError, match="cannot limit the tactic_dram"):
        trtexec_args(desc, Path("m"), Path("e"), None, None)
    # the InstanceNorm plugin in a compatible engine: refused when the recipe is read (trtexec
    # throws for --versionCompatible and ampere+; the parser needs NATIVE_INSTANCENORM for any
    # hardware-compatibility level)
    for extra in ({"version_compatible": True}, {"hardware_compatibility": "ampere_plus"},
                  {"hardware_compatibility": "same_compute_capability"}):
        with pytest.raises(ValidationError) as err:
            TrtexecExecutor.Params.model_validate({"native_instancenorm": False, **extra})
        assert "native_instancenorm: false (TensorRT's InstanceNorm plugin) cannot go into a " \
               "version-compatible or hardware-compatible engine" in str(err.value)


def test_version_banner():
    assert version_from_output("&&&& RUNNING TensorRT.trtexec [TensorRT v110400] [b106] # "
                               "trtexec --help") == "11.4.0"
    assert version_from_output("[TensorRT v101601]") == "10.16.1"
    assert version_from_output("nothing") is None


# --- runs through the stand-in ---------------------------------------------------------------

def install_standin(bin_dir: Path, major: int = 11) -> None:
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "standin.py").write_text(STANDIN, encoding="utf-8")
    script = bin_dir / "trtexec"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {bin_dir / 'standin.py'} "
                      f"{TABLES[major]} \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """A stand-in trtexec on PATH (11.4's banner and options; STANDIN_BANNER and
    :func:`install_standin` change them) and the fake's GPU."""
    bin_dir = tmp_path / "bin"
    install_standin(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(trt_env.MODULE_ENV, "trt_fake")
    importlib.reload(importlib.import_module("trt_fake"))
    trt_env.probe(refresh=True)
    _versions.clear()
    yield bin_dir
    monkeypatch.delenv(trt_env.MODULE_ENV)
    trt_env._cached = None
    _versions.clear()


def make_task(tmp_path: Path, params: dict, name: str = "t") -> Task:
    onnx = tmp_path / "model.onnx"
    if not onnx.exists():
        make_test_onnx(onnx)
    root = tmp_path / name
    (root / "out").mkdir(parents=True)
    (root / "work").mkdir()
    return Task(step_id=name, kind="trtexec",
                params=TrtexecExecutor.Params.model_validate(params).model_dump(mode="json"),
                inputs={}, upstream={"onnx": {"model": onnx}},
                outputs={n: root / "out" / f for n, f in TrtexecExecutor.outputs.items()},
                work_dir=root / "work", recipe_dir=tmp_path, log_path=root / "log.txt",
                areas={"trt-timing": tmp_path / "cache" / "trt-timing"})


def test_run_through_a_trtexec_binary(fake_gpu, tmp_path):
    executor = TrtexecExecutor()
    assert executor.describe(executor.Params(), DescribeContext(recipe_dir=tmp_path)
                             ).env["tensorrt"] == "11.4.0"
    task = make_task(tmp_path, {"profiles": [PROFILE], "extra_args": ["--noCompilationCache"]})
    meta = executor.run(task)
    assert json.loads(task.outputs["model"].read_text()) == {"fake": "trtexec"}
    assert task.outputs["layers"].read_text().strip() == '{"Layers": []}'
    args = (fake_gpu / "args.txt").read_text().splitlines()
    work = tmp_path / "t" / "work"
    assert args[args.index("--help") + 1:] == [
        f"--onnx={tmp_path / 'model.onnx'}", f"--saveEngine={task.outputs['model']}",
        "--skipInference", "--stronglyTyped", "--profilingVerbosity=detailed",
        "--minShapes=x:1x3x16x16", "--optShapes=x:4x3x16x16", "--maxShapes=x:8x3x16x16",
        f"--timingCacheFile={work / 'timing.cache'}",
        f"--exportLayerInfo={task.outputs['layers']}", "--noCompilationCache"]
    assert "&&&& PASSED" in task.outputs["log"].read_text()
    assert meta["timing_cache"]["shared"] == "created"
    second = executor.run(make_task(tmp_path, {"profiles": [PROFILE]}, "t2"))
    assert second["timing_cache"]["shared"] == "combined"
    scope = next((tmp_path / "cache" / "trt-timing").iterdir())
    assert (scope / "cache.bin").read_text() == "timed\ntimed\n"


@pytest.mark.parametrize("params", [
    {"profiles": [PROFILE, STATIC], "workspace": "1GiB", "optimization_level": 5,
     "hardware_compatibility": "ampere_plus", "version_compatible": True, "refit": True,
     "tf32": False, "max_aux_streams": 0, "memory_pools": {"tactic_shared_memory": "48KiB"}},
    {"profiles": [PROFILE], "refittable": True, "strip_weights": True, "sparsity": False,
     "native_instancenorm": False, "profiling_verbosity": "none", "log_level": "verbose"},
    {"profiles": [PROFILE], "hardware_compatibility": "same_compute_capability"},
])
def test_the_stand_in_accepts_every_translation(fake_gpu, tmp_path, params):
    TrtexecExecutor().run(make_task(tmp_path, params))


def test_an_option_trtexec_lacks_fails_the_step(fake_gpu, tmp_path):
    task = make_task(tmp_path, {"profiles": [PROFILE], "extra_args": ["--fp16"]})
    with pytest.raises(StepFailed, match="trtexec exited with status 1"):
        TrtexecExecutor().run(task)
    assert "[E] Unknown option: --fp16" in task.outputs["log"].read_text()


def test_missing_trtexec_is_one_line(fake_gpu, tmp_path):
    task = make_task(tmp_path, {"profiles": [PROFILE], "trtexec": "no-such-trtexec"})
    with pytest.raises(StepFailed) as err:
        TrtexecExecutor().run(task)
    assert err.value.message == ("needs an NVIDIA GPU and TensorRT's trtexec; found: no "
                                 "'no-such-trtexec' on PATH")


def test_info_output_is_written_for_runtimes(fake_gpu, tmp_path):
    task = make_task(tmp_path, {"profiles": [PROFILE]})
    TrtexecExecutor().run(task)
    info = json.loads(task.outputs["info"].read_text())
    assert info["tensorrt"] == "11.4.0" and info["timing_only"] is False
    assert info["profiles"] == [{"x": {"min": [1, 3, 16, 16], "opt": [4, 3, 16, 16],
                                       "max": [8, 3, 16, 16]}}]


# --- input names trtexec cannot write ----------------------------------------------------------

def renamed_onnx(path: Path, name: str) -> Path:
    """The test CNN with its input called ``name``."""
    import onnx

    model = make_test_onnx(path)
    model.graph.input[0].name = name
    for node in model.graph.node:
        node.input[:] = [name if i == "x" else i for i in node.input]
    onnx.save(model, str(path))
    return path


def test_a_name_with_a_colon_is_quoted_as_trtexec_reads_it(fake_gpu, tmp_path):
    renamed_onnx(tmp_path / "model.onnx", "in:0")
    task = make_task(tmp_path, {"profiles": [{"in:0": PROFILE["x"]}]})
    TrtexecExecutor().run(task)
    assert "--minShapes='in:0':1x3x16x16" in (fake_gpu / "args.txt").read_text().splitlines()
    assert "--minShapes in:0 1x3x16x16" in (fake_gpu / "shapes.txt").read_text()


@pytest.mark.parametrize("name", ["a,b", "it's"])
def test_a_name_trtexec_cannot_write_is_refused(fake_gpu, tmp_path, name):
    # what trtexec does with it, quoted as before: it splits at ',' first
    bad = [f"--onnx={make_onnx(tmp_path)}", f"--minShapes='{name}':1x3x16x16"]
    import subprocess

    proc = subprocess.run(["trtexec", *bad], capture_output=True, text=True)
    assert proc.returncode == 1 and "[E] " in proc.stdout
    # at plan time: the profile's names, and the model's
    executor = TrtexecExecutor()
    with pytest.raises(RecipeError) as err:
        executor.describe(executor.Params.model_validate({"profiles": [{name: PROFILE["x"]}]}),
                          DescribeContext(recipe_dir=tmp_path))
    assert err.value.message.startswith(f"profiles[0].{name}: input '{name}' has ")
    assert "which trtexec's shape options cannot carry" in err.value.message
    models = {"m": {"inputs": {name: {"shape": ["batch", 3, 16, 16]}}}}
    with pytest.raises(RecipeError, match=f"model 'm': input '{re.escape(name)}' has"):
        executor.describe(executor.Params.model_validate({"model": "m"}),
                          DescribeContext(recipe_dir=tmp_path, models=models))
    # at run time, from the upstream ONNX (defaults from the model's dims)
    renamed_onnx(tmp_path / "model.onnx", name)
    task = make_task(tmp_path, {"model": "m"})
    task.data = {"model": {"dims": {"batch": {"min": 1, "opt": 2, "max": 4}}}}
    with pytest.raises(RecipeError, match="which trtexec's shape options cannot carry"):
        executor.run(task)


def make_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "plain.onnx"
    if not path.exists():
        make_test_onnx(path)
    return path


# --- versions ---------------------------------------------------------------------------------

def test_an_unreadable_version_fails_closed(fake_gpu, tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_BANNER", "[build 1234]")
    executor = TrtexecExecutor()
    assert executor.describe(executor.Params(), DescribeContext(recipe_dir=tmp_path)
                             ).env["tensorrt"] == "unknown"
    with pytest.raises(StepFailed) as err:
        executor.run(make_task(tmp_path, {"profiles": [PROFILE]}))
    assert err.value.message.endswith(
        "(its --help banner has no '[TensorRT vNNNNNN]'): which options exist depends on it "
        "(trtexec 11 has no --fp16), so the step does not guess")
    ran = (fake_gpu / "args.txt").read_text().splitlines()
    assert ran == ["--help"]  # asked for its version, never told to build


def test_what_the_trtexec_version_lacks_is_a_recipe_error(fake_gpu, tmp_path, monkeypatch):
    install_standin(fake_gpu, 10)
    monkeypatch.setenv("STANDIN_BANNER", "[TensorRT v100800] [b43]")
    executor = TrtexecExecutor()
    params = executor.Params.model_validate({"profiles": [PROFILE], "hardware_compatibility":
                                             "same_compute_capability"})
    with pytest.raises(RecipeError, match="same_compute_capability needs TensorRT 10.9 or later "
                                          ".*installed: TensorRT 10.8.0"):
        executor.describe(params, DescribeContext(recipe_dir=tmp_path))


# --- plugins, int8 ------------------------------------------------------------------------------

def test_plugins_go_to_the_option_of_their_kind(fake_gpu, tmp_path):
    for name in ("libd.so", "libs.so"):
        (tmp_path / name).write_bytes(b"\x7fELF not really")
    task = make_task(tmp_path, {"profiles": [PROFILE], "plugins": [
        {"path": "libd.so", "kind": "dynamic"}, {"path": "libs.so", "kind": "static"}]})
    task.inputs = {"plugin:libd.so": tmp_path / "libd.so", "plugin:libs.so": tmp_path / "libs.so"}
    TrtexecExecutor().run(task)
    args = (fake_gpu / "args.txt").read_text().splitlines()
    assert f"--dynamicPlugins={tmp_path / 'libd.so'}" in args
    assert f"--staticPlugins={tmp_path / 'libs.so'}" in args
    info = json.loads(task.outputs["info"].read_text())
    assert [(e["path"], e["kind"]) for e in info["plugins"]] == [("libd.so", "dynamic"),
                                                                 ("libs.so", "static")]


def test_int8_without_calibration_is_timing_only_and_says_so(fake_gpu, tmp_path, monkeypatch):
    with pytest.raises(ValidationError, match="trtexec sets placeholder dynamic ranges"):
        TrtexecExecutor.Params.model_validate({"legacy_precision_flags": ["int8"]})
    with pytest.raises(ValidationError, match="timing_only: true only marks"):
        TrtexecExecutor.Params.model_validate({"timing_only": True})
    install_standin(fake_gpu, 10)
    monkeypatch.setenv("STANDIN_BANNER", "[TensorRT v101601] [b11]")
    task = make_task(tmp_path, {"profiles": [PROFILE], "legacy_precision_flags": ["int8"],
                                "timing_only": True})
    meta = TrtexecExecutor().run(task)
    assert "--int8" in meta["trtexec_args"] and meta["timing_only"] is True
    assert json.loads(task.outputs["info"].read_text())["timing_only"] is True
