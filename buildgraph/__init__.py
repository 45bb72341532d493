"""buildgraph: a declarative, YAML-driven build system with content-hash caching for deploying
deep-learning models.

The Python API mirrors the CLI::

    import buildgraph
    result = buildgraph.run("recipes/hello.yaml", targets=["upper"], overrides={"greeting": "hey"})
    result.ok, result["upper"].outputs

Importing this package imports no heavy ML library; executors import theirs when they run.
"""

from __future__ import annotations

__version__ = "0.1.0"

TYPE_CHECKING = False  # not typing's: a no-op run answered from its stamp imports no typing
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

    from buildgraph.api import load, plan, run  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in ("run", "plan", "load"):
        from buildgraph import api

        return getattr(api, name)
    raise AttributeError(f"module 'buildgraph' has no attribute '{name}'")


__all__ = ["run", "plan", "load", "__version__"]
