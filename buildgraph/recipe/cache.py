"""A cache of resolved recipes, so a no-op ``run`` needs neither YAML parsing nor pydantic.

Loading a recipe validates it with pydantic and asks each executor for its fingerprint; that
costs more than the whole no-op decision for 1,000 steps. Like ninja, which re-parses its
manifest only when it changed, we keep the resolved :class:`Graph` (plain data) in the cache
under a token covering everything that can change it:

* the recipe's bytes and path, and the ``--set`` overrides;
* the host (name, CPU model, core count) and the Python environment: interpreter, and the
  modification times of the site-packages
  directories (installing or upgrading a package touches them, which also covers the tool
  versions that fingerprints record and the plugins that provide step kinds);
* buildgraph's own source files (their stat signatures);
* every input file consulted while resolving (model sources found by reading imports).

Executors whose fingerprint can change without the environment changing (the GPU present)
declare ``volatile_fingerprint`` and are fingerprinted again at every plan regardless.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

from buildgraph.engine.graph import Graph
from buildgraph.engine.hashing import canonical_json, digest_bytes

CACHE_FORMAT = 1


def _sig(path: str) -> Optional[Tuple[int, int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def host_identity() -> List[Any]:
    """This machine: a cache directory may be shared between hosts (network file systems)."""
    import platform

    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            cpu = next((line for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    return [platform.node(), platform.machine(), os.cpu_count(), cpu]


def environment_token() -> str:
    """Changes when the host, interpreter, installed packages or buildgraph's sources change."""
    parts: List[Any] = [sys.version, sys.executable, CACHE_FORMAT] + host_identity()
    for entry in sys.path:
        if entry and ("site-packages" in entry or "dist-packages" in entry):
            parts.append((entry, _sig(entry)))
    package = Path(__file__).resolve().parent.parent
    for directory, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                st = _sig(os.path.join(directory, name))
                parts.append((directory, name, st))
    return digest_bytes(repr(sorted(map(repr, parts))).encode())


def load_graph(path: Union[str, Path], overrides: Any, cache_root: Optional[Path]) -> Graph:
    """Load ``path`` through the resolved-recipe cache in ``cache_root`` (None: no cache)."""
    from buildgraph.recipe.interpolate import parse_overrides

    if cache_root is None:
        from buildgraph.recipe.load import load_recipe

        return load_recipe(path, overrides)
    try:
        data = Path(path).read_bytes()
    except OSError:
        from buildgraph.recipe.load import load_recipe

        return load_recipe(path, overrides)  # produces the proper error
    parsed = parse_overrides(overrides)
    token = digest_bytes(canonical_json({
        "recipe": digest_bytes(data), "path": str(Path(path).resolve()),
        "overrides": {k: repr(v) for k, v in parsed.items()}, "env": environment_token()}))
    entry = Path(cache_root) / "recipes" / f"{token}.pickle"
    try:
        graph, watched = pickle.loads(entry.read_bytes())
        if isinstance(graph, Graph) and all(_sig(p) == sig for p, sig in watched):
            return graph
    except Exception:  # noqa: BLE001 - any unreadable entry is simply re-resolved
        pass
    from buildgraph.recipe.load import load_recipe

    graph = load_recipe(path, overrides)
    watched = sorted({(str(p), _sig(str(p))) for step in graph.steps.values()
                      for p in step.inputs.values() if os.path.isfile(p)})
    try:
        from buildgraph.engine.store import atomic_write

        atomic_write(entry, pickle.dumps((graph, watched), protocol=pickle.HIGHEST_PROTOCOL))
    except OSError:
        pass
    return graph
