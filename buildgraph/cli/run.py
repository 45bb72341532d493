"""``buildgraph run``: build the recipe.

Its arguments are also read without argparse (:func:`fast_args`), from the same table argparse
is checked against (``tests/test_cli_args.py``), so that a no-op run costs little more than
starting Python."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import argparse
    from typing import Any, Dict, List, Optional, Sequence

HELP = "build the recipe (cached steps are skipped)"


def add_arguments(run: argparse.ArgumentParser) -> None:
    from buildgraph.cli.args import jobs, recipe_args

    recipe_args(run)
    run.add_argument("-j", "--jobs", type=jobs, default=0,
                     help="steps run at once (default: number of CPU cores)")
    run.add_argument("-k", "--keep-going", action="store_true",
                     help="after a failure, still build everything that does not depend on it")
    run.add_argument("--force", action="append", default=[], metavar="STEP",
                     help="re-run STEP even if cached (repeatable)")
    run.add_argument("-B", "--always-make", action="store_true", help="re-run every step")
    run.add_argument("--no-cache", action="store_true",
                     help="ignore cached results (still stores new ones)")
    run.add_argument("--rebench", action="store_true",
                     help="measure again: re-run the benchmark steps (and what uses their "
                          "reports); fails if anything else would have to be built")
    run.add_argument("--link", choices=["hardlink", "copy"], default="hardlink",
                     help="how outputs are placed in the build directory")
    run.add_argument("--json", action="store_true", help="write JSON-lines events to stdout")
    run.add_argument("-v", "--verbose", action="store_true", help="also list cached steps")
    run.add_argument("--remote", metavar="NAME", help="the team cache to read and write (a "
                     "configured name or a URL; default: the project's, or $BUILDGRAPH_REMOTE; "
                     "'off' for none)")
    run.add_argument("--remote-read-only", action="store_true",
                     help="read the team cache but never write to it (CI, laptops)")
    run.add_argument("--cluster", nargs="?", const="", default=None, metavar="ADDR",
                     help="build the steps that are not cached on a Ray cluster: ray://HEAD:10001, "
                          "HEAD:PORT or auto (no value: $RAY_ADDRESS, or cluster = in "
                          "buildgraph.toml); needs a writable team cache")
    lock = run.add_mutually_exclusive_group()  # --frozen already fails where --locked would
    lock.add_argument("--frozen", action="store_true",
                     help="release CI: refuse to build when any step's key differs from the lock "
                          "file (prints the plan's diff); fail if the lock would change")
    lock.add_argument("--locked", action="store_true",
                     help="build, but fail at the end (and leave the lock file alone) if the "
                          "lock file would change")


# `run`'s options for the fast path below: flag -> (attribute, kind). Keep in step with add_arguments
# (tests/test_cli_args.py holds the two to the same results).
RUN_OPTIONS: Dict[str, tuple] = {
    "--set": ("overrides", "append"), "--cache-dir": ("cache_dir", "str"),
    "--build-dir": ("build_dir", "str"), "-j": ("jobs", "int"), "--jobs": ("jobs", "int"),
    "-k": ("keep_going", "flag"), "--keep-going": ("keep_going", "flag"),
    "--force": ("force", "append"), "-B": ("always_make", "flag"),
    "--always-make": ("always_make", "flag"), "--no-cache": ("no_cache", "flag"),
    "--rebench": ("rebench", "flag"), "--link": ("link", ("hardlink", "copy")),
    "--json": ("json", "flag"), "-v": ("verbose", "flag"), "--verbose": ("verbose", "flag"),
    "--remote": ("remote", "str"), "--remote-read-only": ("remote_read_only", "flag"),
    "--frozen": ("frozen", "flag"), "--locked": ("locked", "flag"),
    "--cluster": ("cluster", "argparse"),
}


def fast_args(argv: Sequence[str]) -> Optional[SimpleNamespace]:
    """``run``'s arguments without argparse, or None to let argparse handle the command line.

    A no-op ``run`` should cost little more than starting Python, and importing and building
    an argparse parser is a sizeable share of that. This accepts only the plain spellings (whole
    option names, ``--name=value``, separate values) and gives up on anything else: help, an
    abbreviation, ``-kv``, ``-j4``, ``--``, a value that looks like an option, a bad value. So
    argparse still produces every message, and a result from here is what argparse returns."""
    if not argv or argv[0] != "run":
        return None
    args: Dict[str, Any] = {"command": "run", "targets": [], "overrides": [], "cache_dir": None,
                            "build_dir": None, "jobs": 0, "keep_going": False, "force": [],
                            "always_make": False, "no_cache": False, "rebench": False,
                            "link": "hardlink", "json": False, "verbose": False, "remote": None,
                            "remote_read_only": False, "frozen": False, "locked": False,
                            "cluster": None}
    positionals: List[str] = []
    i = 1
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("-") or token == "-":
            if token == "-":
                return None
            positionals.append(token)
            continue
        name, eq, value = token.partition("=")
        spec = RUN_OPTIONS.get(name)
        if spec is None or (eq and (spec[1] == "flag" or not name.startswith("--"))):
            return None
        attr, kind = spec
        if kind == "argparse":  # an optional value (--cluster [ADDR]): argparse's reading
            return None
        if kind == "flag":
            args[attr] = True
            continue
        if not eq:
            if i >= len(argv) or argv[i].startswith("-"):
                return None
            value = argv[i]
            i += 1
        if kind == "int":
            try:
                args[attr] = int(value)
            except ValueError:
                return None
            if args[attr] < 1:  # -j 0, -j -3: argparse says what is wrong
                return None
        elif kind == "append":
            args[attr] = args[attr] + [value]
        elif kind == "str":
            args[attr] = value
        elif value in kind:
            args[attr] = value
        else:
            return None
    if not positionals or (args["frozen"] and args["locked"]):
        return None  # argparse says what is wrong
    args["recipe"], args["targets"] = positionals[0], positionals[1:]
    return SimpleNamespace(**args)


def stamped(args: Any) -> bool:
    """Can a no-op of this ``run`` be answered from (and recorded in) a stamp? Only the plain
    console form: ``--json``/``--verbose`` print per-step lines, and forcing, ``--no-cache``
    and ``--rebench`` never give a no-op. ``BUILDGRAPH_NO_STAMP=1`` always decides in full."""
    return args.command == "run" and not (args.json or args.verbose or args.force or
                                          args.always_make or args.no_cache or args.rebench or
                                          os.environ.get("BUILDGRAPH_NO_STAMP"))


def main(args: Any) -> int:
    import signal

    from buildgraph import api
    from buildgraph.reporters import ConsoleReporter, JsonReporter

    reporter = JsonReporter(sys.stdout) if args.json else ConsoleReporter(sys.stderr,
                                                                          verbose=args.verbose)
    graph = api.load(args.recipe, args.overrides, args.cache_dir)
    force = list(args.force)
    if args.always_make:
        force.extend(graph.steps)
    for target in force:
        graph.select([target])  # a misspelt --force is an error, not a silent no-op

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        result = api.run(graph, args.targets, jobs=args.jobs, keep_going=args.keep_going,
                         force=force, no_cache=args.no_cache, cache_dir=args.cache_dir,
                         build_dir=args.build_dir, link=args.link, reporter=reporter,
                         remote=args.remote, remote_read_only=args.remote_read_only,
                         rebench=args.rebench, frozen=args.frozen, locked=args.locked,
                         cluster=args.cluster)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if result.interrupted:
        return 130
    if result.noop_watch is not None and getattr(args, "argv", None) is not None and \
            not getattr(reporter, "warned", True):
        from buildgraph.engine import noop
        from buildgraph.reporters import summary_line

        noop.write_stamp(args.argv, cache_dir(args), summary_line(result, timed=False),
                         *result.noop_watch)
    if result.lock_changes:
        from buildgraph.engine.lockfile import lock_path

        flag = "--frozen" if args.frozen else "--locked"
        where = lock_path(graph.recipe_path).absolute()
        try:
            where = where.relative_to(Path.cwd())
        except ValueError:
            pass
        print(f"error: {flag}: the lock file {where} would change "
              "(it was not written):\n" + "\n".join(f"  {line}" for line in result.lock_changes)
              + "\n  hint: run without " + flag + " to update it, review its diff and commit it",
              file=sys.stderr)
    return 0 if result.ok else 1


def cache_dir(args: Any) -> str:
    """The cache directory a command line names, or the default one."""
    from buildgraph.engine import default_cache_dir_name

    return str(args.cache_dir or default_cache_dir_name())
