"""``buildgraph graph``: draw the DAG."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import argparse

HELP = 'draw the DAG (Mermaid, Graphviz DOT, PNG/SVG)'


def add_arguments(graph: argparse.ArgumentParser) -> None:
    from buildgraph.cli.args import recipe_args

    recipe_args(graph, targets=False)
    graph.add_argument("--format", choices=["mermaid", "dot", "png", "svg"], default="mermaid")
    graph.add_argument("-o", "--output", help="write to this file (required for png/svg)")
    graph.add_argument("--status", action="store_true", help="colour steps by plan status")


import sys
from pathlib import Path


def main(args: argparse.Namespace) -> int:
    from buildgraph.errors import BuildgraphError

    import shutil
    import subprocess

    from buildgraph import api
    from buildgraph.explain import dot, mermaid

    graph = api.load(args.recipe, args.overrides, args.cache_dir)
    decisions = api.plan(graph, cache_dir=args.cache_dir, build_dir=args.build_dir) \
        if args.status else None
    if args.format == "mermaid":
        text = mermaid(graph, decisions)
    else:
        text = dot(graph, decisions)
    if args.format in ("png", "svg"):
        if not args.output:
            raise BuildgraphError(f"--format {args.format} needs -o FILE")
        exe = shutil.which("dot")
        if exe is None:
            raise BuildgraphError("Graphviz 'dot' is not installed, so PNG/SVG cannot be drawn",
                                  hint="install graphviz (apt-get install graphviz), or use "
                                       "--format dot / mermaid")
        proc = subprocess.run([exe, f"-T{args.format}", "-o", args.output], input=text.encode(),
                              capture_output=True)
        if proc.returncode != 0:
            raise BuildgraphError(f"dot failed: {proc.stderr.decode(errors='replace').strip()}")
        print(f"wrote {args.output}", file=sys.stderr)
        return 0
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
