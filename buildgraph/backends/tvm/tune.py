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
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

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
    trials_per_iter: int = Field(8, ge=1, description="candidates measured per batch; the "
                                 "scheduler gives every task one batch first, so keep it small")
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
    population: int = Field(512, ge=4, description="evolutionary search: candidates "
                            "sampled and evolved per batch (smaller: faster batches, less "
                            "explored)")
    seed: int = Field(0, description="seed of the search")
    ops: Optional[List[str]] = Field(None, description="tune only tasks whose name contains "
                                     "one of these (e.g. [conv2d])")
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
    builder process on 2 cores, which made the 30 s default timeout kill builds). fp32 CPU
    schedules use no tensor intrinsics; targets that need them use the default build."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


_classes: Dict[str, Any] = {}


def light_tensor_intrin(target: Dict[str, Any]) -> None:
    """Register only the tensor intrinsics a CPU target can use, before MetaSchedule's
    ``TuneContext`` imports all of them (``tvm.s_tir.tensor_intrin``: 27 s on 2 cores, 18 s
    of it CUDA's). The package is entered in ``sys.modules`` with its ``__path__``, so any
    later ``import tvm.s_tir.tensor_intrin.<arch>`` still works. GPU targets get the full
    import."""
    import importlib
    import importlib.util
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        if getattr(sys.modules[name], "_buildgraph_partial", False) and \
                target.get("kind") != "llvm":
            # an earlier CPU step in this worker registered only its CPU's intrinsics
            for sub in ("cuda", "rocm", "metal"):
                try:
                    importlib.import_module(f"{name}.{sub}")
                except Exception:  # noqa: BLE001
                    pass
        return
    if target.get("kind") != "llvm":
        return
    arch = tvmtarget.triple_arch(str(target["mtriple"])) if target.get("mtriple") \
        else tvmtarget.host_arch()
    sub = {"x86_64": "x86", "x86": "x86", "aarch64": "arm_cpu", "arm": "arm_cpu",
           "riscv64": "riscv_cpu"}.get(arch)
    spec = importlib.util.find_spec(name)
    if sub is None or spec is None or not spec.submodule_search_locations:
        return
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    package.__package__ = name
    package.__spec__ = spec
    package._buildgraph_partial = True  # type: ignore[attr-defined]
    sys.modules[name] = package
    import tvm.s_tir

    setattr(tvm.s_tir, "tensor_intrin", package)
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
        def __init__(self, max_workers: int, timeout_sec: float, f_build: Any = None) -> None:
            super().__init__()
            self.timeout_sec = timeout_sec
            self.f_build = f_build
            self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_sec,
                                          initializer=_dies_with_this_process())

        def build(self, build_inputs: List[Any]) -> List[Any]:
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

    _classes["progress"] = ProgressCallback
    return ProgressCallback


class _Progress:
    """Per-task trial counts and best latencies; logs one line per batch and publishes the
    records measured so far to the shared area."""

    def __init__(self, task: Task, names: List[str], hashes: List[str], budget: List[int],
                 total: int, publish: Any):
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
        self.publish_errors = 0
        self.errors_logged = 0

    def __call__(self, task_id: int, n: int, ok: List[float], failed: int,
                 error: str = "") -> None:
        self.trials[task_id] += n
        self.failed[task_id] += failed
        if ok:
            b = min(ok)
            self.best[task_id] = b if self.best[task_id] is None else min(b, self.best[task_id])
        done = sum(1 for t, cap in zip(self.trials, self.budget) if t >= cap)
        measured = sum(1 for b in self.best if b is not None)
        best = self.best[task_id]
        self.task.log(
            f"[{time.monotonic() - self.start:6.1f} s] trials {sum(self.trials)}/{self.total}"
            f"  task {task_id + 1}/{len(self.names)} {self.names[task_id]}: "
            f"{self.trials[task_id]} trials, best "
            + (f"{best * 1e6:.3g} us" if best is not None else "-")
            + (f" ({failed} of {n} failed)" if failed else "")
            + f"; tasks with a record {measured}/{len(self.names)}"
            + (f", at their cap {done}" if done else ""))
        if error and self.errors_logged < 3:  # the reason, not a wall of identical traces
            self.errors_logged += 1
            lines = [ln for ln in error.strip().splitlines() if ln.strip()]
            self.task.log("  a failed candidate: " + " | ".join(lines[:2] + lines[-3:])[:1500])
        try:
            self.publish(self.hashes[task_id], n)
        except Exception as exc:  # noqa: BLE001 - sharing must not kill a tuning run
            self.publish_errors += 1
            if self.publish_errors == 1:
                self.task.log(f"warning: cannot publish records to the shared area: {exc}")


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
# the executor
# --------------------------------------------------------------------------------------------

