"""``tvm.tune``: search schedules for a model's kernels with MetaSchedule, without ever tuning
the same kernel twice.

Steps (TVM 0.27: Relax + MetaSchedule; Relay, AutoTVM and AutoScheduler are gone):

1. import the model as ``tvm.compile`` does (same frontend, same ``dims``), fuse it with the
   same passes, and extract the tuning tasks (one per fused kernel);
2. look every task up in the shared tuning records under the cache directory
   (:class:`buildgraph.backends.tvm.shared.SharedTuneDB`, keyed per TVM version, target
   identity and workload structural hash; with a team cache, the team's records merged in):
   a task is **not tuned again** when the trials measured for it, by anyone, cover this step's
   per-task budget (``trials_per_task``, else its share of ``trials``) and it has
   ``reuse_min_records`` records. A skip must not freeze quality: a task with fewer trials is
   tuned for the difference, starting from the best records found (they seed the search), and
   the step's budget is reduced by what was already spent on its tasks;
3. tune the rest with MetaSchedule's gradient task scheduler, the local builder (a persistent
   process pool whose build function skips the 15 s tensor-intrinsic import) and the local
   runner, or with ``runner: {tracker, key}`` MetaSchedule's RPC runner, which measures on a
   device registered at a TVM RPC tracker (:mod:`buildgraph.backends.tvm.rpc`: the device's
   fingerprint is keyed and names the scope its records are filed under), with the trial budget (global and per task) and measurement options of the
   parameters, into a MetaSchedule JSON database in this step's own scratch directory (two
   writers must never share one: records point at workloads by line number);
4. after every measured batch, log progress (trials, best latency per task) and publish the
   new records to the shared area, so that Ctrl-C or a kill keeps everything measured so far
   (the next run skips what was finished);
5. write the output ``database``: the records of this model's tasks for this target (tuned now
   or reused), merged deterministically and cut to the ``keep`` fastest per workload, plus
   ``tunedb.json`` saying which tasks were tuned, reused or left untuned.
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple

from pydantic import Field

from buildgraph.backends.tvm import target as tvmtarget
from buildgraph.errors import StepFailed
from buildgraph.engine.environment import package_version
from buildgraph.engine.executor import DescribeContext, Description, Executor, Task
from buildgraph.backends.tvm.compile import TvmParams, file_inputs, find_model
from buildgraph.backends.tvm.rpc import RunnerParams
from buildgraph.backends.tvm.relax import (check_ffi_for_tuning, import_tvm, load_relax, make_target,
                                           prepare, symbolic_dims, tvm_versions)

MANIFEST_SCHEMA = 1


class TvmTuneParams(TvmParams):
    trials: int = Field(64, ge=0, description="trial budget for all tasks together (0: only "
                        "collect records already in the cache)")
    trials_per_task: Optional[int] = Field(None, ge=1, description="cap per task (default: "
                                           "none; the gradient scheduler shares 'trials' "
                                           "among tasks by how much each still improves)")
    trials_per_iter: int = Field(64, ge=1, description="candidates searched, built and "
                                 "measured per batch (capped at a task's budget). A batch's "
                                 "evolutionary search costs about the same for 8 candidates as "
                                 "for 64, so bigger batches measure far more per second")
    number: int = Field(3, ge=1, description="runs averaged into one measurement")
    repeat: int = Field(1, ge=1, description="measurements per candidate")
    min_repeat_ms: int = Field(100, ge=0, description="raise 'number' until one measurement "
                               "takes this long")
    cpu_cache_flush: bool = Field(False, description="flush the CPU cache between runs")
    timeout: float = Field(30.0, gt=0, description="seconds allowed to run one candidate")
    build_timeout: float = Field(60.0, gt=0, description="seconds allowed to build one "
                                 "candidate")
    workers: Optional[int] = Field(None, ge=1, description="builder processes (default: the "
                                   "CPU slots the step holds)")
    cost_model: Literal["xgb", "mlp", "random"] = "xgb"
    strategy: Literal["evolutionary", "replay-trace", "replay-func"] = "evolutionary"
    population: Optional[int] = Field(None, ge=4, description="evolutionary search: "
                                      "candidates sampled and evolved per batch (smaller: "
                                      "faster batches, less explored). Default 512, or twice "
                                      "a batch (at least 32) for a tune whose every batch is "
                                      "picked before the cost model has learned anything "
                                      "(xgb: at most 100 trials; random)")
    seed: int = Field(0, description="seed of the search")
    ops: Optional[List[str]] = Field(None, description="tune only tasks whose name contains "
                                     "one of these (e.g. [conv2d])")
    heaviest: Optional[int] = Field(None, ge=1, description="tune only the N tasks with the "
                                    "most work (FLOPs times calls per inference); the others "
                                    "keep the default schedules (DLight on GPUs)")
    max_s: Optional[float] = Field(None, gt=0, description="wall-clock budget of the search "
                                   "in seconds: tasks are then tuned one at a time, heaviest "
                                   "first, and the search stops when it is spent (within one "
                                   "batch); the records measured so far are the output")
    reuse: bool = Field(True, description="skip tasks whose shared records for this target "
                        "(this cache's and the team's) already cover this step's per-task "
                        "budget; tune the others for the difference, starting from them")
    reuse_min_records: int = Field(1, ge=1, description="records a task needs there to be "
                                   "skipped (besides trials covering its budget)")
    share: bool = Field(True, description="publish this step's records to the shared area")
    keep: int = Field(32, ge=1, description="records kept per workload in the output")
    runner: Optional[RunnerParams] = Field(None, description="measure on a remote device "
                                           "through a TVM RPC tracker: {tracker: host:9190, "
                                           "key: rasp4} (default: on this machine)")


# --------------------------------------------------------------------------------------------
# MetaSchedule plumbing
# --------------------------------------------------------------------------------------------

def fast_build(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's default build minus ``import tvm.s_tir.tensor_intrin`` (about 15 s per
    builder process on 2 cores, 48 s on the H200 host's, which made the default timeouts kill
    builds and a CUDA tune's first batch take a minute). A scheduled module that was
    tensorized already holds the intrinsic's implementation: building it looks nothing up."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


_classes: Dict[str, Any] = {}


def light_tensor_intrin(target: Dict[str, Any]) -> None:
    """Register only the tensor intrinsics the tune's design space can use, before
    MetaSchedule's ``TuneContext`` imports all of them (``tvm.s_tir.tensor_intrin``: 27 s on 2
    cores, 18 s of it CUDA's; 48 s on an H200 host). A CPU target gets its architecture's; a
    CUDA target none, since its tune uses the plain ``cuda`` rules (:func:`_space`). The
    package is entered in ``sys.modules`` with its ``__path__``, so any later
    ``import tvm.s_tir.tensor_intrin.<arch>`` still works. Other GPU targets get the full
    import."""
    import importlib
    import importlib.util
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    kind = target.get("kind")
    if name in sys.modules:
        if getattr(sys.modules[name], "_buildgraph_partial", False) and \
                kind not in ("llvm", "cuda"):
            # an earlier step in this worker registered only some intrinsics
            for sub in ("cuda", "rocm", "metal"):
                try:
                    importlib.import_module(f"{name}.{sub}")
                except Exception:  # noqa: BLE001
                    pass
        return
    if kind not in ("llvm", "cuda"):
        return
    sub: Optional[str] = None
    if kind == "llvm":
        arch = tvmtarget.triple_arch(str(target["mtriple"])) if target.get("mtriple") \
            else tvmtarget.host_arch()
        sub = {"x86_64": "x86", "x86": "x86", "aarch64": "arm_cpu", "arm": "arm_cpu",
               "riscv64": "riscv_cpu"}.get(arch)
        if sub is None:
            return
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    package.__package__ = name
    package.__spec__ = spec
    package._buildgraph_partial = True  # type: ignore[attr-defined]
    sys.modules[name] = package
    import tvm.s_tir

    setattr(tvm.s_tir, "tensor_intrin", package)
    if sub is None:
        return
    try:
        setattr(package, sub, importlib.import_module(f"{name}.{sub}"))
    except Exception:  # noqa: BLE001 - fall back to the full import
        del sys.modules[name]
        delattr(tvm.s_tir, "tensor_intrin")


def _persistent_builder_class() -> Any:
    """A LocalBuilder that keeps its process pool across batches (MetaSchedule's starts a new
    pool, i.e. new Python processes importing TVM, for every batch)."""
    if "builder" in _classes:
        return _classes["builder"]
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PersistentLocalBuilder(PyBuilder):
        def __init__(self, max_workers: int, timeout_sec: float, f_build: Any = None,
                     progress: Any = None) -> None:
            super().__init__()
            self.timeout_sec = timeout_sec
            self.f_build = f_build
            self.progress = progress
            self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_sec,
                                          initializer=_dies_with_this_process())

        def build(self, build_inputs: List[Any]) -> List[Any]:
            if self.progress is not None:
                self.progress.check_budget()  # stops the tuning between two batches
            results = self._build(build_inputs)
            if self.progress is not None:
                self.progress.built(len(results),
                                    sum(1 for r in results if r.error_msg is not None))
            return results

        def _build(self, build_inputs: List[Any]) -> List[Any]:
            results = []
            args = [(self.f_build, None, b.mod, b.target, _serialize_params(b.params))
                    for b in build_inputs]
            for res in self.pool.map_with_error_catching(lambda x: _worker_func(*x), args):
                if res.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(res.value, None))
                elif res.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"LocalBuilder: Timeout, killed after "
                                                       f"{self.timeout_sec} seconds"))
                else:
                    results.append(BuilderResult(None, "LocalBuilder: An exception occurred\n"
                                                       + str(res.value)))
            return results

        def shutdown(self) -> None:
            self.pool.shutdown()

    _classes["builder"] = PersistentLocalBuilder
    return PersistentLocalBuilder


def _progress_callback_class() -> Any:
    if "progress" in _classes:
        return _classes["progress"]
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class ProgressCallback(PyMeasureCallback):
        def __init__(self, on_batch: Any) -> None:
            super().__init__()
            self.on_batch = on_batch

        def apply(self, task_scheduler: Any, task_id: int, measure_candidates: Any,
                  builder_results: Any, runner_results: Any) -> None:
            ok: List[float] = []
            failed = 0
            error = ""
            for b, r in zip(builder_results, runner_results):
                if b.error_msg is not None or r.error_msg is not None or not r.run_secs:
                    failed += 1
                    error = error or str(b.error_msg or r.error_msg or "no run time")
                    continue
                secs = [float(s) for s in r.run_secs]
                ok.append(sum(secs) / len(secs))
            self.on_batch(int(task_id), len(measure_candidates), ok, failed, error)
            self.on_batch.check_budget()  # after the records are saved: nothing is lost

    _classes["progress"] = ProgressCallback
    return ProgressCallback


class BudgetSpent(Exception):
    """Raised inside MetaSchedule's loop (from the builder or a measure callback) when the
    step's ``max_s`` is spent: TVM's task scheduler has no deadline of its own."""

    MARK = "buildgraph: the tuning budget max_s is spent"

    def __init__(self) -> None:
        super().__init__(self.MARK)


class _Progress:
    """Per-task trial counts and best latencies; logs one line per measured batch, a heartbeat
    line whenever 10 s pass without one, publishes the records measured so far to the shared
    area, and enforces the wall-clock budget.

    The heartbeat matters because MetaSchedule's gradient scheduler gives every task one batch
    before it measures any: with 28 CUDA tasks that first round (design spaces, search, nvcc
    for every candidate) printed nothing for minutes on the H200. The builder reports each
    batch it builds, so the heartbeat can say what is going on in that round too."""

    def __init__(self, task: Task, names: List[str], hashes: List[str], budget: List[int],
                 total: int, publish: Any, max_s: Optional[float] = None,
                 interval: float = 10.0):
        import threading

        self.task = task
        self.names = names
        self.hashes = hashes
        self.budget = budget
        self.total = total
        self.trials = [0] * len(names)
        self.best: List[Optional[float]] = [None] * len(names)
        self.failed = [0] * len(names)
        self.publish = publish
        self.start = time.monotonic()
        self.deadline = self.start + max_s if max_s else None
        self.max_s = max_s
        self.interval = interval
        self.publish_errors = 0
        self.model_measurements: Optional[int] = None
        """What the step's one cost model was trained on at the end (xgb: its data_size)."""
        self.errors_logged = 0
        self.ids: List[int] = list(range(len(names)))
        """Task ids of the current ``tune_tasks`` call -> indices in ``names``."""
        self.current: Optional[int] = None
        self.candidates_built = 0
        self.builds_failed = 0
        self.stopped = False
        self.default: Dict[int, float] = {}
        """Seconds of DLight's default schedule per task (GPU targets; by task index)."""
        self.last_line = self.start
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread: Optional[threading.Thread] = None

    # --- the budget --------------------------------------------------------------------------
    def spent(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def check_budget(self) -> None:
        if self.spent():
            self.stopped = True
            raise BudgetSpent()

    # --- what MetaSchedule reports -------------------------------------------------------------
    def built(self, n: int, failed: int) -> None:
        with self.lock:
            self.candidates_built += n
            self.builds_failed += failed

    def __call__(self, task_id: int, n: int, ok: List[float], failed: int,
                 error: str = "") -> None:
        index = self.ids[task_id] if task_id < len(self.ids) else task_id
        with self.lock:
            self._batch(index, n, ok, failed, error)
        try:
            self.publish(self.hashes[index], n)
        except Exception as exc:  # noqa: BLE001 - sharing must not kill a tuning run
            self.publish_errors += 1
            if self.publish_errors == 1:
                self.task.log(f"warning: cannot publish records to the shared area: {exc}")

    def _batch(self, index: int, n: int, ok: List[float], failed: int, error: str) -> None:
        self.trials[index] += n
        self.failed[index] += failed
        if ok:
            b = min(ok)
            self.best[index] = b if self.best[index] is None else min(b, self.best[index])
        done = sum(1 for t, cap in zip(self.trials, self.budget) if t >= cap)
        measured = sum(1 for b in self.best if b is not None)
        self._log(
            f"trials {sum(self.trials)}/{self.total}  task {index + 1}/{len(self.names)} "
            f"{self.names[index]}: {self.trials[index]} trials, best {self._us(index)}"
            + (f" ({failed} of {n} failed)" if failed else "")
            + f"; tasks with a record {measured}/{len(self.names)}"
            + (f", at their cap {done}" if done else ""))
        if error and self.errors_logged < 3:  # the reason, not a wall of identical traces
            self.errors_logged += 1
            lines = [ln for ln in error.strip().splitlines() if ln.strip()]
            self.task.log("  a failed candidate: " + " | ".join(lines[:2] + lines[-3:])[:1500])

    # --- the log -----------------------------------------------------------------------------
    def _us(self, index: int) -> str:
        best = self.best[index]
        return f"{best * 1e6:.3g} us" if best is not None else "-"

    def _log(self, text: str) -> None:
        now = time.monotonic()
        self.last_line = now
        self.task.log(f"[{now - self.start:6.1f} s] {text}")

    def status(self) -> str:
        """One line saying what the tuning is doing now (the heartbeat's)."""
        if self.current is not None:
            i = self.current
            where = (f"task {i + 1}/{len(self.names)} {self.names[i]}: {self.trials[i]}/"
                     f"{self.budget[i]} trials, best {self._us(i)}")
        else:
            where = (f"tasks with a record {sum(1 for b in self.best if b is not None)}/"
                     f"{len(self.names)}")
            if not any(self.trials):
                where += " (first round: every task gets one batch before any is measured)"
        left = ""
        if self.deadline is not None:
            rest = self.deadline - time.monotonic()
            left = (f"; {rest:.0f} s of max_s {self.max_s:g} left" if rest > 0 else
                    f"; max_s {self.max_s:g} spent: stopping after the batch in flight")
        return (f"still tuning: trials measured {sum(self.trials)}/{self.total}, candidates "
                f"built {self.candidates_built}"
                + (f" ({self.builds_failed} failed)" if self.builds_failed else "")
                + f"; {where}{left}")

    def heartbeat(self) -> None:
        while not self.done.wait(min(1.0, self.interval / 4)):
            with self.lock:
                if time.monotonic() - self.last_line >= self.interval:
                    self._log(self.status())

    def reorder(self, order: List[int], wanted: List[int]) -> None:
        """Put the per-task lists (kept in tuning order) in ``wanted``'s order."""
        perm = [order.index(i) for i in wanted]
        for name in ("names", "hashes", "budget", "trials", "best", "failed"):
            values = getattr(self, name)
            setattr(self, name, [values[k] for k in perm])

    def __enter__(self) -> "_Progress":
        """Start the clock (max_s is the search's: setting up pools is not in it) and the
        heartbeat."""
        import threading

        self.start = self.last_line = time.monotonic()
        self.deadline = self.start + self.max_s if self.max_s else None
        self.thread = threading.Thread(target=self.heartbeat, name="buildgraph-tune-progress",
                                       daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join(timeout=5)


def skip_budget(trials: int, per_task: Optional[int], tasks: int) -> int:
    """The trials a task must have had (by anyone) to be skipped: ``trials_per_task``, else
    its share of ``trials``. The default recipe's 64 trials over 19 tasks make 3; a later
    400-trial recipe asks for 21 and tunes every task for the difference."""
    if per_task:
        return min(per_task, trials)
    return trials // tasks if tasks else trials


def remaining_budget(trials: int, per_task: Optional[int], budget: int, spent: List[int],
                     skipped: int) -> Tuple[int, int]:
    """(global trials, cap per task) for the tasks still to tune, whose shared records hold
    ``spent`` trials each: the step's budget less what was already spent on its tasks (each
    counted up to ``budget``) and the shares of the ``skipped`` tasks. With no cap per task
    (MetaSchedule's default) the gradient scheduler shares the rest; with one, each task gets
    at most its difference. At least one trial per task, never more than ``trials``."""
    if (not spent and not skipped) or trials <= 0:
        return trials, (min(per_task, trials) if per_task else trials)
    rest = trials - sum(min(s, budget) for s in spent) - budget * skipped
    if per_task:
        deficits = [max(budget - s, 1) for s in spent] or [1]
        rest = min(rest, sum(deficits))
        total = max(rest, min(trials, len(spent)))
        return total, max(deficits)
    total = max(rest, min(trials, len(spent)))
    return total, total


# --------------------------------------------------------------------------------------------
# the steps of a tuning run
# --------------------------------------------------------------------------------------------

@dataclass
class Tasks:
    """The tuning tasks of a model: MetaSchedule's extracted tasks, their names, workload
    hashes and modules, and the work each stands for (FLOPs times calls per inference)."""

    extracted: List[Any]
    names: List[str]
    hashes: List[str]
    workloads: Dict[str, str]
    work: List[float]


@dataclass
class TaskPlan:
    """What a run does with each task (``status``: reused, tune, not selected), the trials
    already spent on those it tunes, and the budget left for them."""

    status: Dict[int, str]
    spent: Dict[int, int]
    to_tune: List[int]
    reused: List[int]
    trials: int
    per_task: int
    found: Dict[str, Any] = field(default_factory=dict)
    """The shared records of the model's workloads (by hash)."""


def extract_tasks(task: Task, ms: Any, model_path: Path, dims: Dict[str, int], target: Any
                  ) -> Tasks:
    """Import and fuse the model as tvm.compile does, and extract the tasks to tune."""
    start = time.monotonic()
    mod = load_relax(model_path, dims)
    dynamic = symbolic_dims(mod)
    if dynamic:
        raise StepFailed("tuning needs static shapes; the model has dynamic dims "
                         + ", ".join(dynamic) + ": bind them, e.g. dims: {"
                         + f"{dynamic[0]}: 1" + "}, and compile with the same dims")
    fused = prepare(mod, target)
    extracted = [t for t in ms.relax_integration.extract_tasks(fused, target)
                 if not t.mod.attrs.get("tirx.is_scheduled", False)]
    names = [str(t.task_name) for t in extracted]
    workloads: Dict[str, str] = {}
    hashes: List[str] = []
    for t in extracted:
        shash, module = ms.database.Workload(t.dispatched[0]).as_json()
        hashes.append(str(shash))
        workloads[str(shash)] = str(module)
    task.log(f"{len(extracted)} tasks extracted in {time.monotonic() - start:.1f} s: "
             + ", ".join(names))
    return Tasks(extracted, names, hashes, workloads, [_work(t) for t in extracted])


def _work(extracted: Any) -> float:
    """FLOPs of one call of the task's kernel times the calls per inference (0 if unknown)."""
    try:
        from tvm.s_tir.analysis import estimate_tir_flops

        return float(estimate_tir_flops(extracted.dispatched[0])) * float(extracted.weight)
    except Exception:  # noqa: BLE001 - only an order of tuning
        return 0.0


def selected_tasks(p: TvmTuneParams, tasks: Tasks) -> List[int]:
    """The tasks ``ops`` and ``heaviest`` select (all by default)."""
    chosen = [i for i, name in enumerate(tasks.names)
              if not p.ops or any(op in name for op in p.ops)]
    if p.heaviest:
        chosen = sorted(sorted(chosen, key=lambda i: -tasks.work[i])[:p.heaviest])
    return chosen


def plan_tasks(task: Task, p: TvmTuneParams, tasks: Tasks, found: Dict[str, Any]) -> TaskPlan:
    """Reuse what the shared records cover; tune the selected rest for the difference."""
    selected = selected_tasks(p, tasks)
    budget = skip_budget(p.trials, p.trials_per_task, len(selected))
    status: Dict[int, str] = {}
    spent: Dict[int, int] = {}
    for i, (name, shash) in enumerate(zip(tasks.names, tasks.hashes)):
        entry = found.get(shash)
        if entry is not None and entry.valid >= p.reuse_min_records and entry.trials >= budget:
            status[i] = "reused"
            best = entry.best
            task.log(f"  skip {name}: {entry.valid} records in the cache, {entry.trials} "
                     f"trials measured (this step's budget: {budget} per task)"
                     + (f", best {best * 1e6:.3g} us" if best else ""))
        elif i not in selected:
            status[i] = "not selected"
        else:
            status[i] = "tune"
            if entry is not None and entry.valid:
                spent[i] = entry.trials
                task.log(f"  tune {name} for the difference: {entry.trials} of {budget} "
                         f"trials measured, {entry.valid} records to start from")
    to_tune = [i for i in range(len(tasks.names)) if status[i] == "tune"]
    reused = [i for i in range(len(tasks.names)) if status[i] == "reused"]
    if p.heaviest:
        task.log(f"heaviest {p.heaviest}: " + ", ".join(
            f"{tasks.names[i]} ({tasks.work[i] / 1e6:.3g} MFLOP)" for i in selected))
    task.log(f"{len(reused)} of {len(tasks.names)} tasks already tuned for this target, "
             f"{len(to_tune)} to tune")
    trials, per_task = remaining_budget(p.trials, p.trials_per_task, budget,
                                        [spent.get(i, 0) for i in to_tune],
                                        sum(1 for i in reused if i in selected))
    return TaskPlan(status, spent, to_tune, reused, trials, per_task, found)


def warm_start(task: Task, tasks: Tasks, plan: TaskPlan, ms_dir: Path,
               effective: Dict[str, Any]) -> None:
    """The best shared records of the tasks to tune seed the search."""
    from buildgraph.backends.tvm.records import TuneDatabase, merge, write_db

    seed = TuneDatabase()
    for i in plan.to_tune:
        entry = plan.found.get(tasks.hashes[i])
        if entry is not None and entry.records:
            seed.workloads[tasks.hashes[i]] = tasks.workloads[tasks.hashes[i]]
            seed.records.extend((tasks.hashes[i], r) for r in entry.records)
    if seed.records:
        write_db(merge([seed], target=effective, valid_only=True), ms_dir)
        task.log(f"warm start: {len(seed.records)} records of "
                 f"{len(seed.workloads)} tasks seed the search")


class _Search:
    """MetaSchedule's search over the tuning contexts, all at once (its gradient scheduler
    shares the trials) or, with a wall-clock budget, one task at a time; the budget, raised
    inside TVM's loop as :class:`BudgetSpent`, ends it with the records saved so far."""

    def __init__(self, ms: Any, contexts: List[Any], weights: List[Any], trials: int,
                 per_task: int, per_iter: int, cost_model: str, ms_dir: Path, builder: Any,
                 runner: Any, progress: "_Progress"):
        self.ms, self.contexts, self.weights = ms, contexts, weights
        self.trials, self.per_task, self.per_iter = trials, per_task, per_iter
        # one cost model for the whole step, as tune_tasks keeps one for its tasks: tuned one
        # task at a time (max_s), each task would otherwise start from an untrained model,
        # which picks at random for its first 100 measurements (XGB_WARMUP)
        self.cost_model = ms.cost_model.CostModel.create(
            cost_model, num_tuning_cores=max(1, contexts[0].num_threads if contexts else 1),
            tree_method="auto")
        self.ms_dir = ms_dir
        self.builder, self.runner, self.progress = builder, runner, progress
        self.callbacks = list(ms.MeasureCallback.create("default")) + \
            [_progress_callback_class()(progress)]

    def all_tasks(self) -> None:
        self._until_budget(lambda: self._tune(list(range(len(self.contexts))), self.trials))

    def one_task_at_a_time(self) -> None:
        def each() -> None:
            for i in range(len(self.contexts)):
                self.progress.check_budget()
                self.progress.current = i
                self._tune([i], min(self.per_task, self.trials - sum(self.progress.trials)))
                if sum(self.progress.trials) >= self.trials:
                    break

        self._until_budget(each)

    def _until_budget(self, search: Any) -> None:
        try:
            search()
        except Exception as exc:  # noqa: BLE001 - the budget, raised inside TVM's loop
            if BudgetSpent.MARK not in str(exc) and not isinstance(exc, BudgetSpent):
                raise
            self.progress.stopped = True
        self.progress.deadline = None  # what follows the search is not part of it

    def _tune(self, ids: List[int], trials: int) -> None:
        self.progress.ids = ids
        ms = self.ms
        ms.tune_tasks(tasks=[self.contexts[i] for i in ids],
                      task_weights=[self.weights[i] for i in ids], work_dir=str(self.ms_dir),
                      max_trials_global=trials, max_trials_per_task=self.per_task,
                      num_trials_per_iter=self.per_iter, builder=self.builder,
                      runner=self.runner,
                      database=ms.database.JSONDatabase(work_dir=str(self.ms_dir)),
                      cost_model=self.cost_model, measure_callbacks=self.callbacks,
                      task_scheduler="gradient")


def default_schedule_seconds(task: Task, ms: Any, tasks: Tasks, ids: List[int], target: Any,
                             builder: Any, runner: Any) -> Dict[int, float]:
    """Measure DLight's default GPU schedule of each task in ``ids``, the schedule tvm.compile
    gives a function without a record, with the same builder and runner as the candidates.

    A few trials per task do not always beat DLight (its matmul rule already schedules
    convolutions well): a record slower than the default must not replace it, or "tuned" is
    slower than untuned. Failures here only mean no comparison (the records are kept)."""
    from tvm.s_tir import dlight as dl

    out: Dict[int, float] = {}
    if not ids:
        return out
    try:
        inputs, funcs = [], []
        for i in ids:
            with target:
                mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                              dl.gpu.GeneralReduction(), dl.gpu.Fallback())(
                    tasks.extracted[i].dispatched[0])
            inputs.append(ms.builder.BuilderInput(mod, target))
            funcs.append(next(iter(mod.functions.values())))
        built = builder.build(inputs)
        runs, where = [], []
        for i, b, f in zip(ids, built, funcs):
            if b.error_msg is None:
                runs.append(ms.runner.RunnerInput(b.artifact_path, device_type=str(target.kind.name),
                                                  args_info=ms.arg_info.ArgInfo.from_prim_func(f)))
                where.append(i)
        for i, future in zip(where, runner.run(runs)):
            result = future.result()
            if result.error_msg is None and result.run_secs:
                secs = [float(x) for x in result.run_secs]
                out[i] = sum(secs) / len(secs)
    except Exception as exc:  # noqa: BLE001 - a missing comparison keeps the records
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        task.log(f"warning: could not measure the default schedules: {type(exc).__name__}: "
                 f"{(lines[-1] if lines else '')[:300]}")
    return out


def slower_than_default(task: Task, tasks: Tasks, progress: Optional["_Progress"],
                        plan: TaskPlan) -> List[str]:
    """Workload hashes whose best record is slower than DLight's default schedule: their
    records stay out of the output (and the library keeps the default schedule)."""
    if progress is None or not progress.default:
        return []
    slower = []
    for k, i in enumerate(plan.to_tune):
        best, default = progress.best[k], progress.default.get(i)
        if best is None or default is None:
            continue
        verdict = "kept" if best < default else "dropped: the default schedule stays"
        task.log(f"  {tasks.names[i]}: tuned {best * 1e6:.3g} us, default schedule "
                 f"{default * 1e6:.3g} us - {verdict}")
        if best >= default:
            slower.append(tasks.hashes[i])
    return slower


def write_output_db(task: Task, p: TvmTuneParams, tasks: Tasks, ms_dir: Path, shared: Any,
                    version: str, effective: Dict[str, Any], exclude: List[str] = []) -> Any:
    """Publish this run's records and write the output database: this model's tasks, tuned
    now or reused, the ``keep`` fastest per workload."""
    from buildgraph.backends.tvm.records import TuneDatabase, merge, read_db, write_db

    own = read_db(ms_dir) if (ms_dir / "database_workload.json").exists() else TuneDatabase()
    if p.share and own.records:
        shared.publish(version, own, tasks=dict(zip(tasks.hashes, tasks.names)))
    sources = [own]
    if p.reuse:
        sources.append(_shared_subset(shared, version, effective, tasks.hashes))
    sources.append(TuneDatabase(dict(tasks.workloads), []))
    out_db = merge(sources, top_k=p.keep, target=effective, workloads=tasks.hashes,
                   valid_only=True)
    out_db.workloads = {h: out_db.workloads.get(h, tasks.workloads[h]) for h in tasks.hashes}
    out_db.records = [(h, r) for h, r in out_db.records if h not in exclude]
    write_db(out_db, task.outputs["database"])
    return out_db


def task_rows(tasks: Tasks, plan: TaskPlan, out_db: Any, progress: Optional["_Progress"],
              slower: List[str] = []) -> List[Dict[str, Any]]:
    """One row per task for the manifest and the summary."""
    rows = []
    for i, (name, shash) in enumerate(zip(tasks.names, tasks.hashes)):
        best = out_db.best(shash)
        st = plan.status[i]
        if st == "tune":
            st = "tuned" if out_db.valid_count(shash) else "no valid record"
            if shash in slower:
                st = "default faster"
        rows.append({"task": name, "workload": shash, "weight": int(tasks.extracted[i].weight),
                     "status": st, "trials": progress.trials[plan.to_tune.index(i)]
                     if progress is not None and i in plan.to_tune else 0,
                     "records": out_db.valid_count(shash),
                     "best_us": round(best * 1e6, 3) if best else None})
    return rows


def _shared_db(task: Task, p: TvmTuneParams) -> Any:
    from buildgraph.backends.tvm.shared import AREA, SharedTuneDB

    shared = SharedTuneDB(task.areas[AREA], top_k=max(p.keep, 32))
    task.log(f"shared tuning records: {shared.root}")
    return shared


# MetaSchedule's XGBModel scores candidates at random until it holds this many measurements
# (its num_warmup_samples): until then the search picks its batch blindly from the population.
XGB_WARMUP = 100
DEFAULT_POPULATION = 512


def _population(task: Task, p: TvmTuneParams, trials: int, per_iter: int) -> int:
    """The population of each batch's evolutionary search: what was asked, else 512, unless
    every batch of this tune is picked before the cost model can rank anything: xgb's
    predictions are uniform noise for its first 100 measurements (and ``random`` always is),
    so evolving 512 candidates only to pick a few of them at random costs the whole search
    time (about linear in the population: docs/tvm.md) and buys nothing."""
    if p.population is not None:
        return p.population
    if p.strategy == "evolutionary" and (p.cost_model == "random" or
                                         (p.cost_model == "xgb" and trials <= XGB_WARMUP)):
        small = min(DEFAULT_POPULATION, max(32, 2 * per_iter))
        task.log(f"population {small}: all {trials} trials are picked before the cost model "
                 + ("ranks anything (cost_model random)" if p.cost_model == "random" else
                    f"has learned (xgb ranks from {XGB_WARMUP} measurements on)")
                 + f", so a population of {DEFAULT_POPULATION} would buy nothing")
        return small
    return DEFAULT_POPULATION


def _strategy(ms: Any, p: TvmTuneParams, population: int) -> Any:
    if p.strategy == "evolutionary":
        return ms.search_strategy.EvolutionarySearch(
            population_size=population, init_min_unmeasured=min(50, population))
    return p.strategy


def _trials_per_iter(task: Task, wanted: int, trials: int, n_tasks: int,
                     per_task: Optional[int] = None) -> int:
    """Candidates per batch: what was asked, capped at one task's budget, since one
    evolutionary search costs about the same whatever the batch size (one 3x3 conv on 2 cores:
    50 s for 8 candidates and 52 s for 64 on cuda, 15 s for either on llvm;
    ``.probe``-style timings in docs/gpu.md), so a batch should take all a task may measure.
    The gradient scheduler first gives every task one batch: with a budget smaller than that,
    the last tasks would get no trial at all."""
    if per_task and wanted > per_task:
        wanted = per_task
    if trials >= n_tasks * wanted:
        return wanted
    per_iter = max(1, trials // n_tasks)
    task.log(f"trials_per_iter {wanted} -> {per_iter} so that all {n_tasks} tasks get trials "
             f"out of {trials}")
    if trials < n_tasks:
        task.log(f"warning: {trials} trials for {n_tasks} tasks: {n_tasks - trials} tasks "
                 "will get none")
    return per_iter


def _publisher(p: TvmTuneParams, tasks: Tasks, ms_dir: Path, shared: Any, version: str) -> Any:
    """Publishes one task's records after each measured batch (a kill keeps them)."""
    from buildgraph.backends.tvm.records import TuneDatabase, read_db

    def publish(shash: str, n: int) -> None:
        if not p.share:
            return
        db = read_db(ms_dir)
        db = TuneDatabase({shash: tasks.workloads[shash]},
                          [(h, r) for h, r in db.records if h == shash])
        shared.publish(version, db, tasks={shash: tasks.names[tasks.hashes.index(shash)]},
                       trials={shash: n})

    return publish


def _runner(ms: Any, p: TvmTuneParams, device: Optional[Dict[str, Any]]) -> Any:
    evaluator = ms.runner.EvaluatorConfig(
        number=p.number, repeat=p.repeat, min_repeat_ms=p.min_repeat_ms,
        enable_cpu_cache_flush=p.cpu_cache_flush)
    if p.runner is not None:
        return _rpc_runner(ms, p.runner, evaluator, max(1, int((device or {}).get("devices") or 1)))
    return ms.runner.LocalRunner(timeout_sec=p.timeout, initializer=_dies_with_this_process(),
                                 evaluator_config=evaluator)


def _progress_interval() -> float:
    """Seconds between progress lines while nothing else is logged: 10, or
    ``BUILDGRAPH_PROGRESS_S`` (not a parameter: it changes no result, so no key)."""
    try:
        return max(0.2, float(os.environ.get("BUILDGRAPH_PROGRESS_S", "10")))
    except ValueError:
        return 10.0


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM interrupts the search like Ctrl-C (the records so far are kept)."""
    old = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread (thread isolation): no handler
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


# --------------------------------------------------------------------------------------------
# the executor
# --------------------------------------------------------------------------------------------

class TvmTuneExecutor(Executor):
    """MetaSchedule tuning with a shared, target-keyed record store."""

    kind = "tvm.tune"
    version = "2"  # 2: one cost model for the whole step; population by budget
    nondeterministic = ("MetaSchedule keeps the schedules that measured fastest on this CPU: "
                        "timings vary, so the records (and a library compiled from them) "
                        "differ run to run")
    Params = TvmTuneParams
    outputs = {"database": "tunedb"}
    resources = {"cpu": "all"}
    isolation = "worker"

    def describe(self, params: Any, ctx: DescribeContext) -> Description:
        """Model file, TVM and xgboost versions, the target; the shared records area. The
        GPU present matters only for cuda without -arch.

        With a ``runner``, the device's fingerprint (key, CPU, triple, threads) instead of this
        host's CPU: it is asked once, through the tracker, and memoised with the description,
        not asked at every plan (volatile): a plan of a cached build must not need the device
        reachable and free. The run asks again and fails when the device behind the key
        changed (``buildgraph cache gc`` forgets the memoised description)."""
        from buildgraph.backends.tvm.shared import AREA

        raw = params.model_dump(mode="json", by_alias=True)
        env = dict(tvm_versions())
        if params.runner is not None:
            from buildgraph.backends.tvm import rpc

            fp = rpc.describe_device(params.runner)
            effective = rpc.remote_target(params.target, fp)  # a bad target fails here
            env["target"] = json.dumps(raw["target"], sort_keys=True)
            env["rpc_device"] = json.dumps(rpc.scope_fields(fp), sort_keys=True)
            env["rpc_scope"] = str(effective["model"])
        else:
            env.update(tvmtarget.fingerprint(raw["target"]))
        if raw.get("cost_model", "xgb") == "xgb":
            found = [v for v in (package_version(d, "") for d in ("xgboost-cpu", "xgboost")) if v]
            if found:
                env["xgboost"] = found[0]
        target = raw["target"]
        return Description(inputs=file_inputs(params, ctx, self.kind), env=env, areas=(AREA,),
                           volatile=target.get("kind") == "cuda" and "arch" not in target)

    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        try:
            return self._run(task)
        except (StepFailed, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - an error inside TVM: one located line
            from buildgraph.backends.tvm.relax import tvm_failure

            raise tvm_failure(exc, "tvm.tune", task.log) from None

    def _run(self, task: Task) -> Optional[Dict[str, Any]]:
        p = TvmTuneParams(**task.params)
        canonical = dict(p.target)  # canonical already: the params validator made it so
        model_path = find_model(task, p.model)
        check_ffi_for_tuning()
        tvm = import_tvm()
        from tvm.s_tir import meta_schedule as ms

        device, target, effective = self._target(task, p, tvm, canonical)
        version = tvm_versions()["apache-tvm"]
        task.log(f"tvm {tvm.__version__}: tuning {model_path.name} for "
                 f"{tvmtarget.target_text(canonical)} (TVM target {json.dumps(effective)})"
                 + (f"; measuring on device {_rpc().device_text(device)} through tracker "
                    f"{p.runner.tracker}" if device is not None and p.runner else ""))
        tasks = extract_tasks(task, ms, model_path, p.dims, target)
        shared = _shared_db(task, p)
        plan = plan_tasks(task, p, tasks, shared.lookup(version, effective, tasks.hashes)
                          if p.reuse else {})
        ms_dir = Path(task.work_dir) / "ms"
        ms_dir.mkdir(parents=True, exist_ok=True)
        progress: Optional[_Progress] = None
        tune_s = 0.0
        if plan.to_tune and plan.trials > 0:
            warm_start(task, tasks, plan, ms_dir, effective)
            progress, tune_s = self._tune(task, p, ms, tasks, plan, effective, ms_dir,
                                          shared, version, device)
        elif plan.to_tune:
            task.log("trials: 0 - nothing is tuned; the output holds the records found")
        slower = slower_than_default(task, tasks, progress, plan)
        out_db = write_output_db(task, p, tasks, ms_dir, shared, version, effective, slower)
        rows = task_rows(tasks, plan, out_db, progress, slower)
        self._write_manifest(task, p, canonical, effective, model_path, version, rows, device)
        self._summary(task, rows)
        with_records = sum(1 for r in rows if r["records"])
        measured = progress is not None and any(b is not None for b in progress.best)
        if plan.to_tune and p.trials > 0 and not measured \
                and not any(rows[i]["records"] for i in plan.to_tune) \
                and not (progress is not None and progress.stopped):
            raise StepFailed(f"no candidate of the {len(plan.to_tune)} tuned tasks built and ran "
                             "(every measurement failed); see the log for the builder/runner "
                             "errors (timeout: / build_timeout: may be too short)")
        estimate = sum(r["weight"] * r["best_us"] for r in rows if r["best_us"])
        return {"tasks": len(rows), "tuned": sum(1 for r in rows if r["status"] == "tuned"),
                "reused": len(plan.reused), "skipped_tasks": [rows[i]["task"] for i in plan.reused],
                "untuned": len(rows) - with_records,
                "trials": sum(r["trials"] for r in rows), "tune_s": round(tune_s, 2),
                "stopped_by_max_s": bool(progress is not None and progress.stopped),
                "cost_model_measurements": getattr(progress, "model_measurements", None),
                "records": len(out_db.records), "estimated_latency_us": round(estimate, 2),
                "target": canonical, "tvm": version,
                **({"tvm_target": effective} if effective.get("kind") == "cuda" else {}),
                **({"device": _rpc().scope_fields(device), "device_scope": effective["model"]}
                   if device is not None else {})}

    def _target(self, task: Task, p: TvmTuneParams, tvm: Any, canonical: Dict[str, Any]
                ) -> Tuple[Optional[Dict[str, Any]], Any, Dict[str, Any]]:
        """(remote device or None, TVM Target, effective dict) of the measurements: on the
        device behind ``runner:``, else here (CUDA targets completed like tvm.compile's)."""
        if p.runner is not None:
            device = self._device(task, p.runner)
            return (device, *remote_target(tvm, canonical, device))
        if not tvmtarget.is_host_target(canonical) and canonical.get("kind") != "cuda":
            raise StepFailed(f"tuning measures candidates on this machine, and "
                             f"{tvmtarget.target_text(canonical)} does not run here "
                             f"({tvmtarget.runnable_here(canonical)[1]}); measure on the device "
                             "through a TVM RPC tracker (runner: {tracker: host:9190, key: "
                             "...}), or tune on the device itself and import its records with "
                             "`buildgraph tune-db import`")
        from buildgraph.backends.tvm.compile import complete_target

        return (None, *make_target(complete_target(tvm, canonical, task.log)))

    @staticmethod
    def _write_manifest(task: Task, p: TvmTuneParams, canonical: Dict[str, Any],
                        effective: Dict[str, Any], model_path: Path, version: str,
                        rows: List[Dict[str, Any]], device: Optional[Dict[str, Any]]) -> None:
        """``tunedb.json`` beside the records: which tasks were tuned, reused, left alone."""
        manifest = {"schema": MANIFEST_SCHEMA, "tvm": version, "target": canonical,
                    "target_text": tvmtarget.target_text(canonical), "tvm_target": effective,
                    "identity": tvmtarget.target_identity(effective), "model": model_path.name,
                    "dims": p.dims, "tasks": rows}
        if device is not None and p.runner is not None:
            manifest["device"] = _rpc().scope_fields(device)
            manifest["device_scope"] = effective["model"]
            manifest["tracker"] = p.runner.tracker
        (task.outputs["database"] / "tunedb.json").write_text(
            json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")

    @staticmethod
    def _device(task: Task, runner: RunnerParams) -> Dict[str, Any]:
        """Ask the device for its fingerprint again; it must be the one the step was keyed
        for (the description is memoised: the board behind a key may have been replaced)."""
        rpc = _rpc()
        host, port = runner.address()
        try:
            now = rpc.probe(host, port, runner.key, runner.priority, runner.timeout)
        except rpc.DeviceError as exc:
            raise StepFailed(exc.message, hint=exc.hint) from None
        keyed = json.loads(task.env.get("rpc_device") or "{}")
        if rpc.scope_fields(now) != keyed:
            raise StepFailed(f"the device behind key {runner.key} at tracker {runner.tracker} "
                             f"is not the one this step was planned for (planned: "
                             f"{rpc.device_text(keyed)}; now: {rpc.device_text(now)})",
                             hint="`buildgraph cache gc` forgets memoised descriptions; the "
                                  "next plan asks the device again")
        task.log(f"device {rpc.device_text(now)}: {now.get('devices')} registered with key "
                 f"{runner.key} at tracker {runner.tracker}")
        return now

    # ----------------------------------------------------------------------------------------
    def _tune(self, task: Task, p: TvmTuneParams, ms: Any, tasks: "Tasks", plan: "TaskPlan",
              effective: Dict[str, Any], ms_dir: Path, shared: Any, version: str,
              device: Optional[Dict[str, Any]] = None) -> Tuple[_Progress, float]:
        """Measure the planned tasks; returns the progress record and the seconds spent."""
        import logging

        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
        threads = max(1, task.threads)
        light_tensor_intrin(effective)
        to_tune = plan.to_tune
        if p.max_s:  # one task at a time, heaviest first: a cut leaves the heavy ones done
            to_tune = sorted(to_tune, key=lambda i: -tasks.work[i])
        per_iter = _trials_per_iter(task, p.trials_per_iter, plan.trials, len(to_tune),
                                    plan.per_task)
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [tasks.extracted[i] for i in to_tune], str(ms_dir), space=_space(ms, effective),
            strategy=_strategy(ms, p, _population(task, p, plan.trials, per_iter)),
            num_threads=threads, seed=p.seed)
        per_task = plan.per_task
        if p.max_s and not p.trials_per_task:
            per_task = max(per_iter, plan.trials // len(contexts))
        progress = _Progress(task, [tasks.names[i] for i in to_tune],
                             [tasks.hashes[i] for i in to_tune], [per_task] * len(contexts),
                             plan.trials, _publisher(p, tasks, ms_dir, shared, version),
                             max_s=p.max_s, interval=_progress_interval())
        builder = _persistent_builder_class()(max_workers=p.workers or threads,
                                              timeout_sec=p.build_timeout,
                                              f_build=fast_build,
                                              progress=progress)
        runner = _runner(ms, p, device)
        task.log(f"tuning {len(contexts)} tasks: {plan.trials} trials in all, up to {per_task} "
                 f"per task, {per_iter} per batch; measure number={p.number} "
                 f"repeat={p.repeat} min_repeat_ms={p.min_repeat_ms}; {threads} threads"
                 + (f"; one task at a time, heaviest first, for at most {p.max_s:g} s"
                    if p.max_s else ""))
        search = _Search(ms, contexts, weights, plan.trials, per_task, per_iter, p.cost_model,
                         ms_dir, builder, runner, progress)
        start = time.monotonic()
        try:
            with _sigterm_interrupts(), progress:
                search.one_task_at_a_time() if p.max_s else search.all_tasks()
            progress.model_measurements = getattr(search.cost_model, "data_size", None)
            if effective.get("kind") == "cuda" and p.runner is None:
                tuned = [to_tune[k] for k, b in enumerate(progress.best) if b is not None]
                progress.default = default_schedule_seconds(
                    task, ms, tasks, tuned, contexts[0].target, builder, runner)
        except KeyboardInterrupt:
            self._interrupted(task, p, ms_dir, shared, version, tasks)
        finally:
            try:
                builder.shutdown()
            except Exception:  # noqa: BLE001
                pass
        tune_s = time.monotonic() - start
        task.log(f"tuning took {tune_s:.1f} s for {sum(progress.trials)} trials"
                 + (f"; stopped: max_s {p.max_s:g} s spent, the records measured so far are "
                    "the output" if progress.stopped else ""))
        progress.reorder(to_tune, plan.to_tune)
        return progress, tune_s

    @staticmethod
    def _interrupted(task: Task, p: TvmTuneParams, ms_dir: Path, shared: Any, version: str,
                     tasks: "Tasks") -> None:
        from buildgraph.backends.tvm.records import read_db

        task.log("interrupted: keeping the records measured so far")
        if p.share:
            try:
                shared.publish(version, read_db(ms_dir),
                               tasks=dict(zip(tasks.hashes, tasks.names)))
            except Exception:  # noqa: BLE001
                pass
        raise StepFailed("interrupted; the records measured so far are kept in the "
                         "cache's shared tuning records, and the next run skips the "
                         "tasks they cover")

    @staticmethod
    def _summary(task: Task, rows: List[Dict[str, Any]]) -> None:
        task.log(f"{'task':32} {'status':16} {'trials':>6} {'records':>7} {'best us':>10}")
        for r in rows:
            best = f"{r['best_us']:.3g}" if r["best_us"] else "-"
            task.log(f"{r['task'][:32]:32} {r['status']:16} {r['trials']:6} {r['records']:7} "
                     f"{best:>10}")


def _dies_with_this_process() -> Any:
    """An initializer for MetaSchedule's popen workers: they end when this process does. They
    share its process group, so a run that kills this worker's group takes them too; this
    covers this process alone being killed (the OOM killer), when they would go on building."""
    import functools

    from buildgraph.engine.execution.procs import die_with_parent

    return functools.partial(die_with_parent, os.getpid())


def _rpc() -> Any:
    from buildgraph.backends.tvm import rpc

    return rpc


def remote_target(tvm: Any, canonical: Dict[str, Any], device: Dict[str, Any]
                  ) -> Tuple[Any, Dict[str, Any]]:
    """(tvm Target, effective dict) for measuring on ``device``: its cores, its scope."""
    try:
        effective = _rpc().remote_target(canonical, device)
    except tvmtarget.TargetError as exc:
        raise StepFailed(exc.message, hint=exc.hint) from None
    from buildgraph.backends.tvm.relax import tvm_target

    return tvm_target(tvm, effective, effective)


def _rpc_runner(ms: Any, runner: RunnerParams, evaluator: Any, devices: int) -> Any:
    """MetaSchedule's RPC runner: one measuring process per device registered with the key;
    sessions requested with a limit on the wait (its default waits forever)."""
    import functools

    host, port = runner.address()
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=runner.key,
                                 session_priority=runner.priority,
                                 session_timeout_sec=runner.session_timeout)
    return ms.runner.RPCRunner(
        rpc_config=config, evaluator_config=evaluator, max_workers=devices,
        f_create_session=functools.partial(_rpc().create_session, wait=runner.timeout),
        initializer=_dies_with_this_process())


def _space(ms: Any, target: Dict[str, Any]) -> Any:
    """The design space: MetaSchedule's default for the target, except on CUDA, where the
    default (``from-target``) adds the tensor-core rules. Those need every CUDA tensor
    intrinsic registered first (``tvm.s_tir.tensor_intrin.cuda``: 40-48 s of import, measured
    here and on an H200 host) and apply only to fp16/int8 matmuls and convolutions, so a CUDA
    tune uses the plain ``cuda`` rules: multi-level tiling, inlining, cross-thread reduction,
    unrolling, thread binding."""
    if target.get("kind") == "cuda":
        return ms.space_generator.PostOrderApply(sch_rules="cuda", postprocs="cuda",
                                                 mutator_probs="cuda")
    return "post-order-apply"


def _cpu(target: Dict[str, Any]) -> bool:
    return target.get("kind") == "llvm"


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _shared_subset(shared: Any, version: str, target: Dict[str, Any], hashes: List[str]) -> Any:
    from buildgraph.backends.tvm.records import TuneDatabase

    db = TuneDatabase()
    for shash, entry in shared.lookup(version, target, hashes).items():
        db.workloads[shash] = entry.workload
        db.records.extend((shash, r) for r in entry.records)
    return db
