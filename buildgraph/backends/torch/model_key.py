"""Resolve time: what a model spec adds to the key of every step that uses it.

No torch and no numpy here: the planner calls :func:`model_extra_inputs` and
:func:`model_key_data` for every model step, and ``buildgraph plan`` must stay light. Source
files are read with ``ast`` (the factory's file and the local modules it imports), pickles with
``pickletools`` (which runs nothing), saved archives by their zip directory. Errors are
:class:`RecipeError` and point at the recipe.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Tuple

from buildgraph.engine.executor import model_spec  # noqa: F401 - re-exported
from buildgraph.errors import RecipeError, did_you_mean
from buildgraph.engine.environment import package_version, package_versions  # noqa: F401

HUBS = ("torchvision", "timm", "transformers")
"""``NAME:model`` sources that build a model from an installed model zoo package."""

OPTIONAL_FIELDS = ("outputs", "config", "framework", "signature")
"""Model spec fields added later: left out of the key data while unset, so that adding them
did not change the key of every model step."""


# Globals a weights-only pickle may name (tensors, storages, plain containers). Anything else
# (an nn.Module subclass, an optimizer, a user class) means unpickling runs library or user code.
_DATA_GLOBALS_PREFIXES = ("torch._utils.", "torch.storage.", "torch._tensor.", "collections.",
                          "builtins.", "torch.serialization.", "_codecs.", "torch._C.",
                          "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
                          "numpy.dtype")
_DATA_TORCH_NAMES = {"Size", "device", "dtype", "float32", "float16", "bfloat16", "float64",
                     "int64", "int32", "int8", "uint8", "bool", "memory_format", "layout",
                     "strided", "contiguous_format", "channels_last"}


def source_kind(source: str) -> str:
    """``"callable"``, ``"torchvision"``, ``"timm"``, ``"transformers"`` or ``"file"`` (a
    saved model)."""
    module, sep, attr = source.rpartition(":")
    if sep and module in HUBS and attr:
        return module
    if sep and module and attr and "/" not in attr and "\\" not in attr and "." not in attr:
        return "callable"
    return "file"


def saved_format(path: Path) -> str:
    """Format of a saved model file, read from its zip directory (nothing is unpickled).

    ``"pt2"`` (torch.export.save), ``"torchscript"`` (torch.jit.save), ``"pickle"``
    (torch.save: a state_dict, a checkpoint or a whole model) or ``"unknown"``.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        # torch.save(_use_new_zipfile_serialization=False) writes a bare pickle stream
        try:
            with open(path, "rb") as fh:
                head = fh.read(2)
        except OSError:
            return "unknown"
        return "pickle" if head[:1] == b"\x80" else "unknown"
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "archive_format" in tails or any(t.startswith("models/") and t.endswith(".json")
                                        for t in tails):
        return "pt2"
    if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
        return "torchscript"
    if "data.pkl" in tails:
        return "pickle"
    return "unknown"


