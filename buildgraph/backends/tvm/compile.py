"""``tvm.compile`` (a.k.a. lower): import a model into TVM Relax, apply tuning records, compile,
and export a library that the TVM runtime alone loads.

The model comes from an upstream step (an ``.onnx`` file through
``tvm.relax.frontend.onnx.from_onnx``, or a torch.export ``.pt2`` through
``tvm.relax.frontend.torch.from_exported_program``), or from ``model:``. A ``tvm.tune``
upstream (or ``database:``) supplies MetaSchedule records. The pipeline is MetaSchedule's own
``compile_relax`` order, made explicit so that it can be checked:

1. dispatch, legalize, fold constants, fuse (the same passes ``tvm.tune`` extracts tasks
   after, run once on the raw imported module: fusing twice renames functions, and records
   then match nothing);
2. ``MetaScheduleApplyDatabase`` with only the records of this target (TVM's own query
   ignores the target); every function it schedules is counted, and a tuned build that
   applied no record fails instead of silently shipping naive loops. Records a ``tvm.tune``
   step measured on a remote device (``runner:``) are filed under that device's scope (the
   target's ``model``, see :mod:`buildgraph.backends.tvm.rpc`): a build for the same target
   string takes the tuned target, scope included, from the database's ``tunedb.json``, so it
   picks those records and only those; any other target matches none of them;
3. DLight default schedules for what is left (GPU targets only);
4. lowering, ``relax.build``, ``export_library``.

Output ``model`` is a directory: ``model.so`` (weights are baked in as constants; a
cross-compiled target without a cross compiler gives ``model.tar``, object files to link on the
device) and ``model.json`` (target, inputs, outputs, records applied, whether it runs here).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Literal, Optional, Tuple, Union

from pydantic import Field, field_validator

from buildgraph.backends.tvm import target as tvmtarget
from buildgraph.errors import StepFailed
from buildgraph.backends.onnx.source import describe_onnx_input, onnx_input
from buildgraph.engine.executor import DescribeContext, Description, Executor, Task, find_artifact
from buildgraph.engine.params import StrictParams
from buildgraph.backends.tvm.relax import (build, exporter, filtered_database, import_tvm,
                                           io_signature, load_relax, make_target, symbolic_dims,
                                           target_is_volatile, tvm_versions)

MODEL_SUFFIXES = (".onnx", ".pt2")
MANIFEST = "model.json"
MANIFEST_SCHEMA = 1


# --------------------------------------------------------------------------------------------
# parameters shared by tvm.compile and tvm.tune
# --------------------------------------------------------------------------------------------

class TvmParams(StrictParams):
    target: Union[str, Dict[str, Any]] = Field(
        "native", validate_default=True, description="'native', 'llvm -mcpu=skylake', 'llvm -mtriple=aarch64-linux-gnu',"
        " 'cuda -arch=sm_90', or TVM's JSON form {kind: llvm, mcpu: ...}; kept normalised")
    model: Optional[str] = Field(None, description="an ONNX model of the recipe's 'models:', "
                                 "or an .onnx or .pt2 file (default: the upstream step's "
                                 "'model' output)")
    dims: Dict[str, int] = Field(default_factory=dict, description="bind dynamic dims to "
                                 "sizes, e.g. {batch: 1}; 'batch' also names the leading "
                                 "dynamic dim of every input whatever its name")

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, value: Any) -> Dict[str, Any]:
        try:
            return tvmtarget.canonical_target(value)
        except tvmtarget.TargetError as exc:
            raise ValueError(exc.message + (f" ({exc.hint})" if exc.hint else "")) from None

    @field_validator("dims")
    @classmethod
    def _dims(cls, value: Dict[str, int]) -> Dict[str, int]:
        for name, size in value.items():
            if size < 1:
                raise ValueError(f"dim {name} must be at least 1; got {size}")
        return dict(sorted(value.items()))


class TvmCompileParams(TvmParams):
    database: Optional[str] = Field(None, description="a MetaSchedule JSON database directory "
                                    "(default: the output of an upstream tvm.tune step)")
    require_records: Literal["any", "all", "off"] = Field(
        "any", description="with a database: fail unless it applies to at least one function "
        "(any), to every tunable function (all), or never (off)")
    cc: Optional[str] = Field(None, description="C compiler/linker for export_library "
                              "(default: the system's for this host; <triple>-gcc when "
                              "cross-compiling)")
    export: Literal["auto", "so", "tar"] = Field(
        "auto", description="auto: a shared library, or object files in a .tar when "
        "cross-compiling without a cross compiler")


# --------------------------------------------------------------------------------------------
# where the model and the records come from
# --------------------------------------------------------------------------------------------

def find_model(task: Task, explicit: Optional[str]) -> Path:
    """The model file: ``model:`` (a recipe model or a file) or the one upstream output that
    is an .onnx/.pt2 file."""
    if explicit and f"model:{explicit}:file" in task.inputs:
        return onnx_input(task, task.kind, explicit)
    if explicit:
        path = Path(explicit)
        if not path.is_absolute():
            path = task.recipe_dir / path
        if not path.is_file():
            raise StepFailed(f"model file {explicit} does not exist")
        return path
    return find_artifact(task, task.kind, MODEL_SUFFIXES, skip_kinds=("tvm.tune",))



def find_database(task: Task, explicit: Optional[str]) -> Optional[Path]:
    from buildgraph.backends.tvm.records import WORKLOAD_FILE

    if explicit:
        path = Path(explicit)
        if not path.is_absolute():
            path = task.recipe_dir / path
        if not (path / WORKLOAD_FILE).is_file():
            raise StepFailed(f"database {explicit} is not a MetaSchedule JSON database "
                             f"(no {WORKLOAD_FILE} in it)")
        return path
    found = []
    for up, outs in task.upstream.items():
        for name, path in outs.items():
            if path.is_dir() and (path / WORKLOAD_FILE).is_file():
                found.append((up, path))
    if len(found) > 1:
        raise StepFailed("several upstream tuning databases (" + ", ".join(u for u, _ in found)
                         + "); merge them with one tvm.tune step or name one with database:")
    return found[0][1] if found else None



def device_of_database(db_dir: Path, canonical: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """When ``db_dir`` was tuned on a remote device for this same target: its ``tunedb.json``
    (``device``: the fingerprint, ``tvm_target``: the target measured, device scope included);
    else None (a local database, or one tuned for another target)."""
    from buildgraph.backends.tvm.records import MANIFEST_FILE

    try:
        manifest = json.loads((db_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("device"), dict) or \
            not isinstance(manifest.get("tvm_target"), dict):
        return None
    try:
        tuned_for = tvmtarget.canonical_target(manifest.get("target") or {})
    except tvmtarget.TargetError:
        return None
    return manifest if tuned_for == dict(canonical) else None


def file_inputs(params: Any, ctx: Any, kind: str = "tvm.compile") -> Dict[str, Path]:
    """``model:`` and ``database:`` given as paths are inputs of the step (their content is in
    the key); ``${in.STEP.OUTPUT}`` references are upstream outputs, keyed already."""
    out: Dict[str, Path] = {}
    for name in ("model", "database"):
        value = getattr(params, name, None)
        if not value or "${" in value:
            continue
        if name == "model" and value in ctx.models:
            files, _ = describe_onnx_input(value, ctx.models, ctx.recipe_dir, kind)
            out.update(files)
            continue
        path = Path(value)
        if not path.is_absolute():
            path = ctx.recipe_dir / path
        if not path.exists():
            from buildgraph.errors import RecipeError, did_you_mean

            if name == "model":
                raise RecipeError(f"model: '{value}' is neither a model of the recipe nor a "
                                  f"file{did_you_mean(value, list(ctx.models))}",
                                  hint="paths are relative to the recipe's directory; models: "
                                       + (", ".join(sorted(ctx.models)) or "none"))
            raise RecipeError(f"{name}: '{value}' does not exist (paths are relative to the "
                              "recipe's directory)")
        out[name] = path
        data = path.with_name(path.name + ".data")
        if name == "model" and data.is_file():
            out["model_data"] = data  # ONNX external weights
    return out





# --------------------------------------------------------------------------------------------
# the executor
# --------------------------------------------------------------------------------------------

class TvmCompileExecutor(Executor):
    """Compile an ONNX or torch.export model with TVM Relax into a library."""

    kind = "tvm.compile"
    version = "3"  # 3: bound dims imported as static shapes (frontends.py)
    Params = TvmCompileParams
    outputs = {"model": "model"}
    isolation = "worker"

    def describe(self, params: Any, ctx: DescribeContext) -> Description:
        """Model and database files given as paths; TVM's version and the target. The host
        CPU is part of every memoised description; the GPU present (cuda without -arch) and a
        cross compiler appearing on PATH are not, so those targets are volatile."""
        raw = params.model_dump(mode="json", by_alias=True)
        return Description(inputs=file_inputs(params, ctx, self.kind),
                           env=self._environment(raw),
                           volatile=target_is_volatile(raw["target"]),
                           watch=self._watch(raw))

    @staticmethod
    def _watch(params: Dict[str, Any]) -> Tuple[str, ...]:
        """What a cross target's description read: the compiler is looked up on PATH, so
        PATH and its folders (one gains a file when a compiler is installed). A CUDA target
        without ``arch`` reads the GPU present, which no file names: nothing."""
        target = params["target"]
        if target.get("kind") == "cuda" or tvmtarget.is_host_target(target):
            return ()
        folders = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
        cc = params.get("cc")
        return ("$PATH", *folders, *([cc] if cc and os.path.isabs(str(cc)) else []))

    @staticmethod
    def _environment(params: Dict[str, Any]) -> Dict[str, str]:
        fp = dict(tvm_versions())
        target = params["target"]
        fp.update(tvmtarget.fingerprint(target))
        if not tvmtarget.is_host_target(target) and target.get("kind") == "llvm" and \
                params.get("export", "auto") == "auto":
            # a .so when a cross compiler is on PATH, object files in a .tar otherwise
            triple = str(target.get("mtriple", ""))
            cc = params.get("cc") or next((c for c in (f"{triple}-gcc", f"{triple}-g++")
                                           if shutil.which(c)), None)
            fp["cross_cc"] = cc if cc and shutil.which(cc) else "none (exports a .tar)"
        return fp

    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        try:
            return self._run(task)
        except (StepFailed, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - an error inside TVM: one located line
            from buildgraph.backends.tvm.relax import tvm_failure

            raise tvm_failure(exc, "tvm.compile", task.log) from None

    def _run(self, task: Task) -> Optional[Dict[str, Any]]:
        p = task.params
        canonical = dict(p["target"])  # canonical already: the params validator made it so
        model_path = find_model(task, p.get("model"))
        db_dir = find_database(task, p.get("database"))
        tvm = import_tvm()
        device = device_of_database(db_dir, canonical) if db_dir is not None else None
        target, effective = compile_target(tvm, canonical, device, task.log)
        task.log(f"tvm {tvm.__version__}: compiling {model_path.name} for "
                 f"{tvmtarget.target_text(canonical)} (TVM target {json.dumps(effective)})"
                 + (f"; for device {device['device'].get('key')}, whose records the database "
                    f"holds (scope {effective.get('model')})" if device is not None else ""))
        start = time.monotonic()
        mod, signature, dynamic = import_model(task, model_path, p.get("dims") or {})
        database, db_counts = (None, {})
        if db_dir is not None:
            database, db_counts = filtered_database(db_dir, effective, task.work_dir)
            task.log(f"tuning database: {db_counts['records_for_target']} of "
                     f"{db_counts['records']} records are for this target")
        import_s = time.monotonic() - start
        executable, stats = build(mod, target, database)
        compile_s = time.monotonic() - start - import_s
        log_records_applied(task, stats)
        if database is not None:
            check_records_applied(stats, db_counts, p.get("require_records", "any"))
        out = task.outputs["model"]
        filename, note = export(executable, canonical, out, p.get("cc"), p.get("export", "auto"))
        export_s = time.monotonic() - start - import_s - compile_s
        manifest = write_manifest(out, filename, note, canonical, effective, signature, dynamic,
                                  database is not None, stats, device)
        size = (out / filename).stat().st_size
        why = manifest["not_runnable_reason"]
        task.log(f"wrote {filename} ({size} bytes) in {export_s:.1f} s; import "
                 f"{import_s:.1f} s, compile {compile_s:.1f} s"
                 + (f"; {why}" if why else "") + (f"; {note}" if note else ""))
        meta = {k: manifest[k] for k in ("target_text", "tvm", "tuned", "functions",
                                          "with_record", "without_record", "library",
                                          "runnable_on_build_host", "not_runnable_reason")}
        meta.update(target=canonical, size=size, import_s=round(import_s, 3),
                    compile_s=round(compile_s, 3), export_s=round(export_s, 3),
                    untuned=stats["untuned"][:20], **db_counts)
        if effective.get("kind") == "cuda":
            meta["tvm_target"] = effective
        if device is not None:
            meta.update(device=device["device"], device_scope=effective.get("model"))
        return meta


# --------------------------------------------------------------------------------------------
# the steps of a compile
# --------------------------------------------------------------------------------------------

def cuda_tags(tvm: Any) -> Dict[str, Dict[str, Any]]:
    """TVM's CUDA target tags, exported to plain dicts (``nvidia/nvidia-h100`` -> limits)."""
    out: Dict[str, Dict[str, Any]] = {}
    for name, tag in tvm.target.list_tags().items():
        exported = dict(tag.export())
        if exported.get("kind") == "cuda":
            out[str(name)] = {str(k): (v if isinstance(v, (int, float, str)) else str(v))
                              for k, v in exported.items()}
    return out


