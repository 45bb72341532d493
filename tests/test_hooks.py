"""Planner hooks: validating against upstream files, and partial upstream digests."""

from __future__ import annotations

import pytest

import buildgraph
from buildgraph.engine import executor as executors

RECIPE = """
vars: {second: two}
steps:
  src: {uses: shell, with: {cmd: 'printf "ok\\n${vars.second}\\n" > ${out.o}'}, outputs: [o]}
  use:
    uses: test.firstline
    from: src
    with: {expect: ok}
"""


@pytest.fixture(autouse=True)
def hook_kind(monkeypatch):
    monkeypatch.setitem(executors.BUILTIN_KINDS, "test.firstline", "hook_kinds:FirstLine")


def run(project, **kw):
    return buildgraph.run(project.root / "r.yaml", cache_dir=project.cache,
                          build_dir=project.build, **kw)


def test_upstream_digest_hook_keys_on_part_of_the_upstream(project):
    project.write("r.yaml", RECIPE)
    assert run(project).ok
    again = run(project, set={"second": "three"})  # the upstream changes after its first line
    assert again["src"].status == "built"
    assert again["use"].status == "cached"


def test_check_upstream_failure_names_the_step_location(project):
    project.write("r.yaml", RECIPE.replace("expect: ok", "expect: nope"))
    result = run(project)
    assert result["use"].status == "failed"
    assert result["use"].message.endswith(
        "r.yaml:5:3: steps.use.with: upstream file does not start with 'nope'")
