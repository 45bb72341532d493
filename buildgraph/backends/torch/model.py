"""PyTorch models as build inputs: where they come from, what enters the key, how they load.

A recipe's ``models:`` section names each model once (:class:`buildgraph.recipe.schema.ModelSpec`)
and steps refer to it by name (``with: {model: resnet}``). This module has two halves:

* **resolve time** (no torch, no numpy): :func:`model_extra_inputs` turns a model into the files
  that are inputs of every step using it: the file defining the factory and the local modules it
  imports (read with ``ast``), the weights, the sample inputs, a saved-model file and, for a
  pickled whole model, the local modules its pickle refers to (read with ``pickletools``, which
  runs nothing). Errors here are :class:`RecipeError` and point at the recipe.
* **run time** (inside a worker; imports torch lazily): :func:`load_model`, :func:`make_inputs`,
  :func:`load_samples`, :func:`run_eager`, :func:`dynamic_dims`, :func:`torch_dynamic_shapes`.
  Errors here are one-line :class:`StepFailed` messages; details go to the step's log.

Model sources: ``path/file.py:factory`` or ``package.module:factory`` (with ``kwargs``);
``torchvision:NAME`` / ``timm:NAME`` when that package is installed (weights come from a local
file, nothing is downloaded); or a saved model file: a TorchScript archive, a ``.pt2``
(torch.export) archive, or a ``torch.save(model)`` pickle (``trusted: true`` required, since
unpickling runs code).
"""

from __future__ import annotations

import json
import os
import pickletools
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from buildgraph.errors import RecipeError, StepFailed, did_you_mean

HUBS = ("torchvision", "timm")
"""``NAME:model`` sources that build a model from an installed model zoo package."""


# Globals a weights-only pickle may name (tensors, storages, plain containers). Anything else
# (an nn.Module subclass, an optimizer, a user class) means unpickling runs library or user code.
_DATA_GLOBALS_PREFIXES = ("torch._utils.", "torch.storage.", "torch._tensor.", "collections.",
                          "builtins.", "torch.serialization.", "_codecs.", "torch._C.",
                          "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
                          "numpy.dtype")
_DATA_TORCH_NAMES = {"Size", "device", "dtype", "float32", "float16", "bfloat16", "float64",
                     "int64", "int32", "int8", "uint8", "bool", "memory_format", "layout",
                     "strided", "contiguous_format", "channels_last"}


# --------------------------------------------------------------------------------------------
# resolve time (no torch)
# --------------------------------------------------------------------------------------------

def source_kind(source: str) -> str:
    """``"callable"``, ``"torchvision"``, ``"timm"`` or ``"file"`` (a saved model)."""
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


def model_spec(models: Mapping[str, Any], name: str) -> Dict[str, Any]:
    """The named model as plain data (ModelSpec objects and dicts both accepted)."""
    if name not in models:
        known = sorted(models)
        raise RecipeError(f"unknown model '{name}'{did_you_mean(name, known)}",
                          hint=("models in this recipe: " + ", ".join(known)) if known else
                          "declare it under the top-level 'models:' section")
    spec = models[name]
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump(mode="json")
    return dict(spec)


def _rel_label(path: Path, recipe_dir: Path) -> str:
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
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def model_extra_inputs(name: str, models: Mapping[str, Any], recipe_dir: Path,
                       need_inputs: bool = True) -> Dict[str, Path]:
    """Files that are inputs of a step using model ``name`` (see the module docstring).

    The model's settings themselves enter the key through :func:`model_key_data`.
    """
    from buildgraph.backends.generic.sources import _module_file, local_sources, resolve_callable

    spec = model_spec(models, name)
    recipe_dir = Path(recipe_dir)
    source = spec["source"]
    kind = source_kind(source)
    files: Dict[str, Path] = {}

    def add_sources(entry: Path) -> None:
        for p in local_sources(entry, [recipe_dir]):
            files[f"model:{name}:source:{_rel_label(p, recipe_dir)}"] = p

    if kind == "callable":
        try:
            path, module, _ = resolve_callable(source, recipe_dir, what="factory")
        except RecipeError as exc:
            raise RecipeError(f"model '{name}': {exc.message}", hint=exc.hint) from None
        if path is not None:
            add_sources(path)
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
                for found in _module_file(module, [recipe_dir, path.parent]):
                    add_sources(found)
    for key, what in (("weights", "weights file"), ("sample_inputs", "sample inputs file")):
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


