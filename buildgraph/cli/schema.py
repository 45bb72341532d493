"""``buildgraph schema``: the recipe JSON Schema, for editors."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import argparse
    from typing import Any

HELP = 'print the recipe JSON Schema (for editors)'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: Any) -> int:
    import json

    from buildgraph.recipe.json_schema import recipe_json_schema

    print(json.dumps(recipe_json_schema(), indent=2))
    return 0
