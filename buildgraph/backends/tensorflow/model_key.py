"""Resolve time: what a TensorFlow/Keras model adds to the key of every step that uses it.

No TensorFlow here (``plan`` must not pay its import): a SavedModel directory is keyed by its
tree digest, a ``.keras``/``.h5`` file by its content, a factory by its file and the local
modules it imports (read with ``ast``). The model's settings, its inputs (which the recipe must
declare: reading them from the model would import TensorFlow) and the TensorFlow, Keras and
tf2onnx versions complete the key.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

from buildgraph.backends.onnx.modelspec import KERAS_SUFFIXES, SAVED_MODEL_FILE
from buildgraph.backends.onnx.source import key_spec, model_spec
from buildgraph.engine.environment import package_version
from buildgraph.errors import RecipeError, did_you_mean

TF_DISTS = ("tensorflow-cpu", "tensorflow", "tensorflow-gpu", "tf-nightly")
NOT_FOR_TF = {"config": "transformers models", "weights_key": "PyTorch checkpoints",
              "outputs": "PyTorch models"}
DEFAULT_SIGNATURE = "serving_default"


def tf_versions(*extra: str) -> Dict[str, str]:
    """``{"tensorflow": version, "keras": version, ...}`` read from installed metadata (the
    wheel is ``tensorflow-cpu`` here, ``tensorflow`` elsewhere: either counts)."""
    version = next((v for v in (package_version(d, "") for d in TF_DISTS) if v),
                   "not installed")
    env = {"tensorflow": version, "keras": package_version("keras")}
    for dist in extra:
        env[dist] = package_version(dist)
    env["python"] = "%d.%d" % sys.version_info[:2]
    return env


def source_form(spec: Mapping[str, Any], recipe_dir: Path) -> str:
    """``savedmodel``, ``keras`` (a .keras/.h5 file) or ``factory``."""
    source = str(spec["source"])
    if source.lower().endswith(KERAS_SUFFIXES):
        return "keras"
    if (Path(recipe_dir) / source).is_dir():
        return "savedmodel"
    module, sep, attr = source.rpartition(":")
    if sep and module and attr and "/" not in attr:
        return "factory"
    return "file"


def describe_tf_source(name: str, models: Mapping[str, Any], recipe_dir: Path,
                       need_inputs: bool = True) -> Tuple[Dict[str, Path], Dict[str, Any]]:
    """(input files, key data) of TensorFlow model ``name``."""
    from buildgraph.backends.generic.sources import local_sources, resolve_callable

    spec = model_spec(models, name)
    recipe_dir = Path(recipe_dir)
    source = spec["source"]
    form = source_form(spec, recipe_dir)
    for key, what in NOT_FOR_TF.items():
        if spec.get(key):
            raise RecipeError(f"model '{name}': {key}: is for {what}; this is a TensorFlow "
                              "model", hint=f"remove '{key}:' from the model")
    files: Dict[str, Path] = {}
    packages: Dict[str, str] = {}
    if form == "savedmodel":
        path = recipe_dir / source
        if not (path / SAVED_MODEL_FILE).is_file():
            raise RecipeError(f"model '{name}': '{source}' is a directory without "
                              f"{SAVED_MODEL_FILE}: not a TensorFlow SavedModel")
        files[f"model:{name}:savedmodel"] = path.resolve()
    elif form == "keras":
        path = recipe_dir / source
        if not path.is_file():
            siblings = [p.name for p in path.parent.iterdir()] if path.parent.is_dir() else []
            raise RecipeError(f"model '{name}': Keras file '{source}' does not exist (looked "
                              f"in {recipe_dir}){did_you_mean(path.name, siblings)}")
        files[f"model:{name}:file"] = path.resolve()
    elif form == "factory":
        try:
            path, module, _ = resolve_callable(source, recipe_dir, what="factory")
        except RecipeError as exc:
            raise RecipeError(f"model '{name}': {exc.message}", hint=exc.hint) from None
        if path is not None:
            for p in local_sources(path, [recipe_dir]):
                try:
                    label = str(p.relative_to(recipe_dir.resolve()))
                except ValueError:
                    label = str(p)
                files[f"model:{name}:source:{label}"] = p
        else:
            top = module.split(".")[0]
            packages[top] = package_version(top)
    else:
        raise RecipeError(f"model '{name}': cannot tell what TensorFlow model '{source}' is",
                          hint="a SavedModel directory, a .keras or .h5 file, or "
                               "'file.py:factory' returning a tf.keras.Model")
    if form != "factory":
        for key in ("kwargs", "weights"):
            if spec.get(key):
                raise RecipeError(f"model '{name}': {key}: is for a factory "
                                  "('file.py:factory'); this model is a saved "
                                  f"{'SavedModel' if form == 'savedmodel' else 'Keras file'}",
                                  hint=f"remove '{key}:' from the model")
    if spec.get("signature") and form != "savedmodel":
        raise RecipeError(f"model '{name}': signature: names a SavedModel signature; this "
                          "model is not a SavedModel directory")
    for key, what in (("weights", "weights file"), ("sample_inputs", "sample inputs file")):
        if spec.get(key):
            path = recipe_dir / spec[key]
            if not path.is_file():
                raise RecipeError(f"model '{name}': {what} '{spec[key]}' does not exist "
                                  f"(looked in {recipe_dir})")
            files[f"model:{name}:{key}"] = path.resolve()
    inputs = spec.get("inputs") or {}
    if need_inputs and not inputs:
        raise RecipeError(f"model '{name}' declares no inputs; a TensorFlow model needs them "
                          "(reading them from the model would import TensorFlow at plan time)",
                          hint="add e.g. inputs: {x: {shape: [batch, 224, 224, 3]}} (Keras "
                               "images are NHWC: batch, height, width, channels)")
    for tname, tspec in inputs.items():
        for dim in tspec.get("shape", []):
            if isinstance(dim, str) and not dim.isidentifier():
                raise RecipeError(f"model '{name}': input '{tname}': dim '{dim}' is neither "
                                  "an integer nor a name")
    named = {d for t in inputs.values() for d in t.get("shape", []) if isinstance(d, str)}
    for dim in spec.get("dims") or {}:
        if dim not in named:
            raise RecipeError(f"model '{name}': dims: '{dim}' names no dim of its inputs"
                              f"{did_you_mean(dim, sorted(named))}")
    data = {"model": {"name": name, "framework": "tensorflow", "form": form,
                      "spec": key_spec(spec),
                      "inputs": [[k, v] for k, v in inputs.items()],
                      "packages": dict(sorted(packages.items()))}}
    return files, data
