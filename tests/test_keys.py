"""Action keys: stable under reordering, sensitive to every input (property-based)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

import buildgraph
from buildgraph.engine.keys import action_key, explain_difference, make_parts

scalars = st.one_of(st.integers(-5, 5), st.text(min_size=0, max_size=5), st.booleans())
params = st.dictionaries(st.text(min_size=1, max_size=4), scalars, max_size=5)


def parts(p, inputs=None, env=None, upstream=None, version="1", salt=""):
    return make_parts("k", version, p, {"o": "o"}, inputs or {"f": "d1"}, upstream or {},
                      env or {"torch": "2.13"}, salt)


@given(params, st.randoms())
def test_key_is_independent_of_dict_order(p, rnd):
    items = list(p.items())
    rnd.shuffle(items)
    assert action_key(parts(p)) == action_key(parts(dict(items)))


@given(params, st.text(min_size=1, max_size=4), scalars)
def test_key_changes_when_a_param_changes(p, name, value):
    changed = dict(p)
    changed[name] = value
    if changed != p:
        assert action_key(parts(p)) != action_key(parts(changed))


def test_key_changes_with_every_part():
    base = action_key(parts({"a": 1}))
    variants = [parts({"a": 1}, inputs={"f": "d2"}), parts({"a": 1}, env={"torch": "2.12"}),
                parts({"a": 1}, upstream={"s.o": "x"}), parts({"a": 1}, version="2"),
                parts({"a": 1}, salt="s")]
    keys = {action_key(v) for v in variants}
    assert base not in keys and len(keys) == len(variants)


def test_explanations_name_what_changed():
    old = parts({"opset": 17}, env={"torch": "2.12"})
    new = parts({"opset": 18}, inputs={"f": "d2"}, env={"torch": "2.13"})
    assert explain_difference(old, new, {"f": "models/resnet.py"}) == [
        "param opset 17→18", "input models/resnet.py changed", "torch 2.12→2.13"]


@given(st.permutations(["vars", "steps", "name"]), st.permutations(["uses", "with", "outputs"]),
       st.integers(0, 1000))
@settings(max_examples=25, deadline=None)
def test_recipe_keys_stable_under_yaml_key_reordering(top_order, step_order, n):
    import tempfile
    from pathlib import Path

    blocks = {"name": "name: r", "vars": f"vars: {{n: {n}, m: x}}"}
    step = {"uses": "uses: shell", "with": "with: {env: {B: '2', A: '1'}, cmd: 'echo ${vars.n} > "
            "${out.o}'}", "outputs": "outputs: [o]"}
    body = "\n".join("    " + step[k] for k in step_order)
    blocks["steps"] = "steps:\n  s:\n" + body
    text = "\n".join(blocks[k] for k in top_order) + "\n"
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.yaml"
        path.write_text(text)
        decisions = buildgraph.plan(path, cache_dir=Path(d) / "c")
    reference = parts({"cmd": "echo %d > ${out.o}" % n, "env": {"A": "1", "B": "2"}},
                      inputs={}, env={})
    reference["kind"] = "shell"
    assert decisions["s"].parts["params"] == reference["params"]
    global _seen
    _seen.setdefault(n, set()).add(decisions["s"].key)
    assert len(_seen[n]) == 1


_seen: dict = {}
