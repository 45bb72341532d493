"""AOTInductor packages (``torch.aoti``) and the C++ check of every artifact that claims to run
from C++ (``cpp.check``), on a tiny CNN with the real toolchain: torch's AOTInductor and the
system's g++/CMake building loaders against the installed torch and TVM wheels.

One recipe is built once for the module (the AOTInductor compile and the two torch loaders are
the expensive part: ~20 s each on 2 cores); the other tests reuse its cache, so its loaders are
built once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tvm")

import buildgraph  # noqa: E402
from buildgraph.backends.cpp import build as cppbuild  # noqa: E402
from buildgraph.backends.cpp.tensorfile import (TensorFileError, read_tensors,  # noqa: E402
                                                write_tensors)
from buildgraph.backends.generic import toolchain  # noqa: E402
from buildgraph.errors import StepFailed  # noqa: E402
from torch_helpers import write_recipe  # noqa: E402

needs_toolchain = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX") or "g++") is None or shutil.which("cmake") is None,
    reason="needs a C++ compiler and CMake (Debian: apt-get install g++ cmake)")

STEPS = """
ep: {uses: torch.export, with: {model: tiny}}
aoti: {uses: torch.aoti, from: ep}
ts: {uses: torchscript, with: {model: tiny}}
tvm_lib: {uses: tvm.compile, from: ep, with: {dims: {batch: 1}}}
verify:
  uses: verify
  from: [ep, aoti, ts]
  with: {model: tiny, random: 2, dims: {batch: [1, 3]}}
verify_tvm: {uses: verify, from: [tvm_lib], with: {model: tiny, random: 2}}
cpp: {uses: cpp.check, from: [verify, verify_tvm, ts, aoti, tvm_lib]}
bench:
  uses: benchmark
  from: [aoti]
  with: {model: tiny, reference: false, warmup: 1, runs: 3, max_s: 1, window_s: 0.05}
release: {uses: release, from: [bench, verify, cpp, aoti]}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if shutil.which(os.environ.get("CXX") or "g++") is None or shutil.which("cmake") is None:
        pytest.skip("needs a C++ compiler and CMake (Debian: apt-get install g++ cmake)")
    root = tmp_path_factory.mktemp("cpp")
    write_recipe(root, STEPS)
    result = buildgraph.run(root / "r.yaml", cache_dir=root / "cache", build_dir=root / "build")
    assert result.ok, {s: r.message for s, r in result.steps.items() if r.message}
    return root, result


def out(root: Path, step: str, name: str) -> Path:
    return root / "build" / step / name


def test_aoti_package_keeps_the_dynamic_batch_and_passes_verification(built):
    root, _ = built
    info = json.loads(out(root, "aoti", "info.json").read_text())
    assert info["device"] == "cpu" and info["format"] == "aotinductor"
    assert isinstance(info["inputs"][0]["shape"][0], str), info["inputs"]  # dynamic batch
    assert info["inputs"][0]["shape"][1:] == [3, 16, 16]
    report = json.loads(out(root, "verify", "report.json").read_text())
    entry = report["candidates"]["aoti"]
    assert entry["runtime"] == "torch.aoti" and entry["passed"]
    assert {s["shapes"]["x"][0] for s in report["inputs"]} == {1, 3}  # ran batch 1 and 3
    assert entry["outputs"]["output"]["max_abs"] < 1e-5


def test_cpp_check_runs_torchscript_aoti_and_tvm_from_cpp(built):
    root, _ = built
    report = json.loads(out(root, "cpp", "report.json").read_text())
    assert report["passed"]
    for cand, form in (("ts", "torchscript"), ("aoti", "aoti"), ("tvm_lib", "tvm")):
        entry = report["candidates"][cand]
        assert entry["runs_from_cpp"] == "yes", entry
        assert entry["loader"] == form and entry["input_sets"], entry
        assert entry["outputs"]["output"]["max_abs"] < 1e-4
        assert (out(root, "cpp", "sources") / form / "main.cpp").is_file()
        assert (out(root, "cpp", "sources") / form / "CMakeLists.txt").is_file()
    # the TVM library takes batch 1 only: the C++ run used the sets of that shape
    assert report["candidates"]["tvm_lib"]["verify_step"] == "verify_tvm"
    assert report["candidates"]["ts"]["verify_step"] == "verify"


