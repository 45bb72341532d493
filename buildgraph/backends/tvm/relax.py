"""The TVM calls behind ``tvm.compile`` and ``tvm.tune``: importing a model into Relax,
the MetaSchedule-ordered pass pipeline, building, exporting. tvm is imported only inside the
functions."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from buildgraph.backends.tvm import target as tvmtarget
from buildgraph.errors import StepFailed
from buildgraph.engine.environment import package_versions

def tvm_versions() -> Dict[str, str]:
    # onnxslim/onnxscript fold a bound ONNX model's shapes and torch re-exports a bound .pt2
    # before TVM imports either: their versions shape the imported module too
    return package_versions("apache-tvm", "apache-tvm-ffi", "onnx", "onnxslim", "onnxscript",
                            "torch", missing="missing")


def target_is_volatile(target: Mapping[str, Any]) -> bool:
    """Whether a target's environment can change between plans without the Python
    environment changing: the GPU present (cuda without -arch), a cross compiler on PATH."""
    return (target.get("kind") == "cuda" and "arch" not in target) or \
        not tvmtarget.is_host_target(target)


def import_tvm() -> Any:
    """Import TVM with the modules the tvm steps use; a clear failure when it is missing."""
    versions = tvm_versions()
    if versions["apache-tvm"] == "missing":
        raise StepFailed("TVM is not installed: pip install 'buildgraph[tvm]' "
                         "(apache-tvm 0.27 with apache-tvm-ffi 0.1.14.post1)")
    try:
        import tvm
        import tvm.relax.frontend.onnx  # noqa: F401 - registers the frontend
        from tvm import relax  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(f"cannot import TVM {versions['apache-tvm']}: {type(exc).__name__}: "
                         f"{exc}") from None
    return tvm


def check_ffi_for_tuning() -> None:
    """apache-tvm-ffi 0.1.15 segfaults in JSON serialization, which every MetaSchedule run
    does: say so instead of dying with SIGSEGV."""
    ffi = tvm_versions()["apache-tvm-ffi"]
    if ffi.startswith("0.1.15"):
        raise StepFailed(f"apache-tvm-ffi {ffi} crashes MetaSchedule (segfault in "
                         "tvm.ir.save_json): pip install apache-tvm-ffi==0.1.14.post1")


def system_cpu() -> str:
    import tvm

    return str(tvm.target.codegen.llvm_get_system_cpu())


def make_target(canonical: Mapping[str, Any], threads: Optional[int] = None) -> Tuple[Any, Dict[str, Any]]:
    """(tvm.target.Target, effective dict) for a canonical target; fails clearly for CUDA
    without a GPU or a CUDA-enabled TVM."""
    import tvm

    if canonical.get("kind") == "cuda":
        check_cuda()
    cpu = system_cpu() if tvmtarget.is_native(canonical) else None
    effective = tvmtarget.effective_target(canonical, cpu, None)
    return tvm_target(tvm, effective, canonical)


def tvm_target(tvm: Any, effective: Mapping[str, Any], shown: Mapping[str, Any]) -> Tuple[Any, Any]:
    """TVM's Target for ``effective`` and the target to record (with TVM's default triple);
    a target TVM rejects is one line naming ``shown``, the target as the recipe wrote it."""
    try:
        target = tvm.target.Target(effective)
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(f"TVM rejects target {tvmtarget.target_text(shown)}: "
                         f"{str(exc).splitlines()[0]}") from None
    return target, with_default_triple(target, effective)


def with_default_triple(target: Any, effective: Mapping[str, Any]) -> Dict[str, Any]:
    """``effective`` with the triple TVM fills in itself: an llvm target with neither -mcpu nor
    -mtriple gets LLVM's default triple, which MetaSchedule then writes into every record, so a
    record's target would never match the target it was tuned for (plain ``llvm``)."""
    out = dict(effective)
    if out.get("kind") == "llvm" and "mtriple" not in out:
        triple = target.attrs.get("mtriple")
        if triple:
            out["mtriple"] = str(triple)
    return dict(sorted(out.items()))


def check_cuda() -> None:
    import tvm

    built = str(tvm.support.libinfo().get("USE_CUDA", "OFF")).upper()
    if built in ("OFF", "0", "FALSE", ""):
        raise StepFailed("target cuda: this TVM build has no CUDA support (USE_CUDA=OFF); "
                         "CUDA targets need a CUDA-enabled TVM and an NVIDIA GPU")
    if not tvm.cuda(0).exist:
        raise StepFailed("target cuda: no NVIDIA GPU is visible on this machine "
                         "(tvm.cuda(0).exist is False); CUDA targets compile only where a GPU "
                         "is present - use an llvm target here")