def model_key_data(name: str, models: Mapping[str, Any], recipe_dir: Path) -> Dict[str, Any]:
    """The model's settings as key data (``Executor.key_data``): changing its kwargs, seed,
    inputs or dims re-runs the steps using it, and ``plan`` names the setting that changed.

    Inputs are kept as an ordered list: their order is the order of forward()'s arguments.
    Installed packages a model comes from (a module, torchvision, timm) count by version.
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
                      "spec": {k: v for k, v in sorted(spec.items()) if k != "inputs"},
                      "inputs": [[k, v] for k, v in (spec.get("inputs") or {}).items()],
                      "packages": dict(sorted(packages.items()))}}


def package_versions(*dists: str) -> Dict[str, str]:
    """``{dist: version}`` from installed metadata (never imports the package)."""
    return {d: _dist_version(d) for d in dists}


# --------------------------------------------------------------------------------------------
# run time (torch imported here, inside workers)
# --------------------------------------------------------------------------------------------

def set_threads(threads: int) -> None:
    """Use the CPU slots the scheduler granted (persistent workers serve many steps)."""
    import torch

    torch.set_num_threads(max(1, int(threads)))


def short_error(exc: BaseException, lines: int = 1) -> str:
    """The first meaningful line(s) of an exception, ANSI colours and blank lines removed."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    parts = [ln.strip() for ln in text.splitlines() if ln.strip()]
    head = "; ".join(parts[:lines]) if parts else ""
    return f"{type(exc).__name__}: {head}" if head else type(exc).__name__


def _user_frames(tb: Any, roots: Sequence[Path]) -> List[Tuple[str, int, str, str]]:
    """(file, line, function, code) of the traceback frames in files under ``roots``."""
    import traceback

    frames = []
    for frame in traceback.extract_tb(tb):
        try:
            path = Path(frame.filename).resolve()
        except OSError:
            continue
        for root in roots:
            if path.is_relative_to(Path(root).resolve()):
                frames.append((_rel_label(path, Path(roots[0])), frame.lineno or 0, frame.name,
                               (frame.line or "").strip()))
                break
    return frames


def _user_frame(tb: Any, roots: Sequence[Path]) -> str:
    """``file:line`` of the innermost traceback frame in a file under ``roots``."""
    frames = _user_frames(tb, roots)
    return f"{frames[-1][0]}:{frames[-1][1]}" if frames else ""


def log_failure(exc: BaseException, roots: Sequence[Path]) -> None:
    """Write the error and the user-code frames it passed through to stderr (the step's log
    inside a worker): enough to find the line, without a library traceback that the console
    would show as the log's tail."""
    lines = [f"error: {type(exc).__name__}: {exc}".rstrip()]
    for file, line, func, code in _user_frames(exc.__traceback__, roots):
        lines.append(f"  at {file}:{line} in {func}: {code}")
    print("\n".join(lines), file=sys.stderr, flush=True)


def _import_source_module(path: Path, recipe_dir: Path) -> Any:
    """Import a model's source file as a module named after its stem.

    Its directory goes first on ``sys.path`` so that its sibling imports resolve, and the module
    name is the file's stem so that a whole-model pickle made from it refers to classes a
    loader can import (with that directory on its path). A module of the same name from
    another file (another recipe in the same worker) is replaced.
    """
    import importlib.util

    path = path.resolve()
    for directory in (str(recipe_dir.resolve()), str(path.parent)):
        if directory in sys.path:
            sys.path.remove(directory)
        sys.path.insert(0, directory)
    name = path.stem if path.name != "__init__.py" else path.parent.name
    _evict_foreign_modules(path.parent)
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) and \
            Path(existing.__file__).resolve() == path:
        return existing
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _evict_foreign_modules(directory: Path) -> None:
    """Forget top-level modules that shadow files of ``directory`` but come from elsewhere."""
    try:
        local = {p.stem for p in directory.glob("*.py")}
    except OSError:
        return
    for mod_name in list(sys.modules):
        if mod_name.split(".")[0] in local:
            module = sys.modules.get(mod_name)
            file = getattr(module, "__file__", None)
            if file and not Path(file).resolve().is_relative_to(directory.resolve()) and \
                    "site-packages" not in file:
                del sys.modules[mod_name]


