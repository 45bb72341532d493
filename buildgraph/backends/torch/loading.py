"""Run time: build a model from its spec inside a worker (torch imported lazily).

Three ways in: a factory in the user's code (``file.py:factory`` or ``package.module:factory``),
a model zoo package (``torchvision:NAME``, ``timm:NAME``), or a saved model file (TorchScript,
``.pt2``, ``torch.save`` pickle). Weights, when given, load afterwards
(:mod:`buildgraph.backends.torch.weights`). Errors are one-line :class:`StepFailed` messages.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Optional

from buildgraph.backends.torch.failures import user_frame, log_failure, short_error
from buildgraph.backends.torch.model_key import HUBS, saved_format, source_kind
from buildgraph.backends.torch.weights import load_weights
from buildgraph.errors import RecipeError, StepFailed, did_you_mean


def set_threads(threads: int) -> None:
    """Use the CPU slots the scheduler granted (persistent workers serve many steps)."""
    import torch

    torch.set_num_threads(max(1, int(threads)))


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
        where = user_frame(exc.__traceback__, [recipe_dir])
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
        from buildgraph.engine.origin import REFUSAL_HINT, untrusted

        if untrusted(path) is not None:  # pulled, unsigned: trusted only if built here
            raise StepFailed(f"{what}: {path.name} is a pickled whole model, refused: "
                             f"{REFUSAL_HINT}") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(f"{what}: cannot unpickle {path.name}: {short_error(exc)} (the "
                         "classes it names must be importable under the same module path)"
                         ) from None


def load_model(name: str, spec: Mapping[str, Any], recipe_dir: Path,
               with_weights: bool = True) -> Any:
    """Build model ``name`` in eval mode: factory (seeded) or saved file, then weights
    (``with_weights=False``: the architecture only, for a state_dict made from it)."""
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
            where = user_frame(exc.__traceback__, [recipe_dir])
            raise StepFailed(f"model '{name}': {source}(**kwargs) raised "
                             f"{short_error(exc)}{' at ' + where if where else ''}") from None
    elif kind == "transformers":
        from buildgraph.backends.torch import hf

        model = hf.build_model(name, spec, recipe_dir, with_weights)
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
    # a directory is a save_pretrained checkpoint, which from_pretrained has loaded already
    if with_weights and spec.get("weights") and not (recipe_dir / spec["weights"]).is_dir():
        load_weights(name, model, recipe_dir / spec["weights"], spec.get("weights_key"),
                     bool(spec.get("strict", True)))
    try:
        model.eval()
    except (NotImplementedError, RuntimeError):
        pass  # torch.export's GraphModule refuses eval(): it is already an inference graph
    return model
