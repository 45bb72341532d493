"""What several commands share: the recipe and the options that come with it."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import argparse


def recipe_args(sp: argparse.ArgumentParser, targets: bool = True) -> None:
    """The recipe, its targets and the options every recipe command takes."""
    sp.add_argument("recipe", help="the recipe YAML file")
    if targets:
        sp.add_argument("targets", nargs="*", metavar="STEP",
                        help="build only these steps and what they need")
    sp.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="NAME=VALUE", help="override a recipe variable")
    sp.add_argument("--cache-dir", help="cache directory (default: $BUILDGRAPH_CACHE_DIR "
                    "or .cache)")
    sp.add_argument("--build-dir", help="where outputs are materialized (default: "
                    "build/RECIPE_NAME)")


def jobs(text: str) -> int:
    """``-j N``: a positive number of steps (omit it for one per CPU core)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1; got {value} (leave -j out "
                                         "for one step per CPU core)")
    return value
