"""``tvm.compile`` on tiny models with the real TVM: ONNX and torch.export front ends, static
and dynamic batch, cross-compilation, target spellings in the key, the runtime, the loader
snippet of docs/tvm.md, and CUDA (GPU machines only)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tvm_helpers import eager, log_of, needs_tvm, run, write_project

needs_tvm()
pytest.importorskip("torch")

REPO = Path(__file__).resolve().parent.parent

STEPS = """
onnx: {uses: onnx.export, with: {model: net_a, exporter: legacy, opset: 18}}
pt2: {uses: torch.export, with: {model: net_a}}
lib: {uses: tvm.compile, from: onnx, with: {target: native, dims: {batch: 1}}}
lib_dyn: {uses: tvm.compile, from: onnx, with: {target: "llvm -mcpu=native"}}
lib_pt2: {uses: tvm.compile, from: pt2, with: {target: native}}
lib_arm: {uses: tvm.compile, from: onnx, with: {target: "llvm -mtriple=aarch64-linux-gnu"}}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tvm_compile")
    recipe = write_project(root, STEPS)
    result = run(recipe, root)
    assert result.ok, {s: (r.status, r.message, r.log_tail) for s, r in result.steps.items()}
    return root, recipe, result


def _runtime(path: Path):
    from buildgraph.backends.tvm.runtime import TvmRuntime
    from buildgraph.engine.runtime import RuntimeContext

    return TvmRuntime.load(path, RuntimeContext(threads=1, kind="tvm.compile"))