class TvmTuneExecutor(Executor):
    """MetaSchedule tuning with a shared, target-keyed record store."""

    kind = "tvm.tune"
    version = "1"
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
        from buildgraph.backends.tvm.records import TuneDatabase, merge, read_db, write_db
        from buildgraph.backends.tvm.shared import AREA, SharedTuneDB

        p = TvmTuneParams(**task.params)
        canonical = tvmtarget.canonical_target(p.target)
        model_path = find_model(task, p.model)
        check_ffi_for_tuning()
        tvm = import_tvm()
        from tvm.s_tir import meta_schedule as ms

        device: Optional[Dict[str, Any]] = None
        if p.runner is not None:
            device = self._device(task, p.runner)
            target, effective = remote_target(tvm, canonical, device)
        elif not tvmtarget.is_host_target(canonical) and canonical.get("kind") != "cuda":
            raise StepFailed(f"tuning measures candidates on this machine, and "
                             f"{tvmtarget.target_text(canonical)} does not run here "
                             f"({tvmtarget.runnable_here(canonical)[1]}); measure on the device "
                             "through a TVM RPC tracker (runner: {tracker: host:9190, key: "
                             "...}), or tune on the device itself and import its records with "
                             "`buildgraph tune-db import`")
        else:
            target, effective = make_target(canonical)
        version = tvm_versions()["apache-tvm"]
        start = time.monotonic()
        task.log(f"tvm {tvm.__version__}: tuning {model_path.name} for "
                 f"{tvmtarget.target_text(canonical)} (TVM target {json.dumps(effective)})"
                 + (f"; measuring on device {_rpc().device_text(device)} through tracker "
                    f"{p.runner.tracker}" if device is not None and p.runner else ""))
        mod = load_relax(model_path, p.dims)
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

        shared = SharedTuneDB(task.areas[AREA], top_k=max(p.keep, 32))
        found = shared.lookup(version, effective, hashes) if p.reuse else {}
        selected = [i for i, name in enumerate(names)
                    if not p.ops or any(op in name for op in p.ops)]
        budget = skip_budget(p.trials, p.trials_per_task, len(selected))
        status: Dict[int, str] = {}
        spent: Dict[int, int] = {}
        for i, (name, shash) in enumerate(zip(names, hashes)):
            entry = found.get(shash)
            if entry is not None and entry.valid >= p.reuse_min_records \
                    and entry.trials >= budget:
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
        to_tune = [i for i in range(len(extracted)) if status[i] == "tune"]
        reused = [i for i in range(len(extracted)) if status[i] == "reused"]
        task.log(f"shared tuning records: {shared.root}; {len(reused)} of "
                 f"{len(extracted)} tasks already tuned for this target, {len(to_tune)} to tune")
        trials, per_task = remaining_budget(p.trials, p.trials_per_task, budget,
                                            [spent.get(i, 0) for i in to_tune],
                                            sum(1 for i in reused if i in selected))

        ms_dir = Path(task.work_dir) / "ms"
        ms_dir.mkdir(parents=True, exist_ok=True)
        progress: Optional[_Progress] = None
        tune_s = 0.0
        if to_tune and trials > 0:
            seed = TuneDatabase()
            for i in to_tune:
                entry = found.get(hashes[i])
                if entry is not None and entry.records:
                    seed.workloads[hashes[i]] = workloads[hashes[i]]
                    seed.records.extend((hashes[i], r) for r in entry.records)
            if seed.records:  # warm start: the best records known seed the search
                write_db(merge([seed], target=effective, valid_only=True), ms_dir)
                task.log(f"warm start: {len(seed.records)} records of "
                         f"{len(seed.workloads)} tasks seed the search")
            progress, tune_s = self._tune(task, p, ms, extracted, to_tune, names,
                                          hashes, workloads, effective, ms_dir,
                                          shared, version, trials, per_task, device)
        elif to_tune:
            task.log("trials: 0 - nothing is tuned; the output holds the records found")

        own = read_db(ms_dir) if (ms_dir / "database_workload.json").exists() else TuneDatabase()
        if p.share and own.records:
            shared.publish(version, own, tasks=dict(zip(hashes, names)))
        sources = [own]
        if p.reuse:
            sources.append(_shared_subset(shared, version, effective, hashes))
        sources.append(TuneDatabase(dict(workloads), []))
        out_db = merge(sources, top_k=p.keep, target=effective, workloads=hashes,
                       valid_only=True)
        out_db.workloads = {h: out_db.workloads.get(h, workloads[h]) for h in hashes}
        out_dir = task.outputs["database"]
        write_db(out_db, out_dir)

        rows = []
        for i, (name, shash) in enumerate(zip(names, hashes)):
            best = out_db.best(shash)
            st = status[i]
            if st == "tune":
                st = "tuned" if out_db.valid_count(shash) else "no valid record"
            rows.append({"task": name, "workload": shash, "weight": int(extracted[i].weight),
                         "status": st, "trials": progress.trials[to_tune.index(i)]
                         if progress is not None and i in to_tune else 0,
                         "records": out_db.valid_count(shash),
                         "best_us": round(best * 1e6, 3) if best else None})
        estimate = sum(r["weight"] * r["best_us"] for r in rows if r["best_us"])
        manifest = {"schema": MANIFEST_SCHEMA, "tvm": version, "target": canonical,
                    "target_text": tvmtarget.target_text(canonical), "tvm_target": effective,
                    "identity": tvmtarget.target_identity(effective), "model": model_path.name,
                    "dims": p.dims, "tasks": rows}
        if device is not None and p.runner is not None:
            manifest["device"] = _rpc().scope_fields(device)
            manifest["device_scope"] = effective["model"]
            manifest["tracker"] = p.runner.tracker
        (out_dir / "tunedb.json").write_text(json.dumps(manifest, indent=1, sort_keys=True)
                                             + "\n", encoding="utf-8")
        self._summary(task, rows)
        with_records = sum(1 for r in rows if r["records"])
        if to_tune and p.trials > 0 and not any(rows[i]["records"] for i in to_tune):
            raise StepFailed(f"no candidate of the {len(to_tune)} tuned tasks built and ran "
                             "(every measurement failed); see the log for the builder/runner "
                             "errors (timeout: / build_timeout: may be too short)")
        return {"tasks": len(rows), "tuned": sum(1 for r in rows if r["status"] == "tuned"),
                "reused": len(reused), "skipped_tasks": [rows[i]["task"] for i in reused],
                "untuned": len(rows) - with_records,
                "trials": sum(r["trials"] for r in rows), "tune_s": round(tune_s, 2),
                "records": len(out_db.records), "estimated_latency_us": round(estimate, 2),
                "target": canonical, "tvm": version,
                **({"device": _rpc().scope_fields(device), "device_scope": effective["model"]}
                   if device is not None else {})}

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
    def _tune(self, task: Task, p: TvmTuneParams, ms: Any, extracted: List[Any],
              to_tune: List[int], names: List[str], hashes: List[str],
              workloads: Dict[str, str], effective: Dict[str, Any], ms_dir: Path,
              shared: Any, version: str, trials: int, per_task: int,
              device: Optional[Dict[str, Any]] = None) -> Tuple[_Progress, float]:
        import logging

        from buildgraph.backends.tvm.records import TuneDatabase, read_db

        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
        threads = max(1, task.threads)
        light_tensor_intrin(effective)
        if p.strategy == "evolutionary":
            strategy: Any = ms.search_strategy.EvolutionarySearch(
                population_size=p.population, init_min_unmeasured=min(50, p.population))
        else:
            strategy = p.strategy
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [extracted[i] for i in to_tune], str(ms_dir), space="post-order-apply",
            strategy=strategy, num_threads=threads, seed=p.seed)
        per_iter = p.trials_per_iter
        if trials < len(contexts) * per_iter:
            # the gradient scheduler first gives every task one batch: with a budget smaller
            # than that, the last tasks would get no trial at all
            per_iter = max(1, trials // len(contexts))
            task.log(f"trials_per_iter {p.trials_per_iter} -> {per_iter} so that all "
                     f"{len(contexts)} tasks get trials out of {trials}")
            if trials < len(contexts):
                task.log(f"warning: {trials} trials for {len(contexts)} tasks: "
                         f"{len(contexts) - trials} tasks will get none")
        budget = [per_task] * len(contexts)
        tuned_names = [names[i] for i in to_tune]
        tuned_hashes = [hashes[i] for i in to_tune]

        def publish(shash: str, n: int) -> None:
            if not p.share:
                return
            db = read_db(ms_dir)
            db = TuneDatabase({shash: workloads[shash]},
                              [(h, r) for h, r in db.records if h == shash])
            shared.publish(version, db, tasks={shash: names[hashes.index(shash)]},
                           trials={shash: n})

        progress = _Progress(task, tuned_names, tuned_hashes, budget, trials, publish)
        builder = _persistent_builder_class()(max_workers=p.workers or threads,
                                              timeout_sec=p.build_timeout,
                                              f_build=fast_build if _cpu(effective) else None)
        evaluator = ms.runner.EvaluatorConfig(
            number=p.number, repeat=p.repeat, min_repeat_ms=p.min_repeat_ms,
            enable_cpu_cache_flush=p.cpu_cache_flush)
        if p.runner is not None:
            runner: Any = _rpc_runner(ms, p.runner, evaluator,
                                      max(1, int((device or {}).get("devices") or 1)))
        else:
            runner = ms.runner.LocalRunner(timeout_sec=p.timeout,
                                           initializer=_dies_with_this_process(),
                                           evaluator_config=evaluator)
        callbacks = list(ms.MeasureCallback.create("default")) + \
            [_progress_callback_class()(progress)]
        task.log(f"tuning {len(contexts)} tasks: {trials} trials in all, up to {per_task} "
                 f"per task, {per_iter} per batch; measure number={p.number} "
                 f"repeat={p.repeat} min_repeat_ms={p.min_repeat_ms}; {threads} threads")
        interrupted = False
        start = time.monotonic()
        old = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, _raise_interrupt)
        except ValueError:  # not the main thread (thread isolation): no handler
            old = None
        try:
            ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(ms_dir),
                          max_trials_global=trials, max_trials_per_task=per_task,
                          num_trials_per_iter=per_iter, builder=builder,
                          runner=runner,
                          database=ms.database.JSONDatabase(work_dir=str(ms_dir)),
                          cost_model=p.cost_model, measure_callbacks=callbacks,
                          task_scheduler="gradient")
        except KeyboardInterrupt:
            interrupted = True
            task.log("interrupted: keeping the records measured so far")
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
            try:
                builder.shutdown()
            except Exception:  # noqa: BLE001
                pass
        tune_s = time.monotonic() - start
        task.log(f"tuning took {tune_s:.1f} s for {sum(progress.trials)} trials")
        if interrupted:
            if p.share:
                try:
                    own = read_db(ms_dir)
                    shared.publish(version, own, tasks=dict(zip(hashes, names)))
                except Exception:  # noqa: BLE001
                    pass
            raise StepFailed("interrupted; the records measured so far are kept in the "
                             "cache's shared tuning records, and the next run skips the "
                             "tasks they cover")
        return progress, tune_s

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