def test_loaders_are_cached_per_toolchain_and_shared_between_checks(built):
    root, _ = built
    area = root / "cache" / "areas" / cppbuild.AREA
    before = sorted(p.name for p in area.iterdir() if not p.name.startswith("."))
    assert [n.split("-")[0] for n in before] == ["aoti", "torchscript", "tvm"]
    # another check (other tolerances upstream, so another key) reuses the built loaders
    recipe = (root / "r.yaml").read_text().replace(
        "verify_tvm: {uses: verify, from: [tvm_lib], with: {model: tiny, random: 2}}",
        "verify_tvm: {uses: verify, from: [tvm_lib], with: {model: tiny, random: 1}}")
    (root / "r2.yaml").write_text(recipe)
    result = buildgraph.run(root / "r2.yaml", ["cpp"], cache_dir=root / "cache",
                            build_dir=root / "build2")
    assert result.ok, {s: r.message for s, r in result.steps.items() if r.message}
    assert result.steps["cpp"].status == "built"
    log = next((root / "build2").rglob("cpp.log")).read_text()
    for form in ("torchscript", "aoti", "tvm"):
        assert f"C++ loader '{form}': cached" in log
    assert sorted(p.name for p in area.iterdir() if not p.name.startswith(".")) == before


def test_release_ships_the_loader_that_was_proven(built):
    root, _ = built
    bundle = out(root, "release", "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    art = manifest["artifacts"][0]
    assert art["step"] == "aoti" and art["runtime"] == "torch.aoti"
    assert art["cpp"]["runs_from_cpp"] == "yes" and art["cpp"]["loader"] == "cpp/aoti"
    for name in ("main.cpp", "CMakeLists.txt"):
        assert (bundle / "cpp" / "aoti" / name).read_bytes() == \
            (out(root, "cpp", "sources") / "aoti" / name).read_bytes()
    readme = (bundle / "README.md").read_text()
    assert "cmake -S cpp/aoti -B build/aoti && cmake --build build/aoti" in readme
    assert "./build/aoti/bg_loader artifacts/aoti/model.pt2 cpu IN.bgt OUT.bgt" in readme
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(bundle / "loaders" / "load_torch_aoti.py"), "aoti"],
                          capture_output=True, text=True, timeout=300)
    assert "aoti (torch.aoti): inputs [1, 3, 16, 16] -> outputs [1, 10]" in proc.stdout, \
        proc.stderr[-2000:]
    first = out(root, "release", "bundle.tar.gz").read_bytes()
    again = buildgraph.run(root / "r.yaml", ["release"], force=["release"],
                           cache_dir=root / "cache", build_dir=root / "build")
    assert again.ok and again.steps["release"].status == "built"
    assert out(root, "release", "bundle.tar.gz").read_bytes() == first


def test_cpp_outputs_that_differ_from_the_reference_fail_verification(built, tmp_path):
    """The real loader and artifact, against a reference moved by 0.5: the step fails with the
    error, as a failed verification does."""
    import numpy as np

    from buildgraph.backends.cpp.check import CppCheckExecutor
    from buildgraph.engine.executor import Task

    root, _ = built
    tensors = dict(np.load(out(root, "verify", "tensors.npz")))
    for key in list(tensors):
        if ".reference." in key:
            tensors[key] = tensors[key] + 0.5
    np.savez(tmp_path / "tensors.npz", **tensors)
    task = Task(kind="cpp.check", params={}, inputs={},
                upstream={"verify": {"report": out(root, "verify", "report.json"),
                                     "tensors": tmp_path / "tensors.npz"},
                          "ts": {"model": out(root, "ts", "model.ts")}},
                outputs={"report": tmp_path / "report.json", "sources": tmp_path / "sources"},
                upstream_kinds={"verify": "verify", "ts": "torchscript"},
                env={}, step_id="cpp", work_dir=tmp_path, log_path=tmp_path / "log",
                areas={cppbuild.AREA: root / "cache" / "areas" / cppbuild.AREA})
    with pytest.raises(StepFailed) as err:
        CppCheckExecutor().run(task)
    assert re.fullmatch(
        r"C\+\+ check failed: ts: outputs differ from the reference: output: "
        r"max\(\|err\| - 0\.001\*\|ref\|\) = 0\.\d+ > atol 0\.0001; cosine 0\.\d+ < 0\.9999",
        err.value.message), err.value.message
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["candidates"]["ts"]["runs_from_cpp"] == "no"


