"""Engine speed figures for issue 3 (prints numbers; not a test).

1. No-op run of a fully cached 20-step recipe whose first step reads a 1 GiB file (answered
   from its no-op stamp, and decided in full with ``BUILDGRAPH_NO_STAMP=1``), against
   ``python -c pass`` (the target: at most 2x) and ``python -c "import yaml, pydantic,
   xxhash"`` in the same venv, alternating, medians. Bytecode is written and warm, as on a
   user's machine: ``PYTHONDONTWRITEBYTECODE`` (set in some sandboxes) would make every run
   compile the package again. Also: a no-op ``plan`` of a 1,000-step recipe, with and without
   the resolved-recipe cache.
2. Hashing throughput on a 1 GiB file against ``xxhsum -H2`` (if installed), warm, medians;
   a stat-cache re-check of the unchanged file; peak RSS while hashing a 4 GiB file.
3. Two independent 5-second steps with ``-j 2``.

Usage: python benchmarks/bench_engine.py [--workdir DIR] [--repeat N] [--only noop|hash|parallel]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable


CPU_SPENT = []  # (user + system) CPU seconds of each timed child, in order


def timed(argv, cwd, env=None) -> float:
    """Wall seconds of one run; its CPU seconds go to CPU_SPENT. On a loaded machine wall time
    mostly measures the wait for a core; CPU time is what the process itself costs."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_SPENT.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall


