"""``cpp.check``: prove that an artifact which claims to run from C++ does, with the numbers
Python got.

For each upstream artifact of a form with a C++ API — TorchScript (``torch::jit::load``),
AOTInductor packages (``torch::inductor::AOTIModelPackageLoader``), TVM libraries (the TVM
runtime's Relax VM) — it builds a small C++ program with CMake against the installed wheels'
own headers and libraries (:mod:`buildgraph.backends.cpp.sources`, cached per toolchain by
:mod:`buildgraph.backends.cpp.build`), runs it on the input sets the ``verify`` step that
checked the artifact used (its ``tensors.npz``), and compares each output with that step's
reference at the tolerance the artifact passed there (``verify.compare``).

The report says per artifact ``runs from C++: yes`` or ``no (why)``: ``no`` is for an artifact
that cannot run on this machine (a library cross-compiled for another CPU, a CUDA package
without a GPU), as ``verify`` skips it. A loader that does not build fails the step with one
line naming what is missing (compiler, CMake, headers); a C++ run whose outputs differ from
the reference, or that fails, fails the step with the error, like a failed verification.

Outputs: ``report`` (JSON, no timings: the same inputs give the same bytes) and ``sources/``,
the ``main.cpp`` and ``CMakeLists.txt`` of each loader built and run (``release`` ships the one
for the released artifact).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

from pydantic import Field

from buildgraph.backends.cpp.build import AREA, build_loader, library_versions
from buildgraph.backends.cpp.sources import DESCRIPTIONS, LOADER_KINDS, loader_files
from buildgraph.backends.generic.toolchain import (cmake, toolchain_env, toolchain_watch)
from buildgraph.engine.environment import package_versions
from buildgraph.engine.executor import (DescribeContext, Description, Executor, Task,
                                        artifact_of, write_json)
from buildgraph.engine.params import StrictParams
from buildgraph.errors import RecipeError, StepFailed, did_you_mean


class CppCheckParams(StrictParams):
    candidates: Optional[List[str]] = Field(None, description="upstream artifact steps to "
                                            "check (default: every one that is not a verify "
                                            "step)")
    device: Literal["cpu", "cuda"] = Field("cpu", description="where TorchScript runs (an "
                                           "AOTInductor package and a TVM library run where "
                                           "they were built for)")
    timeout_s: float = Field(600.0, gt=0, description="limit on one C++ run (all input sets)")


def runs_from_cpp(entry: Dict[str, Any]) -> str:
    """``yes`` or ``no (why)``, as the report and README say it."""
    return "yes" if entry.get("runs_from_cpp") == "yes" else f"no ({entry.get('why', '?')})"


class CppCheckExecutor(Executor):
    """Build a C++ loader per artifact form, run it on verify's inputs, compare."""

    kind = "cpp.check"
    version = "1"
    Params = CppCheckParams
    outputs = {"report": "report.json", "sources": "sources"}
    isolation = "worker"
    resources = {"cpu": "all"}  # loaders of two forms compile side by side

    def describe(self, params: CppCheckParams, ctx: DescribeContext) -> Description:
        """Checks the upstream steps (one verify step at least; every candidate of a form with
        a C++ loader); keys the compiler and its version, CMake, the CPU's instruction set
        and the libraries the loaders build against. Volatile: a compiler can appear or change
        without the Python environment changing (it watches ``$CXX``, ``$PATH`` and the
        compiler's file)."""
        verifies = [u for u, k in ctx.upstream_kinds.items() if k == "verify"]
        if not verifies:
            raise RecipeError("cpp.check compares with a verify step's inputs and reference: "
                              "list the verify step that checks these artifacts under 'from:'")
        for cand in self._chosen(params, ctx.upstream_kinds):
            kind = ctx.upstream_kinds.get(cand)
            if kind not in LOADER_KINDS:
                raise RecipeError(f"cpp.check: '{cand}' ({kind} step) has no C++ loader here; "
                                  "it checks " + ", ".join(sorted(LOADER_KINDS)) + " artifacts",
                                  hint="list only those under 'from:' (or candidates:)")
        env = {**toolchain_env(params.device), "cmake": cmake()[1],
               **package_versions("torch", "apache-tvm", "apache-tvm-ffi", "numpy")}
        cmake_path = cmake()[0]
        return Description(env=env, volatile=True, areas=(AREA,),
                           watch=toolchain_watch() + ((cmake_path,) if cmake_path else ()))

    @staticmethod
    def _chosen(params: CppCheckParams, kinds: Dict[str, str]) -> List[str]:
        ups = [u for u, k in kinds.items() if k != "verify"]
        if params.candidates is None:
            return ups
        for c in params.candidates:
            if c not in ups:
                raise RecipeError(f"candidates: '{c}' is not an upstream artifact step"
                                  f"{did_you_mean(c, ups)}; list it under 'from:'")
        return list(params.candidates)

    # --- run --------------------------------------------------------------------------------
    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        p = CppCheckParams.model_validate(task.params)
        verify = {u: json.loads(Path(task.upstream[u]["report"]).read_text(encoding="utf-8"))
                  for u, k in sorted(task.upstream_kinds.items()) if k == "verify"}
        report: Dict[str, Any] = {"schema": 1, "candidates": {}, "passed": True,
                                  "toolchain": {k: task.env.get(k) for k in ("cxx", "cmake")}}
        seconds: Dict[str, float] = {}
        failures: List[str] = []
        plans = []
        for cand in self._chosen(p, dict(task.upstream_kinds)):
            kind = task.upstream_kinds[cand]
            form = LOADER_KINDS[kind]
            path = artifact_of(task, cand)
            entry: Dict[str, Any] = {"kind": kind, "artifact": path.name, "loader": form,
                                     "api": DESCRIPTIONS[form],
                                     "libraries": library_versions(form)}
            report["candidates"][cand] = entry
            vstep, ventry = self._verified(cand, verify)
            entry["verify_step"] = vstep
            info = task.upstream[cand].get("info")
            artifact, device, why = self._target(form, path, p, ventry, info)
            if why:
                entry.update(runs_from_cpp="no", why=why, passed=True)
                task.log(f"{cand}: runs from C++: no ({why})")
                continue
            plans.append((cand, form, artifact, device, vstep, ventry, entry))
        start = time.perf_counter()
        built = self._build_all(sorted({plan[1] for plan in plans}), task)
        seconds["build"] = round(time.perf_counter() - start, 3)
        for cand, form, artifact, device, vstep, ventry, entry in plans:
            start = time.perf_counter()
            problem = self._check(task, p, cand, built[form], artifact, device, verify[vstep],
                                  ventry, entry, Path(task.upstream[vstep]["tensors"]))
            seconds[f"run_{cand}"] = round(time.perf_counter() - start, 3)
            entry["device"] = device
            if problem:
                entry.update(runs_from_cpp="no", why=problem, passed=False)
                failures.append(f"{cand}: {problem}")
            else:
                entry.update(runs_from_cpp="yes", passed=True)
            task.log(f"{cand} ({DESCRIPTIONS[form]}): runs from C++: {runs_from_cpp(entry)}"
                     + "".join(f"; {n} max|err| {m['max_abs']:.3g}"
                               for n, m in (entry.get("outputs") or {}).items()
                               if "max_abs" in m))
        sources = task.outputs["sources"]
        sources.mkdir(parents=True, exist_ok=True)
        for form in sorted({e["loader"] for e in report["candidates"].values()}):
            (sources / form).mkdir()
            for name, text in loader_files(form).items():
                (sources / form / name).write_text(text, encoding="utf-8")
        report["passed"] = not failures
        write_json(task.outputs["report"], report)
        if failures:
            raise StepFailed("C++ check failed: " + failures[0]
                             + (f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""),
                             hint="the C++ loader's outputs are compared with the verify "
                                  "step's reference at the tolerance the artifact passed there")
        return {"runs_from_cpp": {c: runs_from_cpp(e) for c, e in report["candidates"].items()},
                "seconds": seconds}

    @staticmethod
    def _build_all(forms: List[str], task: Task) -> Dict[str, Path]:
        """Each loader form's executable, built side by side (each build is one compiler
        process, and most of a build's time is parsing torch's headers)."""
        from concurrent.futures import ThreadPoolExecutor

        if not forms:
            return {}
        with ThreadPoolExecutor(max_workers=max(1, min(len(forms), task.threads))) as pool:
            futures = {f: pool.submit(build_loader, f, task.areas[AREA], task.log)
                       for f in forms}
            return {f: fut.result() for f, fut in futures.items()}

    @staticmethod
    def _verified(cand: str, verify: Dict[str, Dict[str, Any]]) -> Tuple[str, Dict[str, Any]]:
        for step, rep in verify.items():
            entry = (rep.get("candidates") or {}).get(cand)
            if entry is not None:
                return step, entry
        raise StepFailed(f"'{cand}' was not checked by any upstream verify step ("
                         + ", ".join(verify) + "); add it to a verify step's 'from:'")

    @staticmethod
    def _target(form: str, path: Path, p: CppCheckParams, ventry: Dict[str, Any],
                info_path: Optional[Path]) -> Tuple[Path, str, str]:
        """(file the loader opens, device, why it cannot run here or "")."""
        if ventry.get("skipped"):
            why = f"verify skipped it: {ventry['skipped']}"
        else:
            why = ""
        if form == "tvm":
            manifest: Dict[str, Any] = {}
            if path.is_dir() and (path / "model.json").is_file():
                manifest = json.loads((path / "model.json").read_text(encoding="utf-8"))
            lib = path / manifest.get("library", "model.so") if path.is_dir() else path
            if manifest and not manifest.get("runnable_on_build_host", True):
                why = manifest.get("not_runnable_reason") or "not runnable on its build host"
            target = manifest.get("target") or {}
            device = "cuda" if isinstance(target, dict) and target.get("kind") == "cuda" \
                else "cpu"
            return lib.resolve(), device, why
        if form == "aoti":
            info = json.loads(Path(info_path).read_text(encoding="utf-8")) \
                if info_path is not None and Path(info_path).is_file() else {}
            device = str(info.get("device") or "cpu")
            if device == "cuda" and shutil.which("nvidia-smi") is None:
                why = why or "compiled for CUDA; no NVIDIA GPU here"
            return path.resolve(), device, why
        if p.device == "cuda" and shutil.which("nvidia-smi") is None:
            why = why or "device: cuda asked; no NVIDIA GPU here"
        return path.resolve(), p.device, why

    def _check(self, task: Task, p: CppCheckParams, cand: str, exe: Path, artifact: Path,
               device: str, vreport: Dict[str, Any], ventry: Dict[str, Any],
               entry: Dict[str, Any], tensors: Path) -> str:
        """Run the loader on the verify step's input sets that fit the artifact; compare.
        Returns the problem ("" when it matched)."""
        import numpy as np

        from buildgraph.backends.cpp.tensorfile import read_tensors, write_tensors
        from buildgraph.backends.evaluate.verify import compare

        out_names = list(vreport.get("outputs") or [])
        shapes = self._shapes(artifact, task.upstream[cand].get("info"))
        arrays = np.load(tensors)
        work = Path(task.work_dir) / f"cpp-{cand}"
        work.mkdir(parents=True, exist_ok=True)
        args: List[str] = []
        sets: List[Tuple[str, List[Any]]] = []
        for item in vreport.get("inputs") or []:
            label = item["name"]
            ins = [arrays[f"{label}.{n}"] for n in item.get("shapes") or {}]
            refs = [arrays[f"{label}.reference.{n}"] for n in out_names]
            if shapes and not all(_fits(a, s) for a, s in zip(ins, shapes)):
                continue
            write_tensors(work / f"{label}.in.bgt", ins)
            args += [str(work / f"{label}.in.bgt"), str(work / f"{label}.out.bgt")]
            sets.append((label, refs))
        if not sets:
            return ("none of the verify step's input sets fits the shapes it was built for ("
                    + ", ".join(str(s) for s in shapes) + ")")
        entry["input_sets"] = [label for label, _ in sets]
        cmd = [str(exe), str(artifact), device, *args]
        task.log(f"{cand}: {exe.name} {artifact.name} {device} ({len(sets)} input sets)")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=p.timeout_s,
                                  cwd=str(work))
        except subprocess.TimeoutExpired:
            return f"the C++ loader ran over {p.timeout_s:.0f} s"
        task.log(proc.stdout[-5000:] + proc.stderr[-5000:])
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            said = next((ln for ln in lines if ln.startswith("error:")), lines[-1] if lines
                        else f"exit status {proc.returncode}")
            return f"the C++ loader failed: {said.removeprefix('error:').strip()[:300]}"
        got = [read_tensors(work / f"{label}.out.bgt") for label, _ in sets]
        order = ventry.get("output_order")
        if order and sorted(order) == sorted(out_names):
            got = [[outs[order.index(n)] for n in out_names] for outs in got]
        if any(len(g) != len(out_names) for g in got):
            return f"{len(got[0])} outputs from C++; the reference has {len(out_names)}"
        entry["outputs"] = {}
        problems = []
        for i, name in enumerate(out_names):
            tol = dict(((ventry.get("outputs") or {}).get(name) or {}).get("tolerance") or {})
            metrics = compare([r[i] for _, r in sets], [g[i] for g in got], tol,
                              5, None)
            metrics.pop("min_passing", None)
            entry["outputs"][name] = {k: metrics.get(k) for k in (
                "max_abs", "max_rel", "cosine", "passed", "failures", "shape")
                if k in metrics}
            entry["outputs"][name]["tolerance"] = tol
            if not metrics["passed"]:
                problems.append(f"{name}: " + "; ".join(metrics["failures"]))
        if problems:
            return "outputs differ from the reference: " + "; ".join(problems)
        return ""

    @staticmethod
    def _shapes(artifact: Path, info: Optional[Path]) -> List[List[Any]]:
        """The shapes the artifact takes ([] = any): a TVM library's model.json, a package's
        ``info`` output; ints are fixed dims."""
        for path in (artifact.parent / "model.json", info):
            if path is not None and Path(path).is_file():
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except ValueError:
                    return []
                return [list(i.get("shape") or []) for i in data.get("inputs") or []]
        return []


def _fits(array: Any, shape: List[Any]) -> bool:
    if len(array.shape) != len(shape):
        return False
    return all(not isinstance(d, int) or d <= 0 or d == n for d, n in zip(shape, array.shape))
