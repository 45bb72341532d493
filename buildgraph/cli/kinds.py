"""``buildgraph kinds``: the step kinds available."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import argparse
    from typing import Any

HELP = 'list the step kinds available'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: Any) -> int:
    import sys

    from buildgraph.errors import BuildgraphError

    from buildgraph.engine.executor import known_kinds, load_executor

    for kind, target in known_kinds().items():
        try:
            cls = load_executor(kind)
            doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()
            summary = doc.splitlines()[0] if doc else ""
        except BuildgraphError as exc:
            summary = f"(cannot load: {exc.message})"
        print(f"{kind:<18} {summary}")
    return 0
