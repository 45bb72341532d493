"""A compact summary of a GPU recipe run, from what the run left in its build directory (the
run record ``.run.json``, the verify, benchmark and tuning reports). Standard library only;
every report is optional (a failed step leaves none), so a partial run still summarises.

    python3 tools/gpu_summary.py build/resnet50_gpu
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional


def load(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def one_line(text: Any, width: int = 150) -> str:
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    return (lines[0] if lines else "")[:width]


def steps_table(build: Path) -> List[str]:
    run = load(build / ".run.json") or {}
    out = [f"{'step':14} {'status':8} {'wall s':>7}  message"]
    for sid, st in sorted((run.get("steps") or {}).items(),
                          key=lambda kv: (kv[1].get("wall_s") is None, kv[0])):
        wall = st.get("wall_s")
        out.append(f"{sid:14} {str(st.get('status')):8} "
                   f"{(f'{wall:.1f}' if isinstance(wall, (int, float)) else '-'):>7}  "
                   f"{one_line(st.get('message'))}")
    if len(out) == 1:
        out.append(f"(no run record at {build / '.run.json'})")
    return out


def find(build: Path, name: str) -> List[Path]:
    return sorted(p for p in build.glob(f"*/{name}") if p.is_file()) + \
        sorted(p for p in build.glob(f"*/*/{name}") if p.is_file())


def verify_table(build: Path) -> List[str]:
    out = []
    for path in find(build, "report.json"):
        rep = load(path) or {}
        if not isinstance(rep.get("candidates"), dict):
            continue
        out.append(f"verify ({path.parent.name}): passed={rep.get('passed')} "
                   f"device={rep.get('device', '?')} math={rep.get('math', '-')}")
        for cand, e in sorted(rep["candidates"].items()):
            errs = [f"{n} max|err| {m.get('max_abs'):.3g}"
                    for n, m in (e.get("outputs") or {}).items()
                    if isinstance(m, dict) and isinstance(m.get("max_abs"), (int, float))]
            where = "/".join(str(e.get(k)) for k in ("device", "provider") if e.get(k))
            state = "not run: " + one_line(e.get("skipped"), 90) if e.get("skipped") else \
                ("ok" if e.get("passed") else "FAILED")
            out.append(f"  {cand:14} {where or '-':22} {state}"
                       + (f"; {', '.join(errs)}" if errs else ""))
    return out


def benchmark_table(build: Path) -> List[str]:
    out = []
    for path in find(build, "benchmark.json"):
        rep = load(path) or {}
        cands = rep.get("candidates")
        if not isinstance(cands, dict):
            continue
        gpu = rep.get("gpu") or rep.get("device_facts") or {}
        out.append(f"benchmark ({path.parent.name}): device={rep.get('device')} timing="
                   f"{rep.get('timing', '-')}" + (f" gpu={json.dumps(gpu)[:160]}" if gpu else ""))
        out.append(f"  {'candidate':16} {'device/provider':22} {'setting':12} {'median ms':>10}")
        for cand, e in sorted(cands.items()):
            where = "/".join(str(e.get(k)) for k in ("device", "provider") if e.get(k)) or "-"
            results = e.get("results") or []
            if not results:
                out.append(f"  {cand:16} {where:22} {'-':12} {'-':>10}  "
                           + one_line(e.get("error") or e.get("skipped") or e.get("reason"), 80))
            for r in results:
                setting = ",".join(f"{k}={v}" for k, v in (r.get("dims") or r.get("setting")
                                                            or {}).items()) or "-"
                med = r.get("median_ms")
                out.append(f"  {cand:16} {where:22} {setting:12} "
                           f"{(f'{med:.3f}' if isinstance(med, (int, float)) else '-'):>10}")
    return out


def median(build: Path, cand: str) -> Optional[float]:
    for path in find(build, "benchmark.json"):
        e = ((load(path) or {}).get("candidates") or {}).get(cand) or {}
        meds = [r.get("median_ms") for r in e.get("results") or []
                if isinstance(r.get("median_ms"), (int, float))]
        if meds:
            return float(meds[0])
    return None


def tuning_lines(build: Path) -> List[str]:
    out = []
    for path in find(build, "tunedb.json"):
        man = load(path) or {}
        rows = man.get("tasks") or []
        counts: Dict[str, int] = {}
        for r in rows:
            counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
        out.append(f"tune ({path.parent.parent.name}): {len(rows)} tasks "
                   + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                   + f"; target {json.dumps(man.get('tvm_target'))[:200]}")
    untuned, tuned = median(build, "tvm_untuned"), median(build, "tvm_tuned")
    if untuned and tuned:
        verdict = "tuned beats untuned" if tuned < untuned else "tuned does NOT beat untuned"
        out.append(f"TVM untuned {untuned:.3f} ms -> tuned {tuned:.3f} ms "
                   f"({untuned / tuned:.2f}x): {verdict}")
    else:
        out.append("TVM tuned vs untuned: not both measured")
    eager = None
    for path in find(build, "benchmark.json"):
        rep = load(path) or {}
        ref = rep.get("reference_runtime")
        if ref:
            eager = median(build, ref)
    if eager:
        out.append(f"reference (eager PyTorch on the benchmark's device): {eager:.3f} ms")
    return out


def main(argv: List[str]) -> int:
    if len(argv) != 1:
        print("usage: gpu_summary.py BUILD_DIR (e.g. build/resnet50_gpu)")
        return 2
    build = Path(argv[0])
    if not build.is_dir():
        print(f"gpu_summary: {build} does not exist (the recipe did not run)")
        return 1
    for block in (steps_table(build), verify_table(build), benchmark_table(build),
                  tuning_lines(build)):
        if block:
            print("\n".join(block))
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
