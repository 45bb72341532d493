"""``release``: ship the fastest artifact that passed verification.

It reads a benchmark report and the verification reports, picks the fastest candidate that
passed verification (at one batch size), and copies its artifact into its own output with a
``release.json`` saying what was chosen and why. Its key covers the reports, which hold each
artifact's digest, so the copy is exactly the artifact that was measured and verified.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

from pydantic import Field

from buildgraph.errors import StepFailed
from buildgraph.engine.hashing import path_digest
from buildgraph.engine.executor import Executor, Task, artifact_of
from buildgraph.engine.params import StrictParams


class ReleaseParams(StrictParams):
    batch: Optional[int] = Field(None, description="compare at this batch size (default: the "
                                                   "first one measured)")
    require_verified: bool = Field(True, description="only candidates that a verify step "
                                                     "passed can be released")


class ReleaseExecutor(Executor):
    """Copy the fastest verified artifact, with a release.json saying why it won."""

    kind = "release"
    version = "1"
    Params = ReleaseParams
    outputs = {"artifact": "artifact", "manifest": "release.json"}

    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        p = ReleaseParams.model_validate(task.params)
        bench = [u for u, k in task.upstream_kinds.items() if k == "benchmark"]
        if len(bench) != 1:
            raise StepFailed("release needs exactly one benchmark step under 'from:'; got "
                             + (", ".join(bench) or "none"))
        report = json.loads(Path(task.upstream[bench[0]]["report"]).read_text())
        verified: Dict[str, bool] = {}
        for up, kind in task.upstream_kinds.items():
            if kind == "verify":
                vrep = json.loads(Path(task.upstream[up]["report"]).read_text())
                for cand, entry in vrep["candidates"].items():
                    ok = bool(entry.get("passed")) and not entry.get("skipped")
                    verified[cand] = verified.get(cand, True) and ok
        if p.require_verified and not verified:
            raise StepFailed("no verify step under 'from:': nothing is known to be correct "
                             "(or set require_verified: false)")
        ranking = []
        for cand, entry in report["candidates"].items():
            results = entry.get("results") or []
            if p.batch is not None:
                results = [r for r in results if r["batch"] == p.batch]
            if not results or (p.require_verified and not verified.get(cand)):
                continue
            ranking.append((results[0]["median_ms"], cand, entry))
        if not ranking:
            raise StepFailed("no candidate both passed verification and was benchmarked"
                             + (f" at batch {p.batch}" if p.batch is not None else ""))
        ranking.sort(key=lambda r: (r[0], r[1]))
        best_ms, best, entry = ranking[0]
        source = _artifact_path(task, best, entry)
        if path_digest(source).digest != entry["digest"]:
            raise StepFailed(f"{best}'s artifact changed since it was benchmarked")
        dest = task.outputs["artifact"]
        dest.mkdir()
        if source.is_dir():
            shutil.copytree(source, dest / source.name)
        else:
            shutil.copy2(source, dest / source.name)
        manifest = {"chosen": best, "kind": entry["kind"], "artifact": source.name,
                    "digest": entry["digest"], "median_ms": best_ms,
                    "ranking": [{"step": c, "median_ms": ms} for ms, c, _ in ranking],
                    "not_eligible": sorted(set(report["candidates"]) -
                                           {c for _, c, _ in ranking})}
        task.outputs["manifest"].write_text(json.dumps(manifest, indent=2))
        task.log(f"released {best} ({entry['kind']}): median {best_ms} ms; ranking: "
                 + ", ".join(f"{c} {ms} ms" for ms, c, _ in ranking))
        return {"chosen": best, "median_ms": best_ms}


def _artifact_path(task: Task, step: str, entry: Dict[str, Any]) -> Path:
    """Where the benchmarked artifact of ``step`` is: it must be an upstream of the release."""
    if step not in task.upstream:
        raise StepFailed(f"the fastest candidate '{step}' is not under this step's 'from:'; "
                         "list the candidates' steps too, so the release is keyed on them")
    return artifact_of(task, step)
