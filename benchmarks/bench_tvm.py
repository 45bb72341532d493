"""TVM on this CPU: compile time, tuning time, and latency untuned vs tuned vs onnxruntime vs
PyTorch eager, for the repository's ResNet-18 (recipes/models/resnet.py).

Everything is built through buildgraph itself (onnx.export -> tvm.compile / tvm.tune ->
tvm.compile) in a scratch project with its own cache, so tuning really runs; then every
runtime is timed in its own process with the same thread count and the same input, as the
median of several runs after warm-up.

    .venv/bin/python benchmarks/bench_tvm.py                      # ResNet-18, 224x224
    .venv/bin/python benchmarks/bench_tvm.py --size 112 --width 32 --trials 200
    .venv/bin/python benchmarks/bench_tvm.py --json results.json

Prints one table; ``--json`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent

TIMER = r'''
import json, os, statistics, sys, time
import numpy as np
kind, path, threads, runs, shape = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
x = np.random.default_rng(0).standard_normal(shape).astype("float32")
if kind == "tvm":
    os.environ["TVM_NUM_THREADS"] = str(threads)
    import tvm
    from tvm import relax
    vm = relax.VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())
    arg = tvm.runtime.tensor(x, tvm.cpu())
    def call():
        return vm["main"](arg).numpy()
elif kind == "ort":
    import onnxruntime as ort
    o = ort.SessionOptions(); o.intra_op_num_threads = threads; o.inter_op_num_threads = 1
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    def call():
        return s.run(None, {name: x})[0]
else:
    import torch
    torch.set_num_threads(threads)
    sys.path.insert(0, os.path.dirname(path))
    import resnet
    torch.manual_seed(0)
    net = getattr(resnet, kind)(**json.loads(sys.argv[6])).eval()
    t = torch.from_numpy(x)
    def call():
        with torch.inference_mode():
            return net(t).numpy()
out = call()
for _ in range(2):
    call()
times = []
budget = time.perf_counter() + 120
for _ in range(runs):
    start = time.perf_counter(); call(); times.append(time.perf_counter() - start)
    if time.perf_counter() > budget and len(times) >= 3:
        break
np.save(sys.argv[7], out)
print(json.dumps({"median_ms": statistics.median(times) * 1e3, "runs": len(times),
                  "min_ms": min(times) * 1e3}))
'''


def recipe(size: int, width: int, trials: int, per_iter: int, population: int) -> str:
    model = REPO / "recipes" / "models" / "resnet.py"
    return textwrap.dedent(f"""\
        name: bench_tvm
        models:
          resnet18:
            source: {model}:resnet18
            kwargs: {{num_classes: 1000, width: {width}}}
            seed: 0
            inputs: {{x: {{shape: [1, 3, {size}, {size}]}}}}
        steps:
          onnx: {{uses: onnx.export, with: {{model: resnet18, opset: 18}}}}
          lib_untuned: {{uses: tvm.compile, from: onnx, with: {{target: native}}}}
          tune:
            uses: tvm.tune
            from: onnx
            with: {{target: native, trials: {trials}, trials_per_iter: {per_iter},
                   population: {population}}}
          lib_tuned: {{uses: tvm.compile, from: [onnx, tune], with: {{target: native}}}}
        """)


def time_runtime(kind: str, path: Path, threads: int, runs: int, shape: List[int],
                 kwargs: Dict[str, Any], out: Path) -> Dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TVM_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-c", TIMER, kind, str(path), str(threads),
                           str(runs), json.dumps(shape), json.dumps(kwargs), str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"timing {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=224, help="input height/width")
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64: the "
                                                          "standard model)")
    ap.add_argument("--trials", type=int, default=300, help="MetaSchedule trial budget")
    ap.add_argument("--trials-per-iter", type=int, default=64,
                    help="candidates per batch (capped at each task's share, like tvm.tune)")
    ap.add_argument("--population", type=int, default=256,
                    help="evolutionary search population per batch")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per runtime")
    ap.add_argument("--work", type=Path, help="scratch project (default: a temporary "
                                              "directory, removed afterwards)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    from buildgraph import api

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_tvm_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "r.yaml").write_text(recipe(args.size, args.width, args.trials,
                                        args.trials_per_iter, args.population))
    print(f"building in {work} (ResNet-18 width {args.width}, 1x3x{args.size}x{args.size}, "
          f"{args.trials} trials, {args.threads} threads)", flush=True)
    start = time.monotonic()
    result = api.run(work / "r.yaml", cache_dir=work / ".cache", build_dir=work / "build",
                     jobs=args.threads)
    if not result.ok:
        for sid, r in result.steps.items():
            print(sid, r.status, r.message, r.log_tail, sep="\n")
        raise SystemExit("build failed")
    build_s = time.monotonic() - start
    untuned, tuned, tune = result["lib_untuned"].meta, result["lib_tuned"].meta, \
        result["tune"].meta
    shape = [1, 3, args.size, args.size]
    kwargs = {"num_classes": 1000, "width": args.width}
    models_dir = REPO / "recipes" / "models"
    outs = work / "outs"
    outs.mkdir(exist_ok=True)
    lat = {
        "tvm_untuned": time_runtime("tvm", result["lib_untuned"].outputs["model"] / "model.so",
                                    args.threads, min(args.runs, 5), shape, kwargs,
                                    outs / "untuned.npy"),
        "tvm_tuned": time_runtime("tvm", result["lib_tuned"].outputs["model"] / "model.so",
                                  args.threads, args.runs, shape, kwargs, outs / "tuned.npy"),
        "onnxruntime": time_runtime("ort", result["onnx"].outputs["model"], args.threads,
                                    args.runs, shape, kwargs, outs / "ort.npy"),
        "torch_eager": time_runtime("resnet18", models_dir / "resnet.py", args.threads,
                                    args.runs, shape, kwargs, outs / "torch.npy"),
    }
    import numpy as np

    ref = np.load(outs / "torch.npy")
    err = {k: float(np.abs(np.load(outs / f"{n}.npy") - ref).max())
           for k, n in (("tvm_untuned", "untuned"), ("tvm_tuned", "tuned"),
                        ("onnxruntime", "ort"))}
    figures = {
        "model": f"resnet18 width {args.width}, input 1x3x{args.size}x{args.size}",
        "threads": args.threads, "trials": args.trials,
        "tasks": tune["tasks"], "trials_run": tune["trials"],
        "compile_untuned_s": round(untuned["import_s"] + untuned["compile_s"]
                                   + untuned["export_s"], 2),
        "compile_tuned_s": round(tuned["import_s"] + tuned["compile_s"] + tuned["export_s"], 2),
        "tune_s": tune["tune_s"], "tune_step_s": round(result["tune"].wall_s, 1),
        "functions_with_record": f"{tuned['with_record']}/{tuned['functions']}",
        "latency_ms": {k: round(v["median_ms"], 3) for k, v in lat.items()},
        "runs": {k: v["runs"] for k, v in lat.items()},
        "max_abs_err_vs_torch": err, "build_s": round(build_s, 1),
    }
    ms = figures["latency_ms"]
    print()
    print(f"model: {figures['model']}; {args.threads} threads; medians of the timed runs")
    print(f"compile (untuned):           {figures['compile_untuned_s']:8.2f} s")
    print(f"tuning ({args.trials} trials, {tune['tasks']} tasks): {tune['tune_s']:8.1f} s "
          f"(step {figures['tune_step_s']} s)")
    print(f"compile (tuned):             {figures['compile_tuned_s']:8.2f} s; records applied "
          f"to {figures['functions_with_record']} functions")
    for name in ("tvm_untuned", "tvm_tuned", "onnxruntime", "torch_eager"):
        extra = f"   max|err| vs torch {err[name]:.2e}" if name in err else ""
        print(f"latency {name:12}        {ms[name]:10.2f} ms  ({lat[name]['runs']} runs){extra}")
    print(f"tuned vs untuned: {ms['tvm_untuned'] / ms['tvm_tuned']:.1f}x faster; "
          f"tuned vs onnxruntime: {ms['tvm_tuned'] / ms['onnxruntime']:.2f}x the latency")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    if ms["tvm_tuned"] >= ms["tvm_untuned"]:
        raise SystemExit("the tuned library is not faster than the untuned one")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
