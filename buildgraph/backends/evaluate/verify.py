"""``verify``: prove that each artifact computes what the model computes.

The reference is the recipe's model on its own runtime, fp32: eager PyTorch for a PyTorch
model, onnxruntime with graph optimizations off for an ONNX file, TensorFlow for a
TensorFlow/Keras model (:mod:`buildgraph.backends.evaluate.reference`); ``reference: STEP``
takes an upstream artifact instead. Candidates are the upstream steps
(``from: [ts, ep, onnx, sim]``), each loaded by its own runtime (:mod:`buildgraph.engine.runtime`).
All run on ``random`` seeded random input sets plus the model's sample inputs, and for every
output the report gives: max absolute error, max relative error, the chosen statistic of the
error, cosine similarity and, for classifier outputs ([batch, classes]), top-1 and top-k
agreement.

The check, per candidate and output, is ``STAT(|cand - ref| - rtol*|ref|) <= atol``
(``STAT = max`` is ``numpy.allclose``), plus ``cosine >= min_cosine`` and top-1/top-k agreement
bounds when set. Tolerances come from defaults per precision, then ``tolerances.default``, then
``tolerances.<candidate>``, then ``tolerances.<candidate>.outputs.<output>``; ``"off"`` disables
one bound. A failure fails the step, with a table of the worst errors and the smallest
tolerance that would have passed (in the log, whose tail the console shows). The JSON report
and the tensors used (inputs and reference outputs) are the step's outputs.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

from pydantic import Field, field_validator

from buildgraph.backends.onnx.modelspec import dim_sizes, framework_of_data, input_specs
from buildgraph.backends.evaluate.reference import describe_model_any
from buildgraph.errors import RecipeError, StepFailed, did_you_mean, short_error
from buildgraph.backends.torch.base import (ModelExecutor, ModelParams, artifact_of,
                                            model_spec_of, write_json)
from buildgraph.engine.executor import DescribeContext, Description
from buildgraph.engine.params import StrictParams

Bound = Union[float, Literal["off"], None]
PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8", "fp8")
STAT_RE = re.compile(r"^(max|mean|median|p\d{1,2}(\.\d+)?)$")

PRECISION_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "fp32": {"atol": 1e-4, "rtol": 1e-3, "statistic": "max", "min_cosine": 0.9999},
    "tf32": {"atol": 1e-2, "rtol": 1e-2, "statistic": "max", "min_cosine": 0.999},
    "fp16": {"atol": 5e-2, "rtol": 1e-2, "statistic": "max", "min_cosine": 0.999},
    "bf16": {"atol": 1e-1, "rtol": 5e-2, "statistic": "max", "min_cosine": 0.995},
    "int8": {"atol": "off", "rtol": "off", "statistic": "p99", "min_cosine": 0.98},
    "fp8": {"atol": "off", "rtol": "off", "statistic": "p99", "min_cosine": 0.97},
}
"""Defaults per precision: strict enough to catch a broken conversion (whose cosine falls well
below 0.9), loose enough for the rounding a correct fp16/bf16/int8 build shows."""

BOUNDS = ("atol", "rtol", "statistic", "min_cosine", "min_top1", "min_topk")

MATH_MODES = {
    "fp32": "fp32: TF32 off (torch cuDNN convolutions and matmuls, onnxruntime CUDA "
            "use_tf32=0); fp32 tolerances",
    "tf32": "tf32: TF32 allowed (torch cuDNN convolutions and matmuls, onnxruntime CUDA); "
            "fp32 candidates checked with the tf32 tolerances",
}
"""``math:`` on a GPU, as the report states it. PyTorch computes fp32 convolutions in TF32 on
Ampere and later GPUs by default (10-bit mantissa: errors ~1e-3 on a ResNet), which fp32
tolerances would fail; verification turns TF32 off by default, so that what is checked is the
artifact, not the math mode."""

TRUSTED_KINDS = ("torch.save",)
"""Step kinds whose outputs may run code when loaded (a whole-model pickle): a torch.save step
pickles the model this recipe built, from a source the recipe already had to trust."""


def candidate_trusted(kind: Optional[str], model_spec: Mapping[str, Any]) -> bool:
    """May loading a candidate run code from it (unpickle a whole model, a TensorRT engine's
    host code)? When a ``torch.save`` step of this recipe wrote it, or the model says
    ``trusted: true``; not for what a ``shell`` or ``python`` step wrote, whatever its name."""
    return kind in TRUSTED_KINDS or bool(model_spec.get("trusted"))


class OutputTolerance(StrictParams):
    atol: Bound = Field(None, description="absolute bound on STAT(|err| - rtol*|ref|)")
    rtol: Bound = Field(None, description="relative part of that bound")
    statistic: Optional[str] = Field(None, description="max, mean, median or pNN (quantile)")
    min_cosine: Bound = Field(None, description="lowest cosine similarity accepted")
    min_top1: Bound = Field(None, description="classifiers: lowest share of rows whose "
                                              "argmax agrees")
    min_topk: Bound = Field(None, description="classifiers: lowest mean overlap of top-k sets")

    @field_validator("statistic")
    @classmethod
    def _stat(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not STAT_RE.match(value):
            raise ValueError(f"statistic must be max, mean, median or pNN (e.g. p99); got "
                             f"'{value}'")
        return value


class Tolerance(OutputTolerance):
    precision: Optional[Literal["fp32", "tf32", "fp16", "bf16", "int8", "fp8"]] = Field(
        None, description="picks the defaults (default: what the runtime reports, else fp32)")
    outputs: Dict[str, OutputTolerance] = Field(default_factory=dict,
                                                description="per-output overrides")


class VerifyParams(ModelParams):
    candidates: Optional[List[str]] = Field(None, description="upstream steps to check "
                                            "(default: every upstream step)")
    random: int = Field(4, ge=0, description="number of seeded random input sets")
    seed: Optional[int] = Field(None, description="seed of the first random set (default: "
                                                  "the model's seed + 1)")
    samples: bool = Field(True, description="also run the model's sample_inputs")
    dims: Dict[str, List[int]] = Field(default_factory=dict,
                                       description="sizes of named dims the random sets cycle "
                                                   "through, e.g. {batch: [1, 4]}")
    topk: int = Field(5, ge=1, description="k of top-k agreement for classifier outputs")
    device: str = Field("cpu", description="device the candidates' runtimes use (cpu, cuda, "
                                           "cuda:N); the reference always runs on the CPU, "
                                           "in fp32")
    math: Literal["fp32", "tf32"] = Field(
        "fp32", description="on a GPU: fp32 turns TF32 off for the candidates (fp32 "
        "tolerances); tf32 leaves it on and checks fp32 candidates with the tf32 tolerances")
    onnxruntime_provider: Literal["cuda", "tensorrt"] = Field(
        "cuda", description="onnxruntime's provider on a GPU")
    required: List[str] = Field(default_factory=list, description="candidates that must be "
                                "checked: with --keep-going, a failed one fails this step")
    classifier: Optional[bool] = Field(None, description="compute top-k agreement (default: "
                                       "for 2-D float outputs)")
    tolerances: Dict[str, Tolerance] = Field(
        default_factory=dict, description="'default' and/or candidate step ids -> tolerance")
    reference: Optional[str] = Field(
        None, description="an upstream step whose artifact is the reference instead of the "
        "model (default: the model on its own runtime: eager PyTorch, onnxruntime fp32 "
        "unoptimised, TensorFlow)")


# --------------------------------------------------------------------------------------------
# metrics (numpy only; also used by benchmarks and tests)
# --------------------------------------------------------------------------------------------

def statistic(values: Any, name: str) -> float:
    import numpy as np

    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return 0.0
    if name == "max":
        return float(values.max())
    if name == "mean":
        return float(values.mean())
    if name == "median":
        return float(np.median(values))
    return float(np.quantile(values, float(name[1:]) / 100.0))


def resolve_tolerance(params: VerifyParams, candidate: str, output: str,
                      detected: str) -> Dict[str, Any]:
    """Defaults for the precision, then tolerances.default, the candidate, its output."""
    base = candidate.split("@")[0]
    keys = ["default"] + ([base] if base != candidate else []) + [candidate]
    layers: List[Any] = [params.tolerances[k] for k in keys if k in params.tolerances]
    precision = detected
    for layer in layers:
        if layer.precision:
            precision = layer.precision
    merged: Dict[str, Any] = {"precision": precision, "min_top1": None, "min_topk": None}
    merged.update(PRECISION_DEFAULTS.get(precision, PRECISION_DEFAULTS["fp32"]))
    for layer in layers:
        for part in (layer, layer.outputs.get(output)):
            if part is None:
                continue
            for key in BOUNDS:
                value = getattr(part, key)
                if value is not None:
                    merged[key] = value
    return {k: (None if v == "off" else v) for k, v in merged.items()}


def compare(ref: List[Any], got: List[Any], tol: Mapping[str, Any], topk: int,
            classifier: Optional[bool]) -> Dict[str, Any]:
    """Metrics of one output over all input sets (lists of arrays), and the verdict."""
    import numpy as np

    failures: List[str] = []
    for r, g in zip(ref, got):
        if tuple(np.shape(r)) != tuple(np.shape(g)):
            return {"passed": False, "failures": [f"shape {list(np.shape(g))} vs reference "
                                                  f"{list(np.shape(r))}"],
                    "shape": list(np.shape(g))}
    rs = [np.asarray(r, dtype=np.float64) for r in ref]
    gs = [np.asarray(g, dtype=np.float64) for g in got]
    r_all = np.concatenate([r.ravel() for r in rs]) if rs else np.zeros(0)
    g_all = np.concatenate([g.ravel() for g in gs]) if gs else np.zeros(0)
    bad_nan = int(np.sum(~np.isfinite(g_all) & np.isfinite(r_all)))
    finite = np.isfinite(g_all) & np.isfinite(r_all)
    err = np.abs(g_all - r_all)[finite]
    mag = np.abs(r_all)[finite]
    floor = max(float(mag.max()) * 1e-6, 1e-30) if mag.size else 1e-30
    rel = err / np.maximum(mag, floor)
    stat_name = tol.get("statistic") or "max"
    atol = tol.get("atol")
    rtol = tol.get("rtol") or 0.0
    excess = err - rtol * mag
    check_value = statistic(excess, stat_name)
    with np.errstate(divide="ignore", invalid="ignore"):
        need_rtol = np.where(mag > 0, (err - (atol or 0.0)) / np.where(mag > 0, mag, 1.0),
                             np.where(err <= (atol or 0.0), 0.0, np.inf))
    min_rtol = statistic(need_rtol, stat_name) if need_rtol.size else 0.0
    cosines = []
    for r, g in zip(rs, gs):
        a, b = r.ravel(), g.ravel()
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        if not (np.isfinite(na) and np.isfinite(nb)):
            cosines.append(float("nan"))
        elif na == 0 and nb == 0:
            cosines.append(1.0)
        elif na == 0 or nb == 0:
            cosines.append(0.0)
        else:
            cosines.append(float(np.dot(a, b) / (na * nb)))
    cosine = min(cosines) if cosines else 1.0
    result: Dict[str, Any] = {
        "shape": list(np.shape(got[0])) if got else [],
        "elements": int(r_all.size),
        "max_abs": float(err.max()) if err.size else 0.0,
        "mean_abs": float(err.mean()) if err.size else 0.0,
        "max_rel": float(rel.max()) if rel.size else 0.0,
        "statistic": stat_name,
        "stat_value": statistic(err, stat_name),
        "check_value": check_value,
        "cosine": cosine,
        "nonfinite": bad_nan,
    }
    is_classifier = classifier if classifier is not None else \
        all(r.ndim == 2 and r.shape[1] >= 2 for r in rs)
    if is_classifier and rs and all(r.ndim == 2 for r in rs):
        k = min(topk, rs[0].shape[1])
        top1, overlap, rows = 0, 0.0, 0
        for r, g in zip(rs, gs):
            top1 += int(np.sum(np.argmax(r, axis=1) == np.argmax(g, axis=1)))
            rk = np.argsort(-r, axis=1)[:, :k]
            gk = np.argsort(-g, axis=1)[:, :k]
            overlap += sum(len(set(a) & set(b)) / k for a, b in zip(rk, gk))
            rows += r.shape[0]
        result.update(top1=top1 / max(rows, 1), topk=overlap / max(rows, 1), k=k)
    if bad_nan:
        failures.append(f"{bad_nan} NaN/inf values where the reference is finite")
    if atol is not None and check_value > atol:
        failures.append(f"{stat_name}(|err| - {rtol:g}*|ref|) = {check_value:.3g} > atol "
                        f"{atol:g}")
    if tol.get("min_cosine") is not None and not cosine >= tol["min_cosine"]:
        failures.append(f"cosine {cosine:.6f} < {tol['min_cosine']:g}")
    if tol.get("min_top1") is not None and result.get("top1", 1.0) < tol["min_top1"]:
        failures.append(f"top-1 agreement {result.get('top1'):.3f} < {tol['min_top1']:g}")
    if tol.get("min_topk") is not None and result.get("topk", 1.0) < tol["min_topk"]:
        failures.append(f"top-{result.get('k')} agreement {result.get('topk'):.3f} < "
                        f"{tol['min_topk']:g}")
    result["min_passing"] = {
        "atol": max(0.0, check_value),
        "rtol": (max(0.0, min_rtol) if np.isfinite(min_rtol) else None),
        "min_cosine": cosine,
        **({"min_top1": result["top1"], "min_topk": result["topk"]} if "top1" in result else {}),
    }
    result["passed"] = not failures
    result["failures"] = failures
    return result


def table(rows: List[Tuple[str, str, str, Dict[str, Any], Dict[str, Any]]]) -> str:
    """Fixed-width table of (candidate, output, precision, metrics, tolerance), worst first."""
    header = ["candidate", "output", "prec", "max|err|", "max rel", "stat |err|", "cosine", "top1",
              "atol", "rtol", "passes with atol", "result"]
    lines = []
    for cand, out, prec, m, tol in rows:
        if "max_abs" not in m:
            lines.append([cand, out, prec, "-", "-", "-", "-", "-", "-", "-", "-",
                          "FAIL: " + "; ".join(m.get("failures", []))])
            continue
        lines.append([
            cand, out, prec, f"{m['max_abs']:.3g}", f"{m['max_rel']:.3g}",
            f"{m['statistic']} {m['stat_value']:.3g}", f"{m['cosine']:.8f}",
            f"{m['top1']:.2f}" if "top1" in m else "-",
            "off" if tol.get("atol") is None else f"{tol['atol']:g}",
            "off" if tol.get("rtol") is None else f"{tol['rtol']:g}",
            f">= {m['min_passing']['atol']:.3g}",
            "ok" if m["passed"] else "FAIL: " + "; ".join(m["failures"])])
    widths = [max(len(str(r[i])) for r in lines + [header]) for i in range(len(header) - 1)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    return "\n".join(fmt.format(*r) for r in [header] + lines)


# --------------------------------------------------------------------------------------------
# the executor
# --------------------------------------------------------------------------------------------

@dataclass
class _ReferenceRun:
    """The input sets (the framework's tensors and numpy) and the reference's outputs."""

    sets: List[Tuple[str, List[Any]]]
    np_sets: List[List[Any]]
    outputs: List[List[Any]] = field(default_factory=list)
    names: List[str] = field(default_factory=list)
    rerun: Callable[[List[Any]], List[Any]] = lambda tensors: []
    """The reference on other inputs (sets redrawn for a candidate built for fixed sizes)."""


@dataclass
class _CandidateRun:
    """What running one candidate gave: its outputs, or why it gave none."""

    entry: Dict[str, Any]
    ref_outputs: List[List[Any]]
    """The reference outputs for the sets the candidate ran (its own, when redrawn)."""
    got: List[List[Any]] = field(default_factory=list)
    precision: str = "fp32"
    problem: str = ""
    skipped: str = ""
    device_refusal: bool = False


class VerifyExecutor(ModelExecutor):
    """Compare upstream artifacts with the model's reference; the JSON report is an
    output."""

    kind = "verify"
    version = "2"  # 2: report.json holds no timings (same inputs, same bytes)
    Params = VerifyParams
    outputs = {"report": "report.json", "tensors": "tensors.npz"}
    resources = {"cpu": "all"}
    dists = ("torch", "onnx", "onnxruntime", "numpy")
    tolerates_failed_upstream = True

    def describe(self, params: VerifyParams, ctx: DescribeContext) -> Description:
        """The model's description; also checks, before anything is built, that every
        ``candidates:`` and ``tolerances:`` entry names an upstream step."""
        ups = list(ctx.upstream_kinds)
        bases = {u.split("@")[0] for u in ups}
        if params.reference is not None and params.reference not in ups:
            raise RecipeError(f"reference: '{params.reference}' is not an upstream step"
                              f"{did_you_mean(params.reference, ups)}",
                              hint="list it under 'from:' (it is then the reference, not a "
                                   "candidate)")
        for c in params.candidates or []:
            if c not in ups and c not in bases:
                raise RecipeError(f"candidates: '{c}' is not an upstream step"
                                  f"{did_you_mean(c, sorted(set(ups) | bases))}",
                                  hint="list it under 'from:'")
        known = set(ups) | bases | {"default"}
        if params.candidates is not None:
            chosen = {u for u in ups if u in params.candidates
                      or u.split("@")[0] in params.candidates}
            known = chosen | {u.split("@")[0] for u in chosen} | {"default"}
        for key in params.tolerances:
            if key not in known:
                raise RecipeError(f"tolerances: '{key}' names no candidate"
                                  f"{did_you_mean(key, sorted(known))}",
                                  hint="keys are 'default' or candidate step ids: "
                                       + ", ".join(sorted(known)))
        return describe_model_any(params.model, ctx, self.dists)

    def run(self, task: Any) -> Optional[Dict[str, Any]]:
        from buildgraph.backends.evaluate.upstream import check_required, failed_upstream

        p: VerifyParams = self.params(task)
        if p.reference is not None and p.reference not in task.upstream:
            raise StepFailed(f"reference: step '{p.reference}' failed upstream; nothing to "
                             "compare with")
        failed = [f for f in failed_upstream(task, p.candidates) if f != p.reference]
        check_required(p.required, list(task.upstream), failed)
        candidates = self._candidates(task, p, failed)
        reference = self._reference(task, p)
        try:
            return self._verify(task, p, candidates, reference, failed)
        finally:
            reference.close()

    def _reference(self, task: Any, p: VerifyParams) -> Any:
        """The model's own reference (or ``reference: STEP``'s artifact), loaded."""
        from buildgraph.backends.evaluate import reference as refs

        if framework_of_data(task.data) == "torch":
            self.import_torch()  # its example inputs are torch's, whatever the reference
            if p.reference is None:
                spec, model = self.model(task, p.model)
                model.float()
                return refs.TorchReference(p.model, spec, model, task.recipe_dir)
        spec = model_spec_of(task, p.model)
        with self.timed("load_reference"):
            if p.reference is not None:
                return refs.artifact_reference(task, p.model, spec, p.reference, task.threads)
            return refs.model_reference(task, p.model, spec, task.threads)

    def _verify(self, task: Any, p: VerifyParams, candidates: List[str], reference: Any,
                failed: Optional[List[str]] = None) -> Optional[Dict[str, Any]]:
        """Run the reference once, then check each candidate against it; write the report
        and the tensors; fail with the worst error when a candidate fails."""
        ref = self._run_reference(task, p, reference)
        report = self._new_report(task, p, reference, ref, failed or [])
        rows: List[Tuple[str, str, str, Dict[str, Any], Dict[str, Any]]] = []
        timings: Dict[str, Dict[str, float]] = {}
        for cand in candidates:
            entry, cand_rows = self._check_candidate(task, p, cand, reference, ref, timings)
            report["candidates"][cand] = entry
            if entry.get("skipped"):
                continue
            rows += cand_rows
            report["passed"] = report["passed"] and entry["passed"]
        rows.sort(key=lambda r: (r[3]["passed"], -r[3].get("max_abs", float("inf"))))
        with self.timed("report"):
            write_json(task.outputs["report"], report)
            self._save_tensors(task.outputs["tensors"], ref.sets, ref.np_sets, ref.outputs,
                               ref.names, [n for n, _ in input_specs(reference.spec)])
        return self._conclude(task, p, report, rows, timings, len(ref.sets))

    def _run_reference(self, task: Any, p: VerifyParams, reference: Any) -> "_ReferenceRun":
        """The input sets and the reference's outputs on each (on the CPU, fp32)."""
        sets = self._input_sets(task, p, reference.spec, reference)
        ref = _ReferenceRun(sets=sets, np_sets=[reference.to_numpy(t) for _, t in sets])
        with self.timed("reference"):
            for _, tensors in sets:
                ref.names, arrays = reference.run(tensors)
                ref.outputs.append(arrays)

        def rerun(tensors: List[Any]) -> List[Any]:
            with self.timed("reference"):
                return reference.run(tensors)[1]
        ref.rerun = rerun
        task.log(f"reference: {reference.name} ({reference.framework} model '{p.model}'"
                 + (f", step {p.reference}" if p.reference else "") + ")")
        return ref

    @staticmethod
    def _new_report(task: Any, p: VerifyParams, reference: Any, ref: "_ReferenceRun",
                    failed: List[str]) -> Dict[str, Any]:
        """The report's header: the reference, the inputs, the device and math mode."""
        spec = reference.spec
        report: Dict[str, Any] = {
            "schema": 1, "model": p.model,
            "reference": reference.describe(),
            "inputs": [{"name": label, "shapes": {n: list(t.shape) for (n, _), t in
                                                   zip(input_specs(spec), tensors)}}
                       for label, tensors in ref.sets],
            "outputs": ref.names, "candidates": {}, "passed": True}
        if p.device != "cpu":
            report["device"] = p.device
            report["math"] = MATH_MODES[p.math]
        if failed:
            report["failed_upstream"] = failed
            for cand in failed:
                task.log(f"{cand}: failed upstream; not checked")
        return report

    def _check_candidate(self, task: Any, p: VerifyParams, cand: str, reference: Any,
                         ref: "_ReferenceRun", timings: Dict[str, Dict[str, float]]
                         ) -> Tuple[Dict[str, Any], List[Tuple[str, str, str, Dict[str, Any],
                                                               Dict[str, Any]]]]:
        """One candidate's report entry and its table rows: run it, then judge each
        output against the reference's."""
        run = self._run_candidate(task, p, cand, reference, ref, timings)
        entry = run.entry
        if run.skipped:
            entry.update(skipped=run.skipped, passed=True, outputs={})
            if run.device_refusal:
                entry["device_refusal"] = True
            task.log(f"{cand} ({entry.get('runtime', '?')}): not run: {run.skipped}")
            return entry, []
        detected = self._precision_checked(p, run.precision)
        problem = run.problem
        if not problem and run.got and len(run.got[0]) != len(ref.names):
            problem = f"{len(run.got[0])} outputs; the reference has {len(ref.names)}"
        rows = []
        entry["outputs"] = {}
        for i, name in enumerate(ref.names):
            tol = resolve_tolerance(p, cand, name, detected)
            if problem:
                metrics: Dict[str, Any] = {"passed": False, "failures": [problem]}
            else:
                metrics = compare([r[i] for r in run.ref_outputs], [g[i] for g in run.got],
                                  tol, p.topk, p.classifier)
            metrics["tolerance"] = tol
            entry["outputs"][name] = metrics
            rows.append((cand, name, tol["precision"], metrics, tol))
        entry["precision"] = resolve_tolerance(p, cand, ref.names[0] if ref.names else "",
                                               detected)["precision"]
        entry["passed"] = all(m["passed"] for m in entry["outputs"].values())
        task.log(f"{cand} ({entry.get('runtime', '?')}"
                 + (f", {entry['device']}" if entry.get("device") not in (None, "cpu") else "")
                 + "): " + ("ok" if entry["passed"] else "FAILED")
                 + "".join(f"; {n} max|err| {m['max_abs']:.3g}"
                           for n, m in entry["outputs"].items() if "max_abs" in m))
        return entry, rows

    @staticmethod
    def _precision_checked(p: VerifyParams, detected: str) -> str:
        """The precision whose default tolerances apply: an fp32 candidate on a GPU with
        TF32 allowed (``math: tf32``) is checked as tf32."""
        if detected == "fp32" and p.device != "cpu" and p.math == "tf32":
            return "tf32"
        return detected

    def _run_candidate(self, task: Any, p: VerifyParams, cand: str, reference: Any,
                       ref: "_ReferenceRun", timings: Dict[str, Dict[str, float]]
                       ) -> "_CandidateRun":
        """Load the candidate on its runtime (on ``device:``) and run it on every input set
        it takes; a refusal or a failure is recorded, not raised."""
        from buildgraph.engine.runtime import (RuntimeContext, artifact_info, load_runtime,
                                               runtime_for)

        spec = reference.spec
        path = artifact_of(task, cand)
        kind = task.upstream_kinds.get(cand)
        run = _CandidateRun(entry={"kind": kind, "artifact": path.name},
                            ref_outputs=ref.outputs)
        cctx = RuntimeContext(model=p.model, model_spec=spec, recipe_dir=task.recipe_dir,
                              kind=kind, meta=artifact_info(task.upstream[cand]),
                              threads=task.threads, device=p.device, math=p.math,
                              ort_provider=p.onnxruntime_provider,
                              trusted=candidate_trusted(kind, spec))
        start = time.perf_counter()
        load_s = run_s = 0.0
        runtime = None
        try:
            run.entry["runtime"] = runtime_for(kind, path)
            runtime = load_runtime(path, cctx, run.entry["runtime"])
            run.precision = runtime.precision
            load_s = round(time.perf_counter() - start, 4)
            cand_sets, run.ref_outputs, adapted = self._sets_for(
                cand, runtime.input_shapes(), p, spec, ref.sets, ref.np_sets, ref.outputs,
                ref.rerun, reference)
            if adapted:
                run.entry["inputs"] = adapted
                task.log(f"{cand}: built for fixed shapes; inputs drawn at " + ", ".join(
                    f"{k}={v}" for k, v in sorted(adapted.items())))
            start = time.perf_counter()
            for label, arrays in cand_sets:
                try:
                    run.got.append(runtime.run(arrays))
                except StepFailed:
                    raise
                except Exception as exc:  # noqa: BLE001 - a runtime rejecting an input
                    raise StepFailed(f"fails on input {label}: "
                                     f"{short_error(exc)[:300]}") from None
            run_s = round(time.perf_counter() - start, 4)
            run.entry.update(runtime.details)
            run.got = self._by_name(getattr(runtime, "output_names", None), ref.names,
                                    run.got, run.entry)
        except StepFailed as exc:
            if getattr(exc, "skip", False):  # not runnable here: another CPU, no GPU...
                run.skipped = exc.message
                run.device_refusal = bool(getattr(exc, "device_refusal", False))
            else:
                run.problem = exc.message
        finally:
            if runtime is not None:
                runtime.close()
            # timings go to the metadata, not the report: the report is an output, and
            # the same inputs must give the same bytes (``buildgraph repro``)
            timings[cand] = {"load_s": load_s, "run_s": run_s}
            self.seconds["candidates"] = round(self.seconds.get("candidates", 0.0)
                                               + load_s + run_s, 4)
        return run

    def _conclude(self, task: Any, p: VerifyParams, report: Dict[str, Any],
                  rows: List[Tuple[str, str, str, Dict[str, Any], Dict[str, Any]]],
                  timings: Dict[str, Dict[str, float]], n_sets: int) -> Dict[str, Any]:
        """Fail with the worst error (the table in the log), or when nothing could run on
        the device; else the step's metadata."""
        text = table(rows)
        if not report["passed"]:
            task.log("\nworst errors (tolerance that would have passed in 'passes with atol'):")
            task.log(text)
            failed = [(c, o, m) for c, o, _, m, _ in rows if not m["passed"]]
            c, o, m = failed[0]
            more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
            hint = ""
            if "min_passing" in m:
                hint = f"; passes with atol >= {m['min_passing']['atol']:.3g}"
            raise StepFailed(f"verification failed: {c}.{o}: {'; '.join(m['failures'])}"
                             f"{hint}{more}; table in the log")
        entries = report["candidates"]
        refused = {c: e["skipped"] for c, e in entries.items() if e.get("device_refusal")}
        if refused and all(e.get("skipped") for e in entries.values()):
            c, why = next(iter(sorted(refused.items())))
            raise StepFailed(f"nothing ran on {p.device}: {c}: {why}"
                             + (f" (and {len(entries) - 1} more; the report lists each)"
                                if len(entries) > 1 else ""))
        task.log(text)
        return {"passed": True, "inputs": n_sets, "seconds": self.seconds,
                "candidate_seconds": timings,
                "skipped": {c: e["skipped"] for c, e in entries.items() if e.get("skipped")},
                "failed_upstream": report.get("failed_upstream", []),
                "max_abs": {c: {o: m.get("max_abs") for o, m in e["outputs"].items()}
                            for c, e in entries.items()}}

    @staticmethod
    def _by_name(names: Optional[List[str]], ref_names: List[str], got: List[List[Any]],
                 entry: Dict[str, Any]) -> List[List[Any]]:
        """The candidate's outputs in the reference's order when it names the same outputs
        (an artifact may order them differently); else as they come, their names reported."""
        if not names or names == ref_names:
            return got
        if sorted(names) == sorted(ref_names) and len(set(names)) == len(names):
            entry["output_order"] = names
            order = [names.index(n) for n in ref_names]
            return [[outs[i] for i in order] for outs in got]
        entry["output_names"] = names  # renamed (output_names:): compared by position
        return got

    @staticmethod
    def _candidates(task: Any, p: VerifyParams, failed: Sequence[str] = ()) -> List[str]:
        ups = [u for u in task.upstream if u != p.reference]
        if p.candidates is None:
            chosen = ups
        else:
            chosen = []
            for c in p.candidates:
                found = [u for u in ups if u == c or u.split("@")[0] == c]
                if not found and any(f == c or f.split("@")[0] == c for f in failed):
                    continue  # failed upstream: listed in the report
                if not found:
                    raise StepFailed(f"candidate '{c}' is not an upstream step"
                                     f"{did_you_mean(c, ups)}; list it under 'from:'")
                chosen += [u for u in found if u not in chosen]
        if not chosen:
            if failed:
                raise StepFailed("nothing to verify: every candidate failed upstream ("
                                 + ", ".join(failed) + ")")
            raise StepFailed("nothing to verify: list the steps to check under 'from:'")
        known = set(chosen) | {c.split("@")[0] for c in chosen} | {"default"} | \
            set(failed) | {f.split("@")[0] for f in failed}
        for key in p.tolerances:
            if key not in known:
                raise StepFailed(f"tolerances: '{key}' is not a candidate"
                                 f"{did_you_mean(key, sorted(known))}")
        return chosen

    @staticmethod
    def _sets_for(cand: str, shapes: List[List[Any]], p: VerifyParams, spec: Mapping[str, Any],
                  sets: List[Tuple[str, List[Any]]], np_sets: List[List[Any]],
                  ref_out: List[List[Any]], reference_for: Any, reference: Any
                  ) -> Tuple[List[Tuple[str, List[Any]]], List[List[Any]], Dict[str, int]]:
        """The input sets a candidate can take, with their reference outputs.

        A candidate built for fixed sizes of the model's named dims (a TVM library compiled
        for ``batch: 1``) gets the random sets redrawn at those sizes, with the same seeds;
        sample inputs of another shape are left out for it. When the recipe's ``dims:`` asks
        for a size the candidate cannot take, that is one line naming the candidate, the shape
        it was built for and the ``dims`` to set."""
        specs = input_specs(spec)
        fixed: Dict[str, int] = {}
        for (name, tspec), shape in zip(specs, shapes):
            declared = tspec.get("shape") or []
            if len(declared) != len(shape):
                continue
            for dim, actual in zip(declared, shape):
                if isinstance(dim, str) and isinstance(actual, int) and actual > 0:
                    fixed[dim] = actual
        sizes = dim_sizes(spec)
        changed = {d: v for d, v in fixed.items() if d in sizes}
        if not shapes or not changed:
            return [(label, arrays) for (label, _), arrays in zip(sets, np_sets)], ref_out, {}
        for dim, size in changed.items():
            asked = p.dims.get(dim)
            if asked and any(v != size for v in asked):
                built = ", ".join(f"{n}{list(s)}" for (n, _), s in zip(specs, shapes))
                raise StepFailed(f"candidate '{cand}' was built for {built} and cannot take "
                                 f"{dim} = {', '.join(str(v) for v in asked if v != size)}; "
                                 f"set dims: {{{dim}: [{size}]}} on this verify step, or "
                                 f"build '{cand}' for that size")
        if all(sizes.get(d) == v for d, v in changed.items()) and not p.dims:
            return [(label, arrays) for (label, _), arrays in zip(sets, np_sets)], ref_out, {}
        seed = p.seed if p.seed is not None else int(spec.get("seed", 0)) + 1
        out_sets: List[Tuple[str, List[Any]]] = []
        out_ref: List[List[Any]] = []
        for i, ((label, tensors), arrays, ref) in enumerate(zip(sets, np_sets, ref_out)):
            if label.startswith("random"):
                want = {d: v[i % len(v)] for d, v in p.dims.items() if v}
                want.update(changed)
                redrawn = reference.make_inputs(seed + i, want)
                out_sets.append((label, reference.to_numpy(redrawn)))
                out_ref.append(reference_for(redrawn))
            elif all(len(a.shape) == len(s) and all(not isinstance(d, int) or d <= 0 or d == n
                                                     for d, n in zip(s, a.shape))
                     for a, s in zip(arrays, shapes)):
                out_sets.append((label, arrays))
                out_ref.append(ref)
        return out_sets, out_ref, changed

    @staticmethod
    def _input_sets(task: Any, p: VerifyParams, spec: Mapping[str, Any], reference: Any
                    ) -> List[Tuple[str, List[Any]]]:
        seed = p.seed if p.seed is not None else int(spec.get("seed", 0)) + 1
        known = set(dim_sizes(spec))
        for dim in p.dims:
            if dim not in known:
                raise StepFailed(f"dims: the model has no named dim '{dim}'"
                                 f"{did_you_mean(dim, sorted(known))}")
        sets = []
        for i in range(p.random):
            sizes = {d: v[i % len(v)] for d, v in p.dims.items() if v}
            sets.append((f"random{i}", reference.make_inputs(seed + i, sizes)))
        if p.samples:
            samples = reference.samples()
            if samples:
                sets.append(("sample", samples))
        if not sets:
            raise StepFailed("no inputs to verify with: random is 0 and the model has no "
                             "sample_inputs")
        return sets

    @staticmethod
    def _save_tensors(path: Path, sets: List[Tuple[str, List[Any]]], np_sets: List[List[Any]],
                      ref_out: List[List[Any]], out_names: List[str], in_names: List[str]
                      ) -> None:
        """``SET.INPUT`` and ``SET.reference.OUTPUT`` arrays, e.g. ``random0.x``."""
        import numpy as np

        arrays: Dict[str, Any] = {}
        for (label, _), arrays_in, outs in zip(sets, np_sets, ref_out):
            for n, a in zip(in_names, arrays_in):
                arrays[f"{label}.{n}"] = a
            for n, a in zip(out_names, outs):
                arrays[f"{label}.reference.{n}"] = a
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
