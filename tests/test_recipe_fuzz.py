"""Bad recipes never crash ``buildgraph plan``: a located error (exit 2) or a valid plan.

Seeded mutations of the shipped recipes and of a matrix recipe (keys renamed, values replaced,
lines deleted, duplicated or re-indented) go through the CLI in-process; anything escaping
``run_cli`` (what would be a traceback on the terminal) fails the test, as does an error with
no ``file:line:col``. The mutants that once crashed it are pinned below and run by default.
"""

from __future__ import annotations

import random
import re
import shutil
import traceback
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from buildgraph.cli import run_cli
from conftest import REPO

MATRIX_RECIPE = """\
name: matrix
vars:
  sizes: [8, 16]
  tag: v1
steps:
  make:
    uses: shell
    matrix:
      size: ${vars.sizes}
      mode: [fast, exact]
      exclude: [{size: 16, mode: exact}]
      include: [{size: 32, mode: fast}]
    with:
      cmd: echo ${matrix.size} ${matrix.mode} ${vars.tag} > ${out.txt}
    outputs: {txt: "out_${matrix.mode}.txt"}
    resources: {cpu: 1}
  pack:
    uses: shell
    matrix:
      mode: [fast, exact]
    from: make
    with:
      cmd: cat ${in.make@8-${matrix.mode}.txt} > ${out.all}
    outputs: [all]
  script:
    uses: python
    from: pack@fast
    with:
      function: tools.py:summarize
      args: {label: "${vars.tag}", sizes: "${vars.sizes}"}
"""

TOOLS_PY = "def summarize(inputs, outputs, label, sizes):\n    return {'label': label}\n"

VALUES = ["", "null", "[]", "{}", "0", "-1", "3.5", "1e400", "true", "x", "'${vars.nope}'",
          "'${matrix.nope}'", "'${in.nope.x}'", "'${out.nope}'", "[1, {a: 2}]", "{a: [1]}",
          "!!python/object:os.system", "!!python/object/apply:os.system [ls]", "!custom x",
          "!!int nope", "!!binary aGk=", "=", "2024-01-01", "&a [*a]", "'$${literal}'",
          "all", "fp61", "models/nope.py:f", "'a b'", "{'${matrix.mode}': 1}", "~", "@x",
          "'%s'" % ("y" * 300), "[${vars.sizes}]", "'${vars}'", "'${}'", "*undefined"]
KEYS = ["uses", "with", "from", "outputs", "inputs", "matrix", "resources", "timeout",
        "cache", "description", "steps", "vars", "models", "pools", "name", "cache_salt",
        "model", "target", "dims", "exclude", "include", "wth", "form", "trials", "<<",
        "'${matrix.mode}'", "1", "null", "'a b'", "x@y"]

KEY_LINE = re.compile(r"^(\s*(?:- )?)([^\s:#][^:#]*?):(\s|$)")


def _mutate(text: str, rng: random.Random) -> Tuple[str, List[str]]:
    lines = text.splitlines()
    done: List[str] = []
    for _ in range(rng.randint(1, 3)):
        if not lines:
            break
        i = rng.randrange(len(lines))
        line = lines[i]
        op = rng.choice(["rename", "value", "value", "delete", "duplicate", "indent"])
        match = KEY_LINE.match(line)
        if op == "rename" and match:
            lines[i] = match.group(1) + rng.choice(KEYS) + line[match.end(2):]
        elif op == "value" and match:
            lines[i] = line[:match.end(2) + 1] + " " + rng.choice(VALUES)
        elif op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, line)
        else:
            op = "indent"
            lines[i] = ("  " + line) if rng.random() < 0.5 or not line.startswith("  ") \
                else line[2:]
        done.append(f"{op} line {i + 1}")
    return "\n".join(lines) + "\n", done


