"""Weights files: a state_dict, or a checkpoint dict holding one, loaded into a model.

Loaded with ``weights_only=True``: tensors and plain containers only, nothing that runs code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from buildgraph.backends.torch.failures import short_error
from buildgraph.errors import StepFailed, did_you_mean


def read_state_dict(path: Path, weights_key: Optional[str], what: str) -> Dict[str, Any]:
    """The state_dict in a weights file: a plain state_dict or ``checkpoint[weights_key]``."""
    import torch

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
