"""A cache of resolved recipes, so a no-op ``run`` needs neither YAML parsing nor pydantic.

Loading a recipe parses YAML and validates every step's ``with:`` block with pydantic; that
costs more than the whole no-op decision for 1,000 steps. Like ninja, which re-parses its
manifest only when it changed, we keep the resolved :class:`Graph` (plain data) in the cache
under a token covering everything that can change it:

* the recipe's bytes and path, and the ``--set`` overrides;
* the host and the Python environment (:func:`buildgraph.engine.environment.environment_token`:
  interpreter, site-packages directories, which change when a plugin providing a step kind is
  installed, and buildgraph's own sources);
* the declared input files (their existence is checked while resolving).

What executors add to keys (their descriptions) is not part of the graph: the planner asks for
it and memoises it in the store.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Optional, Union

from buildgraph.engine.graph import Graph
from buildgraph.engine.environment import environment_token
from buildgraph.engine.environment import stat_signature as _sig
from buildgraph.engine.hashing import canonical_json, digest_bytes

CACHE_FORMAT = 2


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
        "overrides": {k: repr(v) for k, v in parsed.items()}, "env": environment_token(), "format": CACHE_FORMAT}))
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
        from buildgraph.engine.files import atomic_write

        atomic_write(entry, pickle.dumps((graph, watched), protocol=pickle.HIGHEST_PROTOCOL))
    except OSError:
        pass
    return graph