def tvm_failure(exc: BaseException, what: str, log: Any) -> StepFailed:
    """One located line for an error raised inside TVM; its whole text goes to the step's log.

    TVM's errors carry a C++ backtrace and the failed check; a user needs the check, where in
    TVM it failed, and the log, not the Python frames of buildgraph that called TVM."""
    import re
    import traceback

    text = str(exc).strip()
    native = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename.endswith((".cc", ".h", ".cpp"))]  # TVM's FFI appends C++ frames
    try:
        log(f"{what}: {type(exc).__name__} raised inside TVM:\n{text}\n" + "".join(
            f"  at {f.filename}:{f.lineno} {f.name}\n" for f in reversed(native)))
    except Exception:  # noqa: BLE001 - reporting must not hide the error
        pass
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    check = next((ln for ln in reversed(lines) if "Check failed" in ln or "Error" in ln),
                 lines[-1] if lines else "")
    check = re.sub(r"^(\w*Error:\s*)+", "", check)[:300]
    located = ""
    if native:
        located = f" (at {Path(native[-1].filename).name}:{native[-1].lineno} in TVM)"
    else:
        where = re.findall(r"([\w/.-]+\.(?:cc|h|cpp)):(\d+)", text)
        if where:
            located = f" (at {Path(where[-1][0]).name}:{where[-1][1]} in TVM)"
    return StepFailed(f"{what} failed inside TVM: {type(exc).__name__}: {check}{located}",
                      hint="the step's log has TVM's full message; a .pt2 from torch.export "
                           "is another route into TVM when the ONNX import is the problem")


def load_relax(path: Path, dims: Mapping[str, int], log: Any = None) -> Any:
    """Import an .onnx or .pt2 file into a Relax IRModule with ``dims`` bound.

    Bound dims reach the importer as static sizes (:mod:`buildgraph.backends.tvm.frontends`):
    importing with symbolic dims and binding them afterwards fails on the shape arithmetic of
    dynamic transformer exports and breaks FuseTIR on depthwise convolutions
    ("Inconsistent buffers ... mapped to the same relax var"). Dims left dynamic keep their
    names (a .pt2's torch symbols are renamed to the model spec's dim names)."""
    from tvm import relax

    from buildgraph.backends.tvm import frontends

    names: Dict[str, str] = {}
    try:
        if path.suffix == ".onnx":
            import onnx

            model, static = frontends.bind_onnx(onnx.load(str(path)), dims, log)
            mod = relax.frontend.onnx.from_onnx(model, shape_dict=static) if static else \
                relax.frontend.onnx.from_onnx(model)
        elif path.suffix == ".pt2":
            import tvm.relax.frontend.torch  # noqa: F401

            program, names = frontends.load_program(path, dims, log)
            mod = relax.frontend.torch.from_exported_program(
                program, unwrap_unit_return_tuple=True, run_ep_decomposition=False)
        else:
            raise StepFailed(f"{path.name}: TVM imports .onnx or .pt2 files")
    except StepFailed:
        raise
    except Exception as exc:  # noqa: BLE001
        if log is not None:
            log(f"{type(exc).__name__}: {exc}")
        raise StepFailed(import_error_message(path, exc)) from None
    if names:
        mod = rename_dims(mod, names)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    return mod


def rename_dims(mod: Any, names: Mapping[str, str]) -> Any:
    """Rename symbolic dims (torch's ``s43``) to the model spec's names (``seq``)."""
    import tvm
    from tvm import relax

    present = set(symbolic_dims(mod))
    binding = {sym: tvm.tirx.Var(name, "int64") for sym, name in names.items()
               if sym in present and name not in present}
    return relax.transform.BindSymbolicVars(binding)(mod) if binding else mod


def _onnx_producer(path: Path) -> str:
    """Who wrote an ONNX file (``pytorch``, ``tf2onnx``...), or "" when it cannot be read."""
    try:
        import onnx

        return str(onnx.load(str(path), load_external_data=False).producer_name)
    except Exception:  # noqa: BLE001 - a message helper never fails
        return ""


