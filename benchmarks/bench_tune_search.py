"""What one batch of MetaSchedule's evolutionary search costs, by batch size and population, for
an llvm and a cuda target: the figure behind ``tvm.tune``'s default ``trials_per_iter`` (64).

The search runs on the CPU for either target (only building and measuring need the GPU), so
this needs no GPU. The workload is ResNet-50's 3x3 convolution at batch 8 (256 -> 256
channels, 14x14, with its ReLU), the kind of task that dominates a CNN's tune. Each batch is
searched with the cuda (or llvm) design space, postprocessors and mutators, an XGBoost cost
model, and random latencies fed back as if measured (what is timed is the search itself).

    .venv/bin/python benchmarks/bench_tune_search.py                  # both targets, defaults
    .venv/bin/python benchmarks/bench_tune_search.py --target cuda --batches 3 \\
        --sizes 8 64 --populations 128 512 --threads 8

Prints one line per (target, population, batch size): seconds per batch (median of the
batches) and candidates per second; each setting runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# One setting, in a fresh process (TVM's thread pool and registries start clean).
SEARCH = r'''
import json, random, sys, time
kind, population, per_iter, batches, threads = sys.argv[1], *map(int, sys.argv[2:6])
from buildgraph.backends.tvm.tune import light_tensor_intrin
light_tensor_intrin({"kind": kind})
import tvm
from tvm import te, topi
from tvm.s_tir import meta_schedule as ms

data = te.placeholder((8, 256, 14, 14), name="data")
weight = te.placeholder((256, 256, 3, 3), name="weight")
out = topi.nn.relu(topi.nn.conv2d_nchw(data, weight, 1, 1, 1))
mod = tvm.IRModule({"main": te.create_prim_func([data, weight, out])})
if kind == "cuda":  # what buildgraph completes an H100/H200 target to (TVM's nvidia-h100 tag)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90", "max_threads_per_block": 1024,
                                "max_num_threads": 1024, "max_shared_memory_per_block": 49152,
                                "thread_warp_size": 32, "registers_per_block": 65536,
                                "l2_cache_size_bytes": 52428800})
    space = ms.space_generator.PostOrderApply(sch_rules="cuda", postprocs="cuda",
                                              mutator_probs="cuda")
else:
    target = tvm.target.Target({"kind": "llvm", "num-cores": threads})
    space = "post-order-apply"
ctx = ms.TuneContext(mod, target=target, space_generator=space,
                     search_strategy=ms.search_strategy.EvolutionarySearch(
                         population_size=population, init_min_unmeasured=min(50, population)),
                     task_name="conv", num_threads=threads, rand_state=0)
model = ms.cost_model.XGBModel(extractor=ms.feature_extractor.PerStoreFeature(),
                               adaptive_training=True)
ctx.pre_tuning(max_trials=per_iter * batches, num_trials_per_iter=per_iter,
               design_spaces=ctx.generate_design_space(),
               database=ms.database.MemoryDatabase(), cost_model=model)
rng, seconds, sizes = random.Random(0), [], []
for _ in range(batches):
    start = time.perf_counter()
    candidates = ctx.generate_measure_candidates()
    seconds.append(time.perf_counter() - start)
    if not candidates:
        break
    sizes.append(len(candidates))
    results = [ms.runner.RunnerResult(run_secs=[rng.uniform(1e-4, 1e-3)], error_msg=None)
               for _ in candidates]
    model.update(ctx, candidates, results)
    ctx.search_strategy.notify_runner_results(candidates, results)
print(json.dumps({"seconds": seconds[:len(sizes)], "sizes": sizes}))
'''


def one(kind: str, population: int, per_iter: int, batches: int, threads: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", SEARCH, kind, str(population), str(per_iter),
                           str(batches), str(threads)], capture_output=True, text=True,
                          cwd=REPO, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} population {population} batch {per_iter}: "
                         f"{proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=["llvm", "cuda", "both"], default="both")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 64],
                    help="candidates per batch (trials_per_iter)")
    ap.add_argument("--populations", type=int, nargs="+", default=[512])
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="search threads (a tune's slots)")
    args = ap.parse_args()
    kinds = ["llvm", "cuda"] if args.target == "both" else [args.target]
    print(f"{'target':6} {'population':>10} {'batch':>6} {'s/batch':>8} {'cand/s':>7}  "
          f"({args.threads} search threads, median of {args.batches} batches)")
    for kind in kinds:
        for population in args.populations:
            for size in args.sizes:
                got = one(kind, population, size, args.batches, args.threads)
                median = statistics.median(got["seconds"])
                per_s = statistics.median(got["sizes"]) / median
                print(f"{kind:6} {population:>10} {size:>6} {median:>8.1f} {per_s:>7.2f}",
                      flush=True)


if __name__ == "__main__":
    main()
