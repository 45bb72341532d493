"""What measuring through a TVM RPC tracker costs: the same tuning job with the local runner and
with the RPC runner (a real tracker and server on loopback, the "device" being this machine),
and the time to ask the device for its fingerprint when the step is planned.

    .venv/bin/python benchmarks/bench_tvm_rpc.py                 # 16 trials of a small CNN
    .venv/bin/python benchmarks/bench_tvm_rpc.py --trials 32 --rounds 3 --json rpc.json

Every job tunes from an empty cache (``reuse: false``) with the same settings and seed, local
and RPC alternating (local, rpc, rpc, local, ...: the first job of a process also pays for
imports); the difference per trial is what a measurement session (request, upload, link on the
device, random inputs, run) adds over a local measurement, next to the search itself (cost
model, evolutionary search), which both pay alike. The tracker needs ``tornado``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        y = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(y.mean((2, 3)))


def net():
    return Net()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: List[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen([sys.executable, "-m", *argv], stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def wait_registered(port: int, key: str, timeout: float = 120.0) -> None:
    from tvm import rpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            queue = rpc.connect_tracker("127.0.0.1", port).summary()["queue_info"]
            if queue.get(key, {}).get("free"):
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.3)
    raise RuntimeError(f"no server registered with key {key} in {timeout:g} s")


def stop(procs: List[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def tune(root: Path, name: str, params: Dict[str, Any]) -> Dict[str, Any]:
    from buildgraph import api

    recipe = root / f"{name.replace('-', '_')}.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: {name}
        models: {{net: {{source: models/net.py:net, inputs: {{x: {{shape: [1, 3, 32, 32]}}}}}}}}
        steps:
          onnx: {{uses: onnx.export, with: {{model: net, exporter: legacy, opset: 18}}}}
          tune: {{uses: tvm.tune, from: onnx, with: {json.dumps(params)}}}
        """), encoding="utf-8")
    cache = root / f".cache-{name}"
    start_plan = time.monotonic()
    api.plan(recipe, cache_dir=cache, build_dir=root / "build")
    plan_s = time.monotonic() - start_plan
    result = api.run(recipe, cache_dir=cache, build_dir=root / "build", jobs=2)
    step = result["tune"]
    if not step.ok:
        raise RuntimeError(f"{name}: {step.message}")
    return {"plan_s": round(plan_s, 2), "step_s": round(step.wall_s, 2),
            "tune_s": step.meta["tune_s"], "trials": step.meta["trials"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="jobs per runner")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-tvm-rpc-"))
    (root / "models").mkdir()
    (root / "models" / "net.py").write_text(NET, encoding="utf-8")
    port, key = free_port(), "bench-dev"
    procs: List[subprocess.Popen] = []
    try:
        procs.append(start(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                            "--port-end", str(port + 1)], root / "tracker.log"))
        time.sleep(3)
        sport = free_port()
        procs.append(start(["tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}", "--key",
                            key, "--host", "127.0.0.1", "--port", str(sport), "--port-end",
                            str(sport + 1)], root / "server.log"))
        wait_registered(port, key)
        base = {"target": "llvm", "trials": args.trials, "trials_per_iter": 4,
                "population": 32, "min_repeat_ms": 5, "number": 2, "reuse": False,
                "seed": 0}
        runs: Dict[str, List[Dict[str, Any]]] = {"local": [], "rpc": []}
        runner = {"tracker": f"127.0.0.1:{port}", "key": key}
        for i in range(args.rounds):
            order = ("local", "rpc") if i % 2 == 0 else ("rpc", "local")
            for name in order:
                params = dict(base, runner=runner) if name == "rpc" else base
                runs[name].append(tune(root, f"{name}-{i}", params))
        sessions = (root / "server.log").read_text(errors="replace").count("load_module")
    finally:
        stop(procs)
    import statistics

    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("tune_s", "plan_s", "trials")}
           for n, rs in runs.items()}
    per_trial = {n: m["tune_s"] / max(1, m["trials"]) for n, m in med.items()}
    print(f"medians of {args.rounds} jobs each, {args.trials} trials per job")
    print(f"{'runner':8} {'trials':>6} {'tune s':>8} {'s/trial':>8} {'plan s':>7}  all tune s")
    for name, m in med.items():
        print(f"{name:8} {int(m['trials']):6} {m['tune_s']:8.1f} {per_trial[name]:8.2f} "
              f"{m['plan_s']:7.1f}  {[r['tune_s'] for r in runs[name]]}")
    print(f"RPC overhead per trial: {per_trial['rpc'] - per_trial['local']:+.2f} s; "
          f"{sessions} modules loaded by the server; a plan with a runner asks the device "
          f"(+{med['rpc']['plan_s'] - med['local']['plan_s']:.1f} s, once: the description "
          "is memoised)")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "sessions": sessions}, indent=1)
                             + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