def _factory(name: str, spec: Mapping[str, Any], recipe_dir: Path) -> Any:
    import importlib

    from buildgraph.backends.generic.sources import resolve_callable

    source = spec["source"]
    try:
        path, module_name, attr = resolve_callable(source, recipe_dir, what="factory")
    except RecipeError as exc:
        raise StepFailed(f"model '{name}': {exc.message}") from None
    try:
        if path is not None:
            module = _import_source_module(path, recipe_dir)
        else:
            if str(recipe_dir) not in sys.path:
                sys.path.insert(0, str(recipe_dir))
            module = importlib.import_module(module_name)
    except StepFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the user's module
        log_failure(exc, [recipe_dir])
        where = _user_frame(exc.__traceback__, [recipe_dir])
        raise StepFailed(f"model '{name}': importing {path.name if path else module_name} "
                         f"failed{' at ' + where if where else ''}: {short_error(exc)}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise StepFailed(f"model '{name}': {module_name} has no attribute '{attr}'"
                         f"{did_you_mean(attr, names)}") from None


def _hub_model(name: str, spec: Mapping[str, Any]) -> Any:
    kind, _, model_name = spec["source"].partition(":")
    try:
        if kind == "torchvision":
            import torchvision.models as zoo  # type: ignore[import-not-found]

            return zoo.get_model(model_name, weights=None, **spec.get("kwargs", {}))
        import timm  # type: ignore[import-not-found]

        return timm.create_model(model_name, pretrained=False, **spec.get("kwargs", {}))
    except ImportError as exc:
        raise StepFailed(f"model '{name}': source '{spec['source']}' needs the '{kind}' "
                         f"package, which fails to import here: {short_error(exc)}") from None
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(f"model '{name}': {kind} cannot build '{model_name}': "
                         f"{short_error(exc)}") from None


def load_saved(path: Path, trusted: bool, what: str, recipe_dir: Optional[Path] = None) -> Any:
    """Load a saved model file of any format (TorchScript, .pt2, torch.save pickle)."""
    import torch

    fmt = saved_format(path)
    try:
        if fmt == "torchscript":
            return torch.jit.load(str(path), map_location="cpu")
        if fmt == "pt2":
            return torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(f"{what}: cannot load {path.name} ({fmt}): {short_error(exc)}") from None
    # a whole-model pickle names its classes by module: look beside the file and in the recipe
    for directory in [path.parent] + ([recipe_dir] if recipe_dir is not None else []):
        if str(Path(directory).resolve()) not in sys.path:
            sys.path.append(str(Path(directory).resolve()))
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - weights_only refusal or a broken file
        if not trusted:
            raise StepFailed(f"{what}: {path.name} is a pickled whole model; loading it runs "
                             "code from the file, so it is refused unless the model says "
                             f"trusted: true ({short_error(exc)})") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(f"{what}: cannot unpickle {path.name}: {short_error(exc)} (the "
                         "classes it names must be importable under the same module path)"
                         ) from None