def _project(tmp: Path) -> Path:
    """A copy of recipes/ (the models the recipes name) plus the matrix recipe."""
    root = tmp / "recipes"
    shutil.copytree(REPO / "recipes", root, ignore=shutil.ignore_patterns("*.lock.json"))
    (root / "matrix.yaml").write_text(MATRIX_RECIPE, encoding="utf-8")
    (root / "tools.py").write_text(TOOLS_PY, encoding="utf-8")
    return root


def _plan(path: Path, cache: Path, capsys: pytest.CaptureFixture) -> Optional[str]:
    """None if ``plan`` behaved; else what went wrong."""
    try:
        code = run_cli(["plan", str(path), "--cache-dir", str(cache)])
    except BaseException:  # noqa: BLE001 - exactly what the user would see as a traceback
        capsys.readouterr()
        return traceback.format_exc(limit=-4)
    err = capsys.readouterr().err
    if code == 0:
        return None
    if code != 2:
        return f"exit {code}: {err}"
    if not re.search(rf"^error: .*{re.escape(path.name)}:\d+:\d+: ", err, re.MULTILINE):
        return f"an error without file:line:col: {err}"
    if "Traceback" in err:
        return err
    return None


# Mutants that printed a traceback before; each is (recipe, original text, replacement).
KNOWN = {
    "python_tag": ("hello.yaml", "greeting: hello", "greeting: !!python/object:os.system"),
    "local_tag": ("hello.yaml", "greeting: hello", "greeting: !shout hello"),
    "bad_int": ("hello.yaml", "greeting: hello", "greeting: !!int hello"),
    "value_indicator": ("hello.yaml", "greeting: hello", "greeting: ="),
    "recursive_alias": ("hello.yaml", "greeting: hello", "greeting: &g [*g]"),
    "sequence_key": ("hello.yaml", "greeting: hello", "? [greeting]: hello"),
    "matrix_in_key": ("matrix.yaml", "args: {label:", "args: {'${matrix.mode}': 1, label:"),
    "tvm_compile_without_with": (
        "resnet_cpu.yaml", "    with: {target: native, dims: {batch: 1}}\n  tvm_arm64", "  tvm_arm64"),
}


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_crashers_get_a_located_error(name, tmp_path, capsys):
    root = _project(tmp_path)
    recipe, old, new = KNOWN[name]
    text = (root / recipe).read_text(encoding="utf-8")
    assert old in text
    mutant = root / f"mutant_{recipe}"
    mutant.write_text(text.replace(old, new, 1), encoding="utf-8")
    problem = _plan(mutant, tmp_path / "cache", capsys)
    assert problem is None, problem


@pytest.mark.slow
def test_plan_never_prints_a_traceback_on_mutated_recipes(tmp_path, capsys):
    root = _project(tmp_path)
    sources = {name: (root / name).read_text(encoding="utf-8")
               for name in ("hello.yaml", "resnet_cpu.yaml", "resnet50_trt.yaml", "matrix.yaml")}
    for name, text in sources.items():  # the originals plan cleanly
        assert _plan(root / name, tmp_path / "cache", capsys) is None, name
    rng = random.Random(20261126)
    problems = []
    counts = {"ok": 0, "error": 0}
    for n in range(600):
        name = rng.choice(sorted(sources))
        text, ops = _mutate(sources[name], rng)
        mutant = root / f"mutant_{n}_{name}"
        mutant.write_text(text, encoding="utf-8")
        problem = _plan(mutant, tmp_path / "cache", capsys)
        if problem is None:
            counts["ok" if run_cli(["plan", str(mutant), "--cache-dir", str(tmp_path / "cache")])
                   == 0 else "error"] += 1
            capsys.readouterr()
            mutant.unlink()
        else:
            problems.append(f"{mutant.name} ({', '.join(ops)}):\n{problem}")
    with capsys.disabled():
        print(f"\n600 mutants: {counts['ok']} valid, {counts['error']} located errors, "
              f"{len(problems)} problems")
    assert not problems, "\n\n".join(problems[:10])