def this_cuda_device(tvm: Any) -> Optional[tvmtarget.CudaDevice]:
    """The GPU present, named as the step's key names it (``nvidia-smi``), with the limits
    the driver reports (used only when TVM has no tag for its architecture)."""
    device = tvmtarget.detect_cuda_device()
    try:
        dev = tvm.cuda(0)
        if not dev.exist:
            return device
        if device is None:
            device = tvmtarget.CudaDevice(str(dev.device_name), str(dev.compute_version))
        found = dict(tvm.target.Target.from_device(dev).export())
        device.attributes = {k: int(found[k]) for k in tvmtarget.CUDA_LIMIT_KEYS
                             if isinstance(found.get(k), int)}
    except Exception:  # noqa: BLE001 - the tag path does not need them
        pass
    return device


def complete_target(tvm: Any, canonical: Dict[str, Any], log: Any) -> Dict[str, Any]:
    """``canonical`` with a CUDA target completed (limits MetaSchedule and codegen need) from
    TVM's tag for the GPU, see :func:`buildgraph.backends.tvm.target.complete_cuda_target`;
    other targets unchanged. tvm.compile and tvm.tune complete alike, so that records tuned
    for a target match the library compiled for it."""
    if canonical.get("kind") != "cuda":
        return canonical
    from buildgraph.backends.tvm.relax import check_cuda

    check_cuda()
    device = this_cuda_device(tvm) if "arch" not in canonical else None
    try:
        completed, how = tvmtarget.complete_cuda_target(canonical, device, cuda_tags(tvm))
    except tvmtarget.TargetError as exc:
        raise StepFailed(exc.message, hint=exc.hint) from None
    log(f"CUDA target completed from {how}" + (f" (GPU: {device.key()})" if device else ""))
    return completed


