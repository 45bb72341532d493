"""``buildgraph log``: a step's last build log."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import argparse
    from typing import List

HELP = "print the log of a step's last build"


def add_arguments(log: argparse.ArgumentParser) -> None:
    from buildgraph.cli.args import recipe_args

    recipe_args(log, targets=False)
    log.add_argument("step")


import sys
from pathlib import Path


def main(args: argparse.Namespace) -> int:
    from buildgraph import api
    from buildgraph.engine.scheduler import default_build_dir

    graph = api.load(args.recipe, args.overrides, args.cache_dir)
    ids: List[str] = graph.select([args.step])
    ids = [i for i in ids if i == args.step or graph.steps[i].base_id == args.step]
    build_dir = Path(args.build_dir) if args.build_dir else default_build_dir(graph)
    status = 0
    for sid in ids:
        path = build_dir / ".logs" / f"{sid}.log"
        if not path.exists():
            print(f"{sid}: no log (the step has not run here; cached results keep theirs in the "
                  "cache)", file=sys.stderr)
            status = 1
            continue
        if len(ids) > 1:
            print(f"== {sid}")
        sys.stdout.write(path.read_text(encoding="utf-8", errors="replace"))
    return status
