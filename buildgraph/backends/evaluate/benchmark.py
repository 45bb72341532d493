"""``benchmark``: time every artifact through its runtime (``release`` ships the fastest
verified one: :mod:`buildgraph.backends.evaluate.release`).

``benchmark`` loads each upstream artifact through the same runtimes ``verify`` uses and times
it on random inputs shaped by the model's specs, per setting of the named dims, and the
model's own reference as the baseline that speedups are quoted against (eager PyTorch; an ONNX
file on onnxruntime fp32 unoptimised; a TensorFlow model in TensorFlow:
:mod:`buildgraph.backends.evaluate.reference`). A measurement is trusted only once
it is stable (:mod:`buildgraph.backends.evaluate.measure`): windows of runs until two
consecutive windows' medians agree within ``spread``, under a time cap; the report gives
p50/p90/p99, the spread reached, and whether it was reached.

Each artifact runs in a runner process of its own
(:mod:`buildgraph.backends.evaluate.bench_runner`), with the intra-op and inter-op thread
counts pinned (the same for torch, onnxruntime and TVM, so the comparison is fair) and
recorded as each library reports them, and the runner's peak memory measured. With
``sweep:``, the batch dim grows (1, 2, 4...) until throughput stops growing.

**Devices.** Every runner runs on ``device:`` or refuses (:class:`~buildgraph.engine.runtime.
DeviceUnavailable`): the model's reference too, so that on ``device: cuda`` speedups are quoted
against eager PyTorch on the same GPU. A candidate that cannot run there (onnxruntime without
its CUDA provider, an llvm TVM library) is listed as not run, with the reason; when nothing
ran at all (no GPU here) the step fails with one line. Each entry records the ``device`` and
``provider`` it ran on; on a GPU, the report's ``gpu`` gives its name, clocks and memory.

**Failed upstream.** Under ``--keep-going`` the step runs with the candidates that exist
(``Executor.tolerates_failed_upstream``); the ones whose step failed are listed under
``failed_upstream``, and the step fails only when none is left or a ``required:`` one is
missing.

It holds every CPU slot (``cpu: all``) so that no other step shares the cores while it
measures; the host CPU and the thread counts are part of its key, so a timing from another
machine is never served as this one's. ``buildgraph run --rebench`` measures again without
building anything else.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional

from pydantic import Field, model_validator

from buildgraph.errors import RecipeError, StepFailed, did_you_mean
from buildgraph.engine.hashing import path_digest
from buildgraph.engine.executor import DescribeContext, Description, Task
from buildgraph.engine.params import StrictParams
from buildgraph.backends.torch.base import ModelExecutor, ModelParams, artifact_of, model_spec_of

REFERENCE = "eager"
"""The runner name of the baseline (the model's reference; eager PyTorch for a PyTorch
model)."""


class SweepParams(StrictParams):
    dim: str = Field("batch", description="the named dim to grow")
    start: int = Field(1, ge=1)
    factor: int = Field(2, ge=2, description="each size is the last one times this")
    max: Optional[int] = Field(None, ge=1, description="largest size (default: the dim's max "
                                                       "in the model, else 256)")
    saturation: float = Field(0.05, ge=0.0, description="stop when throughput grows by less "
                                                        "than this fraction")


class ThreadParams(StrictParams):
    intra: Optional[int] = Field(None, ge=1, description="threads one operator may use "
                                 "(default: the CPUs this process may run on)")
    inter: int = Field(1, ge=1, description="operators that may run at once")


class BenchmarkParams(ModelParams):
    candidates: Optional[List[str]] = Field(None, description="a subset of the upstream steps")
    dims: Dict[str, List[int]] = Field(default_factory=dict,
                                       description="sizes of named dims to time, e.g. "
                                                   "{batch: [1, 8]}; default: each dim's opt")
    sweep: Optional[SweepParams] = Field(None, description="grow a dim until throughput "
                                                           "saturates, instead of fixed sizes")
    warmup: int = Field(3, ge=0, description="untimed runs before the windows")
    runs: int = Field(20, ge=1, description="fewest timed runs in one window")
    window_s: float = Field(0.2, gt=0, description="shortest window (seconds)")
    spread: float = Field(0.05, gt=0, description="consecutive windows agree when their "
                                                  "medians differ by at most this fraction")
    max_s: float = Field(20.0, gt=0, description="cap on the timed windows of one artifact at "
                                                 "one setting (seconds)")
    threads: ThreadParams = Field(default_factory=ThreadParams)
    reference: bool = Field(True, description="also time the model on its own reference "
                                              "runtime (eager PyTorch, onnxruntime fp32, "
                                              "TensorFlow): the baseline of speedups")
    device: str = Field("cpu", description="where every runner runs, the reference included: "
                                           "cpu, cuda or cuda:N (never elsewhere)")
    onnxruntime_provider: Literal["cuda", "tensorrt"] = Field(
        "cuda", description="onnxruntime's provider on a GPU")
    required: List[str] = Field(default_factory=list, description="candidates that must be "
                                "measured: with --keep-going, a failed one fails this step")

    @model_validator(mode="after")
    def _sweep_or_dims(self) -> "BenchmarkParams":
        if self.sweep is not None and self.sweep.dim in self.dims:
            raise ValueError(f"'{self.sweep.dim}' is both swept (sweep:) and listed under "
                             "dims:; keep one")
        for dim, sizes in self.dims.items():
            if self.sweep is not None and len(sizes) != 1:
                raise ValueError(f"with sweep:, dims: fixes the other dims to one size each; "
                                 f"{dim} has {len(sizes)}")
        return self


def intra_threads(params: BenchmarkParams) -> int:
    """The intra-op thread count: as set, or the CPUs this process may run on."""
    if params.threads.intra:
        return params.threads.intra
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class BenchmarkExecutor(ModelExecutor):
    """Time every upstream artifact through its runtime until the timing is stable; the JSON
    report is an output."""

    kind = "benchmark"
    version = "3"  # 3: runners on device:, failed_upstream and timing; max_s caps warm-up
    Params = BenchmarkParams
    outputs = {"report": "benchmark.json"}
    resources = {"cpu": "all"}
    dists = ("torch", "onnxruntime", "apache-tvm", "tensorrt", "numpy")
    tolerates_failed_upstream = True

    def describe(self, params: BenchmarkParams, ctx: DescribeContext) -> Description:
        """The model's description plus this host's CPU and the thread counts: timings are
        never reused across machines or thread settings. Checks the dims it names."""
        from dataclasses import replace

        from buildgraph.backends.evaluate.reference import described_spec, describe_model_any
        from buildgraph.backends.onnx.modelspec import dim_sizes
        from buildgraph.engine.environment import host_cpu

        base = describe_model_any(params.model, ctx, self.dists)
        known = dim_sizes(described_spec(base))  # an ONNX file's dims come from its graph
        for dim in list(params.dims) + ([params.sweep.dim] if params.sweep else []):
            if dim not in known:
                raise RecipeError(f"the model '{params.model}' has no named dim '{dim}'"
                                  f"{did_you_mean(dim, sorted(known))}",
                                  hint="named dims are the strings in its inputs' shapes")
        env = {**base.env, "host": host_cpu(),
               "threads": {"intra": intra_threads(params), "inter": params.threads.inter}}
        from buildgraph.engine.runtime import cuda_index, is_cuda

        if is_cuda(params.device):
            # a timing from another GPU model or driver is not this one's: the GPU is keyed,
            # and read again at every plan (a GPU can appear or change without Python knowing)
            from buildgraph.backends.evaluate.gpu import gpu_facts

            facts = gpu_facts(cuda_index(params.device))
            env["gpu"] = f"{facts.get('name')} (driver {facts.get('driver_version')})" \
                if facts.get("name") else "none"
            return replace(base, env=env, volatile=True)
        return replace(base, env=env)

    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        from buildgraph.backends.evaluate.reference import reference_job
        from buildgraph.backends.evaluate.verify import candidate_trusted
        from buildgraph.backends.onnx.modelspec import dim_sizes
        from buildgraph.engine.runtime import artifact_info, runtime_for

        from buildgraph.backends.evaluate.upstream import check_required, failed_upstream

        p: BenchmarkParams = self.params(task)
        spec = model_spec_of(task, p.model)
        ups = list(task.upstream)
        failed = failed_upstream(task, p.candidates)
        check_required(p.required, ups, failed)
        chosen = ups if p.candidates is None else \
            [u for c in p.candidates for u in ups if u == c or u.split("@")[0] == c]
        if not chosen:
            if failed:
                raise StepFailed("nothing to benchmark: every candidate failed upstream ("
                                 + ", ".join(failed) + ")")
            raise StepFailed("nothing to benchmark: list the artifacts' steps under 'from:'"
                             + (f"{did_you_mean(p.candidates[0], ups)}" if p.candidates else ""))
        for cand in failed:
            task.log(f"{cand}: failed upstream; not measured")
        known = dim_sizes(spec)
        for dim in list(p.dims) + ([p.sweep.dim] if p.sweep else []):
            if dim not in known:
                raise StepFailed(f"dims: the model has no named dim '{dim}'"
                                 f"{did_you_mean(dim, sorted(known))}")
        settings = [{}] if not p.dims else \
            [{d: v[i] for d, v in p.dims.items() if i < len(v)}
             for i in range(max(len(v) for v in p.dims.values()))]
        sweep = None
        if p.sweep is not None:
            limit = p.sweep.max or ((spec.get("dims") or {}).get(p.sweep.dim) or {}).get("max") \
                or 256
            sweep = {**p.sweep.model_dump(), "max": int(limit)}
        threads = {"intra": intra_threads(p), "inter": p.threads.inter}
        policy = {"warmup": p.warmup, "runs": p.runs, "window_s": p.window_s,
                  "spread": p.spread, "max_s": p.max_s}
        from buildgraph.backends.evaluate.bench_runner import load_average

        ref_job = reference_job(task, p.model)
        report: Dict[str, Any] = {
            "schema": 2, "model": p.model, "reference_runtime": ref_job["name"],
            "threads": threads, "policy": policy,
            "sweep": sweep, "warmup": p.warmup, "runs": p.runs, "device": p.device,
            "host_load": {"cpus": os.cpu_count(), "before": load_average()},
            "candidates": {}, "failed_upstream": failed,
            "timing": "host" if p.device == "cpu" else
            "device: inputs staged on the device, each run synchronised"}
        from buildgraph.engine.runtime import cuda_index, is_cuda

        if is_cuda(p.device):
            from buildgraph.backends.evaluate.gpu import gpu_facts

            report["gpu"] = gpu_facts(cuda_index(p.device))
        base_ctx = {"model": p.model, "model_spec": dict(spec),
                    "recipe_dir": str(task.recipe_dir), "device": p.device,
                    "ort_provider": p.onnxruntime_provider}
        if p.reference:
            job = {**ref_job, "ctx": {**base_ctx, "kind": None,
                                      "trusted": bool(spec.get("trusted"))}}
            kind = "eager" if ref_job["name"] == "torch.eager" else "reference"
            report["reference"] = self._measure(task, REFERENCE, job, threads, policy,
                                                settings, sweep, spec,
                                                {"kind": kind, "runtime": ref_job["name"]})
        for cand in chosen:
            path = artifact_of(task, cand)
            kind = task.upstream_kinds.get(cand)
            entry: Dict[str, Any] = {"kind": kind, "artifact": str(path.name),
                                     "digest": path_digest(path).digest}
            try:
                entry["runtime"] = runtime_for(kind, path)
            except StepFailed as exc:
                raise StepFailed(f"{cand}: {exc.message}") from None
            job = {"runtime": entry["runtime"], "path": str(path),
                   "ctx": {**base_ctx, "kind": kind, "meta": artifact_info(task.upstream[cand]),
                           "trusted": candidate_trusted(kind, spec)}}
            report["candidates"][cand] = self._measure(task, cand, job, threads, policy,
                                                       settings, sweep, spec, entry)
        report["host_load"]["after"] = load_average()
        self._nothing_ran(p.device, report)
        busy = max((v for v in (report["host_load"]["before"], report["host_load"]["after"])
                    if v is not None), default=0.0)
        if busy > (os.cpu_count() or 1):
            task.log(f"the machine was busy while measuring: 1-minute load average {busy:.1f} on "
                     f"{os.cpu_count()} CPUs; timings are slower than on an idle machine")
        task.outputs["report"].write_text(json.dumps(report, indent=2, sort_keys=True))
        return {"median_ms": {c: [r.get("median_ms") for r in e.get("results") or []]
                              for c, e in report["candidates"].items()},
                "stable": all(r.get("stable") for e in report["candidates"].values()
                              for r in e.get("results") or [])}

    @staticmethod
    def _nothing_ran(device: str, report: Mapping[str, Any]) -> None:
        """Fail, in one line, when no runner could run on the device (no GPU here): a report
        of nothing but refusals is not a benchmark."""
        entries = dict(report["candidates"])
        if report.get("reference"):
            entries["eager"] = report["reference"]
        refused = {n: e["skipped"] for n, e in entries.items() if e.get("device_refusal")}
        if refused and all(e.get("skipped") for e in entries.values()):
            name, why = next(iter(sorted(refused.items())))
            raise StepFailed(f"nothing ran on {device}: {name}: {why}"
                             + (f" (and {len(entries) - 1} more; the report lists each)"
                                if len(entries) > 1 else ""))

    def _measure(self, task: Task, name: str, job: Dict[str, Any], threads: Dict[str, int],
                 policy: Dict[str, Any], settings: List[Dict[str, int]],
                 sweep: Optional[Dict[str, Any]], spec: Mapping[str, Any],
                 entry: Dict[str, Any]) -> Dict[str, Any]:
        """Run one artifact's runner and fold its events into ``entry``."""
        from buildgraph.engine.execution.procs import PARENT_ENV, run_logged
        from buildgraph.engine.execution.pool import OMP_POLICY_SET

        job = {**job, "threads": threads, "policy": policy, "settings": settings,
               "sweep": sweep, "seed": int(spec.get("seed", 0)),
               "batch_dim": sweep["dim"] if sweep else "batch"}
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        job_path = Path(task.work_dir) / f"bench-{safe}.json"
        results_path = Path(task.work_dir) / f"bench-{safe}.jsonl"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        results_path.write_text("", encoding="utf-8")
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH"))
                                            if p)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "TVM_NUM_THREADS"):
            env[var] = str(threads["intra"])
        if env.pop(OMP_POLICY_SET, None):  # measure with OpenMP as the user runs it
            env.pop("OMP_WAIT_POLICY", None)
        env[PARENT_ENV] = str(os.getpid())
        task.log(f"--- {name}: runner with {threads['intra']} intra-op / {threads['inter']} "
                 f"inter-op threads")
        # a runner that hangs (a runtime stuck in a native call) must not hold the run: its
        # windows are capped, so give it that, and room to load and warm up
        sizes = len(settings) if not sweep else 1 + int(math.log(
            max(1, sweep["max"] // sweep["start"]), sweep["factor"]))
        limit = task.timeout or 300 + sizes * (2 * policy["max_s"] + 60)
        runner_error = ""
        from buildgraph.backends.evaluate.bench_runner import CAPPED_EXIT

        with open(task.log_path, "ab") as log:
            try:
                run_logged([sys.executable, "-m", "buildgraph.backends.evaluate.bench_runner",
                            str(job_path), str(results_path)], log, cwd=str(task.work_dir),
                           env=env, timeout=limit, what=f"the runner of {name}")
            except StepFailed as exc:
                if not exc.message.endswith(f"exited with status {CAPPED_EXIT}"):
                    runner_error = exc.message
        entry.setdefault("results", [])
        failed: Optional[Dict[str, Any]] = None
        for line in results_path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.pop("event", None)
            if kind == "loaded":
                entry.update(load_s=event["load_s"], precision=event["precision"],
                             threads=event.get("threads"),
                             rss_before_load_mb=event["rss_before_load_mb"],
                             rss_after_load_mb=event["rss_after_load_mb"],
                             timing=event.get("timing", "host"))
                if event.get("details"):
                    entry["details"] = event["details"]
                    for key in ("device", "provider"):  # where it ran: compared by release
                        if key in event["details"]:
                            entry[key] = event["details"][key]
            elif kind == "capped":  # the watchdog ended the runner inside one run
                entry["results"].append({"dims": event["dims"], "stable": False,
                                         "batch": event["dims"].get(job["batch_dim"]),
                                         "median_ms": None, "p50_ms": None,
                                         "stop": "max_s", "stop_detail": event["message"],
                                         "runs": event["runs"]})
                entry["capped"] = event["message"]
                task.log(f"{name} {_label(event['dims'])}: {event['message']}")
            elif kind == "result":
                entry["results"].append(event)
                task.log(f"{name} {_label(event['dims'])}: p50 {event['p50_ms']:.3f} ms, p99 "
                         f"{event['p99_ms']:.3f} ms, spread {_pct(event['spread'])} over "
                         f"{event['windows']} windows of {event['runs_per_window']} runs"
                         + ("" if event["stable"] else
                            f" (NOT stable: {event.get('stop_detail') or 'time cap reached'})")
                         + f", peak RSS {event['peak_rss_mb']:.0f} MiB")
            elif kind == "skipped":
                entry.setdefault("skipped_settings", []).append(event)
                task.log(f"{name} {_label(event['dims'])}: skipped: {event['reason']}")
            elif kind == "done":
                entry["peak_rss_mb"] = event["peak_rss_mb"]
                if event.get("sweep"):
                    entry["sweep"] = event["sweep"]
                    task.log(f"{name}: sweep stopped ({event['sweep']['stop']}): "
                             f"{event['sweep']['detail']}")
            elif kind == "failed":
                failed = event
        if failed is not None and failed.get("skip"):
            entry["skipped"] = failed["message"]
            if failed.get("device_refusal"):
                entry["device_refusal"] = True
            task.log(f"{name}: skipped: {failed['message']}")
            return entry
        if failed is not None:
            raise StepFailed(f"{name}: {failed['message']}")
        if runner_error:
            if entry["results"] and sweep:  # killed at a large size: keep the sizes it did
                entry["sweep"] = {"stop": "failed", "detail": runner_error,
                                  "best": max(entry["results"],
                                              key=lambda r: r["items_per_s"] or 0)["batch"]}
                task.log(f"{name}: sweep stopped: {runner_error}")
                return entry
            raise StepFailed(f"{runner_error} (its output is in this step's log)")
        return entry


def _label(dims: Mapping[str, int]) -> str:
    return ", ".join(f"{d}={v}" for d, v in sorted(dims.items())) or "default dims"


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"
