"""Step kinds exercising the description record, for tests/test_describe.py (engine fakes)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from buildgraph.engine.executor import Description, Executor
from buildgraph.engine.hashing import digest_bytes
from buildgraph.engine.params import StrictParams
from buildgraph.errors import RecipeError


class Params(StrictParams):
    expect: str = "ok"


def first_line_view(path: Path) -> Optional[str]:
    """The upstream view of FirstLine: only the first line of a file counts."""
    return digest_bytes(Path(path).read_text().splitlines()[0].encode())


class FirstLine(Executor):
    """Copies its upstream file; keyed on the upstream's first line only; checks a header as
    the first thing it does (a RecipeError located at the step)."""

    kind = "test.firstline"
    Params = Params
    outputs = {"o": "o.txt"}

    def describe(self, params, ctx):
        return Description(upstream_view="describe_kinds:first_line_view")

    def run(self, task):
        src = next(iter(next(iter(task.upstream.values())).values()))
        if not Path(src).read_text().startswith(task.params["expect"]):
            raise RecipeError(f"upstream file does not start with '{task.params['expect']}'")
        task.outputs["o"].write_text(Path(src).read_text())


class ReadsConfig(Executor):
    """Reads a file its params do not name (like a model's source) and a setting from the
    recipe's models (like dims); counts its runs in a file beside the recipe."""

    kind = "test.readsconfig"
    outputs = {"o": "o.txt"}

    class Params(StrictParams):
        model: str = "m"

    def describe(self, params, ctx):
        spec = dict(ctx.models.get(params.model) or {})
        config = ctx.recipe_dir / "config.txt"
        if not config.is_file():
            raise RecipeError("config.txt is missing", hint="write one beside the recipe")
        return Description(inputs={"config": config}, data={"dims": spec.get("dims") or {}},
                           env={"tool": "1.0"})

    def run(self, task):
        runs = task.recipe_dir / "runs.txt"
        runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
        task.outputs["o"].write_text(task.inputs["config"].read_text() + repr(task.data))
