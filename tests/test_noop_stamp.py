"""A repeated no-op ``run`` is answered from its stamp (engine/noop.py), and only when nothing
the full decision read has changed: each test changes one thing and checks the run decided in
full and did the right work."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest

from buildgraph import cli
from buildgraph.engine import executor as executors
from buildgraph.engine import noop
from conftest import REPO

RECIPE = """\
name: t
models: {m: {source: net.py:make, dims: {batch: {min: 1, opt: 2, max: 8}}}}
steps:
  a: {uses: shell, inputs: {src: in.txt}, with: {cmd: 'cat ${in.src} > ${out.o}'}, outputs: [o]}
  b: {uses: shell, from: a, with: {cmd: 'tr a-z A-Z < ${in.a.o} > ${out.o}'}, outputs: [o]}
  read: {uses: test.readsconfig}
"""


@pytest.fixture
def stamped(project, monkeypatch):
    """A project built once, then run once more (a no-op that writes the stamp). Stamps are
    refused while a file is younger than 2 s; the tests do not wait for that."""
    monkeypatch.setitem(executors.BUILTIN_KINDS, "test.readsconfig",
                        "describe_kinds:ReadsConfig")
    monkeypatch.setattr(noop, "RACY_SECONDS", 0.0)
    monkeypatch.delenv("BUILDGRAPH_NO_STAMP", raising=False)
    answers = []
    real = noop.answer

    def spy(argv, cache_dir):
        answers.append(real(argv, cache_dir))
        return answers[-1]

    monkeypatch.setattr(noop, "answer", spy)
    project.write("r.yaml", RECIPE)
    project.write("in.txt", "hello\n")
    project.write("config.txt", "c1\n")
    assert cli.run_cli(["run", "r.yaml"]) == 0
    assert cli.run_cli(["run", "r.yaml"]) == 0
    assert answers == [False, False]
    assert list((project.cache / "noop").glob("*.stamp"))
    project.answers = answers
    return project


def runs(project, *args: str) -> bool:
    """Run; True if the stamp answered."""
    assert cli.run_cli(["run", "r.yaml", *args]) == 0
    return project.answers[-1]


def test_a_repeated_no_op_is_answered_with_the_same_summary(stamped, capsys):
    capsys.readouterr()
    assert runs(stamped)
    err = capsys.readouterr().err
    assert err.startswith("ok: t: 3 steps: 0 built, 3 cached in ") and err.count("\n") == 1
    assert runs(stamped)  # and again: answering changes nothing it watches


def test_an_input_edited_to_the_same_size_and_mtime_is_seen(stamped):
    src = stamped.root / "in.txt"
    st = os.stat(src)
    src.write_text("world\n")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # only the ctime says it changed
    assert not runs(stamped)
    assert (stamped.build / "t" / "b" / "o").read_text() == "WORLD\n"


def test_a_file_added_to_an_input_folder_is_seen(stamped):
    folder = stamped.root / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "one.txt").write_text("1\n")
    stamped.write("r.yaml", RECIPE + "  d: {uses: shell, inputs: {data: data}, with: {cmd: "
                                     "'ls -R ${in.data} > ${out.o}'}, outputs: [o]}\n")
    assert not runs(stamped)
    assert not runs(stamped)  # stamped now
    assert runs(stamped)
    (folder / "sub" / "two.txt").write_text("2\n")  # only the subfolder's mtime changes
    assert not runs(stamped)
    assert "two.txt" in (stamped.build / "t" / "d" / "o").read_text()


def test_a_file_a_description_named_is_watched(stamped):
    (stamped.root / "config.txt").write_text("c2\n")
    assert not runs(stamped)
    assert (stamped.root / "runs.txt").read_text() == "xx"  # read ran again


def test_a_removed_or_edited_output_is_restored(stamped):
    out = stamped.build / "t" / "a" / "o"
    out.unlink()
    assert not runs(stamped)
    assert out.read_text() == "hello\n"


def test_a_cleared_cache_recipe_edit_targets_or_variable_decide_in_full(stamped, monkeypatch):
    assert cli.run_cli(["cache", "clear"]) == 0
    assert not runs(stamped)  # rebuilt: the stamp's entries are gone
    assert not runs(stamped)  # writes a new stamp
    assert runs(stamped)
    assert not runs(stamped, "a")  # another command line has no stamp yet
    monkeypatch.setenv("BUILDGRAPH_BUILD_DIR", str(stamped.root / "other"))
    assert not runs(stamped)
    assert (stamped.root / "other" / "t" / "b" / "o").read_text() == "HELLO\n"
    monkeypatch.delenv("BUILDGRAPH_BUILD_DIR")
    # the other build directory hard-linked the same cache objects, which changes their ctime:
    # decided in full once, conservatively, and stamped again
    runs(stamped)
    assert runs(stamped)
    stamped.write("r.yaml", RECIPE.replace("A-Z", "A-Y"))
    assert not runs(stamped)
    assert (stamped.build / "t" / "b" / "o").read_text() == "HELLO\n".replace("Z", "Y")


def test_no_stamp_for_a_volatile_description(stamped, monkeypatch):
    import describe_kinds

    original = describe_kinds.ReadsConfig.describe
    monkeypatch.setattr(describe_kinds.ReadsConfig, "describe",
                        lambda self, params, ctx: replace(original(self, params, ctx),
                                                          volatile=True))
    assert cli.run_cli(["cache", "clear"]) == 0  # memoised descriptions and stamps too
    assert not runs(stamped)
    assert not runs(stamped)
    assert not runs(stamped)
    assert not list((stamped.cache / "noop").glob("*.stamp"))


def test_no_stamp_while_a_file_is_racy(project, monkeypatch):
    monkeypatch.delenv("BUILDGRAPH_NO_STAMP", raising=False)
    project.write("r.yaml", "steps:\n  a: {uses: shell, with: {cmd: 'echo > ${out.o}'}, "
                            "outputs: [o]}\n")
    assert cli.run_cli(["run", "r.yaml"]) == 0
    assert cli.run_cli(["run", "r.yaml"]) == 0  # the recipe is younger than 2 s
    assert not list((project.cache / "noop").glob("*.stamp"))


def test_an_answered_run_imports_no_engine(stamped):
    env = dict(os.environ, PYTHONPATH=str(REPO), BUILDGRAPH_CACHE_DIR=str(stamped.cache))
    code = ("import sys\nfrom buildgraph.cli import run_cli\n"
            "assert run_cli(['run', 'r.yaml']) == 0\n"
            "print(sorted(m for m in sys.modules if m.startswith('buildgraph') or "
            "m in ('typing', 'json', 'dataclasses', 'sqlite3')))")
    # the stamp holds the command line `run r.yaml`, as run_cli got it here
    out = subprocess.run([sys.executable, "-c", code], cwd=stamped.root, env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(["buildgraph", "buildgraph.cli", "buildgraph.cli.run",
                                      "buildgraph.engine",
                                      "buildgraph.engine.noop"]), out.stdout
    assert "0 built, 3 cached" in out.stderr


def test_a_damaged_stamp_decides_nothing(stamped):
    for stamp in (stamped.cache / "noop").glob("*.stamp"):
        stamp.write_bytes(b"\x00garbage")
    assert not runs(stamped)
    import marshal

    for stamp in (stamped.cache / "noop").glob("*.stamp"):
        data = marshal.loads(stamp.read_bytes())
        del data["files"]
        stamp.write_bytes(marshal.dumps(data))
    assert not runs(stamped)
    assert runs(stamped)  # stamped again by the full decision


def test_a_volatile_description_that_names_what_it_read_is_stamped(stamped, monkeypatch):
    """Like tvm.compile for a cross target (a compiler looked up on PATH): stamped, and any
    change to what it named decides in full again."""
    import describe_kinds

    folder = stamped.root / "tools"
    folder.mkdir()
    monkeypatch.setenv("BG_TEST_TOOLS", "one")
    original = describe_kinds.ReadsConfig.describe
    monkeypatch.setattr(describe_kinds.ReadsConfig, "describe",
                        lambda self, params, ctx: replace(
                            original(self, params, ctx), volatile=True,
                            watch=("$BG_TEST_TOOLS", str(folder))))
    assert cli.run_cli(["cache", "clear"]) == 0
    assert not runs(stamped)
    assert not runs(stamped)  # stamped now
    assert runs(stamped)
    monkeypatch.setenv("BG_TEST_TOOLS", "two")
    assert not runs(stamped)  # decided in full (and, still a no-op, stamped again)
    assert runs(stamped)
    (folder / "cc").write_text("")  # a tool appears in a watched folder
    assert not runs(stamped)
