"""What a step kind reads and writes, beside its ``Task``: the upstream model artifact it
works on, the recipe's model entry, its declared outputs, JSON reports.

Apart from :mod:`buildgraph.engine.executor` (the interface) so that the interface stays the
few names every kind implements; these are conveniences most kinds use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from buildgraph.errors import StepFailed

# ``task`` below is an ``engine.executor.Task``: not imported, so that the interface module
# can offer these names too.


MODEL_SUFFIXES = (".onnx", ".pt2", ".ts", ".pt", ".pth", ".safetensors", ".so", ".tar",
                  ".engine", ".plan")
"""File endings of model artifacts, for telling a step's model output from its reports."""


def find_artifact(task: Any, what: str, suffixes: Optional[Tuple[str, ...]] = None,
                  steps: Optional[Tuple[str, ...]] = None, skip_kinds: Tuple[str, ...] = ()
                  ) -> Path:
    """The one model artifact among the upstream outputs (of ``steps``, default all).

    Per step: its output named ``model`` (when it ends in one of ``suffixes``, if given), else
    its only output (when no suffixes are asked for), else its outputs ending in a model suffix.
    Exactly one must remain; otherwise the error names what was found and how to choose."""
    wanted = suffixes or MODEL_SUFFIXES
    found: list = []
    for step in (steps if steps is not None else tuple(task.upstream)):
        if task.upstream_kinds.get(step) in skip_kinds:
            continue
        outs = task.upstream[step]
        if "model" in outs and (suffixes is None or str(outs["model"]).endswith(suffixes)):
            found.append((f"{step}.model", outs["model"]))
        elif suffixes is None and len(outs) == 1:
            found.extend((f"{step}.{n}", p) for n, p in outs.items())
        else:
            found.extend((f"{step}.{n}", p) for n, p in outs.items() if str(p).endswith(wanted))
    if len(found) == 1:
        return found[0][1]
    kinds = "/".join(suffixes) if suffixes else "model"
    if not found:
        have = ", ".join(f"{s}.{n}" for s in (steps or task.upstream)
                         for n in task.upstream.get(s, {})) or "none"
        raise StepFailed(f"{what} needs an upstream {kinds} artifact; found none (upstream "
                         f"outputs: {have})",
                         hint="name the model output 'model', or list the step under 'from:'")
    raise StepFailed(f"{what} needs exactly one upstream {kinds} artifact; found "
                     f"{len(found)}: " + ", ".join(label for label, _ in found),
                     hint="say which with model: ${in.STEP.OUTPUT}, or name only one "
                          "model output 'model'")


def artifact_of(task: Any, step: str) -> Path:
    """The model artifact upstream ``step`` produced (see ``find_artifact``)."""
    return find_artifact(task, f"step '{task.step_id}'", steps=(step,))


def single_upstream(task: Any, what: str) -> str:
    """The id of the step's only upstream step."""
    if len(task.upstream) != 1:
        have = ", ".join(task.upstream) or "none"
        raise StepFailed(f"{what} takes exactly one upstream step (from: STEP); got {have}")
    return next(iter(task.upstream))


def out_path(task: Any, name: str = "model") -> Path:
    """Where the declared output ``name`` goes; a clear error when the recipe renamed it."""
    try:
        return task.outputs[name]
    except KeyError:
        raise StepFailed(f"this step must declare an output named '{name}' (declared: "
                         + ", ".join(task.outputs) + ")") from None


def model_spec(models: Mapping[str, Any], name: str) -> Dict[str, Any]:
    """The named model of the recipe (``DescribeContext.models``) as plain data, whether it is
    a ModelSpec or a dict; an unknown name is a RecipeError with a suggestion."""
    if name not in models:
        from buildgraph.errors import RecipeError, did_you_mean

        known = sorted(models)
        raise RecipeError(f"unknown model '{name}'{did_you_mean(name, known)}",
                          hint=("models in this recipe: " + ", ".join(known)) if known else
                          "declare it under the top-level 'models:' section")
    spec = models[name]
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump(mode="json")
    return dict(spec)


def write_json(path: Path, data: Any) -> None:
    """A JSON report output, indented for people."""
    import json

    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n",
                    encoding="utf-8")
