"""``buildgraph repro``: rebuild with the cache bypassed and compare."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import argparse

HELP = 'rebuild with the cache bypassed and compare with the cached build, bit for bit or numerically'


def add_arguments(repro: argparse.ArgumentParser) -> None:
    from buildgraph.cli.args import jobs, recipe_args

    recipe_args(repro)
    repro.add_argument("-j", "--jobs", type=jobs, default=0,
                       help="steps run at once (default: number of CPU cores)")
    repro.add_argument("--json", action="store_true", help="print the comparison as JSON")
    repro.add_argument("--keep", action="store_true",
                       help="keep the scratch cache and build directory (the path is printed)")


def main(args: argparse.Namespace) -> int:
    import json

    from buildgraph import api
    from buildgraph.repro import render
    from buildgraph.reporters import ConsoleReporter

    graph = api.load(args.recipe, args.overrides, args.cache_dir)
    result = api.repro(graph, args.targets, cache_dir=args.cache_dir, build_dir=args.build_dir,
                       jobs=args.jobs, reporter=ConsoleReporter(sys.stderr), keep=args.keep)
    if args.json:
        print(json.dumps(result.as_json(), indent=2, default=str))
    else:
        sys.stdout.write(render(result))
    return 0 if result.ok else 1