def load_model(name: str, spec: Mapping[str, Any], recipe_dir: Path) -> Any:
    """Build model ``name`` in eval mode: factory (seeded) or saved file, then weights."""
    import torch

    recipe_dir = Path(recipe_dir)
    source = spec["source"]
    kind = source_kind(source)
    torch.manual_seed(int(spec.get("seed", 0)))
    if kind == "callable":
        factory = _factory(name, spec, recipe_dir)
        if not callable(factory):
            raise StepFailed(f"model '{name}': '{source}' is a {type(factory).__name__}, not a "
                             "callable that builds the model")
        try:
            model = factory(**(spec.get("kwargs") or {}))
        except Exception as exc:  # noqa: BLE001 - user code
            log_failure(exc, [recipe_dir])
            where = _user_frame(exc.__traceback__, [recipe_dir])
            raise StepFailed(f"model '{name}': {source}(**kwargs) raised "
                             f"{short_error(exc)}{' at ' + where if where else ''}") from None
    elif kind in HUBS:
        model = _hub_model(name, spec)
    else:
        path = recipe_dir / source
        model = load_saved(path, bool(spec.get("trusted")), f"model '{name}'", recipe_dir)
        if hasattr(model, "module") and type(model).__name__ == "ExportedProgram":
            model = model.module()
        elif isinstance(model, dict):
            raise StepFailed(f"model '{name}': {path.name} holds a dict (a state_dict or a "
                             "checkpoint), not a model: give the architecture as "
                             "'source: file.py:factory' and this file as 'weights:'")
    if not isinstance(model, torch.nn.Module):
        raise StepFailed(f"model '{name}': {source} returned a {type(model).__name__}, not a "
                         "torch.nn.Module")
    if spec.get("weights"):
        load_weights(name, model, recipe_dir / spec["weights"], spec.get("weights_key"),
                     bool(spec.get("strict", True)))
    try:
        model.eval()
    except (NotImplementedError, RuntimeError):
        pass  # torch.export's GraphModule refuses eval(): it is already an inference graph
    return model


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


# --- example inputs ---------------------------------------------------------------------------

