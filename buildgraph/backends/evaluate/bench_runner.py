"""The benchmark's runner: one artifact, timed in a fresh process.

``python -m buildgraph.backends.evaluate.bench_runner JOB.json RESULTS.jsonl``

``benchmark`` starts one runner per artifact (and one for the model's reference: eager PyTorch,
onnxruntime fp32 or TensorFlow), for three reasons:

* **threads are pinned before any library starts its pools.** The parent sets
  ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``TVM_NUM_THREADS`` in the runner's environment, and
  the runtimes apply the intra-op and inter-op counts at load (torch's inter-op count can be
  set once per process, before any parallel work: only a fresh process can promise it). What
  each library then reports is recorded, so a comparison shows the threads it was fair under;
* **the peak memory is the runner's own** (``ru_maxrss`` of a process that loaded one
  artifact), not that of a worker which verified ten models before;
* **one artifact's allocator and thread pools do not slow the next one down.**

Inputs are drawn with numpy from the model's input specs (shapes, dtypes, ranges): timings do
not depend on the values, and an onnxruntime or TVM runner need not import torch.

The runner writes one JSON object per line to RESULTS as it goes (``loaded``, then ``result``
or ``skipped`` per setting, then ``done``; or ``failed``), so that a runner killed at a large
batch (out of memory) still leaves the sizes it finished.

**What a timed run is.** Inputs are staged once per setting (:meth:`Runtime.stage`: on a GPU
they are copied to device memory before timing), then each timed run is
``run_staged`` + ``synchronize``: on a GPU the clock stops only when the device has finished
(a kernel launch returns at once), and neither the host-to-device nor the device-to-host
copy is timed. On ``device: cuda`` the warm-up is at least :data:`GPU_WARMUP` runs (CUDA
contexts, cuDNN/cuBLAS plans and TVM's module load happen on the first runs), and the GPU's
name, clocks, memory, temperature and power are read before and after each setting.

**The cap.** ``max_s`` caps one setting, warm-up included (:func:`measure`). A single run
stuck past it (a 2 s untuned TVM inference, a hang in native code) cannot be stopped from
Python, so a watchdog thread gives each setting ``max_s`` + :func:`watchdog_margin`; when it
fires it writes a ``capped`` event ("stopped at max_s after N runs") and ends the runner
with exit status :data:`CAPPED_EXIT`. The benchmark step records the setting as capped and
the settings not reached as skipped.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Dict, IO, List, Mapping, Optional, Sequence


CLOCK = time.perf_counter
"""The clock the windows are timed with (a test drives the sweep with a fake one)."""

GPU_WARMUP = 10
"""Fewest warm-up runs on a GPU."""

CAPPED_EXIT = 86
"""Exit status of a runner its watchdog stopped at ``max_s``."""


def watchdog_margin(max_s: float) -> float:
    """How long past ``max_s`` a setting may run before the runner is stopped: room for
    the run in flight when the cap passed to end normally."""
    return max(2.0, 0.25 * max_s)


class Watchdog:
    """Ends the runner when one setting outlasts its cap (see the module's doc)."""

    def __init__(self, emit: "Emitter", max_s: float):
        self.emit = emit
        self.max_s = max_s
        self.runs = 0
        self._timer: Any = None

    def start(self, dims: Mapping[str, int]) -> None:
        import threading

        self.cancel()
        self.runs = 0
        self._timer = threading.Timer(self.max_s + watchdog_margin(self.max_s), self._fire,
                                      args=(dict(dims),))
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self, dims: Dict[str, int]) -> None:
        self.emit("capped", dims=dims, runs=self.runs,
                  message=f"stopped at max_s ({self.max_s:g} s) after {self.runs} runs: a "
                          f"run was still going {watchdog_margin(self.max_s):g} s past the cap")
        os._exit(CAPPED_EXIT)


def rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    Linux: ``VmHWM`` from ``/proc/self/status``, the high-water mark of this process image.
    Not ``ru_maxrss``: Linux carries it over ``fork`` and ``execve``, so a runner started by a
    worker that holds torch and ten models would report the worker's peak. Elsewhere
    ``ru_maxrss`` (KiB on Linux, bytes on macOS) is all there is."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return round(peak / scale, 1)


def load_average() -> Optional[float]:
    """The host's 1-minute load average: other processes competing for the cores make every
    timing slower, and a stable one too (a busy machine can be steadily slow)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def make_inputs(spec: Mapping[str, Any], seed: int, sizes: Mapping[str, int]) -> List[Any]:
    """Random inputs shaped and typed by the model's input specs (numpy only)."""
    import numpy as np

    from buildgraph.backends.torch import model as torchmodel

    rng = np.random.default_rng(int(seed))
    arrays = []
    for (name, shape, dtype), (_, tspec) in zip(torchmodel.input_shapes(spec, sizes),
                                                 torchmodel.input_specs(spec)):
        lo, hi = tspec.get("min"), tspec.get("max")
        npdtype = np.dtype("float32" if dtype == "bfloat16" else dtype)
        if dtype == "bool":
            arr = rng.integers(0, 2, shape).astype(bool)
        elif npdtype.kind == "f":
            if lo is not None or hi is not None:
                lo = 0.0 if lo is None else float(lo)
                hi = lo + 1.0 if hi is None else float(hi)
                arr = rng.uniform(lo, hi, shape)
            else:
                arr = rng.standard_normal(shape)
            arr = arr.astype(npdtype)
        else:
            lo = 0 if lo is None else int(lo)
            hi = 9 if hi is None else int(hi)
            arr = rng.integers(lo, hi + 1, shape).astype(npdtype)
        arrays.append(np.ascontiguousarray(arr))
    return arrays


