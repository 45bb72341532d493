"""``buildgraph plan``: what would run, and why."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import argparse
    from typing import Any

HELP = 'show what would run, and why'


def add_arguments(plan: argparse.ArgumentParser) -> None:
    from buildgraph.cli.args import recipe_args

    recipe_args(plan)
    plan.add_argument("--force", action="append", default=[], metavar="STEP")
    plan.add_argument("--remote", metavar="NAME", help="the team cache to ask (default: the "
                      "project's; 'off' for none)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("-v", "--verbose", action="store_true", help="also list cached steps")


def main(args: Any) -> int:
    from buildgraph import api
    from buildgraph.explain import plan_json, plan_text

    graph = api.load(args.recipe, args.overrides, args.cache_dir)
    decisions = api.plan(graph, args.targets, force=args.force, cache_dir=args.cache_dir,
                         build_dir=args.build_dir, remote=args.remote,
                         warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    print(plan_json(graph, decisions) if args.json else plan_text(graph, decisions,
                                                                     args.verbose))
    return 0
