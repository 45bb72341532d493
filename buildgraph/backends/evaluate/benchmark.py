"""``benchmark``: time every artifact through its runtime (``release`` ships the fastest
verified one: :mod:`buildgraph.backends.evaluate.release`).

``benchmark`` loads each upstream artifact through the same runtimes ``verify`` uses and times
it on the model's example inputs, per batch size: warm-up runs, then ``runs`` timed runs, and
reports median, p90, mean and throughput. It holds every CPU slot (``cpu: all``) so that no
other step shares the cores while it measures, and the host CPU is part of its key: a timing
from another machine is never served as this one's.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any, Dict, List, Optional

from pydantic import Field

from buildgraph.errors import StepFailed, did_you_mean
from buildgraph.engine.hashing import path_digest
from buildgraph.engine.executor import DescribeContext, Description, Task
from buildgraph.backends.torch.base import ModelExecutor, ModelParams, artifact_of, model_spec_of


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
