"""``onnx.export``: ``torch.onnx.export`` with either exporter, then ``onnx.checker`` and
shape inference on the result.

``exporter: auto`` (the default) tries, in order, the dynamo exporter with the dynamic dims, the
dynamo exporter with static shapes, and the legacy exporter, and keeps the first file written;
the metadata says which (``exporter``, and ``exporter_failures``: why the ones before failed),
and the log too. Why: a user asked for an ONNX file, and the dynamo exporter fails on some
models only because of their dynamic shapes (Swin-style windows, a T5 encoder's relative
positions: "Cannot view a tensor with shape ..."). The requested exporter is the key parameter;
the one chosen is an outcome, recorded with the result (a cached result restores it), and the
same inputs and packages choose the same one. ``exporter: dynamo`` or ``exporter: legacy``
keeps that one exporter and fails with its error.

``exporter: dynamo`` is the torch.export-based exporter; ``exporter: legacy`` is
the TorchScript-based one (deprecated in torch, kept for opsets below 18 and for models
torch.export cannot capture). Why dynamo first: it is torch's own default since 2.9 and the
only one developed further; it covers the newer aten ops through onnxscript's torchlib; its
dynamic dims are checked by torch.export (a data-dependent branch fails the export loudly
instead of being baked in as the legacy tracer does); and both fold BatchNorm the same way.
Its costs: it is slower (seconds, not a fraction of one) and cannot write opsets below 18.

Models over 2 GB (protobuf's limit) need ``external_data: true`` and a second declared output
for the weights: ``outputs: {model: model.onnx, data: model.onnx.data}``. The ``.onnx`` refers
to the data file by name, so the two must stay side by side (they do in the build directory).

Outputs: the model's tensors in a fixed order, named as
:mod:`buildgraph.backends.torch.outputs` names them (``logits``, ``last_hidden_state``...;
``output_names`` renames them). A model returning a dict, a ``ModelOutput`` or a named tuple, or
whose spec selects ``outputs:``, is exported through a wrapper returning them as a tuple, and an
output that is not a tensor (a ``DynamicCache``) fails naming its path and how to drop it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple

from pydantic import Field, model_validator

from buildgraph.backends.torch import model as torchmodel
from buildgraph.errors import StepFailed
from buildgraph.backends.torch.base import ModelExecutor, ModelParams, out_path
from buildgraph.backends.torch.portable import portable_onnx_program
from buildgraph.backends.onnx.graph import PROTOBUF_LIMIT, check_onnx, graph_summary, save_onnx

DYNAMO_MIN_OPSET = 18


class OnnxExportParams(ModelParams):
    dynamic: Optional[Dict[str, Dict[int, str]]] = Field(
        None, description="{input: {axis: dim name}}; default: the named dims of the model's "
                          "input shapes; {} exports static shapes")
    exporter: Literal["auto", "dynamo", "legacy"] = Field(
        "auto", description="auto: dynamo, then dynamo with static shapes, then legacy (the "
                            "metadata says which wrote the file); dynamo: torch.export-based; "
                            "legacy: TorchScript-based")
    opset: int = Field(18, ge=7, description="ONNX opset of the default domain")
    input_names: Optional[List[str]] = Field(None, description="default: the model's input "
                                                               "names")
    output_names: Optional[List[str]] = Field(None, description="default: output (one "
                                              "tensor), output_0.. (tuple) or the dict keys")
    dynamic_outputs: Optional[Dict[str, Dict[int, str]]] = Field(
        None, description="legacy exporter: dynamic axes of outputs (default: axis 0 of every "
                          "output is dynamic when axis 0 of an input is)")
    external_data: bool = Field(False, description="write weights to the 'data' output (needed "
                                                   "over 2 GB)")
    optimize: bool = Field(True, description="dynamo: run onnxscript's graph optimizer")
    constant_folding: bool = Field(True, description="legacy: do_constant_folding")
    check: bool = Field(True, description="onnx.checker (full) and strict shape inference")

    @model_validator(mode="after")
    def _opset_supported(self) -> "OnnxExportParams":
        if self.exporter == "dynamo" and self.opset < DYNAMO_MIN_OPSET:
            raise ValueError(f"the dynamo exporter writes opset {DYNAMO_MIN_OPSET} or newer; "
                             f"got opset {self.opset} (use exporter: legacy for older opsets)")
        return self


def onnx_error_message(exc: BaseException, exporter: str, opset: int) -> str:
    """One line naming the unsupported operator and opset when that is the cause."""
    parts = []
    e: Optional[BaseException] = exc
    while e is not None and len(parts) < 6:
        parts.append(str(e))
        e = e.__cause__ or e.__context__
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(parts))
    where = f"{exporter} exporter, opset {opset}"
    m = re.search(r"OpOverload\(op='([^']+)', overload='([^']+)'\)", text)
    if m:
        op = f"{m.group(1)}.{m.group(2)}" if m.group(2) != "default" else m.group(1)
        return (f"ONNX export ({where}) failed: operator {op} is not supported (no ONNX "
                "function is registered for it); implement it with "
                "custom_translation_table, rewrite the model, or try exporter: legacy")
    m = re.search(r"operator '([^']+)' to ONNX opset version (\d+) is not supported", text)
    if m:
        later = re.search(r"added in version (\d+)", text)
        hint = f"; it needs opset {later.group(1)} or newer" if later else \
            "; rewrite the model or try exporter: dynamo"
        return f"ONNX export ({where}) failed: operator {m.group(1)} is not supported at " \
               f"opset {m.group(2)}{hint}"
    summary = re.search(r"## Exception summary\s*\n\s*(.+)", text)
    if summary:
        line = re.sub(r"<class '([^']+)'>", lambda mm: mm.group(1).rsplit(".", 1)[-1],
                      summary.group(1).strip())
        return f"ONNX export ({where}) failed: {line[:400]}"
    return f"ONNX export ({where}) failed: {torchmodel.short_error(exc, lines=2)[:400]}"


class OnnxExportExecutor(ModelExecutor):
    """torch.onnx.export (dynamo or legacy exporter), checked and shape-inferred."""

    kind = "onnx.export"
    version = "4"  # 4: exporter: auto
    Params = OnnxExportParams
    outputs = {"model": "model.onnx"}
    dists = ("torch", "onnx", "onnxscript")

    def run(self, task: Any) -> Optional[Dict[str, Any]]:
        torch = self.import_torch()
        import onnx

        p: OnnxExportParams = self.params(task)
        spec, model = self.model(task, p.model)
        dest = out_path(task)
        data = task.outputs.get("data")
        if p.external_data and data is None:
            raise StepFailed("external_data: true needs a second output for the weights: "
                             "outputs: {model: model.onnx, data: model.onnx.data}")
        if data is not None and not p.external_data:
            raise StepFailed("a 'data' output is declared but external_data is false")
        dynamic = torchmodel.dynamic_dims(spec, p.dynamic)
        model_inputs = [n for n, _ in torchmodel.input_specs(spec)]
        in_names = p.input_names or model_inputs
        if len(in_names) != len(model_inputs):
            raise StepFailed(f"input_names has {len(in_names)} names; the model has "
                             f"{len(model_inputs)} inputs")
        big = sum(t.numel() * t.element_size() for t in model.state_dict().values()) \
            > PROTOBUF_LIMIT * 0.9
        onnx_file = dest if not (p.external_data or big) else task.work_dir / "export.onnx"
        failures: Dict[str, str] = {}
        chosen = None
        for exporter, dims in self._attempts(p, dynamic):
            label = exporter if dims or not dynamic else f"{exporter} (static shapes)"
            try:
                example = self._export(task, torch, p, spec, model, exporter, dims, in_names,
                                       onnx_file, big)
            except StepFailed as exc:
                if p.exporter != "auto":
                    raise
                failures[label] = exc.message
                task.log(f"exporter: auto: {label} failed: {exc.message}")
                continue
            chosen = (exporter, dims, label)
            break
        if chosen is None:
            raise StepFailed("ONNX export failed with every exporter (exporter: auto): "
                             + "; ".join(f"{k}: {v}" for k, v in failures.items())[:900],
                             hint="the step's log has each exporter's error")
        exporter, dims, label = chosen
        if failures:
            task.log(f"exporter: auto: the file is from the {label} exporter")
        if onnx_file != dest:
            with self.timed("save"):
                save_onnx(onnx.load(str(onnx_file)), dest, data)
        if p.check:
            with self.timed("check"):
                check_onnx(dest, task.log)
        with self.timed("summary"):
            summary = graph_summary(onnx.load(str(dest), load_external_data=False))
        if summary["opset"] != p.opset:
            raise StepFailed(f"asked for opset {p.opset}, but the {exporter} exporter wrote "
                             f"opset {summary['opset']}")
        summary.update(exporter=exporter, exporter_requested=p.exporter,
                       static_shapes=bool(dynamic) and not dims,
                       exporter_failures=failures, external_data=data is not None,
                       bytes=dest.stat().st_size + (data.stat().st_size if data else 0),
                       example=torchmodel.describe_inputs(spec, example),
                       seconds=self.seconds)
        return summary

    @staticmethod
    def _attempts(p: OnnxExportParams, dynamic: Dict[str, Dict[int, str]]
                  ) -> List[Tuple[str, Dict[str, Dict[int, str]]]]:
        """(exporter, dynamic dims) to try in order."""
        if p.exporter != "auto":
            return [(p.exporter, dynamic)]
        if p.opset < DYNAMO_MIN_OPSET:
            return [("legacy", dynamic)]
        return [("dynamo", dynamic)] + ([("dynamo", {})] if dynamic else []) + \
            [("legacy", dynamic)]

    def _export(self, task: Any, torch: Any, p: OnnxExportParams, spec: Mapping[str, Any],
                model: Any, exporter: str, dynamic: Dict[str, Dict[int, str]],
                in_names: List[str], onnx_file: Path, big: bool) -> List[Any]:
        """One exporter's attempt: writes ``onnx_file``; returns the example inputs."""
        import warnings

        sizes = torchmodel.export_sizes(spec, dynamic, task.log) if exporter == "dynamo" \
            and dynamic else torchmodel.dim_sizes(spec)
        example = torchmodel.shaped_inputs(spec, int(spec.get("seed", 0)), sizes)
        with self.timed("eager"):
            eager_out = torchmodel.run_eager(p.model, spec, model, example, task.recipe_dir)
        target, names = torchmodel.export_module(model, spec, eager_out, f"model '{p.model}'")
        out_names = p.output_names or names
        if len(out_names) != len(names):
            raise StepFailed(f"output_names has {len(out_names)} names; the model has "
                             f"{len(names)} outputs ({', '.join(names)})")
        try:
            with warnings.catch_warnings(), self.timed("export"):
                warnings.simplefilter("ignore", DeprecationWarning)
                if exporter == "dynamo":
                    program = torch.onnx.export(
                        target, tuple(example), dynamo=True, opset_version=p.opset,
                        input_names=in_names, output_names=out_names,
                        dynamic_shapes=torchmodel.torch_dynamic_shapes(spec, dynamic),
                        optimize=p.optimize, external_data=p.external_data or big)
                    portable_onnx_program(program, task.recipe_dir)
                    program.save(str(onnx_file), external_data=p.external_data or big)
                else:
                    torch.onnx.export(
                        target, tuple(example), str(onnx_file), dynamo=False,
                        opset_version=p.opset, input_names=in_names, output_names=out_names,
                        dynamic_axes=self._legacy_axes(dynamic, in_names, out_names, p,
                                                       spec) or None,
                        do_constant_folding=p.constant_folding)
        except StepFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - exporter errors have many types
            task.log(f"{type(exc).__name__}: {exc}")
            raise StepFailed(onnx_error_message(exc, exporter, p.opset)) from None
        return example

    @staticmethod
    def _legacy_axes(dynamic: Mapping[str, Mapping[int, str]], in_names: List[str],
                     out_names: List[str], p: OnnxExportParams, spec: Mapping[str, Any]
                     ) -> Dict[str, Dict[int, str]]:
        model_names = [n for n, _ in torchmodel.input_specs(spec)]
        axes = {in_names[model_names.index(k)]: dict(v) for k, v in dynamic.items()}
        if p.dynamic_outputs is not None:
            axes.update({k: dict(v) for k, v in p.dynamic_outputs.items()})
        else:
            batch = next((v[0] for v in dynamic.values() if 0 in v), None)
            if batch is not None:
                axes.update({n: {0: batch} for n in out_names})
        return axes