def pickle_globals(path: Path) -> List[Tuple[str, str]]:
    """``(module, name)`` of every global a torch.save pickle refers to, without unpickling."""
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"),
                        None)
            data = zf.read(name) if name else b""
    except (zipfile.BadZipFile, OSError):
        try:
            data = Path(path).read_bytes()
        except OSError:
            return []
    found: List[Tuple[str, str]] = []
    strings: List[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                module, _, attr = arg.partition(" ")
                found.append((module, attr))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append((strings[-2], strings[-1]))
            if isinstance(arg, str) and "UNICODE" in opcode.name:
                strings.append(arg)
    except Exception:  # noqa: BLE001 - a legacy stream holds more than one pickle: keep what we read
        pass
    return sorted(set(found))


def code_globals(globals_: Iterable[Tuple[str, str]]) -> List[str]:
    """The globals that make a pickle more than tensors and containers (classes to import)."""
    code = []
    for module, name in globals_:
        dotted = f"{module}.{name}"
        if dotted.startswith(_DATA_GLOBALS_PREFIXES):
            continue
        if module == "torch" and (name in _DATA_TORCH_NAMES or name.endswith("Storage")):
            continue
        code.append(dotted)
    return code


def rel_label(path: Path, recipe_dir: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(recipe_dir.resolve()))
    except ValueError:
        return str(path)


def _existing_file(rel: str, recipe_dir: Path, what: str, name: str) -> Path:
    path = recipe_dir / rel
    if not path.is_file():
        siblings = [p.name for p in path.parent.iterdir()] if path.parent.is_dir() else []
        raise RecipeError(f"model '{name}': {what} '{rel}' does not exist (looked in "
                          f"{recipe_dir}){did_you_mean(path.name, siblings)}")
    return path.resolve()


def _dist_version(dist: str) -> str:
    return package_version(dist)


def model_extra_inputs(name: str, models: Mapping[str, Any], recipe_dir: Path,
                       need_inputs: bool = True) -> Dict[str, Path]:
    """Files that are inputs of a step using model ``name`` (see the module docstring).

    The model's settings themselves enter the key through :func:`model_key_data`.
    """
    from buildgraph.backends.generic.sources import module_file, local_sources, resolve_callable

    spec = model_spec(models, name)
    recipe_dir = Path(recipe_dir)
    source = spec["source"]
    kind = source_kind(source)
    files: Dict[str, Path] = {}

    def add_sources(entry: Path) -> None:
        for p in local_sources(entry, [recipe_dir]):
            files[f"model:{name}:source:{rel_label(p, recipe_dir)}"] = p

    if kind == "callable":
        try:
            path, module, _ = resolve_callable(source, recipe_dir, what="factory")
        except RecipeError as exc:
            raise RecipeError(f"model '{name}': {exc.message}", hint=exc.hint) from None
        if path is not None:
            add_sources(path)
            if not spec.get("framework"):
                _refuse_keras_factory(name, source, [p for k, p in files.items()
                                                     if k.startswith(f"model:{name}:source:")])
        else:
            import importlib.util

            top = module.split(".")[0]
            if importlib.util.find_spec(top) is None:
                local = [p.stem for p in recipe_dir.glob("*.py")] + \
                    [p.name for p in recipe_dir.iterdir() if p.is_dir()]
                raise RecipeError(f"model '{name}': no module '{module}': neither a file under "
                                  f"{recipe_dir} nor an installed package"
                                  f"{did_you_mean(top, local)}",
                                  hint="write 'path/to/file.py:factory' for a file, relative "
                                       "to the recipe")
    elif kind in HUBS:
        import importlib.util

        if importlib.util.find_spec(kind) is None:
            raise RecipeError(f"model '{name}': source '{source}' needs the '{kind}' package, "
                              "which is not installed here",
                              hint=f"pip install {kind} (a build matching torch "
                                   f"{_dist_version('torch')}), or define the model in a .py "
                                   "file and use 'file.py:factory'")
        if kind == "transformers":
            from buildgraph.backends.torch import hf

            files.update(hf.extra_inputs(name, spec, recipe_dir))
    else:
        path = _existing_file(source, recipe_dir, "model file", name)
        files[f"model:{name}:file"] = path
        fmt = saved_format(path)
        if fmt == "unknown":
            raise RecipeError(f"model '{name}': cannot tell what '{source}' is: not a "
                              "TorchScript archive, a .pt2 (torch.export) archive nor a "
                              "torch.save file",
                              hint="a model built by code is written 'file.py:factory'")
        if fmt == "pickle":
            code = code_globals(pickle_globals(path))
            if code and not spec.get("trusted"):
                raise RecipeError(
                    f"model '{name}': '{source}' is a pickled whole model (it refers to "
                    f"{code[0]}{' and others' if len(code) > 1 else ''}); loading it runs code "
                    "from the file, so it is refused unless the model says trusted: true",
                    hint="add 'trusted: true' to the model if you made this file or trust its "
                         "author; torch.load refuses it too by default (weights_only=True)")
            for dotted in code:
                module = dotted.rsplit(".", 1)[0]
                for found in module_file(module, [recipe_dir, path.parent]):
                    add_sources(found)
    if spec.get("signature"):
        raise RecipeError(f"model '{name}': signature: names a TensorFlow SavedModel's "
                          "signature; this is a PyTorch model")
    if spec.get("config") is not None and kind != "transformers":
        raise RecipeError(f"model '{name}': config: is for 'transformers:CLASS' sources; this "
                          f"model's source is '{source}'",
                          hint="pass a factory's settings as kwargs:")
    for key, what in (("weights", "weights file"), ("sample_inputs", "sample inputs file")):
        if key == "weights" and any(k.startswith(f"model:{name}:weights:") for k in files):
            continue  # a save_pretrained directory, listed file by file
        if spec.get(key):
            files[f"model:{name}:{key}"] = _existing_file(spec[key], recipe_dir, what, name)
    if need_inputs and not spec.get("inputs"):
        raise RecipeError(f"model '{name}' declares no example inputs, which this step needs",
                          hint="add e.g. inputs: {x: {shape: [1, 3, 224, 224]}} to the model")
    for tname, tspec in (spec.get("inputs") or {}).items():
        for dim in tspec.get("shape", []):
            if isinstance(dim, str) and not dim.isidentifier():
                raise RecipeError(f"model '{name}': input '{tname}': dim '{dim}' is neither an "
                                  "integer nor a name")
    return files


def _refuse_keras_factory(name: str, source: str, paths: List[Path]) -> None:
    """A factory whose code imports TensorFlow/Keras and not torch is a Keras model the
    recipe forgot to mark: say so, instead of failing in torch at run time."""
    from buildgraph.backends.generic.sources import imports_of

    tops = {module.split(".")[0] for p in paths for _, module, _ in imports_of(p) if module}
    if tops & {"tensorflow", "keras", "tf_keras"} and "torch" not in tops:
        raise RecipeError(f"model '{name}': {source} imports TensorFlow/Keras, not torch",
                          hint="a factory returning a tf.keras.Model says framework: "
                               "tensorflow")


def model_key_data(name: str, models: Mapping[str, Any], recipe_dir: Path) -> Dict[str, Any]:
    """The model's settings as key data (the description's ``data``): changing its kwargs, seed,
    inputs or dims re-runs the steps using it, and ``plan`` names the setting that changed.

    Inputs are kept as an ordered list: their order is the order of forward()'s arguments.
    Installed packages a model comes from (a module, torchvision, timm, transformers) count
    by version.
    """
    from buildgraph.backends.generic.sources import resolve_callable

    spec = model_spec(models, name)
    packages: Dict[str, str] = {}
    kind = source_kind(spec["source"])
    if kind == "callable":
        path, module, _ = resolve_callable(spec["source"], Path(recipe_dir), what="factory")
        if path is None:
            packages[module.split(".")[0]] = _dist_version(module.split(".")[0])
    elif kind in HUBS:
        packages[kind] = _dist_version(kind)
    return {"model": {"name": name,
                      "spec": {k: v for k, v in sorted(spec.items()) if k != "inputs"
                               and not (k in OPTIONAL_FIELDS and v is None)},
                      "inputs": [[k, v] for k, v in (spec.get("inputs") or {}).items()],
                      "packages": dict(sorted(packages.items()))}}