# --- one-line errors --------------------------------------------------------------------------

def test_no_compiler_is_one_line(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/bin/g++")
    with pytest.raises(StepFailed) as err:
        cppbuild.check_toolchain()
    assert err.value.message == ("cannot build the C++ loader: no C++ compiler "
                                 "(/nonexistent/bin/g++ is not on PATH)")


def test_no_cmake_is_one_line(monkeypatch, tmp_path):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("no g++")
    monkeypatch.setenv("CXX", gxx)
    monkeypatch.setenv("PATH", str(tmp_path))  # no cmake there
    with pytest.raises(StepFailed) as err:
        cppbuild.check_toolchain()
    assert err.value.message == "cannot build the C++ loader: cmake is not on PATH"


def test_missing_headers_are_one_line(monkeypatch):
    monkeypatch.setitem(cppbuild.HEADERS, "torch",
                        ("torch", "include/torch/not_shipped.h", "lib/libtorch.so"))
    with pytest.raises(StepFailed) as err:
        cppbuild.package_dir("torch")
    assert err.value.message.startswith(
        f"cannot build the C++ loader: the installed torch {torch.__version__} has no C++ "
        "header include/torch/not_shipped.h (under ")


@pytest.mark.parametrize("steps, message", [
    ("ts: {uses: torchscript, with: {model: tiny}}\n"
     "cpp: {uses: cpp.check, from: [ts]}",
     "cpp.check compares with a verify step's inputs and reference: list the verify step "
     "that checks these artifacts under 'from:'"),
    ("ep: {uses: torch.export, with: {model: tiny}}\n"
     "verify: {uses: verify, from: [ep], with: {model: tiny}}\n"
     "cpp: {uses: cpp.check, from: [verify, ep]}",
     "cpp.check: 'ep' (torch.export step) has no C++ loader here; it checks torch.aoti, "
     "torchscript, tvm.compile artifacts"),
])
def test_recipe_errors_name_the_step(tmp_path, steps, message, capsys):
    from buildgraph.cli import run_cli

    write_recipe(tmp_path, steps)
    code = run_cli(["plan", str(tmp_path / "r.yaml"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code != 0 and message in err, err
    assert "Traceback" not in err


def test_aoti_unknown_option_is_one_line(tmp_path):
    write_recipe(tmp_path, "aoti: {uses: torch.aoti, with: {model: tiny, "
                           "options: {max_autotun: true}}}")
    result = buildgraph.run(tmp_path / "r.yaml", cache_dir=tmp_path / "c",
                            build_dir=tmp_path / "b")
    assert not result.ok
    assert result.steps["aoti"].message == (
        "options: 'max_autotun' is not an Inductor setting (did you mean 'max_autotune'?) "
        "(hint: names are torch._inductor.config's, e.g. 'cpp.simdlen')")


# --- keys and the tensor file ------------------------------------------------------------------

def test_aoti_key_covers_compiler_cpu_isa_and_options(tmp_path, monkeypatch):
    from buildgraph.backends.torch.aoti import TorchAotiExecutor, TorchAotiParams
    from buildgraph.engine.executor import DescribeContext

    ctx = DescribeContext(recipe_dir=tmp_path, upstream_kinds={"ep": "torch.export"})
    desc = TorchAotiExecutor().describe(TorchAotiParams(), ctx)
    from buildgraph.engine.environment import package_version

    assert desc.env["torch"] == package_version("torch")
    assert desc.env["cxx"].startswith(toolchain.cxx_name() + ": ")
    assert desc.env["cpu_isa"] == toolchain.cpu_isa() and "gpu_arch" not in desc.env
    assert desc.volatile and "$CXX" in desc.watch
    monkeypatch.setenv("CXX", "/nonexistent/clang++")
    other = TorchAotiExecutor().describe(TorchAotiParams(), ctx)
    assert other.env["cxx"] == "/nonexistent/clang++: not installed"
    cuda = TorchAotiExecutor().describe(TorchAotiParams(device="cuda"), ctx)
    assert "gpu_arch" in cuda.env
    with pytest.raises(ValueError):
        TorchAotiParams(options={"cpp.simdlen": [8]})


def test_tensor_file_round_trip_and_refusals(tmp_path):
    import numpy as np

    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([[1, 2]], dtype=np.int64),
              np.array(True)]
    write_tensors(tmp_path / "t.bgt", arrays)
    back = read_tensors(tmp_path / "t.bgt")
    assert [a.dtype for a in back] == [a.dtype for a in arrays]
    assert all(np.array_equal(a, b) for a, b in zip(arrays, back))
    (tmp_path / "bad.bgt").write_bytes(b"NOPE")
    with pytest.raises(TensorFileError, match="not a BGT1 file"):
        read_tensors(tmp_path / "bad.bgt")
    (tmp_path / "cut.bgt").write_bytes((tmp_path / "t.bgt").read_bytes()[:30])
    with pytest.raises(TensorFileError):
        read_tensors(tmp_path / "cut.bgt")
    with pytest.raises(TensorFileError, match="complex64 has no BGT1 code"):
        write_tensors(tmp_path / "c.bgt", [np.zeros(2, dtype=np.complex64)])


def test_report_shows_which_artifact_runs_from_cpp(built, capsys):
    from buildgraph.cli import run_cli

    root, _ = built
    args = ["report", str(root / "r.yaml"), "--cache-dir", str(root / "cache"),
            "--build-dir", str(root / "build")]
    assert run_cli(args + ["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    arts = doc["models"]["tiny"]["artifacts"]
    assert arts["aoti"]["cpp"]["text"] == "yes" and arts["aoti"]["runtime"] == "torch.aoti"
    assert "cpp" not in arts["ep"]  # a .pt2 makes no C++ claim
    assert run_cli(args + ["--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| size | C++ |" in out
    assert re_line(out, "aoti").endswith("| yes |")


def re_line(text: str, cand: str) -> str:
    return next(ln for ln in text.splitlines() if ln.startswith(f"| `{cand}` |"))


@pytest.mark.gpu
def test_aoti_cuda_package_verifies_and_runs_from_cpp_on_the_gpu(tmp_path):
    """On a GPU machine: a CUDA package, verified on the GPU and run from C++ there."""
    write_recipe(tmp_path, """
aoti_gpu: {uses: torch.aoti, with: {model: tiny, device: cuda}}
verify: {uses: verify, from: [aoti_gpu], with: {model: tiny, random: 2, device: cuda,
                                                dims: {batch: [1, 3]}}}
cpp: {uses: cpp.check, from: [verify, aoti_gpu]}
""")
    result = buildgraph.run(tmp_path / "r.yaml", cache_dir=tmp_path / "c",
                            build_dir=tmp_path / "b")
    assert result.ok, {s: r.message for s, r in result.steps.items() if r.message}
    info = json.loads((tmp_path / "b" / "aoti_gpu" / "info.json").read_text())
    assert info["device"] == "cuda"
    report = json.loads((tmp_path / "b" / "cpp" / "report.json").read_text())
    entry = report["candidates"]["aoti_gpu"]
    assert entry["runs_from_cpp"] == "yes" and entry["device"] == "cuda", entry
