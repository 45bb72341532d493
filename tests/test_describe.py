"""The executor boundary: ``describe`` records, the keyed Task, memoised descriptions."""

from __future__ import annotations

import dataclasses

import pytest

import buildgraph
from buildgraph.engine import executor as executors
from buildgraph.engine.executor import Task, task_fields
from buildgraph.engine.keys import PART_NAMES, action_key, make_parts

RECIPE = """
vars: {second: two}
steps:
  src: {uses: shell, with: {cmd: 'printf "ok\\n${vars.second}\\n" > ${out.o}'}, outputs: [o]}
  use:
    uses: test.firstline
    from: src
    with: {expect: ok}
"""

CONFIG_RECIPE = """
models:
  m: {source: net.py:make, dims: {batch: {min: 1, opt: 2, max: 8}}}
steps:
  read: {uses: test.readsconfig}
"""


@pytest.fixture(autouse=True)
def describe_kinds(monkeypatch):
    monkeypatch.setitem(executors.BUILTIN_KINDS, "test.firstline", "describe_kinds:FirstLine")
    monkeypatch.setitem(executors.BUILTIN_KINDS, "test.readsconfig",
                        "describe_kinds:ReadsConfig")


def run(project, **kw):
    return buildgraph.run(project.root / "r.yaml", cache_dir=project.cache,
                          build_dir=project.build, **kw)


def plan(project, **kw):
    return buildgraph.plan(project.root / "r.yaml", cache_dir=project.cache,
                           build_dir=project.build, **kw)


def test_upstream_view_keys_on_part_of_the_upstream(project):
    project.write("r.yaml", RECIPE)
    assert run(project).ok
    again = run(project, set={"second": "three"})  # the upstream changes after its first line
    assert again["src"].status == "built"
    assert again["use"].status == "cached"
    project.write("r.yaml", RECIPE.replace('"ok', '"ko').replace("expect: ok", "expect: ko"))
    assert run(project)["use"].status == "built"  # the first line is the view: it changed


def test_a_recipe_error_raised_by_run_names_the_steps_with_block(project):
    project.write("r.yaml", RECIPE.replace("expect: ok", "expect: nope"))
    result = run(project)
    assert result["use"].status == "failed"
    assert result["use"].message.endswith(
        "r.yaml:8:5: steps.use.with: upstream file does not start with 'nope'")


def _project_with_config(project):
    project.write("r.yaml", CONFIG_RECIPE)
    project.write("net.py", "def make():\n    return None\n")
    project.write("config.txt", "one")
    return project


def test_described_inputs_data_and_env_are_keyed_and_reach_the_task(project):
    _project_with_config(project)
    first = run(project)["read"]
    assert first.status == "built"
    out = first.outputs["o"].read_text()
    assert out.startswith("one") and "'max': 8" in out
    assert run(project)["read"].status == "cached"
    project.write("config.txt", "two")  # a file the recipe never names
    decision = plan(project)["read"]
    assert decision.action == "run" and "input config.txt changed" in decision.reasons
    assert run(project)["read"].status == "built"
    project.write("r.yaml", CONFIG_RECIPE.replace("max: 8", "max: 16"))
    decision = plan(project)["read"]
    assert decision.action == "run"
    assert "dims batch.max 8→16" in decision.reasons
    assert run(project)["read"].status == "built"
    assert (project.root / "runs.txt").read_text() == "xxx"


def test_descriptions_are_memoised_and_revalidated_by_their_files(project, monkeypatch):
    import describe_kinds

    _project_with_config(project)
    calls = []
    original = describe_kinds.ReadsConfig.describe
    monkeypatch.setattr(describe_kinds.ReadsConfig, "describe",
                        lambda self, p, ctx: calls.append(1) or original(self, p, ctx))
    assert run(project).ok
    assert len(calls) == 1
    assert plan(project)["read"].action == "cached"
    assert len(calls) == 1  # a new planner reuses the memoised description
    project.write("config.txt", "edited")
    plan(project)
    assert len(calls) == 2  # a file it named changed: described again
    (project.root / "config.txt").unlink()
    with pytest.raises(buildgraph.errors.RecipeError) as err:
        plan(project)
    assert err.value.render().startswith(f"{project.root / 'r.yaml'}:5:3: steps.read.with: "
                                         "config.txt is missing")


