"""``torch.export``: capture the model with ``torch.export.export`` and save the
ExportedProgram as a ``.pt2`` archive (``torch.export.load`` reads it back; ``.module()`` runs
it).

Dynamic dims become ``torch.export.Dim`` objects: from the step's ``dynamic:`` mapping
(``{input: {axis: name}}``) or, without one, from the named dims of the model's input shapes,
with ranges from the model's ``dims:``. A dynamic dim whose example size is 1 is exported from
an example of size 2, because torch.export specializes sizes 0 and 1 (the log says so).

The program returns a tuple of tensors (:func:`buildgraph.backends.torch.outputs.export_module`
wraps a model returning a dict, a ``ModelOutput`` or a named tuple, or whose spec selects
``outputs:``), so its output spec names no class of the model's library: a ``.pt2`` from a
transformers model loads where transformers is not installed. The output names are in the
archive's extra file ``buildgraph_outputs.json`` and in the metadata ``outputs``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

from pydantic import Field

from buildgraph.backends.torch import model as torchmodel
from buildgraph.errors import StepFailed
from buildgraph.backends.torch.base import ModelExecutor, ModelParams, out_path
from buildgraph.backends.torch.portable import portable_program


# Attributes every torch.fx.GraphModule has: a submodule or parameter path through one of these
# names is shadowed when torch turns the program back into a module.
_GRAPH_MODULE_ATTRS = ("meta", "graph", "code", "forward", "training")


def check_unlifts(program: Any) -> None:
    """Fail now, in one line, when the program cannot be turned back into a module: every
    consumer of the ``.pt2`` (verify, benchmark, ``tvm.compile``, a user's
    ``torch.export.load(...).module()``) would fail on it later, far from the cause. torch 2.13
    cannot do it for a submodule named ``meta`` (``GraphModule.meta`` shadows it)."""
    try:
        program.module()
    except Exception as exc:  # noqa: BLE001 - torch's unlift errors have no common type
        clash = sorted({part for name in program.state_dict
                        for part in name.split(".")[:-1] if part in _GRAPH_MODULE_ATTRS})
        hint = (f"; the model has a submodule named {', '.join(map(repr, clash))}, which "
                "torch.fx.GraphModule's attribute of that name shadows: rename it"
                if clash else "")
        raise StepFailed("torch.export made a program that does not load back as a module "
                         f"(ExportedProgram.module()): {torchmodel.short_error(exc)[:300]}"
                         f"{hint}") from None


class TorchExportParams(ModelParams):
    dynamic: Optional[Dict[str, Dict[int, str]]] = Field(
        None, description="{input: {axis: dim name}}; default: the named dims of the model's "
                          "input shapes; {} exports static shapes")
    strict: bool = Field(False, description="torch.export strict mode (TorchDynamo tracing)")


def export_program(task: Any, name: str, spec: Mapping[str, Any], model: Any,
                   dynamic_param: Optional[Mapping[str, Mapping[int, str]]], strict: bool,
                   what: str = "torch.export") -> Tuple[Any, Dict[str, Dict[int, str]],
                                                        List[Any], List[str]]:
    """torch.export.export with the model's dynamic dims: (program, dynamic dims, example,
    output names)."""
    import torch

    dynamic = torchmodel.dynamic_dims(spec, dynamic_param)
    sizes = torchmodel.export_sizes(spec, dynamic, task.log)
    example = torchmodel.shaped_inputs(spec, int(spec.get("seed", 0)), sizes)
    eager = torchmodel.run_eager(name, spec, model, example, task.recipe_dir)
    target, names = torchmodel.export_module(model, spec, eager, f"model '{name}'")
    shapes = torchmodel.torch_dynamic_shapes(spec, dynamic)
    try:
        return torch.export.export(target, tuple(example), dynamic_shapes=shapes,
                                   strict=strict), dynamic, example, names
    except Exception as exc:  # noqa: BLE001 - torch.export raises many error types
        task.log(str(exc))
        raise StepFailed(f"{what} failed: {torchmodel.short_error(exc, lines=2)}") from None


def dim_symbols(program: Any, spec: Mapping[str, Any],
                dynamic: Mapping[str, Mapping[int, str]]) -> Dict[str, str]:
    """{dim name: torch symbol} (``seq: s53``): torch names a dim's symbol itself; the
    archive's record keeps the names by input and axis, which tvm.compile binds by."""
    import torch

    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    user = [nodes[n].meta.get("val") for n in program.graph_signature.user_inputs
            if n in nodes]
    order = [n for n, _ in torchmodel.input_specs(spec)]
    out: Dict[str, str] = {}
    for inp, axes in dynamic.items():
        i = order.index(inp) if inp in order else -1
        val = user[i] if 0 <= i < len(user) else None
        for axis, name in axes.items():
            if isinstance(val, torch.Tensor) and axis < val.dim() and \
                    not isinstance(val.shape[axis], int):
                out.setdefault(name, str(val.shape[axis]))
    return dict(sorted(out.items()))


class TorchExportExecutor(ModelExecutor):
    """torch.export to a .pt2 archive, with dynamic dims."""

    kind = "torch.export"
    version = "4"  # 4: the archive's record maps dim names to inputs and axes
    Params = TorchExportParams
    outputs = {"model": "model.pt2"}

    def run(self, task: Any) -> Optional[Dict[str, Any]]:
        torch = self.import_torch()

        p: TorchExportParams = self.params(task)
        spec, model = self.model(task, p.model)
        with self.timed("export"):
            program, dynamic, example, names = export_program(task, p.model, spec, model,
                                                              p.dynamic, p.strict)
        with self.timed("check"):
            check_unlifts(program)
        dest = out_path(task)
        with self.timed("save"):
            portable_program(program, task.recipe_dir)
            torch.export.save(program, str(dest), extra_files={
                torchmodel.NAMES_FILE: torchmodel.names_record(spec, names, dynamic)})
        nodes = list(program.graph.nodes)
        return {"nodes": len(nodes),
                "ops": sum(1 for n in nodes if n.op == "call_function"),
                "dynamic": {k: {str(a): d for a, d in v.items()} for k, v in dynamic.items()},
                "dim_symbols": dim_symbols(program, spec, dynamic),
                "range_constraints": {str(k): str(v)
                                      for k, v in program.range_constraints.items()},
                "example": torchmodel.describe_inputs(spec, example),
                "outputs": names,
                "bytes": dest.stat().st_size, "seconds": self.seconds}