def input_specs(spec: Mapping[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """``[(name, TensorSpec as dict)]`` in forward() order."""
    return [(k, dict(v)) for k, v in (spec.get("inputs") or {}).items()]


def dim_sizes(spec: Mapping[str, Any], overrides: Optional[Mapping[str, int]] = None
              ) -> Dict[str, int]:
    """Example size of each named dim: ``opt``, else ``min`` raised to 2, capped at ``max``.

    2 rather than 1 because torch.export specializes size-1 dims (0/1 specialization).
    """
    sizes: Dict[str, int] = {}
    ranges = spec.get("dims") or {}
    for _, tspec in input_specs(spec):
        for dim in tspec["shape"]:
            if isinstance(dim, str) and dim not in sizes:
                r = ranges.get(dim) or {}
                size = r.get("opt") or max(2, r.get("min") or 0)
                if r.get("max"):
                    size = min(size, r["max"])
                sizes[dim] = int(size)
    sizes.update(overrides or {})
    return sizes


def input_shapes(spec: Mapping[str, Any], sizes: Optional[Mapping[str, int]] = None
                 ) -> List[Tuple[str, List[int], str]]:
    """``[(name, concrete shape, dtype)]``."""
    sizes = dict(dim_sizes(spec, sizes))
    return [(n, [sizes[d] if isinstance(d, str) else int(d) for d in t["shape"]],
             t.get("dtype", "float32")) for n, t in input_specs(spec)]


def make_inputs(spec: Mapping[str, Any], seed: int,
                sizes: Optional[Mapping[str, int]] = None) -> List[Any]:
    """Random example inputs: floats ~ N(0, 1) (or uniform in [min, max]), ints in
    [min, max] (default [0, 9]), seeded so every step and runtime sees the same tensors."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    tensors = []
    for (name, shape, dtype), (_, tspec) in zip(input_shapes(spec, sizes), input_specs(spec)):
        tdtype = getattr(torch, dtype)
        lo, hi = tspec.get("min"), tspec.get("max")
        if dtype == "bool":
            t = torch.randint(0, 2, shape, generator=gen).bool()
        elif tdtype.is_floating_point:
            if lo is not None or hi is not None:
                lo = 0.0 if lo is None else float(lo)
                hi = lo + 1.0 if hi is None else float(hi)
                t = torch.rand(shape, generator=gen) * (hi - lo) + lo
            else:
                t = torch.randn(shape, generator=gen)
            t = t.to(tdtype)
        else:
            lo = 0 if lo is None else int(lo)
            hi = 9 if hi is None else int(hi)
            t = torch.randint(lo, hi + 1, shape, generator=gen).to(tdtype)
        tensors.append(t)
    return tensors


def load_samples(name: str, spec: Mapping[str, Any], recipe_dir: Path) -> List[Any]:
    """The model's real sample inputs (one tensor per input, in forward() order)."""
    import numpy as np
    import torch

    rel = spec.get("sample_inputs")
    if not rel:
        return []
    path = Path(recipe_dir) / rel
    names = [n for n, _ in input_specs(spec)]
    what = f"model '{name}': sample inputs {path.name}"
    try:
        if path.suffix == ".npy":
            arrays: List[Any] = [np.load(path, allow_pickle=False)]
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                keys = list(npz.keys())
                if set(names) <= set(keys):
                    arrays = [npz[n] for n in names]
                else:
                    arrays = [npz[k] for k in keys]
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(obj, torch.Tensor):
                arrays = [obj]
            elif isinstance(obj, Mapping):
                missing = [n for n in names if n not in obj]
                if missing:
                    raise StepFailed(f"{what} has no entry '{missing[0]}' (has: "
                                     + ", ".join(map(str, obj)) + ")")
                arrays = [obj[n] for n in names]
            else:
                arrays = list(obj)
    except StepFailed:
        raise
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(f"{what} cannot be read: {short_error(exc)}") from None
    if len(arrays) != len(names):
        raise StepFailed(f"{what} holds {len(arrays)} array(s); the model has {len(names)} "
                         f"input(s) ({', '.join(names)})")
    return [a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
            for a in arrays]


def describe_inputs(spec: Mapping[str, Any], tensors: Sequence[Any]) -> str:
    return ", ".join(f"{n}: {str(t.dtype).replace('torch.', '')}{list(t.shape)}"
                     for (n, _), t in zip(input_specs(spec), tensors))


def run_eager(name: str, spec: Mapping[str, Any], model: Any, tensors: Sequence[Any],
              recipe_dir: Optional[Path] = None) -> Any:
    """Call the model once; an exception means it rejects these inputs (one-line error)."""
    import torch

    try:
        with torch.inference_mode():
            return model(*tensors)
    except Exception as exc:  # noqa: BLE001 - user code
        if recipe_dir:
            log_failure(exc, [recipe_dir])
        where = _user_frame(exc.__traceback__, [recipe_dir]) if recipe_dir else ""
        raise StepFailed(f"model '{name}' rejects its example inputs ({describe_inputs(spec, tensors)})"
                         f"{' at ' + where if where else ''}: {short_error(exc)}") from None


def flatten_outputs(out: Any, prefix: str = "output") -> List[Tuple[str, Any]]:
    """Named tensors of a model's output: a tensor is ``output``; a tuple ``output_0``...;
    a dict keeps its keys (nested containers add ``_i`` suffixes)."""
    import torch

    if isinstance(out, torch.Tensor):
        return [(prefix, out)]
    if isinstance(out, Mapping):
        items: List[Tuple[str, Any]] = []
        for k, v in out.items():
            items += flatten_outputs(v, str(k) if prefix == "output" else f"{prefix}_{k}")
        return items
    if isinstance(out, (list, tuple)):
        items = []
        fields = getattr(out, "_fields", None)
        for i, v in enumerate(out):
            sub = fields[i] if fields else f"{prefix}_{i}"
            items += flatten_outputs(v, sub)
        return items
    if out is None:
        return []
    if isinstance(out, (int, float, bool)):
        return [(prefix, torch.tensor(out))]
    raise StepFailed(f"model output of type {type(out).__name__} is not a tensor, a "
                     "sequence or a dict of tensors")


# --- dynamic dims -------------------------------------------------------------------------------

def dynamic_dims(spec: Mapping[str, Any], step_dynamic: Optional[Mapping[str, Mapping[Any, str]]]
                 ) -> Dict[str, Dict[int, str]]:
    """``{input: {axis: dim name}}``: the step's ``dynamic:`` if given, else the model's named
    dims (strings in its input shapes)."""
    names = [n for n, _ in input_specs(spec)]
    if step_dynamic is not None:
        result: Dict[str, Dict[int, str]] = {}
        for inp, axes in step_dynamic.items():
            if inp not in names:
                raise StepFailed(f"dynamic: the model has no input '{inp}'"
                                 f"{did_you_mean(inp, names)} (inputs: {', '.join(names)})")
            rank = len(dict(input_specs(spec))[inp]["shape"])
            result[inp] = {}
            for axis, dim in axes.items():
                a = int(axis)
                if not -rank <= a < rank:
                    raise StepFailed(f"dynamic: input '{inp}' has {rank} dims; axis {a} is out "
                                     "of range")
                result[inp][a % rank] = str(dim)
        return result
    result = {}
    for inp, tspec in input_specs(spec):
        axes = {i: d for i, d in enumerate(tspec["shape"]) if isinstance(d, str)}
        if axes:
            result[inp] = axes
    return result


def export_sizes(spec: Mapping[str, Any], dynamic: Mapping[str, Mapping[int, str]],
                 log: Any = None) -> Dict[str, int]:
    """Example dim sizes for export: dynamic dims below 2 are raised to 2 (torch.export
    specializes sizes 0 and 1, and would then reject the dim as dynamic)."""
    sizes = dim_sizes(spec)
    shapes = dict((n, t["shape"]) for n, t in input_specs(spec))
    overrides: Dict[str, int] = {}
    for inp, axes in dynamic.items():
        for axis, dim in axes.items():
            declared = shapes[inp][axis]
            size = sizes[declared] if isinstance(declared, str) else int(declared)
            if size < 2:
                if isinstance(declared, str):
                    overrides[declared] = 2
                else:
                    overrides[f"{inp}:{axis}"] = 2
                if log:
                    log(f"example {inp}[{axis}] ({dim}) raised from {size} to 2: torch.export "
                        "specializes size-1 dims")
    return {**sizes, **overrides}


def shaped_inputs(spec: Mapping[str, Any], seed: int, sizes: Mapping[str, int]) -> List[Any]:
    """:func:`make_inputs` where ``sizes`` may also hold ``"input:axis"`` overrides for
    integer dims made dynamic by a step."""
    named = {k: v for k, v in sizes.items() if ":" not in k}
    per_axis = {k: v for k, v in sizes.items() if ":" in k}
    if not per_axis:
        return make_inputs(spec, seed, named)
    patched = dict(spec)
    inputs = {}
    for n, t in input_specs(spec):
        shape = [per_axis.get(f"{n}:{i}", d) for i, d in enumerate(t["shape"])]
        inputs[n] = {**t, "shape": shape}
    patched["inputs"] = inputs
    return make_inputs(patched, seed, named)


def torch_dynamic_shapes(spec: Mapping[str, Any], dynamic: Mapping[str, Mapping[int, str]]
                         ) -> Optional[Tuple[Any, ...]]:
    """``dynamic_shapes`` for torch.export / the dynamo ONNX exporter: one entry per input
    (positional), one ``torch.export.Dim`` per dim name, shared across inputs, with the
    model's ``dims`` ranges."""
    if not dynamic:
        return None
    from torch.export import Dim

    ranges = spec.get("dims") or {}
    made: Dict[str, Any] = {}
    shapes = []
    for inp, _ in input_specs(spec):
        axes = dynamic.get(inp) or {}
        entry = {}
        for axis, dim in axes.items():
            if dim not in made:
                r = ranges.get(dim) or {}
                kwargs = {}
                if r.get("min") is not None:
                    kwargs["min"] = int(r["min"])
                if r.get("max") is not None:
                    kwargs["max"] = int(r["max"])
                made[dim] = Dim(dim, **kwargs)
            entry[axis] = made[dim]
        shapes.append(entry or None)
    return tuple(shapes)


def to_numpy(tensor: Any) -> Any:
    import torch

    t = tensor.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()
