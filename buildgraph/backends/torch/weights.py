"""Weights files loaded into a model: a ``.safetensors`` file, a state_dict, or a checkpoint
dict holding one.

Nothing here runs code from a file: ``.pt`` files load with ``weights_only=True`` (tensors and
plain containers only), and safetensors is a header plus raw tensor bytes, never a pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from buildgraph.backends.torch.failures import short_error
from buildgraph.errors import StepFailed, did_you_mean


SAFETENSORS_SUFFIX = ".safetensors"


def read_safetensors(path: Path, what: str) -> Dict[str, Any]:
    """The tensors of a ``.safetensors`` file (the format Hugging Face checkpoints ship in)."""
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise StepFailed(f"{what}: {path.name} is a safetensors file, and the 'safetensors' "
                         f"package fails to import here ({short_error(exc)}): "
                         "pip install safetensors") from None
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise StepFailed(f"{what}: {path.name} cannot be read as safetensors: "
                         f"{short_error(exc)}") from None


def read_state_dict(path: Path, weights_key: Optional[str], what: str) -> Dict[str, Any]:
    """The state_dict in a weights file: a ``.safetensors`` file, a plain state_dict or
    ``checkpoint[weights_key]``."""
    import torch

    if path.suffix == SAFETENSORS_SUFFIX:
        if weights_key:
            raise StepFailed(f"{what}: weights_key '{weights_key}' does not apply to "
                             f"{path.name}: a safetensors file holds one flat set of tensors")
        return read_safetensors(path, what)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(f"{what}: {path.name} cannot be loaded as weights (tensors and plain "
                         f"containers only): {short_error(exc)}") from None
    if not isinstance(obj, Mapping):
        raise StepFailed(f"{what}: {path.name} holds a {type(obj).__name__}, not a state_dict "
                         "or a checkpoint dict")
    if weights_key:
        if weights_key not in obj:
            raise StepFailed(f"{what}: {path.name} has no key '{weights_key}'"
                             f"{did_you_mean(weights_key, [str(k) for k in obj])} (keys: "
                             + ", ".join(str(k) for k in list(obj)[:8]) + ")")
        obj = obj[weights_key]
        if not isinstance(obj, Mapping):
            raise StepFailed(f"{what}: {path.name}['{weights_key}'] is a {type(obj).__name__}, "
                             "not a state_dict")
    non_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        dict_keys = [str(k) for k, v in obj.items() if isinstance(v, Mapping)]
        hint = f": set weights_key: {dict_keys[0]}" if dict_keys else ""
        raise StepFailed(f"{what}: {path.name} looks like a checkpoint, not a state_dict (keys: "
                         + ", ".join(str(k) for k in list(obj)[:6]) + f"){hint}")
    return dict(obj)


def load_weights(name: str, model: Any, path: Path, weights_key: Optional[str],
                 strict: bool) -> None:
    """``load_state_dict`` with a one-line report of the first mismatched keys."""
    what = f"model '{name}'"
    state = read_state_dict(path, weights_key, what)
    expected = model.state_dict()
    if state and all(k.startswith("module.") for k in state) and \
            not any(k.startswith("module.") for k in expected):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from DataParallel
    state = _fill_tied(state, expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} (file {list(state[k].shape)} vs model {list(expected[k].shape)})"
              for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch{'es' if len(shapes) > 1 else ''}: "
                        + ", ".join(shapes[:3]) + (", ..." if len(shapes) > 3 else ""))
    if strict and missing:
        problems.append(f"{len(missing)} missing key{'s' if len(missing) > 1 else ''}: "
                        + ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else ""))
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected key{'s' if len(unexpected) > 1 else ''}: "
                        + ", ".join(unexpected[:4]) + (", ..." if len(unexpected) > 4 else ""))
    if problems:
        raise StepFailed(f"{what}: weights {path.name} do not match the architecture: "
                         + "; ".join(problems))
    model.load_state_dict(state, strict=strict)


def _fill_tied(state: Dict[str, Any], expected: Mapping[str, Any]) -> Dict[str, Any]:
    """Add the keys of tied parameters that the file holds under another name.

    A model that shares one tensor between two modules (GPT-2's input embedding and output
    projection) has both names in its state_dict, but safetensors stores a shared tensor once
    (``save_model`` and ``save_pretrained`` drop the duplicates), so the other name would count
    as missing."""
    groups: Dict[Any, list] = {}
    for key, tensor in expected.items():
        try:
            ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                     tuple(tensor.shape), tuple(tensor.stride()))
        except (RuntimeError, AttributeError):
            continue
        if ident[0]:
            groups.setdefault(ident, []).append(key)
    filled = dict(state)
    for keys in groups.values():
        present = [k for k in keys if k in state]
        if present:
            for k in keys:
                filled.setdefault(k, state[present[0]])
    return filled