def import_error_message(path: Path, exc: BaseException, producer: Optional[str] = None
                         ) -> str:
    """One line: the importer's own reason, and the other route into TVM.

    TVM's errors end with the reason after a C++ backtrace; torch's (the .pt2 importer
    re-runs the program) start with it, followed by the graph node and a tlparse advert."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    text = text.split("\nWhile executing", 1)[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()
             and not ln.strip().startswith(("Use tlparse", "File \"", "Original traceback"))]
    reason = (lines[-1] if lines else "")[:300].rstrip(".")
    if producer is None and path.suffix == ".onnx":
        producer = _onnx_producer(path)
    if path.suffix == ".onnx" and producer == "tf2onnx":
        # measured: a dynamic tf2onnx graph computes RNN states from Shape ops, which the
        # importer rejects; ONNX LSTM/GRU ops it does not implement at all
        other = ("convert with static shapes (tf2onnx.convert dims: {batch: 1}) and Keras "
                 "RNN layers with unroll=True, which tf2onnx writes as plain ops TVM imports")
    elif path.suffix == ".onnx" and producer not in ("pytorch", ""):
        other = ("an ONNX file with static shapes (onnx.simplify overwrite_input_shapes) "
                 "often imports where a dynamic one does not")
    elif path.suffix == ".onnx":
        # binding dims: does not help here: a dynamic export computes shapes in the graph
        other = ("a .pt2 from torch.export is the other route into TVM (from: <the "
                 "torch.export step>), and an ONNX export with static shapes (dynamic: {}) "
                 "often imports where a dynamic one does not")
    else:
        other = ("an ONNX file from onnx.export is the other route into TVM (from: <the "
                 "onnx.export step>; static shapes import most often)")
    return f"TVM cannot import {path.name}: {type(exc).__name__}: {reason}; {other}"


def symbolic_dims(mod: Any) -> List[str]:
    from tvm import relax

    return sorted({str(v) for v in relax.analysis.defined_symbolic_vars(mod["main"])})


def bind_dims(mod: Any, dims: Mapping[str, int]) -> Any:
    from tvm import relax

    names = symbolic_dims(mod)
    binding: Dict[Any, int] = {}
    leading = set()
    for p in mod["main"].params:
        shape = getattr(getattr(p, "ty", None), "shape", None)
        if shape is not None and len(shape) and not hasattr(shape[0], "value"):
            leading.add(str(shape[0]))
    for name, size in dims.items():
        if name in names:
            binding[name] = size
        elif name == "batch" and leading:
            for lead in sorted(leading):
                binding[lead] = size
        else:
            raise StepFailed(f"dims: the model has no dynamic dim '{name}' (its dynamic dims: "
                             + (", ".join(names) or "none") + ")")
    return relax.transform.BindSymbolicVars(binding)(mod)


def io_signature(mod: Any) -> Dict[str, Any]:
    """Inputs (name, shape with names for dynamic dims, dtype) of ``main``."""
    inputs = []
    for p in mod["main"].params:
        ty = getattr(p, "ty", None)
        shape = getattr(ty, "shape", None)
        dims = [int(d.value) if hasattr(d, "value") else str(d) for d in shape] \
            if shape is not None else None
        inputs.append({"name": str(getattr(p, "name", "") or getattr(p, "name_hint", "")), "shape": dims, "dtype": str(getattr(ty, "dtype", ""))})
    return {"inputs": inputs}


def fuse_passes(target: Any) -> List[Any]:
    """The passes after which MetaSchedule tasks exist; shared by tune and compile so that
    the workloads they see are the same."""
    from tvm import relax
    from tvm.relax import pipeline

    try:
        dispatch = list(pipeline.library_dispatch_passes(target))
    except (ValueError, AttributeError):
        dispatch = []
    return dispatch + [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                       relax.transform.FoldConstant(), relax.transform.FuseOps(),
                       relax.transform.FuseTIR()]


def prepare(mod: Any, target: Any) -> Any:
    """Raw imported module -> fused module (the form tasks are extracted from)."""
    import tvm

    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(fuse_passes(target))(mod)


def prim_funcs(mod: Any) -> List[Tuple[str, Any]]:
    import tvm

    return sorted(((gv.name_hint, f) for gv, f in mod.functions.items()
                   if isinstance(f, tvm.tirx.PrimFunc)), key=lambda x: x[0])


def is_scheduled(func: Any) -> bool:
    attrs = func.attrs
    return bool(attrs is not None and "tirx.is_scheduled" in attrs
                and int(attrs["tirx.is_scheduled"]) == 1)


def lower_passes(target: Any) -> List[Any]:
    """Dataflow lowering and finalization: the target's own lists where TVM exports them,
    else the generic ones (what ``compile_relax`` does; the CPU backend does not export
    them in 0.27)."""
    from tvm import relax
    from tvm.relax import pipeline

    try:
        return (list(pipeline.dataflow_lower_passes(target))
                + list(pipeline.finalize_passes(target)))
    except (ValueError, AttributeError):
        t = relax.transform
        return [t.RewriteDataflowReshape(), t.ToNonDataflow(), t.RemovePurityChecking(),
                t.CallTIRRewrite(), t.StaticPlanBlockMemory(), t.LowerAllocTensor(),
                t.KillAfterLastUse(), t.LowerRuntimeBuiltin(), t.ComputePrimValue(),
                t.VMShapeLower(), t.AttachGlobalSymbol()]


def build(mod: Any, target: Any, database: Any = None) -> Tuple[Any, Dict[str, Any]]:
    """Compile a raw imported module; returns (executable, stats of records applied)."""
    import tvm
    from tvm import relax
    from tvm.relax import pipeline
    from tvm.relax.transform import MetaScheduleApplyDatabase

    stats: Dict[str, Any] = {}
    gpu = pipeline.BackendDispatcher.is_gpu_target(target)

    @tvm.transform.module_pass(opt_level=3, name="buildgraph_tvm_pipeline")
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        mod = tvm.transform.Sequential(fuse_passes(target))(mod)
        funcs_before = prim_funcs(mod)
        pre = {name for name, f in funcs_before if is_scheduled(f)}
        if database is not None:
            mod = MetaScheduleApplyDatabase(enable_warning=False)(mod)
        after = prim_funcs(mod)
        applied = sorted(n for n, f in after if is_scheduled(f) and n not in pre)
        without = sorted(n for n, f in after if not is_scheduled(f))
        stats.update(functions=len(after), with_record=len(applied),
                     without_record=len(without), applied=applied, untuned=without)
        if gpu:
            from tvm.s_tir import dlight as dl

            mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                          dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
        mod = tvm.transform.Sequential(lower_passes(target))(mod)
        return mod

    ctx = [target, tvm.transform.PassContext(opt_level=3)]
    if database is not None:
        ctx.insert(1, database)
    from contextlib import ExitStack

    with ExitStack() as stack:
        for c in ctx:
            stack.enter_context(c)
        executable = relax.build(mod, target=target, relax_pipeline=_pipeline)
    return executable, stats


def filtered_database(db_dir: Path, effective: Mapping[str, Any], work_dir: Path
                      ) -> Tuple[Any, Dict[str, int]]:
    """A TVM database holding only ``db_dir``'s records for this target (by identity)."""
    from tvm.s_tir import meta_schedule as ms

    from buildgraph.backends.tvm.records import merge, read_db, write_db

    db = read_db(db_dir)
    kept = merge([db], target=effective, valid_only=True)
    out = work_dir / "database"
    write_db(kept, out)
    counts = {"records": len(db.records), "records_for_target": len(kept.records),
              "workloads": len(db.workloads)}
    return ms.database.JSONDatabase(work_dir=str(out), allow_missing=False), counts


