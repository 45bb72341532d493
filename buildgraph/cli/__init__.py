"""The ``buildgraph`` command line (also ``python -m buildgraph``).

One module per command, each registered once in :data:`buildgraph.registry.COMMANDS`
(``name -> "module"``) and imported only when its command runs. A command module has:

* ``HELP``: its line in ``buildgraph --help``;
* ``add_arguments(parser)``: fills the command's argparse subparser;
* ``main(args) -> int``: runs it and returns the exit status.

Errors are handled here, once, for every command: bad input prints one block (``file:line:col:
key: message`` and a hint) and exits 2; failed steps exit 1 (``repro``: a step that should be
deterministic is not); an interrupted run exits 130. No traceback unless ``BUILDGRAPH_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys

# Only what a no-op run answered from its stamp needs is imported here (engine/noop.py) and in
# cli/run.py; the rest (the registry, argparse, the error classes) where it is used.
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import argparse
    from types import ModuleType
    from typing import List, Optional, Sequence


def command(name: str) -> ModuleType:
    """The module of command ``name`` (imported now)."""
    import importlib

    from buildgraph.registry import COMMANDS

    return importlib.import_module(COMMANDS[name])


def _parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The argument parser; with ``only``, just that command's subparser.

    Building all of them costs more than a whole no-op run's decisions (argparse formats and
    translates every help string as it is added, and each command's module is imported), so a
    command line that names its command gets a parser for that command alone: its usage, help
    and errors read the same, since each subparser is complete on its own. ``buildgraph
    --help`` and bad commands get them all."""
    import argparse

    from buildgraph.registry import COMMANDS

    p = argparse.ArgumentParser(prog="buildgraph", description="Build deployable model "
                                "artifacts from a YAML recipe, with content-hash caching.")
    p.add_argument("--version", action="version", version=f"buildgraph {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if only is None or only == name:
            module = command(name)
            module.add_arguments(sub.add_parser(name, help=module.HELP))
    return p


def _parse(argv: List[str]) -> Optional[argparse.Namespace]:
    """argparse's reading of ``argv``; None (after printing the help) when it names no
    command. Errors exit with status 2, as argparse does."""
    from buildgraph.registry import COMMANDS

    parser = _parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    # targets may follow options (`run r.yaml --json STEP`); argparse leaves those over
    if extra and hasattr(args, "targets") and not any(e.startswith("-") for e in extra):
        args.targets = list(args.targets) + extra
    elif extra:
        parser.error("unrecognized arguments: " + " ".join(extra))
    if not args.command:
        parser.print_help(sys.stderr)
        return None
    return args


def _version() -> str:
    from buildgraph import __version__

    return __version__


def main(argv: Optional[Sequence[str]] = None) -> None:
    sys.exit(run_cli(argv))


def run_cli(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    if argv[:1] == ["run"]:  # the no-op fast path: neither argparse nor the registry
        from buildgraph.cli import run

        args = run.fast_args(argv)
    if args is None:
        args = _parse(argv)
        if args is None:
            return 2
    if args.command == "run":
        from buildgraph.cli import run

        if run.stamped(args):  # a repeated no-op, answered from its stamp (engine/noop.py)
            from buildgraph.engine import noop

            args.argv = argv
            if noop.answer(argv, run.cache_dir(args)):
                return 0
    from buildgraph.errors import BuildgraphError

    try:
        return command(args.command).main(args)
    except BrokenPipeError:  # (an OSError: before it)
        return 0
    except (BuildgraphError, OSError) as exc:
        if os.environ.get("BUILDGRAPH_DEBUG"):
            raise
        print(f"error: {_message(exc)}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, BuildgraphError) else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _message(exc: Exception) -> str:
    """The one block an error prints (after ``error: ``)."""
    from buildgraph.errors import BuildgraphError

    if isinstance(exc, BuildgraphError):
        return exc.render()
    where = f": {exc.filename}" if getattr(exc, "filename", None) else ""  # an OSError
    return (f"{getattr(exc, 'strerror', None) or exc}{where}\n  hint: check that the cache and "
            "build directories (--cache-dir, --build-dir) can be created and written")
