"""Static models for TVM's importers when a step binds dims.

TVM's importers handle symbolic shapes poorly: its ONNX frontend cannot convert a Reshape whose
target shape a dynamic export computes in the graph ("Reshape expects the input tensor to have
known shape", "Cannot use and / or / not operator to Expr"), and binding the dims after the
import is too late, because the importer has already given up. So when ``dims:`` binds a dim,
the model handed to the importer already has that size:

- ONNX: the bound input dims are written into the graph, the stale intermediate shapes the
  exporter recorded are dropped, and onnxslim (else onnxscript's optimizer) folds the shape
  arithmetic into constants (onnxsim 0.8 puts its own ``unk__`` dims back on the inputs and
  does not help);
- ``.pt2``: the program is re-exported (``torch.export`` of ``program.module()``) from
  examples of the bound sizes, with the dims left unbound still dynamic under their names.

Dims left unbound keep the symbolic path. Dims are bound by the names of the model spec: an
ONNX graph carries them as ``dim_param``; a ``.pt2`` from ``torch.export`` carries them in its
``buildgraph_outputs.json`` record (``dims: {name: [[input, axis], ...]}``), since torch names
its symbols ``s43``, ``s53``.

Imported lazily (onnx, onnxscript, torch inside the functions)."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from buildgraph.errors import StepFailed

NAMES_FILE = "buildgraph_outputs.json"  # the torch backend's archive record (outputs.NAMES_FILE)


def _no_dim(name: str, known: Set[str]) -> StepFailed:
    from buildgraph.errors import did_you_mean

    return StepFailed(f"dims: the model has no dynamic dim '{name}'"
                      f"{did_you_mean(name, sorted(known))} (its dynamic dims: "
                      + (", ".join(sorted(known)) or "none") + ")",
                      hint="dims bind the named dims of the model's inputs; 'batch' also "
                           "names the leading dynamic dim of every input")


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------

def bind_onnx(model: Any, dims: Mapping[str, int], log: Any = None
              ) -> Tuple[Any, Optional[Dict[str, List[int]]]]:
    """(model with ``dims`` written into its inputs and shapes propagated, the input shapes
    when every dim is now static else None). ``model`` is changed in place."""
    from buildgraph.backends.onnx.graph import onnx_model_inputs

    inputs = onnx_model_inputs(model)
    named = {d for spec in inputs.values() for d in spec.dims if isinstance(d, str)}
    leading = any(spec.dims and not (isinstance(spec.dims[0], int) and spec.dims[0] > 0)
                  for spec in inputs.values())
    dynamic = named or leading
    for name in dims:
        if name not in named and not (name == "batch" and leading):
            if not dynamic:
                if log:
                    log(f"dims: {name} ignored: the model has static shapes")
                continue
            raise _no_dim(name, named | ({"batch"} if leading else set()))
    if not dims or not dynamic:
        return model, _static_shapes(inputs)
    bound = 0
    for value in model.graph.input:
        if value.name not in inputs:
            continue
        for i, d in enumerate(value.type.tensor_type.shape.dim):
            size = None
            if d.HasField("dim_param") and d.dim_param in dims:
                size = dims[d.dim_param]
            elif i == 0 and "batch" in dims and "batch" not in named and \
                    not (d.HasField("dim_value") and d.dim_value > 0):
                size = dims["batch"]
            if size is not None:
                d.ClearField("dim_param")
                d.dim_value = int(size)
                bound += 1
    if not bound:
        return model, _static_shapes(onnx_model_inputs(model))
    # the exporter's intermediate shapes still name the bound dims: drop them, keep ranks
    del model.graph.value_info[:]
    for value in model.graph.output:
        for d in value.type.tensor_type.shape.dim:
            d.ClearField("dim_param")
            d.ClearField("dim_value")
    model = fold_shapes(model, log)
    return model, _static_shapes(onnx_model_inputs(model))


def _static_shapes(inputs: Mapping[str, Any]) -> Optional[Dict[str, List[int]]]:
    shapes = {}
    for name, spec in inputs.items():
        if not all(isinstance(d, int) and d > 0 for d in spec.dims):
            return None
        shapes[name] = [int(d) for d in spec.dims]
    return shapes


def fold_shapes(model: Any, log: Any = None) -> Any:
    """Propagate the now static input shapes and fold the shape arithmetic into constants.

    onnxslim first: it folds what the others leave (measured: a legacy T5 export's
    ConstantOfShape chain, a Swin export's computed Pad sizes, which TVM rejects as
    "Dynamic pads"); onnxscript's optimizer when onnxslim is missing or fails; shape inference
    alone as the last resort."""
    import onnx

    failures = []
    for name in ("onnxslim", "onnxscript"):
        try:
            if name == "onnxslim":
                import onnxslim

                return onnxslim.slim(model)
            import onnxscript.optimizer

            return onnxscript.optimizer.optimize(model)
        except ImportError:
            failures.append(f"{name} is not installed")
        except Exception as exc:  # noqa: BLE001 - folding is best effort here
            failures.append(f"{name} failed: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}"[:300])
    if log:
        log(f"static import: {'; '.join(failures)}; shape inference only "
            "(pip install onnxslim)")
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - the importer infers what it can itself
        return model


# --------------------------------------------------------------------------------------------
# torch.export programs
# --------------------------------------------------------------------------------------------

def program_dims(program: Any, record: Optional[Mapping[str, Any]]
                 ) -> Tuple[List[Tuple[str, Any]], Dict[str, List[Tuple[int, int]]]]:
    """(the user inputs as (name, example value), {dim name: [(input index, axis)]}) where
    the names are the model spec's (from the archive's record), else the torch symbols."""
    import torch

    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    user = [(name, nodes[name].meta.get("val")) for name in program.graph_signature.user_inputs
            if name in nodes]
    by_symbol: Dict[str, List[Tuple[int, int]]] = {}
    for i, (_, val) in enumerate(user):
        if isinstance(val, torch.Tensor):
            for axis, size in enumerate(val.shape):
                if not isinstance(size, int):
                    by_symbol.setdefault(str(size), []).append((i, axis))
    names: Dict[str, List[Tuple[int, int]]] = {}
    claimed: Set[Tuple[int, int]] = set()
    for name, places in ((record or {}).get("dims") or {}).items():
        found = [(int(i), int(a)) for i, a in places
                 if int(i) < len(user) and any((int(i), int(a)) in p
                                               for p in by_symbol.values())]
        if found:
            names[str(name)] = found
            claimed.update(found)
    for symbol, places in by_symbol.items():
        rest = [p for p in places if p not in claimed]
        if rest:
            names.setdefault(symbol, rest)
    return user, names


def _ranges(program: Any, val: Any, axis: int) -> Tuple[Optional[int], Optional[int]]:
    size = val.shape[axis]
    for sym, vr in program.range_constraints.items():
        if str(sym) == str(size):
            lo, hi = vr.lower, vr.upper
            lo = int(lo) if getattr(lo, "is_finite", True) and str(lo) not in ("-oo", "-int_oo") \
                else None
            hi = int(hi) if getattr(hi, "is_finite", True) and str(hi) not in ("oo", "int_oo") \
                else None
            return lo, hi
    return None, None


def specialise_program(program: Any, dims: Mapping[str, int], record: Optional[Mapping[str, Any]],
                       log: Any = None) -> Tuple[Any, Dict[str, List[Tuple[int, int]]]]:
    """(the program with ``dims`` bound, {dim name: [(input, axis)]} of the dims left
    dynamic).

    Binding re-exports ``program.module()`` from examples of the bound sizes: the importer
    then sees static shapes there (the symbolic import of GPT-2-style attention fails on
    views of non-contiguous tensors, and sizes bound after the import come too late)."""
    import torch

    user, names = program_dims(program, record)
    leading = sorted({n for n, places in names.items() if any(a == 0 for _, a in places)})
    known = set(names) | ({"batch"} if leading else set())
    binding: Dict[Tuple[int, int], int] = {}
    for name, size in dims.items():
        if name in names:
            binding.update({p: int(size) for p in names[name]})
        elif name == "batch" and leading:
            for n in leading:
                binding.update({p: int(size) for p in names[n] if p[1] == 0})
        elif not names or name in ((record or {}).get("dims") or {}):
            # named at export, but torch specialised it (or the program is static)
            fixed = {int(user[int(i)][1].shape[int(a)])
                     for i, a in ((record or {}).get("dims") or {}).get(name, [])
                     if int(i) < len(user) and isinstance(user[int(i)][1], torch.Tensor)}
            if fixed and fixed != {int(size)}:
                raise StepFailed(f"dims: {name}: the program has it static at size "
                                 f"{', '.join(map(str, sorted(fixed)))}, not {size}",
                                 hint="export with that dim dynamic, or bind it to that size")
            if log:
                log(f"dims: {name} ignored: the program has it static")
        else:
            raise _no_dim(name, known)
    if not binding:
        return program, names
    from torch.export import Dim

    example, shapes, made = [], [], {}
    for i, (_, val) in enumerate(user):
        if not isinstance(val, torch.Tensor):
            raise StepFailed(f"cannot bind dims of this .pt2: its input {i} is not a tensor")
        sizes, entry = [], {}
        for axis, size in enumerate(val.shape):
            if isinstance(size, int):
                sizes.append(size)
            elif (i, axis) in binding:
                sizes.append(binding[(i, axis)])
            else:
                name = next(n for n, places in names.items() if (i, axis) in places)
                lo, hi = _ranges(program, val, axis)
                if name not in made:
                    made[name] = Dim(_identifier(name), min=max(lo or 0, 0),
                                     **({"max": hi} if hi is not None else {}))
                entry[axis] = made[name]
                sizes.append(max(2, lo or 2) if hi is None else min(max(2, lo or 2), hi))
        example.append(_example(torch, val, sizes))
        shapes.append(entry or None)
    try:
        specialised = torch.export.export(program.module(), tuple(example),
                                          dynamic_shapes=tuple(shapes) if made else None)
    except Exception as exc:  # noqa: BLE001 - torch.export raises many error types
        if log:
            log(f"re-export with dims bound: {type(exc).__name__}: {exc}")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise StepFailed(f"cannot specialise the .pt2 to dims {dict(dims)}: "
                         f"{type(exc).__name__}: {first}"[:500],
                         hint="export it with these sizes instead (torch.export with "
                              "dynamic: {}), or leave the dims unbound") from None
    if log:
        log(f"re-exported the program with dims {dict(sorted(dims.items()))} bound"
            + (f"; still dynamic: {', '.join(sorted(made))}" if made else ""))
    remaining = {n: [p for p in places if p not in binding] for n, places in names.items()}
    return specialised, {n: p for n, p in remaining.items() if p}


def _identifier(name: str) -> str:
    import re

    ident = re.sub(r"\W", "_", name)
    return ident if ident and not ident[0].isdigit() else f"d_{ident}"


def _example(torch: Any, val: Any, sizes: List[int]) -> Any:
    if val.dtype == torch.bool:
        return torch.ones(sizes, dtype=torch.bool)
    if val.dtype.is_floating_point or val.dtype.is_complex:
        return torch.zeros(sizes, dtype=val.dtype)
    return torch.ones(sizes, dtype=val.dtype)  # ids and masks: 1 is valid for both


def _symbol_names(program: Any, names: Mapping[str, List[Tuple[int, int]]]) -> Dict[str, str]:
    """{torch symbol in ``program``: dim name} for the named (not symbol-named) dims."""
    import torch

    user, _ = program_dims(program, None)
    out: Dict[str, str] = {}
    for name, places in names.items():
        for i, axis in places:
            val = user[i][1] if i < len(user) else None
            if isinstance(val, torch.Tensor) and axis < val.dim() and \
                    not isinstance(val.shape[axis], int):
                symbol = str(val.shape[axis])
                if symbol != name:
                    out.setdefault(symbol, name)
    return out


def drop_empty_concat_inputs(program: Any) -> int:
    """Remove 1-D empty tensors from ``aten.cat`` inputs (how many cats changed).

    torch's ``cat`` skips a 1-D tensor of size 0 (a legacy rule), and transformers' caches
    start that way (``DynamicCache`` concatenates each new key with an empty tensor); TVM's
    concat requires equal ranks ("Concat expects all input tensors to have same ndim"). The
    result is the same tensor, so the rewrite keeps the program's meaning."""
    import torch

    graph = program.graph_module.graph
    changed = 0

    def empty_1d(node: Any) -> bool:
        val = getattr(node, "meta", {}).get("val")
        return isinstance(val, torch.Tensor) and val.dim() == 1 and \
            isinstance(val.shape[0], int) and val.shape[0] == 0

    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.cat.default:
            continue
        parts = list(node.args[0])
        keep = [p for p in parts if not empty_1d(p)]
        if len(keep) == len(parts) or not keep:
            continue
        changed += 1
        if len(keep) == 1:
            node.replace_all_uses_with(keep[0])
            graph.erase_node(node)
        else:
            node.args = (keep,) + tuple(node.args[1:])
    if changed:
        graph.eliminate_dead_code()
        program.graph_module.recompile()
    return changed


def read_record(path: Any) -> Optional[Dict[str, Any]]:
    """The buildgraph record of a ``.pt2`` (None when it has none)."""
    import zipfile

    try:
        with zipfile.ZipFile(str(path)) as zf:
            name = next((n for n in zf.namelist() if n.endswith(NAMES_FILE)), None)
            data = json.loads(zf.read(name)) if name else None
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    return data if isinstance(data, dict) else None


def load_program(path: Any, dims: Mapping[str, int], log: Any = None
                 ) -> Tuple[Any, Dict[str, str]]:
    """A ``.pt2`` ready for ``from_exported_program(run_ep_decomposition=False)``: loaded,
    specialised to ``dims``, decomposed, empty concat inputs dropped; and {torch symbol: dim
    name} for the dims left dynamic."""
    import torch

    program = torch.export.load(str(path))
    program, remaining = specialise_program(program, dims, read_record(path), log)
    program = program.run_decompositions()
    n = drop_empty_concat_inputs(program)
    if n and log:
        log(f"dropped empty 1-D inputs of {n} concatenations (a cache's initial state)")
    return program, _symbol_names(program, remaining)
