"""The default CPU recipe against the script it replaces (issue 4, "Speed of real work").

Runs, alternating, ``--repeat`` times each:

* ``buildgraph run recipes/resnet_cpu.yaml`` cold (fresh cache and build directories), and
* a hand-written sequential Python script (``sequential()`` below) making the same library
  calls on the same model with the same outputs: torch.save x3, trace (+ its second-input
  check), script, torch.export, AOTInductor, both ONNX exporters (+ checker and shape inference), onnxsim x2,
  and the verification of all eleven artifacts on the same inputs,

then prints the medians, their ratio (target <= 0.85: independent steps run in parallel), the
cached re-run time, and per step the step's wall time, the library calls' own time (measured
inside the script), and the difference: buildgraph's per-step overhead (worker hand-off,
loading the model again, hashing and storing outputs; the first step in each worker also pays
for importing torch).

Usage: python benchmarks/bench_default_recipe.py [--repeat N] [--jobs J]
       python benchmarks/bench_default_recipe.py --script OUT_DIR   (the script alone)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "resnet_cpu.yaml"
PY = sys.executable


def sequential(out: Path) -> dict:
    """What a user would write by hand: one process, one model, every artifact, verified."""
    t: dict = {}
    start = time.perf_counter()
    import numpy as np
    import onnx
    import onnxruntime as ort
    import onnxsim
    import torch
    import warnings

    t["import"] = time.perf_counter() - start
    sys.path.insert(0, str(REPO / "recipes" / "models"))
    import resnet

    def section(name):
        class _S:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                t[name] = t.get(name, 0.0) + time.perf_counter() - self.t
        return _S()

    def build():
        torch.manual_seed(0)
        return resnet.resnet18(num_classes=1000).eval()

    with section("load_model"):
        model = build()  # a script builds its model once

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 224, 224, generator=gen)
    x2 = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    out.mkdir(parents=True, exist_ok=True)
    with section("state_dict"):
        m = model
        torch.save(m.state_dict(), out / "state_dict.pt")
    with section("whole_model"):
        m = model
        torch.save(m, out / "whole_model.pt")
    with section("checkpoint"):
        m = model
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        torch.save({"epoch": 90, "state_dict": m.state_dict(), "optimizer": opt.state_dict(),
                    "best_top1": 0.0}, out / "checkpoint.pt")
    with section("ts_trace"):
        m = model
        with torch.inference_mode():
            m(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(m, (x,), check_trace=False)
        with torch.inference_mode():
            xs = torch.randn(2, 3, 224, 224)
            torch.testing.assert_close(traced(xs), m(xs), rtol=1e-4, atol=1e-5)
        torch.jit.save(traced, str(out / "trace.ts"))
    with section("ts_script"):
        m = model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(m), str(out / "script.ts"))
    batch = torch.export.Dim("batch", min=1, max=64)
    with section("exported"):
        m = model
        ep = torch.export.export(m, (x2,), dynamic_shapes=({0: batch},))
        torch.export.save(ep, str(out / "model.pt2"))
    with section("aoti"):
        torch._inductor.aoti_compile_and_package(ep, package_path=str(out / "model.aoti.pt2"))
    with section("onnx"):
        m = model
        prog = torch.onnx.export(m, (x2,), dynamo=True, opset_version=18, input_names=["x"],
                                 output_names=["logits"], dynamic_shapes=({0: batch},),
                                 external_data=False)
        prog.save(str(out / "dynamo.onnx"), external_data=False)
        onnx.shape_inference.infer_shapes_path(str(out / "dynamo.onnx"), str(out / "dynamo.onnx"),
                                               check_type=True, strict_mode=True)
        onnx.checker.check_model(str(out / "dynamo.onnx"), full_check=True)
    with section("onnx_legacy"):
        m = model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (x,), str(out / "legacy.onnx"), dynamo=False, opset_version=18,
                              input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
        onnx.shape_inference.infer_shapes_path(str(out / "legacy.onnx"), str(out / "legacy.onnx"),
                                               check_type=True, strict_mode=True)
        onnx.checker.check_model(str(out / "legacy.onnx"), full_check=True)
    sims = {}
    for src, name in (("dynamo", "onnx_sim"), ("legacy", "onnx_legacy_sim")):
        with section(name):
            before = len(onnx.load(str(out / f"{src}.onnx"), load_external_data=False).graph.node)
            model, ok = onnxsim.simplify(str(out / f"{src}.onnx"), check_n=1, certify=False)
            assert ok
            onnx.save(model, str(out / f"{src}_sim.onnx"))
            onnx.checker.check_model(str(out / f"{src}_sim.onnx"), full_check=True)
            sims[name] = (before, len(model.graph.node))
    with section("verify"):
        torch.set_num_threads(os.cpu_count() or 1)
        ref = build()
        sets = []
        for i, b in enumerate([1, 3, 1, 3]):
            sets.append(torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(1 + i)))
        with torch.inference_mode():
            refs = [ref(s).numpy() for s in sets]
        runners = []
        for f in ("state_dict.pt", "checkpoint.pt"):
            mm = build()
            obj = torch.load(out / f, weights_only=True)
            mm.load_state_dict(obj if f == "state_dict.pt" else obj["state_dict"])
            runners.append(mm)
        runners.append(torch.load(out / "whole_model.pt", weights_only=False).eval())
        runners.append(torch.jit.load(str(out / "trace.ts")))
        runners.append(torch.jit.load(str(out / "script.ts")))
        runners.append(torch.export.load(str(out / "model.pt2")).module())
        runners.append(torch._inductor.aoti_load_package(str(out / "model.aoti.pt2")))
        errors = []
        for r in runners:
            with torch.inference_mode():
                errors.append(max(float(np.abs(r(s).numpy() - e).max())
                                  for s, e in zip(sets, refs)))
        so = ort.SessionOptions()
        so.intra_op_num_threads = os.cpu_count() or 1
        for f in ("dynamo.onnx", "legacy.onnx", "dynamo_sim.onnx", "legacy_sim.onnx"):
            sess = ort.InferenceSession(str(out / f), so, providers=["CPUExecutionProvider"])
            errors.append(max(float(np.abs(sess.run(None, {"x": s.numpy()})[0] - e).max())
                              for s, e in zip(sets, refs)))
        assert max(errors) < 1e-4, errors
        np.savez(out / "tensors.npz", *[s.numpy() for s in sets], *refs)
    t["total"] = time.perf_counter() - start
    t["nodes"] = sims
    return t


def run_buildgraph(work: Path, jobs: int) -> tuple:
    cache, build = work / "cache", work / "build"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(build, ignore_errors=True)
    env = _env()
    # the PyTorch/ONNX part (target `verify`): the hand-written script makes those calls; the
    # recipe's TVM steps are measured by benchmarks/bench_tvm.py
    argv = [PY, "-m", "buildgraph", "run", str(RECIPE), "verify", "--json", "--cache-dir",
            str(cache), "--build-dir", str(build)] + (["-j", str(jobs)] if jobs else [])
    before = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu = _children_cpu() - before
    if proc.returncode != 0:
        raise SystemExit(f"buildgraph failed:\n{proc.stderr}\n{proc.stdout[-2000:]}")
    steps = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            ev = json.loads(line)
            if ev.get("event") == "step_finished":
                seconds = (ev.get("meta") or {}).get("seconds") or {}
                steps[ev["step"]] = {"wall": ev.get("wall_s", 0.0),
                                     "import": seconds.get("import", 0.0),
                                     "library": sum(v for k, v in seconds.items()
                                                    if k != "import")}
    start = time.perf_counter()
    subprocess.run(argv, env=env, capture_output=True, check=True)
    cached = time.perf_counter() - start
    return wall, cached, steps, cpu


def _children_cpu() -> float:
    """User + system CPU seconds of the children waited for so far (a run's workers count:
    buildgraph waits for them). On a shared machine, work done twice shows here even when the
    wall time hides it."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_script(work: Path) -> tuple:
    out = work / "script_out"
    shutil.rmtree(out, ignore_errors=True)
    before = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run([PY, __file__, "--script", str(out)], capture_output=True, text=True,
                          env=_env())
    wall = time.perf_counter() - start
    cpu = _children_cpu() - before
    if proc.returncode != 0:
        raise SystemExit(f"script failed:\n{proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1]), cpu


def _env() -> dict:
    """Bytecode written and reused, as on a user's machine (some sandboxes set
    PYTHONDONTWRITEBYTECODE, which would make every process compile buildgraph again)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=0)
    ap.add_argument("--script", help=argparse.SUPPRESS)
    ap.add_argument("--workdir")
    args = ap.parse_args()
    if args.script:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            times = sequential(Path(args.script))
        print(json.dumps(times))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-resnet-"))
    work.mkdir(parents=True, exist_ok=True)
    bg_walls, cached_walls, script_walls, bg_cpus, script_cpus = [], [], [], [], []
    steps_runs, script_runs = [], []
    load_before = os.getloadavg()[0]
    subprocess.run([PY, "-m", "compileall", "-q", str(REPO / "buildgraph")], env=_env(),
                   check=True, stdout=subprocess.DEVNULL)
    try:
        for _ in range(args.repeat):
            wall, cached, steps, cpu = run_buildgraph(work, args.jobs)
            bg_walls.append(wall)
            bg_cpus.append(cpu)
            cached_walls.append(cached)
            steps_runs.append(steps)
            swall, times, scpu = run_script(work)
            script_walls.append(swall)
            script_cpus.append(scpu)
            script_runs.append(times)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    bg, sc = statistics.median(bg_walls), statistics.median(script_walls)
    print(f"machine: {os.cpu_count()} CPU cores; load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after (other processes skew every figure); "
          f"{args.repeat} runs each, alternating, medians")
    print(f"buildgraph run (cold)   {bg:7.2f} s   runs: "
          + ", ".join(f"{w:.2f}" for w in bg_walls))
    print(f"sequential script       {sc:7.2f} s   runs: "
          + ", ".join(f"{w:.2f}" for w in script_walls))
    print(f"ratio buildgraph/script {bg / sc:7.2f}x   (target <= 0.85x)")
    print(f"CPU time (user+sys, all processes): buildgraph {statistics.median(bg_cpus):.2f} s, "
          f"script {statistics.median(script_cpus):.2f} s")
    print(f"buildgraph run (cached) {statistics.median(cached_walls):7.2f} s")
    imp = statistics.median(r["import"] for r in script_runs)
    print(f"script: importing torch/onnx/onnxruntime/onnxsim {imp:.2f} s")
    print("\nper step (medians): wall = the step's wall time in buildgraph; library = the"
          " library calls'\nown time measured inside the step; import = importing torch in a"
          " fresh worker;\noverhead = wall - library - import; script = the same calls in the"
          " sequential script")
    print(f"{'step':<18}{'wall':>8}{'library':>9}{'import':>8}{'overhead':>10}{'script':>8}")
    sums = [0.0] * 5
    for step in steps_runs[0]:
        row = [statistics.median(r[step][k] for r in steps_runs)
               for k in ("wall", "library", "import")]
        row.append(row[0] - row[1] - row[2])
        row.append(statistics.median(r.get(step, 0.0) for r in script_runs))
        sums = [a + b for a, b in zip(sums, row)]
        print(f"{step:<18}" + "".join(f"{v:>{w}.2f}" for v, w in zip(row, (8, 9, 8, 10, 8))))
    print(f"{'sum':<18}" + "".join(f"{v:>{w}.2f}" for v, w in zip(sums, (8, 9, 8, 10, 8))))
    print(f"script: building the model once {statistics.median(r['load_model'] for r in script_runs):.2f} s")
    print(f"\nonnxsim nodes (script): {script_runs[0]['nodes']}")


if __name__ == "__main__":
    main()