def make_file(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        for _ in range(size >> 20):
            fh.write(chunk)


def chain_recipe(n: int, big: str) -> str:
    lines = [f"name: chain{n}", "steps:", "  s0:", "    uses: shell",
             f"    inputs: {{big: {big}}}",
             "    with: {cmd: 'wc -c < ${in.big} > ${out.o}'}", "    outputs: [o]"]
    for i in range(1, n):
        lines += [f"  s{i}:", "    uses: shell", f"    from: s{i - 1}",
                  f"    with: {{cmd: 'cat ${{in.s{i - 1}.o}} > ${{out.o}}; echo {i} >> ${{out.o}}'}}",
                  "    outputs: [o]"]
    return "\n".join(lines) + "\n"


def bench_noop(work: Path, repeat: int, env) -> None:
    make_file(work / "big.bin", 1 << 30)
    (work / "chain20.yaml").write_text(chain_recipe(20, "big.bin"))
    bg = [PY, "-m", "buildgraph", "run", "chain20.yaml"]
    subprocess.run(bg, cwd=work, env=env, check=True, capture_output=True)
    # a no-op stamp is written once what the run read is older than 2 s (engine/noop.py)
    time.sleep(2.5)
    subprocess.run(bg, cwd=work, env=env, check=True, capture_output=True)  # settle caches
    subprocess.run(bg, cwd=work, env=env, check=True, capture_output=True)
    full_env = dict(env or os.environ, BUILDGRAPH_NO_STAMP="1")
    ours, bare, base, full = [], [], [], []
    cpu_ours, cpu_bare, cpu_full = [], [], []
    for _ in range(repeat):
        ours.append(timed(bg, work, env))
        cpu_ours.append(CPU_SPENT[-1])
        bare.append(timed([PY, "-c", "pass"], work, env))
        cpu_bare.append(CPU_SPENT[-1])
        base.append(timed([PY, "-c", "import yaml, pydantic, xxhash"], work, env))
        full.append(timed(bg, work, full_env))
        cpu_full.append(CPU_SPENT[-1])
    mo, mp, mb, mf = (statistics.median(v) for v in (ours, bare, base, full))
    co, cp, cf = (statistics.median(v) for v in (cpu_ours, cpu_bare, cpu_full))
    print(f"[1] no-op run, 20 cached steps (first reads a 1 GiB file): median {mo * 1000:.0f} ms;"
          f" 'python -c pass': median {mp * 1000:.0f} ms; ratio {mo / mp:.2f}x (target <= 2x); "
          f"'import yaml, pydantic, xxhash': median {mb * 1000:.0f} ms ({mo / mb:.2f}x); "
          f"{repeat} alternating runs, load average {os.getloadavg()[0]:.2f}")
    print(f"    CPU (user + system) per process: no-op run {co * 1000:.0f} ms, 'python -c pass' "
          f"{cp * 1000:.0f} ms: {co / cp:.2f}x")
    print(f"    decided in full (BUILDGRAPH_NO_STAMP=1: graph, keys, stat cache, lock check): "
          f"median {mf * 1000:.0f} ms = {mf / mp:.2f}x 'pass'; CPU {cf * 1000:.0f} ms = "
          f"{cf / cp:.2f}x")
    (work / "chain1000.yaml").write_text(chain_recipe(1000, "big.bin"))
    subprocess.run([PY, "-m", "buildgraph", "run", "chain1000.yaml", "-j", "2"], cwd=work,
                   env=env, check=True, capture_output=True)
    plan = [PY, "-m", "buildgraph", "plan", "chain1000.yaml"]
    cached = statistics.median(timed(plan, work, env) for _ in range(repeat))
    cold = []
    for _ in range(max(3, repeat // 2)):
        shutil.rmtree(work / ".cache" / "recipes", ignore_errors=True)
        cold.append(timed(plan, work, env))
    print(f"    no-op plan of 1,000 steps: median {cached * 1000:.0f} ms (recipe cache warm), "
          f"{statistics.median(cold) * 1000:.0f} ms (recipe re-validated)")


def bench_hash(work: Path, repeat: int, env) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from buildgraph.engine.hashing import StatCache, file_digest, hash_file

    big = work / "big.bin"
    make_file(big, 1 << 30)
    hash_file(big)  # warm the page cache
    ours = []
    theirs = []
    xxhsum = shutil.which("xxhsum")
    for _ in range(repeat):
        start = time.perf_counter()
        hash_file(big)
        ours.append(time.perf_counter() - start)
        if xxhsum:
            theirs.append(timed([xxhsum, "-H2", str(big)], work))
    gbps = (1 << 30) / statistics.median(ours) / 1e9
    line = f"[2] hashing 1 GiB (xxh3-128, warm): {gbps:.1f} GB/s"
    if theirs:
        ref = (1 << 30) / statistics.median(theirs) / 1e9
        line += f"; xxhsum -H2: {ref:.1f} GB/s; ratio {gbps / ref:.2f} (target >= 0.9)"
    else:
        line += "; xxhsum not installed (apt-get install xxhash) so no ratio"
    print(line)
    old = time.time() - 60
    os.utime(big, (old, old))
    cache = StatCache(work / "stat.db")
    file_digest(big, cache)
    cache.flush()
    fresh = StatCache(work / "stat.db")
    checks = []
    for _ in range(200):
        start = time.perf_counter()
        file_digest(big, fresh)
        checks.append(time.perf_counter() - start)
    print(f"    stat-cache re-check of the unchanged 1 GiB file: median "
          f"{statistics.median(checks) * 1e6:.0f} us")
    sparse = work / "sparse4g.bin"
    with open(sparse, "wb") as fh:
        fh.truncate(4 << 30)
    code = ("import resource, sys; sys.path.insert(0, %r); from buildgraph.engine.hashing import "
            "hash_file; before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "hash_file(%r); after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "print(before, after)" % (str(Path(__file__).resolve().parent.parent), str(sparse)))
    before, after = map(int, subprocess.run([PY, "-c", code], capture_output=True, text=True,
                                            check=True).stdout.split())
    print(f"    peak RSS hashing a 4 GiB file: {after / 1024:.0f} MiB (interpreter alone "
          f"{before / 1024:.0f} MiB; target < 100 MiB)")
    sparse.unlink()


def bench_parallel(work: Path, env) -> None:
    (work / "par.yaml").write_text(
        "steps:\n"
        "  a: {uses: shell, cache: false, with: {cmd: 'sleep 5'}}\n"
        "  b: {uses: shell, cache: false, with: {cmd: 'sleep 5'}}\n")
    wall = timed([PY, "-m", "buildgraph", "run", "par.yaml", "-j", "2"], work, env)
    print(f"[3] two independent 5 s steps with -j 2: {wall:.2f} s wall (serial would be 10 s)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", help="where to put the 1 GiB file and caches")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--only", choices=["noop", "hash", "parallel"],
                        help="run one section only")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, BUILDGRAPH_CACHE_DIR=str(work / ".cache"),
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # warm bytecode: the package's (compileall) and the stdlib/venv modules a run imports
    subprocess.run([PY, "-m", "compileall", "-q", str(Path(__file__).resolve().parent.parent
                                                      / "buildgraph")],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, workdir {work}")
    if args.only in (None, "noop"):
        bench_noop(work, args.repeat, env)
    if args.only in (None, "hash"):
        bench_hash(work, args.repeat, env)
    if args.only in (None, "parallel"):
        bench_parallel(work, env)


if __name__ == "__main__":
    main()
