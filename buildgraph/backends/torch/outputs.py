"""A model's outputs as a fixed, named list of tensors.

Models return a tensor, a tuple, a dict, a dataclass (Hugging Face's ``ModelOutput`` is both a
dataclass and an ordered dict) or a named tuple. Exporters want tensors: TorchScript's tracer
refuses dicts, the ONNX exporters refuse objects such as a ``DynamicCache``, and a ``.pt2`` whose
output spec names ``transformers.ModelOutput`` cannot be loaded where transformers is not
imported. So every exporter exports :func:`export_module`'s wrapper, whose ``forward`` returns a
tuple of tensors in a fixed order, and records their names (ONNX ``output_names``, an extra file
in TorchScript and ``.pt2`` archives), and verify compares outputs by those names.

Naming: a lone tensor is ``output``; a tuple's items ``output_0``, ``output_1``...; a dict's,
dataclass's or named tuple's items keep their keys; nested items join with ``_``
(``hidden_states_0``). The model spec's ``outputs:`` selects and orders them: each entry is a
name (``logits``) or a dotted path into the structure (``hidden_states.1``; a path to a
container selects every tensor under it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from buildgraph.errors import StepFailed, did_you_mean

NAMES_FILE = "buildgraph_outputs.json"
"""Extra file in a TorchScript or ``.pt2`` archive: ``{"inputs": [...], "outputs": [...]}``."""


class Leaf(NamedTuple):
    """One item of a model's output structure."""

    path: Tuple[str, ...]
    """Keys and indices from the top (``("hidden_states", "1")``); ``()`` for a lone tensor."""
    name: str
    value: Any
    """A tensor, or the object that is not one (a cache, a string)."""

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def _items(out: Any) -> Optional[List[Tuple[str, Any]]]:
    """The (key, item) pairs of a container output, ``None`` for anything else."""
    if isinstance(out, Mapping):
        return [(str(k), v) for k, v in out.items()]
    if isinstance(out, (list, tuple)):
        fields = getattr(out, "_fields", None)
        return [(fields[i] if fields else str(i), v) for i, v in enumerate(out)]
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return [(f.name, getattr(out, f.name)) for f in dataclasses.fields(out)]
    return None


def output_leaves(out: Any) -> List[Leaf]:
    """Every item of ``out`` in structural order; ``None`` items are left out (a
    ``ModelOutput`` leaves out its unset fields the same way)."""
    import torch

    leaves: List[Leaf] = []

    def walk(value: Any, path: Tuple[str, ...], name: str) -> None:
        if value is None:
            return
        if isinstance(value, torch.Tensor):
            leaves.append(Leaf(path, name, value))
            return
        if isinstance(value, (bool, int, float)):
            leaves.append(Leaf(path, name, torch.tensor(value)))
            return
        items = _items(value)
        if items is None:
            leaves.append(Leaf(path, name, value))
            return
        # the top level's keys are the names (logits); positions and nested keys join the
        # name of their container (output_0, hidden_states_1)
        keyed = not path and not (isinstance(value, (list, tuple))
                                  and not hasattr(value, "_fields"))
        for key, item in items:
            walk(item, path + (key,), key if keyed else f"{name}_{key}")

    walk(out, (), "output")
    return leaves


def _describe(leaf: Leaf) -> str:
    import torch

    if isinstance(leaf.value, torch.Tensor):
        return leaf.name
    return f"{leaf.name} (a {type(leaf.value).__name__})"


def select_outputs(out: Any, selection: Optional[Sequence[str]] = None,
                   what: str = "the model") -> List[Tuple[str, Any]]:
    """``[(name, tensor)]``: every tensor of ``out``, or those ``selection`` names, in its order.

    An item that is not a tensor (a ``DynamicCache``, a string) fails with its path and how to
    leave it out, instead of an exporter's error deep inside its tracer.
    """
    import torch

    leaves = output_leaves(out)
    if selection:
        chosen: List[Leaf] = []
        for entry in selection:
            found = [lf for lf in leaves if lf.name == entry or lf.dotted == entry
                     or lf.dotted.startswith(entry + ".")]
            if not found:
                names = [lf.name for lf in leaves] + [lf.dotted for lf in leaves]
                raise StepFailed(f"{what}: outputs: no output '{entry}'"
                                 f"{did_you_mean(entry, names)}; it returns "
                                 + (", ".join(_describe(lf) for lf in leaves) or "nothing"))
            for leaf in found:
                if leaf in chosen:
                    raise StepFailed(f"{what}: outputs: '{entry}' selects {leaf.name} again")
                chosen.append(leaf)
        leaves = chosen
    for leaf in leaves:
        if not isinstance(leaf.value, torch.Tensor):
            tensors = [lf.name for lf in leaves if isinstance(lf.value, torch.Tensor)]
            pick = f"outputs: [{', '.join(tensors)}]" if tensors else "outputs: [NAME, ...]"
            where = f"output '{leaf.dotted}'" if leaf.path else "its output"
            raise StepFailed(
                f"{what}: {where} is a {type(leaf.value).__name__}, not a tensor; exporters "
                f"and runtimes need tensors: select the tensor outputs in the model spec "
                f"({pick}), or turn that output off with an argument (e.g. use_cache: false "
                "in a transformers config)")
    names = [lf.name for lf in leaves]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise StepFailed(f"{what}: two outputs are named '{dup}'; select them by path with "
                         "outputs: in the model spec")
    return [(lf.name, lf.value) for lf in leaves]


