"""The report's data: one JSON document, from the lock file, the store and the run record.

A report describes **the build the lock file records** (the last run of each step): the lock
gives every step's key and output digests, and the store gives those outputs' bytes by digest
(``verify``'s report.json, ``benchmark``'s benchmark.json, ``release``'s release.json), so
the figures shown are exactly those of the recorded build, even when the build directory was
edited since. The plan says which steps are **out of date** now (and why); the run record
(:mod:`buildgraph.engine.runrecord`) says where each step's outputs came from. Nothing is
built or measured here, and no ML library is imported.

Everything the HTML, Markdown and ``--compare`` views show is in this document (``report
--json`` prints it), so that a test can hold the page to it number by number.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from buildgraph.html_report.fmt import sig

REPORT_SCHEMA = 1

STATE_UP_TO_DATE = "up to date"
STATE_RESTORE = "up to date (build directory copy to restore)"
STATE_STALE = "out of date"
STATE_NEVER = "never built"


class Outputs:
    """Reads a lock-recorded output's bytes: from the store by digest, else from the build
    directory when the file there still has that digest. A lock records an output's path
    inside the build directory (older ones: relative to the recipe); each of ``bases`` is
    tried."""

    def __init__(self, store: Any, *bases: Path):
        self.store = store
        self.bases = bases

    def json(self, out: Optional[Mapping[str, Any]]) -> Optional[Any]:
        if not out or out.get("type") != "file" or not out.get("digest"):
            return None
        data = self.store.read_bytes(out["digest"]) if self.store is not None else None
        if data is None and out.get("path"):
            from buildgraph.engine.hashing import path_digest

            for base in self.bases:
                path = Path(base) / out["path"]
                try:
                    if path.is_file() and path_digest(path).digest == out["digest"]:
                        data = path.read_bytes()
                        break
                except OSError:
                    continue
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return None


def collect(graph: Any, lock: Mapping[str, Any], decisions: Mapping[str, Any],
            record: Mapping[str, Any], outputs: Outputs) -> Dict[str, Any]:
    """The report document for ``graph``: steps (DAG, state, origin, time), per model the
    artifacts with their verification and benchmark figures, and the release decision."""
    from buildgraph.engine.environment import host_cpu

    steps = _steps(graph, lock, decisions, record.get("steps") or {})
    _exporters(steps, outputs.store)
    reports: Dict[str, Any] = {}
    for sid, entry in lock.items():
        kind = entry.get("uses")
        if kind not in ("verify", "benchmark", "release", "cpp.check") or \
                sid not in graph.steps:
            continue
        name = {"verify": "report", "benchmark": "report", "release": "manifest",
                "cpp.check": "report"}[kind]
        data = outputs.json((entry.get("outputs") or {}).get(name))
        if data is not None:
            reports[sid] = data
        else:
            steps[sid]["note"] = "its report is not in this cache"
    models = _models(graph, lock, steps, reports)
    for m in models.values():
        for cand, a in m["artifacts"].items():
            if (steps.get(cand) or {}).get("exporter"):
                a["exporter"] = steps[cand]["exporter"]
    releases = _releases(graph, steps, reports, models)
    counts: Dict[str, int] = {"built": 0, "local": 0, "remote": 0}
    for s in steps.values():
        counts[s["origin"] or "none"] = counts.get(s["origin"] or "none", 0) + 1
    stale = [sid for sid, s in steps.items() if s["state"] in (STATE_STALE, STATE_NEVER)]
    return {
        "schema": REPORT_SCHEMA,
        "recipe": graph.name,
        "recipe_path": _shown_path(graph.recipe_path),
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": host_cpu(),
        "summary": {"steps": len(steps), "origins": counts, "out_of_date": stale,
                    "build_s": round(sum(s["wall_s"] or 0.0 for s in steps.values()), 3)},
        "steps": steps,
        "models": models,
        "releases": releases,
        "lock": {sid: {"key": e.get("key"), "uses": e.get("uses"),
                       "outputs": {n: o.get("digest") for n, o in
                                   sorted((e.get("outputs") or {}).items())}}
                 for sid, e in sorted(lock.items())},
    }


def _shown_path(path: Path) -> str:
    """The recipe as the reader named it: relative to the working directory when inside it
    (a report passed around should not carry the author's home directory)."""
    import os

    try:
        rel = os.path.relpath(Path(path).resolve(), Path.cwd().resolve())
    except ValueError:
        return str(path)
    return rel if not rel.startswith("..") else str(path)


def _steps(graph: Any, lock: Mapping[str, Any], decisions: Mapping[str, Any],
           record: Mapping[str, Any]) -> Dict[str, Any]:
    from buildgraph.engine.planner import CACHED, RESTORE

    out: Dict[str, Any] = {}
    for sid, step in graph.steps.items():
        locked = lock.get(sid) or {}
        decision = decisions.get(sid)
        rec = record.get(sid) or {}
        if not locked:
            state = STATE_NEVER
        elif decision is not None and decision.action == CACHED:
            state = STATE_UP_TO_DATE
        elif decision is not None and decision.action == RESTORE:
            state = STATE_RESTORE
        else:
            state = STATE_STALE
        recorded_key = rec.get("key")
        same_build = bool(locked) and recorded_key == locked.get("key")
        out[sid] = {
            "kind": step.kind,
            "upstream": list(step.upstream),
            "state": state,
            "reasons": list(decision.reasons) if decision is not None and
            state in (STATE_STALE, STATE_NEVER) else [],
            "last_status": rec.get("status"),
            "origin": rec.get("origin") if same_build or not locked else None,
            "remote_origin": rec.get("remote_origin"),
            # the run record's time of this very build; a lock holds no wall time (older
            # ones did)
            "wall_s": rec.get("wall_s") if same_build or not locked else locked.get("wall_s"),
            "key": locked.get("key"),
            "message": rec.get("message") if rec.get("status") not in ("built", "cached",
                                                                        "restored") else None,
            "outputs": {n: {"digest": o.get("digest"), "size": o.get("size"),
                            "type": o.get("type")}
                        for n, o in sorted((locked.get("outputs") or {}).items())},
        }
    return out


def _exporters(steps: Dict[str, Any], store: Any) -> None:
    """Which exporter wrote each ONNX file (``exporter: auto`` tries dynamo, dynamo with
    static shapes, then the legacy one): the choice is an outcome recorded in the step's
    action entry, not a parameter, so it is read from the store."""
    if store is None:
        return
    for s in steps.values():
        if s["kind"] != "onnx.export" or not s.get("key"):
            continue
        try:
            meta = (store.get_action(s["key"]) or {}).get("meta") or {}
        except Exception:  # noqa: BLE001 - a damaged or foreign entry shows nothing
            continue
        if isinstance(meta.get("exporter"), str):
            s["exporter"] = meta["exporter"]


def _artifact_size(step: Mapping[str, Any], digest: Optional[str]) -> Optional[int]:
    """Size on disk of the artifact output of ``step`` (the one with ``digest``, else the
    ``model`` output, else its only output)."""
    outs = step.get("outputs") or {}
    for o in outs.values():
        if digest and o.get("digest") == digest:
            return o.get("size")
    if "model" in outs:
        return outs["model"].get("size")
    if len(outs) == 1:
        return next(iter(outs.values())).get("size")
    return None


def _models(graph: Any, lock: Mapping[str, Any], steps: Dict[str, Any],
            reports: Mapping[str, Any]) -> Dict[str, Any]:
    """Per model: every artifact that a verify or benchmark step looked at."""
    models: Dict[str, Any] = {}

    def artifact(model: str, cand: str) -> Dict[str, Any]:
        m = models.setdefault(model, {"artifacts": {}, "reference": None, "benchmark": None,
                                      "verify": []})
        return m["artifacts"].setdefault(cand, {"step": cand, "kind": None, "runtime": None,
                                                "precision": None, "verification": None,
                                                "benchmark": None, "size_bytes": None})

    for sid, data in reports.items():
        kind = steps[sid]["kind"]
        if kind != "verify":
            continue
        model = data.get("model") or "?"
        models.setdefault(model, {"artifacts": {}, "reference": None, "benchmark": None,
                                  "verify": []})["verify"].append(sid)
        for cand, entry in (data.get("candidates") or {}).items():
            a = artifact(model, cand)
            a["kind"] = a["kind"] or entry.get("kind")
            a["runtime"] = a["runtime"] or entry.get("runtime")
            a["precision"] = entry.get("precision") or a["precision"]
            outs = entry.get("outputs") or {}
            errs = [o for o in outs.values() if "max_abs" in o]
            a["verification"] = {
                "step": sid,
                "passed": bool(entry.get("passed")) and not entry.get("skipped"),
                "skipped": entry.get("skipped"),
                "max_abs": max((o["max_abs"] for o in errs), default=None),
                "max_rel": max((o["max_rel"] for o in errs), default=None),
                "min_cosine": min((o["cosine"] for o in errs), default=None),
                "failures": [f for o in outs.values() for f in o.get("failures") or []],
                "device": entry.get("device"), "provider": entry.get("provider"),
                "math": entry.get("math"),
            }
        for cand in data.get("failed_upstream") or []:
            artifact(model, cand)["failed_upstream"] = True
    for sid, data in reports.items():
        if steps[sid]["kind"] != "benchmark":
            continue
        model = data.get("model") or "?"
        m = models.setdefault(model, {"artifacts": {}, "reference": None, "benchmark": None,
                                      "verify": []})
        m["benchmark"] = {"step": sid, "threads": data.get("threads"),
                          "policy": data.get("policy"), "sweep": data.get("sweep"),
                          "device": data.get("device"), "host_load": data.get("host_load"),
                          "gpu": data.get("gpu"), "timing": data.get("timing")}
        for cand in data.get("failed_upstream") or []:
            artifact(model, cand)["failed_upstream"] = True
        ref = data.get("reference")
        if ref:
            m["reference"] = _bench_entry(ref)
        for cand, entry in (data.get("candidates") or {}).items():
            a = artifact(model, cand)
            a["kind"] = a["kind"] or entry.get("kind")
            a["runtime"] = a["runtime"] or entry.get("runtime")
            a["precision"] = a["precision"] or entry.get("precision")
            a["benchmark"] = _bench_entry(entry)
            a["digest"] = entry.get("digest")
    for sid, data in reports.items():  # cpp.check: does the artifact run from C++?
        if steps[sid]["kind"] != "cpp.check":
            continue
        for m in models.values():
            for cand, entry in (data.get("candidates") or {}).items():
                if cand in m["artifacts"]:
                    yes = entry.get("runs_from_cpp") == "yes"
                    m["artifacts"][cand]["cpp"] = {
                        "step": sid, "runs": yes, "api": entry.get("api"),
                        "text": "yes" if yes else f"no ({entry.get('why', '?')})"}
    for model, m in models.items():
        if m["benchmark"] is not None:
            m["benchmark"]["busy"] = _busy(m)
        ref_by_batch = {r["batch"]: r for r in ((m["reference"] or {}).get("results") or [])}
        for cand, a in m["artifacts"].items():
            if cand in steps:
                a["size_bytes"] = _artifact_size(steps[cand], a.get("digest"))
            same = _device_class((a["benchmark"] or {}).get("device")) == \
                _device_class((m["reference"] or {}).get("device"))
            for r in (a["benchmark"] or {}).get("results") or []:
                base = ref_by_batch.get(r["batch"])
                # a speedup is quoted only against the reference measured on the same device
                r["speedup_vs_eager"] = round(base["p50_ms"] / r["p50_ms"], 3) \
                    if same and base and base.get("p50_ms") and r.get("p50_ms") else None
    return models


def _busy(m: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """``{load, cpus}`` when the 1-minute load average exceeded the CPUs while measuring."""
    host = m["benchmark"].get("host_load") or {}
    if not host.get("cpus"):
        return None
    seen = [host.get("before"), host.get("after")]
    for b in [a.get("benchmark") or {} for a in m["artifacts"].values()] + \
            [m.get("reference") or {}]:
        seen += [r.get("load_1m") for r in b.get("results") or []]
    peak = max((v for v in seen if v is not None), default=None)
    return {"load": peak, "cpus": host["cpus"]} if peak is not None and peak > host["cpus"] \
        else None


def _device_class(device: Optional[str]) -> str:
    """``cpu`` or ``cuda:N`` of a recorded device (None: cpu, as before devices were
    recorded)."""
    head = (device or "cpu").split()[0]
    return "cuda:0" if head == "cuda" else head


def _bench_entry(entry: Mapping[str, Any]) -> Dict[str, Any]:
    keep = ("runtime", "precision", "threads", "peak_rss_mb", "rss_before_load_mb",
            "rss_after_load_mb", "load_s", "skipped", "sweep", "device", "provider", "timing",
            "capped")
    results = []
    for r in entry.get("results") or []:
        results.append({k: r.get(k) for k in (
            "batch", "dims", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "items_per_s", "spread",
            "spread_limit", "stable", "windows", "runs_per_window", "samples", "peak_rss_mb",
            "load_1m", "stop_detail")})
        if results[-1]["p50_ms"] is None:  # schema 1 (before windows): median only
            results[-1]["p50_ms"] = r.get("median_ms")
    return {**{k: entry.get(k) for k in keep}, "results": results,
            "skipped_settings": entry.get("skipped_settings") or []}


def _releases(graph: Any, steps: Mapping[str, Any], reports: Mapping[str, Any],
              models: Mapping[str, Any]) -> Dict[str, Any]:
    """Each release step's decision, with a reason for every candidate it did not ship."""
    out: Dict[str, Any] = {}
    for sid, data in reports.items():
        if steps[sid]["kind"] != "release":
            continue
        chosen = data.get("chosen")
        ranking = data.get("ranking") or []
        arts: Dict[str, Any] = {}
        for m in models.values():
            arts.update(m["artifacts"])
        reasons: List[str] = []
        best = data.get("median_ms")
        if chosen:
            reasons.append(f"{chosen} ({data.get('kind')}) is the fastest candidate that passed "
                           f"verification: p50 {sig(best, 4)} ms")
        for r in ranking:
            if r["step"] != chosen and best:
                reasons.append(f"{r['step']}: p50 {sig(r['median_ms'], 4)} ms, "
                               f"{r['median_ms'] / best:.2f}x the chosen one's")
        unstable = [f"{c} (spread {a['benchmark']['results'][0]['spread']:.0%})"
                    for c, a in arts.items() if c in {r['step'] for r in ranking}
                    and (a.get("benchmark") or {}).get("results")
                    and a["benchmark"]["results"][0].get("stable") is False
                    and a["benchmark"]["results"][0].get("spread") is not None]
        if unstable:
            reasons.append("caution: these timings did not settle within the time cap, so the "
                           "ranking may not hold: " + ", ".join(unstable))
        busy = [m["benchmark"]["busy"] for m in models.values()
                if m.get("benchmark") and m["benchmark"].get("busy")]
        if busy:
            reasons.append(f"caution: measured on a busy machine (load average up to "
                           f"{busy[0]['load']:.1f} on {busy[0]['cpus']} CPUs)")
        for cand in data.get("not_eligible") or []:
            reasons.append(f"{cand}: not eligible: {_why_not(arts.get(cand))}")
        out[sid] = {"chosen": chosen, "kind": data.get("kind"), "artifact": data.get("artifact"),
                    "digest": data.get("digest"), "median_ms": best, "ranking": ranking,
                    "not_eligible": data.get("not_eligible") or [], "reasons": reasons,
                    "manifest": data}
    return out


def _why_not(a: Optional[Mapping[str, Any]]) -> str:
    if a is None:
        return "not benchmarked"
    bench = a.get("benchmark") or {}
    if bench.get("skipped"):
        return f"not measured here ({bench['skipped']})"
    if not bench.get("results"):
        return "no timing at the release's batch size"
    v = a.get("verification")
    if v is None:
        return "no verify step checked it"
    if v.get("skipped"):
        return f"verification skipped ({v['skipped']})"
    if not v.get("passed"):
        return "failed verification" + (f" ({v['failures'][0]})" if v.get("failures") else "")
    return "not eligible (see release.json)"


def build(recipe: Any, overrides: Any = None, cache_dir: Optional[str] = None,
          build_dir: Optional[str] = None, lock_file: Optional[Path] = None
          ) -> Tuple[Dict[str, Any], Any]:
    """Load the recipe, plan it, read its lock file and run record: (document, graph)."""
    from buildgraph import api
    from buildgraph.engine.lockfile import lock_path, read_lock
    from buildgraph.engine.runrecord import read_record
    from buildgraph.engine.scheduler import default_build_dir
    from buildgraph.engine.store.cache import Store

    graph = api.load(recipe, overrides, cache_dir)
    lock = read_lock(lock_file or lock_path(graph.recipe_path))
    bdir = Path(build_dir) if build_dir else default_build_dir(graph)
    decisions = api.plan(graph, cache_dir=cache_dir, build_dir=build_dir)
    store = Store(Path(cache_dir) if cache_dir else None)
    try:
        doc = collect(graph, lock, decisions, read_record(bdir.absolute()),
                      Outputs(store, bdir.absolute(), graph.recipe_dir))
    finally:
        store.close()
    return doc, graph
