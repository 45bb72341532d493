"""``buildgraph report``: the HTML report of the recorded build (implemented in :mod:`buildgraph.html_report`)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import argparse
    from typing import Any

HELP = 'write an HTML report of the recorded build (DAG, artifacts, latency, release); --markdown, --json, --compare'


def add_arguments(report: argparse.ArgumentParser) -> None:
    import argparse

    from buildgraph.cli.args import recipe_args

    recipe_args(report, targets=False)
    report.add_argument("-o", "--output", help="where to write it (default: "
                        "BUILD_DIR/report.html; stdout for --markdown and --json)")
    fmt = report.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="a summary for CI comments")
    fmt.add_argument("--json", action="store_true", help="the data behind every figure")
    report.add_argument("--compare", metavar="OTHER.lock.json",
                        help="compare with another build (its lock file, or a report --json): "
                             "keys, output digests, latency; exit 1 on a regression")
    report.add_argument("--threshold", default="10%",
                        help="p50 slowdown that counts as a regression (default: 10%%)")
    report.add_argument("--lock", help="report this lock file instead of the recipe's own")
    report.add_argument("--screenshot", metavar="PNG", help="also save a PNG of the page, "
                        "taken with headless Chromium")
    report.add_argument("--width", type=int, default=1280, help=argparse.SUPPRESS)


def main(args: Any) -> int:
    from buildgraph.html_report.command import run

    return run(args)