def test_static_onnx_library_matches_pytorch(built):
    root, _, result = built
    out = result["lib"].outputs["model"]
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.so"]
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["target"] == {"kind": "llvm", "mcpu": "native"}
    assert manifest["tvm_target"]["mcpu"] != "native"  # resolved to this CPU's LLVM name
    assert manifest["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    meta = result["lib"].meta
    assert meta["tuned"] is False and meta["with_record"] == 0 and meta["functions"] >= 3
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype("float32")
    got = _runtime(out).run([x])[0]
    np.testing.assert_allclose(got, eager(root, "net_a", 0, x), rtol=1e-4, atol=1e-5)
    assert "functions: " in log_of(result, "lib") and "untuned: " in log_of(result, "lib")


def test_dynamic_batch_runs_any_batch(built):
    root, _, result = built
    manifest = json.loads((result["lib_dyn"].outputs["model"] / "model.json").read_text())
    assert manifest["dynamic_dims"] == ["batch"]
    rt = _runtime(result["lib_dyn"].outputs["model"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)).astype("float32")
        np.testing.assert_allclose(rt.run([x])[0], eager(root, "net_a", 0, x), rtol=1e-4,
                                   atol=1e-5)


def test_torch_export_program_compiles(built):
    root, _, result = built
    manifest = json.loads((result["lib_pt2"].outputs["model"] / "model.json").read_text())
    assert manifest["inputs"][0]["shape"][1:] == [3, 16, 16]
    rt = _runtime(result["lib_pt2"].outputs["model"])
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype("float32")
    np.testing.assert_allclose(rt.run([x])[0], eager(root, "net_a", 0, x), rtol=1e-4,
                               atol=1e-5)


def test_cross_compiled_library_is_built_but_not_run(built):
    from buildgraph.backends.tvm.runtime import NotRunnableHere, runnable

    _, _, result = built
    out = result["lib_arm"].outputs["model"]
    meta = result["lib_arm"].meta
    assert meta["runnable_on_build_host"] is False
    assert "cross-compiled for aarch64" in meta["not_runnable_reason"]
    lib = out / meta["library"]
    assert lib.stat().st_size > 1000
    ok, why = runnable(out)
    assert not ok and "cross-compiled for aarch64" in why
    with pytest.raises(NotRunnableHere) as info:
        _runtime(out)
    assert info.value.skip and "cross-compiled for aarch64" in info.value.message
    if lib.suffix == ".tar":  # no aarch64 cross compiler here: object files for the device
        import tarfile

        names = tarfile.open(lib).getnames()
        assert any(n.endswith(".o") for n in names)
        assert "link on the device" in log_of(result, "lib_arm")
    else:  # aarch64-linux-gnu-gcc linked a shared library for the device
        header = lib.read_bytes()[:20]
        assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183


def test_a_rebuild_gives_the_same_bytes(built):
    """Compiling again from the same model gives the same library, and the same archive of
    object files for a cross target (TVM's own tar held the copies' mtimes and owner)."""
    import hashlib

    root, recipe, first = built

    def digests(result):
        return {sid: {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in sorted(result[sid].outputs["model"].iterdir())}
                for sid in ("lib", "lib_arm")}

    before = digests(first)
    again = run(recipe, root, targets=["lib", "lib_arm"], force=["lib", "lib_arm"])
    assert again["lib_arm"].status == again["lib"].status == "built"
    assert digests(again) == before


def test_a_rerun_is_cached_and_target_spellings_share_one_key(built):
    from buildgraph import api

    root, recipe, _ = built
    again = run(recipe, root)
    assert again.count("cached") == len(again.steps)
    onnx_file = again["onnx"].outputs["model"]
    spellings = write_project(root, f"""
a: {{uses: tvm.compile, with: {{model: {onnx_file}, target: "llvm -mcpu=skylake -mattr=+fma,+avx2"}}}}
b: {{uses: tvm.compile, with: {{model: {onnx_file}, target: {{kind: llvm, mcpu: skylake, mattr: [+avx2, +fma]}}}}}}
c: {{uses: tvm.compile, with: {{model: {onnx_file}, target: '{{"kind": "llvm", "mcpu": "skylake", "mattr": "+avx2,+fma"}}'}}}}
d: {{uses: tvm.compile, with: {{model: {onnx_file}, target: "llvm -mcpu=znver4"}}}}
m:
  uses: tvm.compile
  matrix: {{t: [native, "llvm -mtriple=aarch64-linux-gnu"]}}
  with: {{model: {onnx_file}, target: "${{matrix.t}}"}}
""", filename="spellings.yaml")
    plan = api.plan(spellings, cache_dir=root / ".cache", build_dir=root / "build")
    keys = {sid: d.key for sid, d in plan.items()}
    assert keys["a"] == keys["b"] == keys["c"] != keys["d"]
    assert plan["a"].parts["params"]["target"] == {"kind": "llvm", "mattr": ["+avx2", "+fma"],
                                                   "mcpu": "skylake"}
    matrix = sorted(s for s in plan if s.startswith("m"))
    assert len(matrix) == 2 and keys[matrix[0]] != keys[matrix[1]]
    assert "target" in plan["a"].parts["env"] and "apache-tvm" in plan["a"].parts["env"]


def test_bad_target_is_a_recipe_error_with_position(tmp_path: Path):
    from buildgraph import api
    from buildgraph.errors import RecipeError

    recipe = write_project(tmp_path, """
lib: {uses: tvm.compile, with: {model: nets.onnx, target: "llvm mcpu=skylake"}}
""")
    (tmp_path / "nets.onnx").write_bytes(b"")
    with pytest.raises(RecipeError) as info:
        api.load(recipe, cache_dir=tmp_path / ".cache")
    text = info.value.render()
    assert re.search(r"r\.yaml:\d+:\d+", text) and "cannot read 'mcpu=skylake'" in text


def test_cuda_target_without_gpu_fails_with_one_message(tmp_path: Path, built):
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("this machine has a GPU: see test_cuda_compile_runs_on_the_gpu")
    _, _, result = built
    recipe = write_project(tmp_path, f"""
lib: {{uses: tvm.compile, with: {{model: {result['onnx'].outputs['model']}, target: "cuda -arch=sm_90"}}}}
""")
    res = run(recipe, tmp_path)
    assert res["lib"].status == "failed"
    assert res["lib"].message.startswith("target cuda: ")
    assert "GPU" in res["lib"].message and "\n" not in res["lib"].message


def test_readme_loader_snippet_runs(built):
    """The Python loader in docs/tvm.md, run as written against a built library."""
    _, _, result = built
    text = (REPO / "docs" / "tvm.md").read_text(encoding="utf-8")
    snippet = re.search(r"<!-- loader -->\s*```python\n(.*?)```", text, re.S)
    assert snippet, "docs/tvm.md has no loader snippet marked <!-- loader -->"
    code = snippet.group(1)
    path = result["lib_dyn"].outputs["model"] / "model.so"
    code = code.replace("build/tvm_cpu/lib/model/model.so", str(path))
    namespace: dict = {}
    exec(compile(code, "docs/tvm.md", "exec"), namespace)  # noqa: S102 - our own docs
    assert namespace["out"].shape == (1, 4)


def test_verify_runs_tvm_libraries_against_pytorch(tmp_path: Path, built):
    """verify finds the tvm.relax runtime for tvm.compile outputs (a directory, so only the
    kind can say which runtime loads it) and passes the three libraries."""
    from buildgraph.engine import runtime as runtimes

    root, recipe, result = built
    assert runtimes.runtime_for("tvm.compile", result["lib"].outputs["model"]) == "tvm.relax"
    text = recipe.read_text() + ("  check: {uses: verify, from: [lib, lib_dyn, lib_pt2], "
                                 "with: {model: net_a}}\n")
    (root / "verify.yaml").write_text(text.replace("name: tvmt", "name: tvmv"))
    res = run(root / "verify.yaml", root)
    assert res["check"].ok, (res["check"].message, res["check"].log_tail)
    report = json.loads(res["check"].outputs["report"].read_text())
    assert {c["runtime"] for c in report["candidates"].values()} == {"tvm.relax"}


def test_verify_draws_inputs_a_fixed_shape_library_accepts(tmp_path: Path, built):
    """``lib`` was compiled for batch 1; the model's example batch is 2 here. Verify redraws
    its random sets at batch 1 for that candidate (the dynamic one keeps batch 2), and says in
    one line when the recipe explicitly asks for a batch the library cannot take."""
    root, recipe, _ = built
    text = recipe.read_text().replace('"opt": 1', '"opt": 2')
    text += "  check: {uses: verify, from: [lib, lib_dyn], with: {model: net_a, random: 2}}\n"
    (root / "shapes.yaml").write_text(text.replace("name: tvmt", "name: tvms"))
    res = run(root / "shapes.yaml", root)
    assert res["check"].ok, (res["check"].message, res["check"].log_tail)
    report = json.loads(res["check"].outputs["report"].read_text())
    assert report["candidates"]["lib"]["inputs"] == {"batch": 1}
    assert "inputs" not in report["candidates"]["lib_dyn"]
    assert report["inputs"][0]["shapes"] == {"x": [2, 3, 16, 16]}
    (root / "shapes.yaml").write_text(text.replace("name: tvmt", "name: tvms").replace(
        "random: 2}", "random: 2, dims: {batch: [2]}}"))
    res = run(root / "shapes.yaml", root)
    assert res["check"].status == "failed"
    assert "candidate 'lib' was built for x[1, 3, 16, 16] and cannot take batch = 2; set " \
           "dims: {batch: [1]} on this verify step" in res["check"].message
    assert "match_cast" not in res["check"].message


def test_benchmark_pins_the_tvm_thread_pool_and_skips_what_cannot_run_here(built):
    """TVM sizes its CPU pool once, from TVM_NUM_THREADS (else OMP_NUM_THREADS), and by default
    to the physical cores (1 on this project's 2-vCPU machines): the runner gets the count
    asked, and records what TVM reports (without both variables: 1). The arm64 library is
    listed as skipped, with the reason."""
    root, recipe, _ = built
    text = recipe.read_text() + (
        "  bench: {uses: benchmark, from: [lib, lib_arm], with: {model: net_a, reference: "
        "false, threads: {intra: 2}, warmup: 1, runs: 3, window_s: 0.01, max_s: 1}}\n")
    (root / "bench.yaml").write_text(text.replace("name: tvmt", "name: tvmb"))
    res = run(root / "bench.yaml", root)
    assert res["bench"].ok, (res["bench"].message, res["bench"].log_tail)
    report = json.loads(res["bench"].outputs["report"].read_text())
    lib = report["candidates"]["lib"]
    assert lib["threads"] == {"library": "tvm", "intra": 2, "inter": 1}
    assert lib["results"][0]["p50_ms"] > 0 and lib["peak_rss_mb"] > 0
    assert "cross-compiled" in report["candidates"]["lib_arm"]["skipped"]


@pytest.mark.gpu
def test_cuda_compile_runs_on_the_gpu(tmp_path: Path, built):
    import tvm

    if not tvm.cuda(0).exist:
        pytest.fail("--run-gpu given but TVM sees no CUDA device")
    root, _, result = built
    recipe = write_project(tmp_path, f"""
lib: {{uses: tvm.compile, with: {{model: {result['onnx'].outputs['model']}, target: cuda, dims: {{batch: 2}}}}}}
""")
    res = run(recipe, tmp_path)
    assert res.ok, (res["lib"].message, res["lib"].log_tail)
    from buildgraph.backends.tvm.runtime import TvmRuntime
    from buildgraph.engine.runtime import RuntimeContext

    rt = TvmRuntime.load(res["lib"].outputs["model"], RuntimeContext(device="cuda"))
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype("float32")
    np.testing.assert_allclose(rt.run([x])[0], eager(root, "net_a", 0, x), rtol=1e-3,
                               atol=1e-4)