def compile_target(tvm: Any, canonical: Dict[str, Any], device: Optional[Dict[str, Any]],
                   log: Any) -> Tuple[Any, Dict[str, Any]]:
    """(TVM Target, effective dict): the tuned target of a database measured on a remote
    device, else ``canonical`` completed and made concrete (native resolved, cores)."""
    if device is None:
        return make_target(complete_target(tvm, canonical, log))
    effective = dict(device["tvm_target"])
    try:
        return tvm.target.Target(effective), effective
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(f"TVM rejects the tuned target {json.dumps(effective)}: "
                         f"{str(exc).splitlines()[0]}") from None


def import_model(task: Task, model_path: Path, dims: Dict[str, int]
                 ) -> Tuple[Any, Dict[str, Any], Any]:
    """The model as a Relax module, its inputs/outputs, and the dims still symbolic."""
    mod = load_relax(model_path, dims, task.log)
    signature = io_signature(mod)
    dynamic = symbolic_dims(mod)
    task.log(f"imported: inputs " + ", ".join(f"{i['name']}{i['shape']} {i['dtype']}"
                                              for i in signature["inputs"])
             + (f"; dynamic dims {', '.join(dynamic)}" if dynamic else ""))
    return mod, signature, dynamic


def log_records_applied(task: Task, stats: Dict[str, Any]) -> None:
    task.log(f"functions: {stats['functions']}, with a tuning record: "
             f"{stats['with_record']}, without: {stats['without_record']}")
    for name in stats["applied"]:
        task.log(f"  tuned:   {name}")
    for name in stats["untuned"]:
        task.log(f"  untuned: {name}")