def test_task_has_no_field_outside_the_key():
    keyed, context = set(Task.KEYED_FIELDS), set(Task.CONTEXT_FIELDS)
    assert keyed.isdisjoint(context)
    assert set(task_fields()) == keyed | context
    assert set(Task.KEYED_FIELDS.values()) <= set(PART_NAMES)
    # the execution context must not be able to carry a result-changing channel in disguise
    assert not {"models", "upstream_meta", "cache_dir"} & set(task_fields())


BASE = dict(kind="k", executor_version="1", params={"a": 1}, outputs={"o": "o.txt"},
            inputs={"i": "d1"}, upstream={"u.o": "d2"}, env={"tool": "1"}, salt="",
            data={"model": {"dims": {"batch": 1}}}, upstream_kinds={"u": "shell"})
MUTATIONS = dict(kind="k2", executor_version="2", params={"a": 2}, outputs={"o": "p.txt"},
                 inputs={"i": "d9"}, upstream={"u.o": "d9"}, env={"tool": "2"}, salt="s",
                 data={"model": {"dims": {"batch": 2}}}, upstream_kinds={"u": "torch.save"})


@pytest.mark.parametrize("field", sorted(MUTATIONS))
def test_every_keyed_field_changes_the_key(field):
    assert set(MUTATIONS) == set(BASE)
    base = action_key(make_parts(**BASE))
    assert action_key(make_parts(**{**BASE, field: MUTATIONS[field]})) != base


def test_describe_failures_are_located_recipe_errors(project, monkeypatch):
    import describe_kinds

    def broken(self, params, ctx):
        return {"not": "a description"}

    monkeypatch.setattr(describe_kinds.ReadsConfig, "describe", broken)
    _project_with_config(project)
    proc_err = None
    try:
        plan(project)
    except buildgraph.errors.RecipeError as exc:
        proc_err = exc.render()
    assert proc_err is not None and "could not describe this step" in proc_err
    assert ":5:3: steps.read.with:" in proc_err


def test_tensorrt_build_without_profiles_is_stale_when_the_model_dims_change(project,
                                                                             monkeypatch):
    """The ONNX file holds only the dim's name, so a changed ``dims.batch.max`` leaves it
    byte-identical: the engine must still rebuild (it is keyed on the model's dims)."""
    from trt_fake import make_test_onnx

    from buildgraph.backends.tensorrt import env as trt_env

    monkeypatch.setenv(trt_env.MODULE_ENV, "trt_fake")
    trt_env._cached = None
    make_test_onnx(project.root / "tiny.onnx")
    project.write("net.py", "def make():\n    raise RuntimeError('not used')\n")
    recipe = """\
models:
  tiny:
    source: net.py:make
    inputs: {x: {shape: [batch, 3, 16, 16]}}
    dims: {batch: {min: 1, opt: 4, max: MAX}}
steps:
  onnx:
    uses: shell
    inputs: {src: tiny.onnx}
    with: {cmd: "cp ${in.src} ${out.model}"}
    outputs: {model: model.onnx}
  engine: {uses: tensorrt.build, from: onnx, with: {model: tiny}}
"""
    project.write("r.yaml", recipe.replace("MAX", "8"))
    assert run(project)["engine"].status == "built"
    project.write("r.yaml", recipe.replace("MAX", "16"))
    result = run(project)
    assert result["onnx"].status == "cached"  # byte-identical ONNX
    assert result["engine"].status == "built"
    import json

    engine = json.loads(result["engine"].outputs["model"].read_bytes())
    assert engine["profiles"] == [{"x": [[1, 3, 16, 16], [4, 3, 16, 16], [16, 3, 16, 16]]}]
    trt_env._cached = None
