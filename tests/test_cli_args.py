"""The fast reading of ``run``'s command line agrees with argparse, or leaves it to argparse."""

from __future__ import annotations

import pytest

from buildgraph import cli
from buildgraph.cli import run

AGREES = [
    ["run", "r.yaml"],
    ["run", "r.yaml", "a", "b"],
    ["run", "r.yaml", "a", "--json", "b"],
    ["run", "--json", "r.yaml", "a"],
    ["run", "r.yaml", "-j", "3", "-k", "-v", "--no-cache", "-B"],
    ["run", "r.yaml", "--jobs", "2", "--keep-going", "--verbose", "--always-make"],
    ["run", "r.yaml", "--set", "x=1", "--set=y=a=b", "--force", "a", "--force=b"],
    ["run", "r.yaml", "--cache-dir", "c", "--build-dir=b", "--link", "copy"],
    ["run", "r.yaml", "--cache-dir=", "--link=hardlink", "--cache-dir", "d"],
    ["run", "r.yaml", "--set", "x=-1", "t@fp16"],
]

LEFT_TO_ARGPARSE = [
    ["run"],                              # no recipe: argparse says what is missing
    ["run", "-h"], ["run", "--help"],
    ["run", "r.yaml", "--keep"],          # an abbreviation
    ["run", "r.yaml", "-kv"],             # combined short flags
    ["run", "r.yaml", "-j4"],
    ["run", "r.yaml", "-j", "four"],      # a bad value: argparse's message
    ["run", "r.yaml", "-j", "-1"],
    ["run", "r.yaml", "--link", "symlink"],
    ["run", "r.yaml", "--json=yes"],
    ["run", "r.yaml", "--cache-dir"],     # a missing value
    ["run", "r.yaml", "--set", "--json"],
    ["run", "r.yaml", "--", "-a"],
    ["run", "-", "r.yaml"],
    ["run", "r.yaml", "--unknown"],
    ["plan", "r.yaml"], ["--version"], [],
]


@pytest.mark.parametrize("argv", AGREES, ids=" ".join)
def test_fast_run_args_equal_argparse(argv):
    fast = run.fast_args(argv)
    assert fast is not None
    assert vars(fast) == vars(cli._parse(list(argv)))


@pytest.mark.parametrize("argv", LEFT_TO_ARGPARSE, ids=" ".join)
def test_unusual_command_lines_go_to_argparse(argv):
    assert run.fast_args(argv) is None


def test_fast_table_covers_every_run_option():
    """An option added to the ``run`` parser and not to the fast table would make the fast
    path send every use of it to argparse (correct, but slow); one in the table and not in
    the parser would accept what argparse refuses."""
    parser = cli._parser("run")
    sub = next(a for a in parser._actions if a.dest == "command").choices["run"]
    strings = {s for a in sub._actions for s in a.option_strings} - {"-h", "--help"}
    assert strings == set(run.RUN_OPTIONS)


def test_bad_run_options_keep_argparse_messages(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.run_cli(["run", "r.yaml", "-j", "four"])
    assert exc.value.code == 2
    assert "argument -j/--jobs: invalid int value: 'four'" in capsys.readouterr().err
