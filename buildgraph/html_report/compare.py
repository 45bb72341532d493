"""``report --compare OTHER``: what changed between two builds, and whether it got slower.

OTHER is another build's lock file (``main.lock.json`` kept from the main branch's CI) or a
``report --json`` document. Three things are compared:

* **keys**: per step, the same action key (nothing that goes into it changed), a changed key,
  or a step only one side has;
* **output digests**: per step output, the same bytes or not (a changed key with the same
  digests is a rebuild that made identical bytes);
* **latency**: per artifact and batch size, p50 before and after. A p50 more than
  ``threshold`` slower is a regression, and so is an artifact that passed verification before
  and fails now; either makes the exit status 1.

A lock file only records digests: the figures behind them are read from this cache by digest,
else from the file beside OTHER that the lock names, when its digest still matches. When
neither has them, the comparison says so and compares keys and digests only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from buildgraph.errors import BuildgraphError


def load_other(path: Path, graph: Any, store: Any) -> Tuple[Dict[str, Any], str]:
    """OTHER as a report document: ``(document, what it was)``."""
    from buildgraph.engine.lockfile import LOCK_SCHEMA
    from buildgraph.html_report.collect import REPORT_SCHEMA, Outputs, collect

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuildgraphError(f"--compare: {path}: no such file",
                              hint="give another build's lock file (RECIPE.lock.json) or the "
                                   "output of 'buildgraph report --json'") from None
    except (OSError, ValueError) as exc:
        raise BuildgraphError(f"--compare: {path}: not a JSON file ({exc})") from None
    if isinstance(data, dict) and data.get("schema") == REPORT_SCHEMA and "models" in data \
            and "lock" in data:
        return data, "report"
    if isinstance(data, dict) and isinstance(data.get("steps"), dict) and "schema" in data:
        if data.get("schema") != LOCK_SCHEMA:
            raise BuildgraphError(f"--compare: {path}: lock file schema {data.get('schema')}; "
                                  f"this buildgraph reads schema {LOCK_SCHEMA}")
        base = Path(path).resolve().parent
        doc = collect(graph, data["steps"], {}, {}, Outputs(store, base))
        return doc, "lock file"
    raise BuildgraphError(f"--compare: {path} is neither a lock file nor a 'report --json' "
                          "document")


def compare(new: Mapping[str, Any], old: Mapping[str, Any], threshold: float
            ) -> Dict[str, Any]:
    """The differences between two report documents (``new`` is this build)."""
    steps: List[Dict[str, Any]] = []
    new_lock, old_lock = new.get("lock") or {}, old.get("lock") or {}
    for sid in sorted(set(new_lock) | set(old_lock)):
        a, b = old_lock.get(sid), new_lock.get(sid)
        if a is None or b is None:
            steps.append({"step": sid, "change": "added" if a is None else "removed"})
            continue
        outs = []
        for name in sorted(set(a["outputs"]) | set(b["outputs"])):
            if a["outputs"].get(name) != b["outputs"].get(name):
                outs.append({"output": name, "old": a["outputs"].get(name),
                             "new": b["outputs"].get(name)})
        change = "same" if a["key"] == b["key"] else "key changed"
        steps.append({"step": sid, "change": change, "old_key": a["key"], "new_key": b["key"],
                      "outputs": outs})
    latency: List[Dict[str, Any]] = []
    verification: List[Dict[str, Any]] = []
    missing: List[str] = []
    for model in sorted(set(new.get("models") or {}) | set(old.get("models") or {})):
        na = ((new.get("models") or {}).get(model) or {}).get("artifacts") or {}
        oa = ((old.get("models") or {}).get(model) or {}).get("artifacts") or {}
        if na and not any((a.get("benchmark") or {}).get("results") for a in oa.values()):
            missing.append(model)
        for cand in sorted(set(na) & set(oa)):
            nres = {r["batch"]: r for r in (na[cand].get("benchmark") or {}).get("results") or []}
            ores = {r["batch"]: r for r in (oa[cand].get("benchmark") or {}).get("results") or []}
            for batch in sorted(set(nres) & set(ores)):
                before, after = ores[batch].get("p50_ms"), nres[batch].get("p50_ms")
                if not before or after is None:
                    continue
                delta = after / before - 1.0
                latency.append({"model": model, "artifact": cand, "batch": batch,
                                "old_p50_ms": before, "new_p50_ms": after,
                                "delta": round(delta, 4),
                                "old_spread": ores[batch].get("spread"),
                                "new_spread": nres[batch].get("spread"),
                                "regression": delta > threshold})
            ov, nv = oa[cand].get("verification"), na[cand].get("verification")
            if ov and nv and ov.get("passed") != nv.get("passed"):
                verification.append({"model": model, "artifact": cand,
                                     "old": "passed" if ov.get("passed") else "failed",
                                     "new": "passed" if nv.get("passed") else "failed",
                                     "regression": bool(ov.get("passed"))
                                     and not nv.get("passed")})
    releases = []
    for sid in sorted(set(new.get("releases") or {}) | set(old.get("releases") or {})):
        a = (old.get("releases") or {}).get(sid) or {}
        b = (new.get("releases") or {}).get(sid) or {}
        releases.append({"step": sid, "old": a.get("chosen"), "new": b.get("chosen"),
                         "old_p50_ms": a.get("median_ms"), "new_p50_ms": b.get("median_ms")})
    regressions = [x for x in latency if x["regression"]] + \
                  [x for x in verification if x["regression"]]
    return {"threshold": threshold, "steps": steps, "latency": latency,
            "verification": verification, "releases": releases,
            "no_figures_for": missing, "regressions": len(regressions),
            "counts": {c: sum(1 for s in steps if s["change"] == c)
                       for c in ("same", "key changed", "added", "removed")}}


def text(diff: Mapping[str, Any], new_label: str, old_label: str) -> str:
    """The comparison for a terminal or a CI log."""
    c = diff["counts"]
    lines = [f"comparing {new_label} (this build) with {old_label}",
             f"steps: {c['same']} same key, {c['key changed']} changed, {c['added']} added, "
             f"{c['removed']} removed"]
    width = max((len(s["step"]) for s in diff["steps"]), default=4)
    for s in diff["steps"]:
        if s["change"] == "same" and not s.get("outputs"):
            continue
        if s["change"] in ("added", "removed"):
            lines.append(f"  {s['change']:<11} {s['step']}")
            continue
        outs = ", ".join(f"{o['output']} {_short(o['old'])} -> {_short(o['new'])}"
                         for o in s["outputs"]) or "same output bytes"
        lines.append(f"  {s['change']:<11} {s['step']:<{width}}  key {_short(s['old_key'])} -> "
                     f"{_short(s['new_key'])}; {outs}")
    if diff["latency"]:
        lines.append(f"latency (p50), regression above +{diff['threshold'] * 100:.0f}%:")
        w = max(len(x["artifact"]) for x in diff["latency"])
        for x in diff["latency"]:
            flag = "  REGRESSION" if x["regression"] else ""
            lines.append(f"  {x['artifact']:<{w}}  batch {x['batch']:<3} {x['old_p50_ms']:>10.4f} "
                         f"-> {x['new_p50_ms']:>10.4f} ms  {x['delta'] * 100:+6.1f}%{flag}")
    for model in diff["no_figures_for"]:
        lines.append(f"no figures of the other build for model '{model}' (its reports are "
                     "neither in this cache nor beside it): keys and digests only")
    for v in diff["verification"]:
        lines.append(f"verification of {v['artifact']}: {v['old']} -> {v['new']}"
                     + ("  REGRESSION" if v["regression"] else ""))
    for r in diff["releases"]:
        if r["old"] != r["new"]:
            lines.append(f"release {r['step']}: {r['old']} -> {r['new']}")
    lines.append(f"{diff['regressions']} regression(s)" if diff["regressions"]
                 else "no regressions")
    return "\n".join(lines) + "\n"


def markdown(diff: Mapping[str, Any], new_label: str, old_label: str) -> str:
    c = diff["counts"]
    lines = [f"### Changes since {old_label}", "",
             f"{c['same']} steps with the same key, {c['key changed']} changed, {c['added']} "
             f"added, {c['removed']} removed.", ""]
    if diff["latency"]:
        lines += ["| artifact | batch | before p50 ms | now p50 ms | change |",
                  "|---|---:|---:|---:|---:|"]
        for x in diff["latency"]:
            lines.append(f"| `{x['artifact']}` | {x['batch']} | {x['old_p50_ms']:.4f} | "
                         f"{x['new_p50_ms']:.4f} | {x['delta'] * 100:+.1f}%"
                         + (" **regression**" if x["regression"] else "") + " |")
        lines.append("")
    lines.append(f"**{diff['regressions']} regression(s)** over +{diff['threshold'] * 100:.0f}%"
                 if diff["regressions"] else
                 f"No regression over +{diff['threshold'] * 100:.0f}%.")
    return "\n".join(lines) + "\n"


def _short(digest: Optional[str]) -> str:
    return (digest or "none")[:8]
