"""Plugin libraries: load them the way their kind needs, into every TensorRT object that reads
an engine that uses them, and record which ones an engine was built with.

TensorRT loads plugin libraries two ways, and they are not interchangeable:

* **dynamic**: the library exports ``getCreators``; ``IPluginRegistry.load_library`` registers
  its creators in that registry (trtexec ``--dynamicPlugins``). On a library without
  ``getCreators`` it returns None. It also returns None when one of the library's plugins is
  already registered (NvInferRuntimeCommon.h), so a library is loaded into a registry only when
  its creators are not visible there yet;
* **static**: the library registers its creators with ``REGISTER_TENSORRT_PLUGIN`` when it is
  loaded into the process, into the global registry every builder and runtime searches; loading
  it is ``ctypes.CDLL`` (what Polygraphy does; trtexec ``--staticPlugins``), once per process.

TensorRT's own plugins (libnvinfer_plugin) are registered by ``init_libnvinfer_plugins``, which
every Runtime here is preceded by, as in Polygraphy's ``EngineFromBytes``.

The build records each library (the recipe's path, kind, sha256, the creators a dynamic one
registered) in its ``info`` output; refit, verify and benchmark load the same files and refuse
a library whose bytes changed since.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from buildgraph.errors import StepFailed

Creator = Tuple[str, str, str]
"""(name, version, namespace) of a plugin creator."""

_static: Dict[str, Any] = {}
"""Static libraries loaded into this process (path -> ctypes handle): dlopen once."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class PluginLibrary:
    """One plugin library as a build used it."""

    path: str
    """As the recipe names it (relative to the recipe's directory)."""
    kind: str
    """``dynamic`` or ``static``."""
    file: Path
    """Where it is on this machine."""
    sha256: str
    creators: Tuple[Creator, ...] = ()
    """The creators a dynamic library registered (found when the build loaded it)."""

    def as_info(self) -> Dict[str, Any]:
        """Its entry in the engine's ``info`` (no absolute path: the same build on another
        machine writes the same bytes)."""
        return {"path": self.path, "kind": self.kind, "sha256": self.sha256,
                "creators": [list(c) for c in self.creators]}

    @classmethod
    def from_info(cls, entry: Mapping[str, Any], recipe_dir: Optional[Path]) -> "PluginLibrary":
        """The library an engine's ``info`` names (relative to the recipe's directory, else
        to the current one), checked against its recorded sha256."""
        rel = str(entry.get("path", ""))
        found = Path(recipe_dir or ".") / rel
        if not rel or not found.is_file():
            raise StepFailed(f"plugin library '{rel}' the engine was built with is not there "
                             f"(looked at {found})")
        digest = file_sha256(found)
        if entry.get("sha256") and digest != entry["sha256"]:
            raise StepFailed(f"plugin library '{rel}' changed since the engine was built "
                             f"(sha256 {str(entry['sha256'])[:12]} then, {digest[:12]} now): "
                             "rebuild the engine with it")
        creators = tuple((str(c[0]), str(c[1]), str(c[2])) for c in entry.get("creators") or ())
        return cls(rel, str(entry.get("kind", "dynamic")), found, digest, creators)


def from_params(specs: Iterable[Any], files: Mapping[str, Path]) -> List[PluginLibrary]:
    """The recipe's ``plugins`` entries with the files the planner resolved (``plugin:PATH``)."""
    out = []
    for spec in specs:
        path = Path(files[f"plugin:{spec.path}"])
        try:
            digest = file_sha256(path)
        except OSError as exc:
            raise StepFailed(f"plugin library '{spec.path}' cannot be read: "
                             f"{exc.strerror or exc}") from None
        out.append(PluginLibrary(spec.path, spec.kind, path, digest))
    return out


def from_info(info: Mapping[str, Any], recipe_dir: Optional[Path]) -> List[PluginLibrary]:
    """The plugin libraries an engine step's ``info`` output records."""
    return [PluginLibrary.from_info(e, recipe_dir) for e in info.get("plugins") or ()]


def load_static(lib: PluginLibrary) -> None:
    """Load a REGISTER_TENSORRT_PLUGIN library into the process (its registrars run once)."""
    import ctypes

    key = str(lib.file)
    if key in _static:
        return
    try:
        _static[key] = ctypes.CDLL(key)
    except OSError as exc:
        raise StepFailed(f"cannot load plugin library '{lib.path}' (kind: static): "
                         f"{str(exc).splitlines()[0]}") from None


def visible(registry: Any, creators: Sequence[Creator]) -> bool:
    """Does ``registry`` (or a parent it searches) already have all of ``creators``?"""
    get = getattr(registry, "get_creator", None)
    if not creators or get is None:
        return False
    return all(get(name, version, namespace) is not None
               for name, version, namespace in creators)


def registered(registry: Any) -> Set[Creator]:
    """The creators registered in ``registry`` itself (empty where TensorRT cannot list them)."""
    out: Set[Creator] = set()
    for creator in getattr(registry, "all_creators", None) or ():
        out.add((str(creator.name), str(creator.plugin_version), str(creator.plugin_namespace)))
    return out


def load_dynamic(registry: Any, lib: PluginLibrary, sink: Sequence[Tuple[str, str]] = ()
                 ) -> PluginLibrary:
    """Load a getCreators library into ``registry`` unless its creators are visible there
    already; the library with the creators it registered."""
    if visible(registry, lib.creators):
        return lib
    before = registered(registry)
    handle = registry.load_library(str(lib.file))
    if handle is None:
        errors = [m for sev, m in sink if sev in ("ERROR", "INTERNAL_ERROR")]
        last = f": {errors[-1][:300]}" if errors else ""
        raise StepFailed(
            f"TensorRT could not load plugin library '{lib.path}' (kind: dynamic): "
            "IPluginRegistry.load_library returned None. A dynamic library exports "
            "getCreators; one that registers its plugins with REGISTER_TENSORRT_PLUGIN is "
            f"kind: static{last}")
    new = tuple(sorted(registered(registry) - before))
    return replace(lib, creators=new or lib.creators)


def load_all(registry: Any, libs: Sequence[PluginLibrary],
             sink: Sequence[Tuple[str, str]] = ()) -> List[PluginLibrary]:
    """Every library of ``libs`` where ``registry`` (a Builder's or Runtime's) sees it;
    ``sink`` holds TensorRT's messages (the last error goes into a failure's message)."""
    out = []
    for lib in libs:
        if lib.kind == "static":
            load_static(lib)
            out.append(lib)
        else:
            out.append(load_dynamic(registry, lib, sink))
    return out