def check_records_applied(stats: Dict[str, Any], db_counts: Dict[str, int], require: str
                          ) -> None:
    """A tuned build whose records matched nothing would silently ship untuned code."""
    if require == "off":
        return
    if stats["with_record"] == 0:
        raise StepFailed(
            f"the tuning database applied to none of the {stats['functions']} "
            f"functions ({db_counts.get('records_for_target', 0)} records for this "
            "target): the library would be untuned - tune with the same target, "
            "model and dims as this step")
    if require == "all" and stats["without_record"]:
        raise StepFailed(f"{stats['without_record']} functions have no tuning record "
                         f"(require_records: all): {', '.join(stats['untuned'][:5])}")


def export(executable: Any, canonical: Dict[str, Any], out: Path, cc: Optional[str],
           how: str) -> Tuple[str, str]:
    """Write the library (or object files) into ``out``; returns (file name, note)."""
    out.mkdir(parents=True, exist_ok=True)
    filename, fcompile, note = exporter(canonical, cc, how)
    try:
        if fcompile is None:
            executable.export_library(str(out / filename))
        else:
            executable.export_library(str(out / filename), fcompile=fcompile)
    except Exception as exc:  # noqa: BLE001
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        raise StepFailed(f"export_library failed: {(lines[-1] if lines else '')[:300]}"
                         ) from None
    return filename, note


