"""``benchmark`` and ``release``: time every artifact, then ship the fastest verified one.

``benchmark`` loads each upstream artifact through the same runtimes ``verify`` uses and times
it on the model's example inputs, per batch size: warm-up runs, then ``runs`` timed runs, and
reports median, p90, mean and throughput. It holds every CPU slot (``cpu: all``) so that no
other step shares the cores while it measures, and the host CPU is part of its key: a timing
from another machine is never served as this one's.

``release`` reads a benchmark report and the verification reports, picks the fastest candidate
that passed verification (at one batch size), and copies its artifact into its own output with a
``release.json`` saying what was chosen and why. Its key covers the reports, which hold each
artifact's digest, so the copy is exactly the artifact that was measured and verified.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from pydantic import Field

from buildgraph.errors import StepFailed, did_you_mean
from buildgraph.engine.hashing import path_digest
from buildgraph.engine.executor import DescribeContext, Description, Executor, Task
from buildgraph.backends.torch.base import ModelExecutor, ModelParams, artifact_of, model_spec_of
from buildgraph.engine.params import StrictParams


class BenchmarkParams(ModelParams):
    candidates: Optional[List[str]] = Field(None, description="a subset of the upstream steps")
    dims: Dict[str, List[int]] = Field(default_factory=dict,
                                       description="sizes of named dims to time, e.g. "
                                                   "{batch: [1, 8]}; default: each dim's opt")
    warmup: int = Field(3, ge=0)
    runs: int = Field(20, ge=1)
    device: str = "cpu"


class BenchmarkExecutor(ModelExecutor):
    """Time every upstream artifact through its runtime; the JSON report is an output."""

    kind = "benchmark"
    version = "1"
    Params = BenchmarkParams
    outputs = {"report": "benchmark.json"}
    resources = {"cpu": "all"}
    dists = ("torch", "onnxruntime", "apache-tvm", "tensorrt", "numpy")

    def describe(self, params: Any, ctx: DescribeContext) -> Description:
        """The model's description plus this host's CPU: timings are never reused across
        machines."""
        from dataclasses import replace

        from buildgraph.engine.environment import host_cpu

        base = super().describe(params, ctx)
        return replace(base, env={**base.env, "host": host_cpu()})

    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        self.import_torch()
        import numpy as np

        from buildgraph.backends.evaluate.verify import candidate_trusted
        from buildgraph.backends.torch import model as torchmodel
        from buildgraph.engine.runtime import RuntimeContext, artifact_info, load_runtime, runtime_for

        p: BenchmarkParams = self.params(task)
        spec = model_spec_of(task, p.model)
        torchmodel.set_threads(task.threads)
        ups = list(task.upstream)
        chosen = ups if p.candidates is None else \
            [u for c in p.candidates for u in ups if u == c or u.split("@")[0] == c]
        if not chosen:
            raise StepFailed("nothing to benchmark: list the artifacts' steps under 'from:'"
                             + (f"{did_you_mean(p.candidates[0], ups)}" if p.candidates else ""))
        known = torchmodel.dim_sizes(spec)
        for dim in p.dims:
            if dim not in known:
                raise StepFailed(f"dims: the model has no named dim '{dim}'"
                                 f"{did_you_mean(dim, sorted(known))}")
        settings = [{}] if not p.dims else \
            [{d: v[i] for d, v in p.dims.items() if i < len(v)}
             for i in range(max(len(v) for v in p.dims.values()))]
        report: Dict[str, Any] = {"schema": 1, "model": p.model, "threads": task.threads,
                                  "warmup": p.warmup, "runs": p.runs, "candidates": {}}
        for cand in chosen:
            path = artifact_of(task, cand)
            kind = task.upstream_kinds.get(cand)
            entry: Dict[str, Any] = {"kind": kind, "artifact": str(path.name),
                                     "digest": path_digest(path).digest, "results": []}
            ctx = RuntimeContext(model=p.model, model_spec=spec, recipe_dir=task.recipe_dir,
                                 kind=kind, meta=artifact_info(task.upstream[cand]),
                                 threads=task.threads, device=p.device,
                                 trusted=candidate_trusted(kind, spec))
            runtime = None
            try:
                entry["runtime"] = runtime_for(kind, path)
                runtime = load_runtime(path, ctx, entry["runtime"])
                for sizes in settings:
                    inputs = [torchmodel.to_numpy(t) for t in
                              torchmodel.make_inputs(spec, int(spec.get("seed", 0)), sizes)]
                    for _ in range(p.warmup):
                        runtime.run(inputs)
                    times = []
                    for _ in range(p.runs):
                        start = time.perf_counter()
                        runtime.run(inputs)
                        times.append(time.perf_counter() - start)
                    batch = int(inputs[0].shape[0]) if inputs and np.ndim(inputs[0]) else 1
                    median = statistics.median(times)
                    entry["results"].append({
                        "dims": dict(sizes) or {d: s for d, s in known.items()},
                        "batch": batch, "median_ms": round(median * 1e3, 4),
                        "p90_ms": round(float(np.percentile(times, 90)) * 1e3, 4),
                        "mean_ms": round(statistics.fmean(times) * 1e3, 4),
                        "items_per_s": round(batch / median, 2) if median else None})
                    task.log(f"{cand} ({entry['runtime']}) {sizes or 'default dims'}: median "
                             f"{median * 1e3:.3f} ms over {p.runs} runs")
            except StepFailed as exc:
                if not getattr(exc, "skip", False):
                    raise StepFailed(f"{cand}: {exc.message}") from None
                entry["skipped"] = exc.message
                task.log(f"{cand}: skipped: {exc.message}")
            finally:
                if runtime is not None:
                    runtime.close()
            report["candidates"][cand] = entry
        task.outputs["report"].write_text(json.dumps(report, indent=2, sort_keys=True))
        return {"median_ms": {c: [r["median_ms"] for r in e["results"]]
                              for c, e in report["candidates"].items()}}


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
