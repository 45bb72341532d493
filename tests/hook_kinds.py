"""A step kind with the optional planner hooks, for tests/test_hooks.py (an engine fake)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from buildgraph.errors import RecipeError
from buildgraph.engine.executor import Executor
from buildgraph.engine.hashing import digest_bytes


class Params(BaseModel):
    expect: str = "ok"


class FirstLine(Executor):
    """Copies its upstream file; keyed on the upstream's first line only; checks a header."""

    kind = "test.firstline"
    Params = Params
    outputs = {"o": "o.txt"}

    def check_upstream(self, params, upstream, models):
        for outs in upstream.values():
            for path in outs.values():
                if not Path(path).read_text().startswith(params["expect"]):
                    raise RecipeError(f"upstream file does not start with '{params['expect']}'")

    def upstream_digest(self, params, output, path, digest):
        return digest_bytes(Path(path).read_text().splitlines()[0].encode())

    def run(self, task):
        src = next(iter(next(iter(task.upstream.values())).values()))
        task.outputs["o"].write_text(Path(src).read_text())
