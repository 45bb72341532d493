"""``run --cluster`` on a two-node local Ray cluster against one local process (issue 14,
"Measured").

A recipe of N independent shell steps, each doing ``--work`` seconds of work (``burn``: a busy
loop, the default; ``sleep``), is built cold (fresh cache, build directory and team remote):

* locally with ``-j 1`` (one local process, one step at a time) and ``-j 2``;
* with ``--cluster`` on two Ray nodes of one CPU each (started here once, on loopback; their
  start-up is reported apart), the steps routed by custom resources to either node.

Then the cluster run is repeated with everything cached: the number of Ray tasks submitted
(it must be 0; Ray is not even imported) and its wall time.

Printed, medians of ``--repeat`` (default 3): wall times, the speedup of the cluster over one
local process, and the dispatch overhead per step, two ways: the run's (cluster wall minus
the ideal N x work / 2 nodes, per step: the fixed costs of a run spread over its steps) and in
the steady state (on one node, the time between two steps' results beyond the work), with its
parts per step (the driver sending inputs, the node's time beyond the work, the driver pulling
and placing the result; queueing for a free node is not overhead and is left out).

Usage: python benchmarks/bench_cluster.py [--steps N] [--work S] [--mode burn|sleep] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from ray_cluster import RayNodes  # noqa: E402


def recipe(steps: int, work: float, mode: str) -> str:
    if mode == "sleep":
        cmd = f"sleep {work}; echo {{i}} > ${{out.o}}"
    else:
        cmd = (f"python3 -c 'import time\\nend = time.time() + {work}\\nwhile time.time() < "
               f"end: pass' && echo {{i}} > ${{out.o}}")
    lines = ["name: bench", "pools: {even: 1, odd: 1}", "steps:"]
    for i in range(steps):
        step_cmd = cmd.replace("{i}", str(i))
        lines.append(f"  s{i}:\n    uses: shell\n    with: {{cmd: \"{step_cmd}\"}}\n"
                     f"    outputs: [o]\n    resources: {{{'even' if i % 2 == 0 else 'odd'}: 1}}")
    return "\n".join(lines) + "\n"


def run(root: Path, *args: str, remote: bool = True) -> Tuple[float, List[dict]]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(BUILDGRAPH_CACHE_DIR=str(root / ".cache"), PYTHONPATH=str(REPO))
    if not remote:
        env["BUILDGRAPH_REMOTE"] = "off"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "buildgraph", "run", "r.yaml", "--json", *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"run {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def project(base: Path, name: str, text: str) -> Path:
    root = base / name
    shutil.rmtree(root, ignore_errors=True)
    (root / "team").mkdir(parents=True)
    (root / "r.yaml").write_text(text)
    (root / "buildgraph.toml").write_text(f'[remotes.team]\nurl = "file://{root / "team"}"\n')
    return root


def dispatched(events: List[dict]) -> int:
    for e in events:
        if e["event"] == "info" and e["message"].startswith("cluster: ") and "steps ran" in \
                e["message"]:
            return int(e["message"].split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--work", type=float, default=1.0)
    ap.add_argument("--mode", choices=["burn", "sleep"], default="burn")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    text = recipe(args.steps, args.work, args.mode)
    base = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    nodes = RayNodes(base_env={"PYTHONPATH": str(REPO)})
    figures: Dict[str, List[float]] = {k: [] for k in ("local1", "local2", "cluster", "cached",
                                                        "send", "node", "pull", "connect", "sched", "cadence")}
    counts: List[int] = []
    connects: List[bool] = []
    try:
        t0 = time.perf_counter()
        nodes.start_head({"even": 1}, env={"BUILDGRAPH_CACHE_DIR": str(base / "node-even")})
        nodes.add("b", {"odd": 1}, env={"BUILDGRAPH_CACHE_DIR": str(base / "node-odd")})
        nodes.wait_for(2)
        startup = time.perf_counter() - t0
        for rep in range(args.repeat):
            figures["local1"].append(run(project(base, "l1", text), "-j", "1",
                                         remote=False)[0])
            figures["local2"].append(run(project(base, "l2", text), "-j", "2",
                                         remote=False)[0])
            root = project(base, "c", text)
            wall, events = run(root, "--cluster", nodes.address)
            figures["cluster"].append(wall)
            built = [e for e in events if e["event"] == "step_finished"]
            assert all(e["status"] == "built" for e in built), built
            assert dispatched(events) == args.steps, events
            started = next(e["time"] for e in events if e["event"] == "start")
            connected = next(e["time"] for e in events if e["event"] == "info"
                             and e["message"].startswith("cluster: connected"))
            figures["connect"].append(connected - started)
            by_node: Dict[str, List[float]] = {}
            for e in built:
                by_node.setdefault(e["meta"]["node"]["ray_node_id"], []).append(e["time"])
            for times in by_node.values():  # steady state: one step after the other on a node
                times.sort()
                figures["cadence"].extend(b - a - args.work for a, b in zip(times, times[1:]))
            for e in built:
                c = e["meta"]["cluster"]
                figures["sched"].append(c["task_s"] - c["node_s"])
                figures["send"].append(c["send_s"])
                figures["node"].append(c["node_s"] - args.work)
                figures["pull"].append(c["pull_s"])
            wall, events = run(root, "--cluster", nodes.address)
            figures["cached"].append(wall)
            counts.append(dispatched(events))
            connects.append(any(e["event"] == "info" and "connected" in e["message"]
                                for e in events))
            print(f"rep {rep + 1}: local -j1 {figures['local1'][-1]:.2f} s, -j2 "
                  f"{figures['local2'][-1]:.2f} s, cluster {figures['cluster'][-1]:.2f} s, "
                  f"cached {figures['cached'][-1]:.2f} s", flush=True)
    finally:
        nodes.stop()
        shutil.rmtree(base, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in figures.items()}
    n, work = args.steps, args.work
    ideal = n * work / 2
    print(f"\n{n} independent shell steps of {work:g} s ({args.mode}); two Ray nodes of 1 CPU "
          f"on this machine ({os.cpu_count()} cores); medians of {args.repeat}")
    print(f"  cluster start-up (head + worker node, once):  {startup:6.2f} s")
    print(f"  local, one process (-j 1):                    {med['local1']:6.2f} s")
    print(f"  local, -j 2:                                  {med['local2']:6.2f} s")
    print(f"  cluster (--cluster, 2 nodes):                 {med['cluster']:6.2f} s   "
          f"speedup over -j 1: x{med['local1'] / med['cluster']:.2f}, "
          f"over -j 2: x{med['local2'] / med['cluster']:.2f}")
    print(f"  dispatch overhead per step, run:  {(med['cluster'] - ideal) / n:6.3f} s  "
          f"(cluster wall - {ideal:g} s ideal, / {n}; includes import ray + connect once)")
    print(f"  dispatch overhead per step, steady state: {med['cadence']:6.3f} s  (on one "
          f"node, time between two steps' results beyond the work)")
    print(f"  per step (medians over all steps): send inputs {med['send']:.3f} s, on the node "
          f"beyond the work {med['node']:.3f} s (fetch, lay out, worker hand-off, store, push), "
          f"pull + place {med['pull']:.3f} s")
    print(f"  once per run: import Ray and connect {med['connect']:.2f} s; per step, Ray's "
          f"part (queued for a node, worker start, scheduling): median {med['sched']:.2f} s")
    print(f"  cached rerun: {med['cached']:.2f} s, Ray tasks submitted: {max(counts)} "
          f"(per cached step: {max(counts) / n:g}); connected to the cluster: "
          f"{'yes' if any(connects) else 'no'}")


if __name__ == "__main__":
    main()