def exporter(target: Mapping[str, Any], cc: Optional[str], export: str
             ) -> Tuple[str, Any, str]:
    """(file name, fcompile, note) for export_library."""
    from tvm.support import cc as tvm_cc

    host = tvmtarget.is_host_target(target) or target.get("kind") == "cuda"
    if export == "tar":
        return "model.tar", deterministic_tar, "object files; link them with the target's C " \
                                               "compiler"
    if host:
        if cc:
            if not shutil.which(cc):
                raise StepFailed(f"cc: compiler '{cc}' not found on PATH")
            return "model.so", tvm_cc.cross_compiler(cc), ""
        if not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("gcc")
                or shutil.which("cc")):
            raise StepFailed("export_library needs a C compiler (gcc or clang) on PATH")
        return "model.so", None, ""
    triple = str(target.get("mtriple", ""))
    compiler = cc or next((c for c in (f"{triple}-gcc", f"{triple}-g++") if shutil.which(c)),
                          None)
    if compiler and shutil.which(compiler):
        return "model.so", tvm_cc.cross_compiler(compiler), ""
    if export == "so":
        raise StepFailed(f"no cross compiler for {triple} (looked for {triple}-gcc); "
                         "install one (Debian: gcc-aarch64-linux-gnu) or set cc:, or use "
                         "export: tar")
    return "model.tar", deterministic_tar, (f"no {triple}-gcc here: object files in a tar; link "
                                            f"on the device with: gcc -shared -o model.so *.o")


def deterministic_tar(output: str, files: List[str], **_: Any) -> None:
    """``export_library``'s ``fcompile`` for a ``.tar`` of object files, in place of TVM's own
    (``tvm.support.tar.tar`` runs ``tar -czf``): the same objects give the same archive, where
    TVM's held the copies' mtimes, the owner and directory order (``buildgraph repro`` found
    two exports of one cross-compiled library differing)."""
    import tempfile

    from buildgraph.engine.files import write_tar_gz

    with tempfile.TemporaryDirectory() as folder:
        for name in files:
            base = os.path.basename(name)
            if os.path.exists(os.path.join(folder, base)):
                raise ValueError(f"duplicate file name {base}")
            shutil.copyfile(name, os.path.join(folder, base))
        write_tar_gz(Path(folder), Path(output))


deterministic_tar.output_format = "tar"  # type: ignore[attr-defined]