def flatten_outputs(out: Any, prefix: str = "output") -> List[Tuple[str, Any]]:
    """Named tensors of a model's output, every one of them (see the module docstring)."""
    del prefix  # kept for callers of the old signature; names start at 'output'
    return select_outputs(out)


def named_outputs(out: Any, spec: Mapping[str, Any], what: Optional[str] = None
                  ) -> List[Tuple[str, Any]]:
    """The outputs the model spec selects (``outputs:``), named."""
    return select_outputs(out, spec.get("outputs") or None, what or "the model")


def keyword_call(spec: Mapping[str, Any]) -> bool:
    """Are inputs passed by name? Yes for Hugging Face models, whose forward() has optional
    arguments between the usual ones (GPT-2: ``input_ids, cache, attention_mask``)."""
    from buildgraph.backends.torch.model_key import source_kind

    return source_kind(str(spec.get("source", ""))) == "transformers"


def call_model(model: Any, spec: Mapping[str, Any], tensors: Sequence[Any]) -> Any:
    """``model(*tensors)``, or by input name (:func:`keyword_call`)."""
    if keyword_call(spec):
        names = list((spec.get("inputs") or {}).keys())
        return model(**dict(zip(names, tensors)))
    return model(*tensors)


def is_flat(out: Any) -> bool:
    """A tensor or a plain tuple/list of tensors: exportable as it is."""
    import torch

    if isinstance(out, torch.Tensor):
        return True
    return type(out) in (tuple, list) and all(isinstance(t, torch.Tensor) for t in out)


def _param_names(spec: Mapping[str, Any]) -> Tuple[str, ...]:
    """forward()'s parameter names for the wrapper: the input names where they are Python
    identifiers (torch.export and the ONNX exporter read them), else ``input_0``..."""
    import keyword

    names = list((spec.get("inputs") or {}).keys())
    if all(n.isidentifier() and not keyword.iskeyword(n) and n != "self" for n in names) \
            and len(set(names)) == len(names):
        return tuple(names)
    return tuple(f"input_{i}" for i in range(len(names)))


@functools.lru_cache(maxsize=None)
def _wrapper_class(params: Tuple[str, ...]) -> Any:
    """A module class whose forward takes ``params`` positionally.

    A fixed signature, not ``*args``: torch.export matches ``dynamic_shapes`` to forward()'s
    parameters, and the exporters name graph inputs after them."""
    import torch

    class NamedOutputs(torch.nn.Module):
        """Positional tensors in, a tuple of the selected output tensors out."""

        def __init__(self, model: Any, spec: Mapping[str, Any], what: str):
            super().__init__()
            self.model = model
            self._spec = dict(spec)
            self._what = what

        def _flat(self, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
            out = call_model(self.model, self._spec, args)
            return tuple(t for _, t in named_outputs(out, self._spec, self._what))

    arglist = ", ".join(params)
    namespace: dict = {}
    exec(f"def forward(self, {arglist}):\n    return self._flat(({arglist}{',' if params else ''}))\n",
         namespace)
    NamedOutputs.forward = namespace["forward"]
    return NamedOutputs


def export_module(model: Any, spec: Mapping[str, Any], eager_out: Any, what: str = "the model"
                  ) -> Tuple[Any, List[str]]:
    """(the module to export, its output names).

    The model itself when it already takes positional tensors and returns a tensor or a flat
    tuple and no selection applies (so existing exports are unchanged); else a wrapper whose
    forward returns the selected tensors as a tuple, in order.
    """
    names = [n for n, _ in named_outputs(eager_out, spec, what)]
    if not spec.get("outputs") and not keyword_call(spec) and is_flat(eager_out):
        return model, names
    module = _wrapper_class(_param_names(spec))(model, spec, what)
    module.eval()
    return module, names


def names_record(spec: Mapping[str, Any], outputs: Sequence[str],
                 dynamic: Optional[Mapping[str, Mapping[int, str]]] = None) -> str:
    """The JSON stored as :data:`NAMES_FILE` in an archive. With ``dynamic`` (``{input:
    {axis: dim name}}``), also ``dims: {name: [[input index, axis], ...]}``: torch.export
    names its symbols ``s43``, and a consumer (tvm.compile's ``dims:``) binds by the spec's
    names."""
    inputs = list((spec.get("inputs") or {}).keys())
    record: Dict[str, Any] = {"inputs": inputs, "outputs": list(outputs)}
    if dynamic:
        dims: Dict[str, List[List[int]]] = {}
        for inp, axes in dynamic.items():
            if inp in inputs:
                for axis, name in sorted(axes.items()):
                    dims.setdefault(str(name), []).append([inputs.index(inp), int(axis)])
        record["dims"] = dict(sorted(dims.items()))
    return json.dumps(record)


def read_names_record(data: Any) -> Optional[List[str]]:
    """Output names from a :data:`NAMES_FILE` record (``None`` when absent or unreadable)."""
    if not data:
        return None
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        names = json.loads(data).get("outputs")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None
