"""``torchscript``: compile a model to TorchScript by ``trace`` or ``script``, saved with
``torch.jit.save`` (loadable from C++ with ``torch::jit::load`` and from Python with
``torch.jit.load``).

Tracing records the tensor operations one example input executed: the branch not taken by
data-dependent control flow is lost, silently. So after tracing, the traced and the eager module
run on a second, different input (the example negated, with dynamic dims one larger) and the
step fails (``divergence: fail``, the default) or warns (``warn``) when they disagree; every
TracerWarning is written to the log and returned in the metadata. Scripting compiles the
Python source; a construct TorchScript does not support fails the step with the offending
source line.

A model that returns a dict, a dataclass (Hugging Face's ``ModelOutput``) or a named tuple, or
whose spec selects ``outputs:``, is traced through a wrapper that returns its tensors as a
tuple in a fixed order (the tracer refuses dicts); a scripted model is scripted first and
wrapped afterwards, so its control flow is kept. The output names are stored in the archive
(extra file ``buildgraph_outputs.json``; ``torch.jit.load(path, _extra_files=...)`` reads it)
and returned as metadata ``outputs``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

from pydantic import Field

from buildgraph.backends.torch import model as torchmodel
from buildgraph.errors import StepFailed
from buildgraph.backends.torch.base import ModelExecutor, ModelParams, out_path
from buildgraph.backends.torch.portable import drop_torchscript_debug


class TorchScriptParams(ModelParams):
    mode: Literal["trace", "script"] = Field("trace", description="torch.jit.trace or "
                                                                  "torch.jit.script")
    divergence: Literal["fail", "warn", "off"] = Field(
        "fail", description="trace: when traced and eager disagree on a second input")
    check_atol: float = Field(1e-5, ge=0, description="trace: tolerance of that check")
    check_rtol: float = Field(1e-4, ge=0)
    freeze: bool = Field(False, description="torch.jit.freeze the result (inline weights "
                                            "and attributes)")


def script_error_message(exc: BaseException, recipe_dir: Optional[Path] = None) -> str:
    """One line from a TorchScript frontend error: what, where (file:line) and the line."""
    text = str(exc)
    lines = text.splitlines()
    head = next((ln.strip() for ln in lines if ln.strip()), type(exc).__name__).rstrip(":")
    where = ""
    code = ""
    for i, line in enumerate(lines):
        m = re.match(r'\s*File "([^"]+)", line (\d+)', line)
        if m and not where:
            path = Path(m.group(1))
            if recipe_dir is not None:
                try:
                    path = path.resolve().relative_to(Path(recipe_dir).resolve())
                except ValueError:
                    pass
            where = f"{path}:{m.group(2)}"
        if "<--- HERE" in line and i > 0 and not code:
            code = lines[i - 1].strip()
    msg = f"torch.jit.script failed: {head}"
    if where:
        msg += f" at {where}"
    if code:
        msg += f": `{code}`"
    return msg


class TorchScriptExecutor(ModelExecutor):
    """TorchScript by trace (with a divergence check) or script."""

    kind = "torchscript"
    version = "4"  # 3: a fresh TorchScript compilation unit; 4: no debug records (paths)
    Params = TorchScriptParams
    outputs = {"model": "model.ts"}

    def run(self, task: Any) -> Optional[Dict[str, Any]]:
        torch = self.import_torch()
        from buildgraph.backends.torch.fresh import reset_torchscript_state

        reset_torchscript_state()  # the same bytes whatever this worker compiled before
        p: TorchScriptParams = self.params(task)
        spec, model = self.model(task, p.model)
        example = torchmodel.make_inputs(spec, int(spec.get("seed", 0)))
        with self.timed("eager"):
            eager_out = torchmodel.run_eager(p.model, spec, model, example, task.recipe_dir)
        what = f"model '{p.model}'"
        target, names = torchmodel.export_module(model, spec, eager_out, what)
        meta: Dict[str, Any] = {"mode": p.mode,
                                "example": torchmodel.describe_inputs(spec, example)}
        if p.mode == "script":
            try:
                with warnings.catch_warnings(), self.timed("script"):
                    warnings.simplefilter("ignore", DeprecationWarning)
                    compiled = torch.jit.script(model)
            except Exception as exc:  # noqa: BLE001 - frontend errors have several types
                task.log(str(exc))
                message = script_error_message(exc, task.recipe_dir)
                if torchmodel.source_kind(spec["source"]) == "transformers":
                    message += ("; transformers models are not scriptable (their code uses "
                                "Python TorchScript does not compile): use mode: trace, or "
                                "torch.export")
                raise StepFailed(message) from None
            if target is not model:
                # trace a flattening wrapper around the scripted module: the call into it
                # stays a call, with its control flow
                wrapper, _ = torchmodel.export_module(compiled, spec, eager_out, what)
                with self.timed("script"):
                    compiled, _ = self._trace(task, wrapper, example)
        else:
            with self.timed("trace"):
                compiled, tracer_warnings = self._trace(task, target, example)
            meta["tracer_warnings"] = tracer_warnings
            if p.divergence != "off":
                with self.timed("check"):
                    meta["divergence"] = self._check_divergence(task, p, spec, model, compiled,
                                                            example, tracer_warnings)
        with self.timed("save"):
            if p.freeze:
                compiled = torch.jit.freeze(compiled.eval())
            torch.jit.save(compiled, str(out_path(task)),
                           _extra_files={torchmodel.NAMES_FILE:
                                         torchmodel.names_record(spec, names)})
            meta["debug_records_dropped"] = drop_torchscript_debug(out_path(task))
        meta["outputs"] = names
        meta["seconds"] = self.seconds
        return meta

    def _trace(self, task: Any, model: Any, example: List[Any]) -> Tuple[Any, List[str]]:
        import torch

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                traced = torch.jit.trace(model, tuple(example), check_trace=False)
            except Exception as exc:  # noqa: BLE001
                task.log(str(exc))
                raise StepFailed(f"torch.jit.trace failed: {torchmodel.short_error(exc)}"
                                 ) from None
        found: List[str] = []
        for w in caught:
            if issubclass(w.category, torch.jit.TracerWarning):
                first = str(w.message).split(". ")[0].strip()
                where = _rel(w.filename, task.recipe_dir)
                entry = f"{where}:{w.lineno}: {first}"
                if entry not in found:
                    found.append(entry)
                    task.log(f"TracerWarning: {entry}")
        return traced, found

    def _check_divergence(self, task: Any, p: TorchScriptParams, spec: Dict[str, Any],
                          model: Any, traced: Any, example: List[Any],
                          tracer_warnings: List[str]) -> Dict[str, Any]:
        import torch

        second = _second_input(spec, example)
        what = "the example negated" if any(t.is_floating_point() for t in example) else \
            "other random values"
        eager = torchmodel.named_outputs(torchmodel.run_eager(p.model, spec, model, second), spec)
        problem = ""
        worst = 0.0
        try:
            with torch.inference_mode():
                got = torchmodel.flatten_outputs(traced(*second))
        except Exception as exc:  # noqa: BLE001 - shapes baked in by the trace
            problem = f"the traced module fails on it: {torchmodel.short_error(exc)}"
            got = []
        if not problem:
            if len(got) != len(eager):
                problem = f"{len(got)} outputs instead of {len(eager)}"
            for (name, e), (_, g) in zip(eager, got):
                if tuple(e.shape) != tuple(g.shape):
                    problem = f"output {name} has shape {list(g.shape)} instead of " \
                              f"{list(e.shape)}"
                    break
                ef, gf = e.double(), g.double()
                err = (gf - ef).abs()
                excess = float((err - p.check_rtol * ef.abs()).max()) if err.numel() else 0.0
                worst = max(worst, float(err.max()) if err.numel() else 0.0)
                if excess > p.check_atol or bool(torch.isnan(gf).ne(torch.isnan(ef)).any()):
                    problem = (f"output {name} max |err| {float(err.max()):.3g} > atol "
                               f"{p.check_atol:g} + rtol {p.check_rtol:g}*|eager|")
                    break
        result = {"input": what, "max_abs_err": worst, "diverged": bool(problem)}
        if problem:
            cause = f"; TracerWarning at {tracer_warnings[0]}" if tracer_warnings else ""
            message = (f"traced module diverges from eager on a second input ({what}): "
                       f"{problem}{cause}; tracing keeps only the path the example took "
                       "(use mode: script or torch.export for data-dependent control flow)")
            if p.divergence == "fail":
                raise StepFailed(message)
            task.log(f"warning: {message}")
            result["message"] = message
        return result


def _second_input(spec: Dict[str, Any], example: List[Any]) -> List[Any]:
    """A different input: floats with the sign of their mean flipped (the example negated
    when no dim is dynamic; this flips sign-dependent branches), other dtypes redrawn, and
    named (dynamic) dims one larger."""
    sizes = torchmodel.dim_sizes(spec)
    other = torchmodel.make_inputs(spec, int(spec.get("seed", 0)) + 1,
                                   {k: v + 1 for k, v in sizes.items()})
    second = []
    for ex, o in zip(example, other):
        if not ex.is_floating_point():
            second.append(o)
        elif not sizes:
            second.append(-ex)
        else:
            same = bool((o.double().mean() >= 0) == (ex.double().mean() >= 0))
            second.append(-o if same else o)
    return second


def _rel(filename: str, recipe_dir: Path) -> str:
    try:
        return str(Path(filename).resolve().relative_to(Path(recipe_dir).resolve()))
    except ValueError:
        return filename
