"""ONNX files as model sources (``models: {m: {source: model.onnx}}``), and the one way every
ONNX-consuming step finds its input: the model itself (``with: {model: m}``) or an upstream
step's ONNX output (``from:``).

Resolve time (the planner's ``describe``; memoised, so a cached run never gets here): the file
and its external data files become inputs of the step (keyed by content); its inputs and dims
come from the graph, and the recipe's ``inputs:`` may rename dynamic dims or fix them to sizes,
but not contradict the file (an input missing or extra, another rank, another fixed size,
another dtype: one error naming every difference). The result is the model's key data, in the
same shape as a PyTorch model's, with ``framework: onnx``.

Run time: :func:`onnx_input` gives the path, from the task's keyed inputs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from buildgraph.backends.onnx.modelspec import REFERENCES, model_framework
from buildgraph.engine.executor import model_spec
from buildgraph.errors import RecipeError, StepFailed, did_you_mean

NOT_FOR_ONNX = ("kwargs", "weights", "weights_key", "config", "signature", "outputs")
"""Model fields that mean nothing for an ONNX file (its weights and outputs are in it)."""

RECIPE_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8",
                 "uint8", "bool")


def key_spec(spec: Mapping[str, Any]) -> Dict[str, Any]:
    """The spec fields that enter the key (inputs are kept apart, as an ordered list)."""
    return {k: v for k, v in sorted(spec.items()) if k != "inputs" and v is not None}


def external_data_files(path: Path) -> List[str]:
    """Locations (relative to the model's directory) of the external data its tensors use."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    found: Dict[str, None] = {}
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    found[entry.value] = None
    return list(found)


def _dim_name(dim: Any, input_name: str, axis: int) -> str:
    if isinstance(dim, str) and dim.isidentifier():
        return dim
    if axis == 0:
        return "batch"
    return re.sub(r"\W", "_", f"{input_name}_{axis}")


def graph_inputs_as_specs(graph: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The graph's inputs as recipe TensorSpecs: fixed dims as ints, dynamic ones by their
    name (an unnamed leading dim is ``batch``, others ``INPUT_AXIS``)."""
    out: Dict[str, Dict[str, Any]] = {}
    for name, spec in graph.items():
        shape: List[Any] = [d if isinstance(d, int) and d > 0 else _dim_name(d, name, i)
                            for i, d in enumerate(spec.dims)]
        out[name] = {"shape": shape, "dtype": spec.dtype, "min": None, "max": None}
    return out


def reconcile_inputs(name: str, source: str, graph: Mapping[str, Any],
                     declared: Mapping[str, Any], theirs: str = "the file",
                     hint: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """The model's inputs, in the graph's order: the graph's own, or the recipe's where it
    declares them. The recipe may name a dynamic dim differently or fix it to a size; anything
    else that differs is an error listing every difference."""
    from_graph = graph_inputs_as_specs(graph)
    for iname, spec in from_graph.items():
        if spec["dtype"] not in RECIPE_DTYPES:
            raise RecipeError(f"model '{name}': {source} input '{iname}' has element type "
                              f"{spec['dtype']}, which buildgraph cannot feed",
                              hint="inputs may be " + ", ".join(RECIPE_DTYPES))
    if not declared:
        return from_graph
    declared = {k: (v.model_dump(mode="json") if hasattr(v, "model_dump") else dict(v))
                for k, v in declared.items()}
    problems: List[str] = []
    missing = [n for n in declared if n not in graph]
    extra = [n for n in graph if n not in declared]
    for n in missing:
        problems.append(f"the recipe declares input '{n}', which {theirs} does not have"
                        f"{did_you_mean(n, extra or list(graph))}")
    for n in extra:
        problems.append(f"{theirs} has input '{n}' {graph[n].describe()} {graph[n].dtype}, "
                        "which the recipe does not declare")
    result: Dict[str, Dict[str, Any]] = {}
    for iname, gspec in graph.items():
        if iname not in declared:
            continue
        want = declared[iname]
        shape = list(want.get("shape") or [])
        if len(shape) != len(gspec.dims):
            problems.append(f"input '{iname}': the recipe gives {len(shape)} dims "
                            f"{_show(shape)}, {theirs} {len(gspec.dims)} {gspec.describe()}")
        else:
            for axis, (mine, size) in enumerate(zip(shape, gspec.dims)):
                fixed = isinstance(size, int) and size > 0
                if fixed and isinstance(mine, int) and mine != size:
                    problems.append(f"input '{iname}' dim {axis}: the recipe says {mine}, "
                                    f"{theirs} {size}")
                elif fixed and isinstance(mine, str):
                    problems.append(f"input '{iname}' dim {axis}: the recipe names it "
                                    f"'{mine}' (dynamic), but {theirs} fixes it to {size}")
        dtype = want.get("dtype") or "float32"
        if dtype != gspec.dtype:
            problems.append(f"input '{iname}': the recipe says {dtype}, {theirs} "
                            f"{gspec.dtype}")
        result[iname] = {"shape": shape, "dtype": dtype, "min": want.get("min"),
                         "max": want.get("max")}
    if problems:
        have = ", ".join(f"{n}{g.describe()} {g.dtype}" for n, g in graph.items())
        raise RecipeError(f"model '{name}': {source}'s inputs do not match the recipe's "
                          "inputs: " + "; ".join(problems),
                          hint=hint.format(have=have) if hint else
                          f"the file's inputs: {have}; leave 'inputs:' out to take them "
                          "from the file, or rename/fix only its dynamic dims")
    return result


def _show(shape: List[Any]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def describe_onnx_source(name: str, models: Mapping[str, Any], recipe_dir: Path
                         ) -> Tuple[Dict[str, Path], Dict[str, Any]]:
    """(input files, key data) of ONNX model ``name``: the file, its external data files and
    sample inputs; its settings and its inputs as reconciled with the graph."""
    from buildgraph.backends.onnx.graph import onnx_inputs

    spec = model_spec(models, name)
    recipe_dir = Path(recipe_dir)
    source = spec["source"]
    for key in NOT_FOR_ONNX:
        if spec.get(key):
            raise RecipeError(f"model '{name}': {key}: does not apply to an ONNX file "
                              f"('{source}'): its weights and outputs are in the file",
                              hint=f"remove '{key}:' from the model")
    path = recipe_dir / source
    if not path.is_file():
        siblings = [p.name for p in path.parent.iterdir()] if path.parent.is_dir() else []
        raise RecipeError(f"model '{name}': ONNX file '{source}' does not exist (looked in "
                          f"{recipe_dir}){did_you_mean(path.name, siblings)}")
    files: Dict[str, Path] = {f"model:{name}:file": path.resolve()}
    try:
        graph = onnx_inputs(path)
        locations = external_data_files(path)
    except Exception as exc:  # noqa: BLE001 - not an ONNX file, or a corrupt one
        raise RecipeError(f"model '{name}': '{source}' is not a readable ONNX model: "
                          f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}",
                          hint="an ONNX model file (ModelProto); a PyTorch file says "
                               "framework: torch") from None
    for loc in locations:
        data = (path.parent / loc)
        if not data.is_file():
            raise RecipeError(f"model '{name}': {source} keeps weights in external data file "
                              f"'{loc}', which does not exist beside it",
                              hint="copy the .data file next to the .onnx file")
        files[f"model:{name}:data:{loc}"] = data.resolve()
    if spec.get("sample_inputs"):
        sample = recipe_dir / spec["sample_inputs"]
        if not sample.is_file():
            raise RecipeError(f"model '{name}': sample inputs file '{spec['sample_inputs']}' "
                              f"does not exist (looked in {recipe_dir})")
        files[f"model:{name}:sample_inputs"] = sample.resolve()
    inputs = reconcile_inputs(name, source, graph, spec.get("inputs") or {})
    _check_dims(name, spec, inputs)
    data = {"model": {"name": name, "framework": "onnx", "spec": key_spec(spec),
                      "inputs": [[k, v] for k, v in inputs.items()], "packages": {}}}
    return files, data


def _check_dims(name: str, spec: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
    named = {d for t in inputs.values() for d in t["shape"] if isinstance(d, str)}
    for dim in spec.get("dims") or {}:
        if dim not in named:
            raise RecipeError(f"model '{name}': dims: '{dim}' names no dynamic dim of its "
                              f"inputs{did_you_mean(dim, sorted(named))}",
                              hint="dynamic dims: " + (", ".join(sorted(named)) or "none"))


# --- the model as the input of an ONNX-consuming step ---------------------------------------

def not_onnx_message(name: str, framework: str, what: str) -> str:
    """Why a PyTorch or TensorFlow model cannot feed an ONNX step directly, and what to add."""
    if framework == "torch":
        return (f"{what}: model '{name}' is a PyTorch model, not an ONNX file: export it with "
                "an onnx.export step and take that step's output (from: STEP)")
    return (f"{what}: model '{name}' is a TensorFlow model, not an ONNX file: convert it with "
            "a tf2onnx.convert step and take that step's output (from: STEP)")


def describe_onnx_input(name: str, models: Mapping[str, Any], recipe_dir: Path, what: str
                        ) -> Tuple[Dict[str, Path], Dict[str, Any]]:
    """Description inputs and data of a step that reads ONNX model ``name`` directly
    (``with: {model: NAME}``): the file and its external data, keyed by content."""
    spec = model_spec(models, name)
    framework = model_framework(spec, recipe_dir)
    if framework != "onnx":
        raise RecipeError(not_onnx_message(name, framework, what))
    return describe_onnx_source(name, models, recipe_dir)


def onnx_input(task: Any, what: str, model: Optional[str] = None,
               skip_kinds: Tuple[str, ...] = ()) -> Path:
    """The ONNX file a step reads: model ``model``'s file (described with
    :func:`describe_onnx_input`), else the one upstream ONNX artifact (``from:``)."""
    from buildgraph.engine.executor import find_artifact

    if model:
        path = task.inputs.get(f"model:{model}:file")
        if path is None:
            raise StepFailed(f"step '{task.step_id}' was not described with ONNX model "
                             f"'{model}'")
        return Path(path)
    return find_artifact(task, what, (".onnx",), skip_kinds=skip_kinds)


def reference_runtime(framework: str) -> str:
    """The runtime a model of ``framework`` is its own reference on."""
    return REFERENCES[framework]