def write_manifest(out: Path, filename: str, note: str, canonical: Dict[str, Any],
                   effective: Dict[str, Any], signature: Dict[str, Any], dynamic: Any,
                   tuned: bool, stats: Dict[str, Any], device: Optional[Dict[str, Any]]
                   ) -> Dict[str, Any]:
    """``model.json``: what the runtime and the report need to know about the library."""
    runnable, why = tvmtarget.runnable_here(canonical)
    if runnable and filename.endswith(".tar"):
        runnable, why = False, "exported as object files (model.tar), not a library"
    manifest = {
        "schema": MANIFEST_SCHEMA, "library": filename, "weights": "embedded",
        "target": canonical, "target_text": tvmtarget.target_text(canonical),
        "tvm_target": effective, "tvm": tvm_versions()["apache-tvm"],
        "inputs": signature["inputs"], "dynamic_dims": dynamic,
        "tuned": tuned, "functions": stats["functions"],
        "with_record": stats["with_record"], "without_record": stats["without_record"],
        "runnable_on_build_host": runnable, "not_runnable_reason": why,
        "host_arch": tvmtarget.host_arch(), "note": note,
    }
    if device is not None:
        manifest["device"] = device["device"]
        manifest["device_scope"] = effective.get("model")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n",
                                encoding="utf-8")
    return manifest
