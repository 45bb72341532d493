"""Every kind of bad recipe gets one message naming file:line:col, the key, and what to do.

The messages are pinned (golden) so a change to them is a conscious one.
"""

from __future__ import annotations

import pytest

from buildgraph.cli import run_cli

CASES = {
    "yaml_syntax": ("steps:\n  a: {uses: shell\n",
                    "r.yaml:3:1: YAML syntax error: did not find expected ',' or '}' "
                    "(while parsing a flow mapping)"),
    "unknown_key": ("steps:\n  a:\n    uses: shell\n    wth: {cmd: x}\n",
                    "r.yaml:4:5: steps.a.wth: unknown key 'wth' (did you mean 'with'?)"),
    "wrong_type": ("steps:\n  a:\n    uses: shell\n    timeout: soon\n    with: {cmd: x}\n",
                   "r.yaml:4:14: steps.a.timeout: expected a valid number"),
    "unknown_kind": ("steps:\n  a:\n    uses: shel\n    with: {cmd: x}\n",
                     "r.yaml:3:11: steps.a.uses: unknown step kind 'shel' (did you mean "
                     "'shell'?)\n  hint: known kinds: "),
    "missing_step": ("steps:\n  a:\n    uses: shell\n    from: bb\n    with: {cmd: x}\n"
                     "  b:\n    uses: shell\n    with: {cmd: x}\n",
                     "r.yaml:4:11: steps.a.from: no step named 'bb' (did you mean 'b'?)"),
    "missing_output": ("steps:\n  a:\n    uses: shell\n    with: {cmd: 'echo > ${out.txt}'}\n"
                       "    outputs: [txt]\n  b:\n    uses: shell\n"
                       "    with: {cmd: 'cat ${in.a.tx}'}\n",
                       "r.yaml:8:17: steps.b.with.cmd: ${in.a.tx}: step 'a' has no output 'tx' "
                       "(did you mean 'txt'?)"),
    "cycle": ("steps:\n  a: {uses: shell, from: c, with: {cmd: x}}\n"
              "  b: {uses: shell, from: a, with: {cmd: x}}\n"
              "  c: {uses: shell, from: b, with: {cmd: x}}\n",
              "r.yaml:2:3: steps.a: the steps form a cycle: a -> b -> c -> a"),
    "self_reference": ("steps:\n  a: {uses: shell, from: a, with: {cmd: x}}\n",
                       "r.yaml:2:26: steps.a.from: step 'a' cannot consume its own outputs"),
    "duplicate_id": ("steps:\n  a: {uses: shell, with: {cmd: x}}\n"
                     "  a: {uses: shell, with: {cmd: y}}\n",
                     "r.yaml:3:3: steps.a: duplicate key 'a' (first defined on line 2)"),
    "missing_input_file": ("steps:\n  a:\n    uses: shell\n    inputs: {data: data/nope.csv}\n"
                           "    with: {cmd: x}\n",
                           "r.yaml:4:20: steps.a.inputs.data: input file 'data/nope.csv' does "
                           "not exist"),
    "undefined_variable": ("vars: {batch: 1}\nsteps:\n  a:\n    uses: shell\n"
                           "    with: {cmd: 'echo ${vars.bach}'}\n",
                           "r.yaml:5:17: steps.a.with.cmd: undefined variable ${vars.bach} "
                           "(did you mean 'batch'?)"),
    "variable_cycle": ("vars: {a: '${vars.b}', b: '${vars.a}'}\nsteps:\n"
                       "  s: {uses: shell, with: {cmd: x}}\n",
                       "r.yaml:1:11: vars.a: variables refer to each other in a cycle: "
                       "a -> b -> a"),
    "empty_matrix": ("steps:\n  a:\n    uses: shell\n    matrix: {p: []}\n"
                     "    with: {cmd: 'echo ${matrix.p}'}\n",
                     "r.yaml:4:5: steps.a.matrix: the matrix expands to no steps"),
    "matrix_all_excluded": ("steps:\n  a:\n    uses: shell\n"
                            "    matrix: {p: [x], exclude: [{p: x}]}\n"
                            "    with: {cmd: 'echo ${matrix.p}'}\n",
                            "r.yaml:4:5: steps.a.matrix: the matrix expands to no steps"),
    "unknown_param": ("steps:\n  a:\n    uses: shell\n    with: {cmd: x, cwd: y}\n",
                      "r.yaml:4:20: steps.a.with.cwd: unknown key 'cwd' (did you mean 'cmd'?)"),
    "missing_param": ("steps:\n  a:\n    uses: shell\n    with: {}\n",
                      "r.yaml:4:5: steps.a.with: required key 'cmd' is missing"),
    "undeclared_out": ("steps:\n  a:\n    uses: shell\n    with: {cmd: 'echo > ${out.txt}'}\n",
                       "r.yaml:4:17: steps.a.with.cmd: ${out.txt}: this step declares no output"
                       " 'txt'"),
    "output_escapes": ("steps:\n  a:\n    uses: shell\n    with: {cmd: x}\n"
                       "    outputs: {txt: ../../etc/passwd}\n",
                       "r.yaml:5:20: steps.a.outputs.txt: invalid output file name "
                       "'../../etc/passwd'"),
    "absolute_output": ("steps:\n  a:\n    uses: shell\n    with: {cmd: x}\n"
                        "    outputs: {txt: /tmp/x}\n",
                        "r.yaml:5:20: steps.a.outputs.txt: invalid output file name '/tmp/x'"),
    "no_steps": ("name: x\n", "r.yaml:1:1: steps: expected a mapping of step ids to steps; got "
                 "nothing"),
    "missing_uses": ("steps:\n  a:\n    with: {cmd: x}\n",
                     "r.yaml:2:3: steps.a: required key 'uses' is missing"),
    "unknown_pool": ("steps:\n  a:\n    uses: shell\n    resources: {gpus: 1}\n"
                     "    with: {cmd: x}\n",
                     "r.yaml:4:17: steps.a.resources.gpus: unknown pool 'gpus' (did you mean "
                     "'gpu'?)"),
    "pool_too_small": ("steps:\n  a:\n    uses: shell\n    resources: {gpu: 2}\n"
                       "    with: {cmd: x}\n",
                       "r.yaml:4:22: steps.a.resources.gpu: asks for 2 of pool 'gpu', whose "
                       "capacity is 1"),
    "ambiguous_matrix_ref": ("steps:\n  a:\n    uses: shell\n    matrix: {p: [x, y]}\n"
                             "    with: {cmd: 'echo > ${out.t}'}\n    outputs: [t]\n"
                             "  b:\n    uses: shell\n    with: {cmd: 'cat ${in.a.t}'}\n",
                             "r.yaml:9:17: steps.b.with.cmd: 'a' expands to 2 steps (a@x, a@y);"
                             " name one of them"),
    "not_a_mapping": ("- a\n- b\n", "r.yaml:1:1: a recipe must be a mapping"),
    "bad_step_id": ("steps:\n  'a b': {uses: shell, with: {cmd: x}}\n",
                    "r.yaml:2:3: steps.a b: invalid step id 'a b'"),
    "python_tag": ("steps:\n  a:\n    uses: shell\n    with: {cmd: !!python/object:os.system x}\n",
                   "r.yaml:4:17: steps.a.with.cmd: unsupported YAML tag "
                   "'!!python/object:os.system'\n  hint: recipes hold plain data: strings, "
                   "numbers, booleans, null, lists and mappings"),
    "local_tag": ("vars: {v: !shout x}\nsteps:\n  a: {uses: shell, with: {cmd: x}}\n",
                  "r.yaml:1:11: vars.v: unsupported YAML tag '!shout'"),
    "bad_tagged_int": ("vars: {v: !!int many}\nsteps:\n  a: {uses: shell, with: {cmd: x}}\n",
                       "r.yaml:1:11: vars.v: cannot read 'many' as !!int"),
    "recursive_alias": ("vars: {v: &x [*x]}\nsteps:\n  a: {uses: shell, with: {cmd: x}}\n",
                        "r.yaml:1:11: vars.v.0: this YAML alias refers to a collection that "
                        "contains it"),
    "matrix_in_key": ("steps:\n  a:\n    uses: python\n    matrix: {p: [x, y]}\n"
                      "    with: {function: 'f.py:f', args: {'${matrix.p}': 1}}\n",
                      "r.yaml:5:39: steps.a.with.args.${matrix.p}: ${...} is not expanded in "
                      "mapping keys, only in values"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_recipe_error_message(name, project, capsys):
    text, expected = CASES[name]
    project.write("r.yaml", text)
    code = run_cli(["plan", "r.yaml"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert err.startswith("error: ")
    assert expected in err, err


def test_missing_recipe_file(project, capsys):
    assert run_cli(["run", "nope.yaml"]) == 2
    assert "error: nope.yaml: recipe file not found" in capsys.readouterr().err


def test_set_unknown_variable(project, capsys):
    project.write("r.yaml", "vars: {batch: 1}\nsteps:\n  a: {uses: shell, with: {cmd: x}}\n")
    assert run_cli(["plan", "r.yaml", "--set", "bach=2"]) == 2
    err = capsys.readouterr().err
    assert "--set bach: the recipe has no variable 'bach' (did you mean 'batch'?)" in err


def test_unknown_target(project, capsys):
    project.write("r.yaml", "steps:\n  alpha: {uses: shell, with: {cmd: x}}\n")
    assert run_cli(["run", "r.yaml", "alpah"]) == 2
    assert "no step named 'alpah' (did you mean 'alpha'?)" in capsys.readouterr().err


def test_python_function_missing(project, capsys):
    project.write("steps.py", "def make(inputs, outputs):\n    pass\n")
    project.write("r.yaml", "steps:\n  a:\n    uses: python\n"
                            "    with: {function: 'steps.py:mkae'}\n")
    assert run_cli(["plan", "r.yaml"]) == 2
    err = capsys.readouterr().err
    assert "r.yaml:4:5: steps.a.with: steps.py defines no function 'mkae' (did you mean " \
           "'make'?)" in err
