"""The engine: graph, plan, execute, store (see docs/architecture.md).

The package itself holds one decision every part of buildgraph shares and that must cost
nothing to ask (a no-op run answered from its stamp imports this package and little else):
where the cache directory is when none is given.
"""

import os

ENV_CACHE_DIR = "BUILDGRAPH_CACHE_DIR"


def default_cache_dir_name() -> str:
    """``$BUILDGRAPH_CACHE_DIR``, else ``.cache`` (relative to the working directory)."""
    return os.environ.get(ENV_CACHE_DIR) or ".cache"