def fixed_dims(spec: Mapping[str, Any], shapes: Sequence[Sequence[Any]]) -> Dict[str, int]:
    """Named dims that the artifact fixed to one size (a TVM library built for batch 1)."""
    from buildgraph.backends.torch import model as torchmodel

    fixed: Dict[str, int] = {}
    for (_, tspec), shape in zip(torchmodel.input_specs(spec), shapes):
        declared = tspec.get("shape") or []
        if len(declared) != len(shape):
            continue
        for dim, actual in zip(declared, shape):
            if isinstance(dim, str) and isinstance(actual, int) and actual > 0:
                fixed[dim] = actual
    return fixed


class Emitter:
    """JSON lines, flushed one by one."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def __call__(self, event: str, **fields: Any) -> None:
        self.stream.write(json.dumps({"event": event, **fields}, sort_keys=True) + "\n")
        self.stream.flush()


def _batch(sizes: Mapping[str, int], inputs: Sequence[Any], dim: str) -> int:
    if dim in sizes:
        return int(sizes[dim])
    shape = getattr(inputs[0], "shape", ()) if inputs else ()
    return int(shape[0]) if len(shape) else 1


def _one_setting(runtime: Any, spec: Mapping[str, Any], seed: int, sizes: Dict[str, int],
                 policy: Any, batch_dim: str, emit: Emitter,
                 watchdog: Optional[Watchdog] = None, gpu: Optional[int] = None
                 ) -> Optional[Dict[str, Any]]:
    from buildgraph.backends.evaluate.measure import measure
    from buildgraph.backends.torch import model as torchmodel

    sizes = torchmodel.dim_sizes(spec, sizes)
    inputs = make_inputs(spec, seed, sizes)
    before = _gpu_facts(gpu)
    staged = runtime.stage(inputs)

    def once() -> None:
        runtime.run_staged(staged)
        runtime.synchronize()
        if watchdog is not None:
            watchdog.runs += 1

    if watchdog is not None:
        watchdog.start(sizes)
    try:
        figures = measure(once, policy, clock=CLOCK)
    finally:
        if watchdog is not None:
            watchdog.cancel()
    batch = _batch(sizes, inputs, batch_dim)
    p50 = figures["p50_ms"]
    result = {"dims": dict(sizes), "batch": batch, "median_ms": p50, **figures,
              "items_per_s": round(batch / (p50 / 1e3), 2) if p50 else None,
              "peak_rss_mb": rss_mb(), "load_1m": load_average()}
    if gpu is not None:
        from buildgraph.backends.evaluate.gpu import peak_memory_mb

        result["gpu"] = {"before": before, "after": _gpu_facts(gpu),
                         "peak_allocated_mb": peak_memory_mb(gpu)}
    emit("result", **result)
    return result


def _gpu_facts(index: Optional[int]) -> Optional[Dict[str, Any]]:
    if index is None:
        return None
    from buildgraph.backends.evaluate.gpu import gpu_facts

    return gpu_facts(index)


def run_job(job: Mapping[str, Any], emit: Emitter) -> None:
    """Load the artifact, then time each setting (or sweep the batch dim)."""
    from buildgraph.backends.evaluate.measure import WindowPolicy
    from buildgraph.engine.runtime import RuntimeContext
    from buildgraph.errors import StepFailed

    import numpy  # noqa: F401 - counted in the baseline, like the runtime's own imports

    spec = job["ctx"]["model_spec"]
    ctx = RuntimeContext(model=job["ctx"]["model"], model_spec=spec,
                         recipe_dir=Path(job["ctx"]["recipe_dir"]), kind=job["ctx"]["kind"],
                         meta=job["ctx"].get("meta") or {}, threads=job["threads"]["intra"],
                         interop_threads=job["threads"]["inter"],
                         device=job["ctx"].get("device", "cpu"),
                         ort_provider=job["ctx"].get("ort_provider", "cuda"),
                         trusted=bool(job["ctx"].get("trusted")))
    policy = WindowPolicy(**job["policy"])
    from buildgraph.engine.runtime import cuda_index, is_cuda

    gpu = cuda_index(ctx.device) if is_cuda(ctx.device) else None
    if gpu is not None:
        from dataclasses import replace

        policy = replace(policy, warmup=max(policy.warmup, GPU_WARMUP))
    watchdog = Watchdog(emit, policy.max_s)
    seed = int(job.get("seed", 0))
    baseline = rss_mb()
    start = time.perf_counter()
    try:
        from buildgraph.backends.evaluate.reference import load_job_runtime

        runtime = load_job_runtime(job, ctx)  # an artifact, or the model's own reference
    except StepFailed as exc:
        emit("failed", message=exc.message, skip=bool(getattr(exc, "skip", False)),
             device_refusal=bool(getattr(exc, "device_refusal", False)))
        return
    emit("loaded", timing=runtime.timing, load_s=round(time.perf_counter() - start, 4),
         precision=runtime.precision,
         threads=runtime.details.get("threads"), rss_before_load_mb=baseline,
         rss_after_load_mb=rss_mb(),
         details={k: v for k, v in runtime.details.items() if k != "threads"})
    fixed = fixed_dims(spec, runtime.input_shapes())
    batch_dim = job.get("batch_dim", "batch")
    settings: List[Dict[str, int]] = [dict(s) for s in job.get("settings") or [{}]]
    sweep = job.get("sweep")
    outcome: Dict[str, Any] = {}
    if sweep:
        outcome["sweep"] = _sweep(runtime, spec, seed, settings[0], sweep, fixed, policy, emit,
                                  watchdog, gpu)
    else:
        for sizes in settings:
            clash = {d: v for d, v in sizes.items() if d in fixed and fixed[d] != v}
            if clash:
                emit("skipped", dims=sizes, reason="built for " + ", ".join(
                    f"{d}={fixed[d]}" for d in sorted(clash)))
                continue
            full = {**{d: v for d, v in fixed.items()}, **sizes}
            try:
                _one_setting(runtime, spec, seed, full, policy, batch_dim, emit, watchdog, gpu)
            except StepFailed as exc:
                emit("failed", message=f"{_label(full)}: {exc.message}", skip=False)
                return
            except Exception as exc:  # noqa: BLE001 - a runtime refusing an input
                emit("failed", message=f"{_label(full)}: {type(exc).__name__}: "
                                       f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}",
                     skip=False)
                return
    runtime.close()
    emit("done", peak_rss_mb=rss_mb(), **outcome)


def _label(sizes: Mapping[str, int]) -> str:
    return ", ".join(f"{d}={v}" for d, v in sorted(sizes.items())) or "default dims"


def _sweep(runtime: Any, spec: Mapping[str, Any], seed: int, base: Dict[str, int],
           sweep: Mapping[str, Any], fixed: Mapping[str, int], policy: Any,
           emit: Emitter, watchdog: Optional[Watchdog] = None, gpu: Optional[int] = None
           ) -> Dict[str, Any]:
    """Grow ``sweep['dim']`` by ``factor`` from ``start`` until throughput stops growing by
    more than ``saturation`` (or ``max``, or a size fails); returns how it ended."""
    dim = sweep["dim"]
    if dim in fixed:
        sizes = {**fixed, **base}
        _one_setting(runtime, spec, seed, sizes, policy, dim, emit, watchdog, gpu)
        return {"stop": "fixed", "detail": f"built for {dim}={fixed[dim]}",
                "best": fixed[dim]}
    size = int(sweep["start"])
    best_rate, best_size = 0.0, size
    tried: List[int] = []
    while size <= int(sweep["max"]):
        sizes = {**fixed, **base, dim: size}
        try:
            result = _one_setting(runtime, spec, seed, sizes, policy, dim, emit, watchdog, gpu)
        except Exception as exc:  # noqa: BLE001 - out of memory, a profile's limit...
            text = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            if not tried:
                raise
            return {"stop": "failed", "detail": f"{dim}={size}: {str(text).splitlines()[0][:200]}",
                    "best": best_size, "sizes": tried}
        tried.append(size)
        rate = float(result["items_per_s"] or 0.0) if result else 0.0
        # only a stable measurement can show that throughput stopped growing: a noisy one
        # is kept, and the sweep goes on
        if tried[1:] and result and result["stable"] and \
                rate < best_rate * (1.0 + float(sweep["saturation"])):
            if rate > best_rate:
                best_rate, best_size = rate, size
            return {"stop": "saturated", "detail": f"{dim}={size} gained less than "
                    f"{float(sweep['saturation']):.0%} over the best so far", "best": best_size,
                    "sizes": tried}
        if rate > best_rate:
            best_rate, best_size = rate, size
        size = size * int(sweep["factor"])
    return {"stop": "max", "detail": f"reached {dim} max {sweep['max']}", "best": best_size,
            "sizes": tried}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from buildgraph.engine.execution import procs

    procs.die_with_parent()  # the benchmark step's process: never outlive it
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    with open(argv[1], "a", encoding="utf-8") as fh:
        emit = Emitter(fh)
        try:
            run_job(job, emit)
        except Exception as exc:  # noqa: BLE001 - one line for the step, traceback in its log
            import traceback

            traceback.print_exc()
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            emit("failed", message=str(message).strip().splitlines()[0][:300], skip=False)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
