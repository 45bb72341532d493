"""The ``buildgraph`` command line (also ``python -m buildgraph``).

Commands: ``run``, ``plan``, ``repro``, ``graph``, ``cache {ls,du,verify,gc,clear,push,pull}``,
``schema``, ``kinds``, ``log``, ``report``; ``remote`` and ``trust`` (the team cache, in
``cli.remote``). Errors on bad input print one block (``file:line:col: key: message`` and a
hint) and exit 2; failed steps exit 1 (``repro``: a step that should be deterministic is not);
an interrupted run exits 130. No traceback unless ``BUILDGRAPH_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

# Only what a no-op run answered from its stamp needs is imported here (engine/noop.py); the
# rest (json, signal, typing, the error classes) where it is used.
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import argparse
    from typing import Any, Dict, List, Optional, Sequence


def _parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The argument parser; with ``only``, just that command's subparser.

    Building all of them costs more than a whole no-op run's decisions (argparse formats and
    translates every help string as it is added), so a command line that names its command
    gets a parser for that command alone: its usage, help and errors read the same, since each
    subparser is complete on its own. ``buildgraph --help`` and bad commands get them all."""
    import argparse

    p = argparse.ArgumentParser(prog="buildgraph", description="Build deployable model "
                                "artifacts from a YAML recipe, with content-hash caching.")
    p.add_argument("--version", action="version", version=f"buildgraph {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, add in _SUBPARSERS.items():
        if only is None or only == name:
            add(sub)
    return p


def _recipe_args(sp: argparse.ArgumentParser, targets: bool = True) -> None:
    sp.add_argument("recipe", help="the recipe YAML file")
    if targets:
        sp.add_argument("targets", nargs="*", metavar="STEP",
                        help="build only these steps and what they need")
    sp.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="NAME=VALUE", help="override a recipe variable")
    sp.add_argument("--cache-dir", help="cache directory (default: $BUILDGRAPH_CACHE_DIR "
                    "or .cache)")
    sp.add_argument("--build-dir", help="where outputs are materialized (default: "
                    "build/RECIPE_NAME)")


def _add_run(sub: Any) -> None:
    run = sub.add_parser("run", help="build the recipe (cached steps are skipped)")
    _recipe_args(run)
    run.add_argument("-j", "--jobs", type=int, default=0,
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
    run.add_argument("--frozen", action="store_true",
                     help="release CI: refuse to build when any step's key differs from the lock "
                          "file (prints the plan's diff); fail if the lock would change")
    run.add_argument("--locked", action="store_true",
                     help="build, but fail at the end (and leave the lock file alone) if the "
                          "lock file would change")


def _add_plan(sub: Any) -> None:
    plan = sub.add_parser("plan", help="show what would run, and why")
    _recipe_args(plan)
    plan.add_argument("--force", action="append", default=[], metavar="STEP")
    plan.add_argument("--remote", metavar="NAME", help="the team cache to ask (default: the "
                      "project's; 'off' for none)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("-v", "--verbose", action="store_true", help="also list cached steps")



def _add_repro(sub: Any) -> None:
    repro = sub.add_parser("repro", help="rebuild with the cache bypassed and compare with the "
                           "cached build, bit for bit or numerically")
    _recipe_args(repro)
    repro.add_argument("-j", "--jobs", type=int, default=0,
                       help="steps run at once (default: number of CPU cores)")
    repro.add_argument("--json", action="store_true", help="print the comparison as JSON")
    repro.add_argument("--keep", action="store_true",
                       help="keep the scratch cache and build directory (the path is printed)")


def _add_graph(sub: Any) -> None:
    graph = sub.add_parser("graph", help="draw the DAG (Mermaid, Graphviz DOT, PNG/SVG)")
    _recipe_args(graph, targets=False)
    graph.add_argument("--format", choices=["mermaid", "dot", "png", "svg"], default="mermaid")
    graph.add_argument("-o", "--output", help="write to this file (required for png/svg)")
    graph.add_argument("--status", action="store_true", help="colour steps by plan status")


def _add_cache(sub: Any) -> None:
    import argparse

    cache = sub.add_parser("cache", help="inspect and maintain the cache")
    cache.add_argument("--cache-dir", help="cache directory (default: $BUILDGRAPH_CACHE_DIR "
                       "or .cache)")
    csub = cache.add_subparsers(dest="cache_command", metavar="ACTION")
    # --cache-dir also after the action (`cache gc --cache-dir D`)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--cache-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    ls = csub.add_parser("ls", help="list cached actions", parents=[where])
    ls.add_argument("--json", action="store_true")
    csub.add_parser("du", help="disk usage", parents=[where])
    verify = csub.add_parser("verify", help="re-hash every object; check every action",
                             parents=[where])
    verify.add_argument("--repair", action="store_true",
                        help="delete corrupt objects and the actions that use them")
    gc = csub.add_parser("gc", help="delete unreferenced objects; evict LRU actions",
                         parents=[where])
    gc.add_argument("--max-size", help="evict least-recently-used actions until the cache "
                    "fits, e.g. 5GiB")
    csub.add_parser("clear", help="delete everything in the cache", parents=[where])
    from buildgraph.cli.remote import add_transfer_args

    add_transfer_args(csub.add_parser("push", help="upload results and shared records to the "
                                      "team cache", parents=[where]))
    add_transfer_args(csub.add_parser("pull", help="download results and shared records from "
                                      "the team cache", parents=[where]))


def _add_tune_db(sub: Any) -> None:
    # the real parser lives in buildgraph.backends.tvm.records and is built only when this
    # command is used
    sub.add_parser("tune-db", help="list, merge, prune, import and export TVM tuning databases",
                   add_help=False)


def _add_remote(sub: Any) -> None:
    # `remote` and `trust` parse their own arguments (buildgraph.cli.remote)
    sub.add_parser("remote", help="the team cache: add, ls, verify, gc", add_help=False)


def _add_trust(sub: Any) -> None:
    sub.add_parser("trust", help="signing keys for the team cache: keygen, add, ls",
                   add_help=False)


def _add_schema(sub: Any) -> None:
    sub.add_parser("schema", help="print the recipe JSON Schema (for editors)")


def _add_kinds(sub: Any) -> None:
    sub.add_parser("kinds", help="list the step kinds available")


def _add_report(sub: Any) -> None:
    import argparse

    report = sub.add_parser("report", help="write an HTML report of the recorded build "
                            "(DAG, artifacts, latency, release); --markdown, --json, --compare")
    _recipe_args(report, targets=False)
    report.add_argument("-o", "--output", help="where to write it (default: "
                        "BUILD_DIR/report.html; stdout for --markdown and --json)")
    fmt = report.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="a summary for CI comments")
    fmt.add_argument("--json", action="store_true", help="the data behind every figure")
    report.add_argument("--compare", metavar="OTHER.lock.json",
                        help="compare with another build (its lock file, or a report --json): "
                             "keys, output digests, latency; exit 1 on a regression")
    report.add_argument("--threshold", default="10%",
                        help="p50 slowdown that counts as a regression (default: 10%%)")
    report.add_argument("--lock", help="report this lock file instead of the recipe's own")
    report.add_argument("--screenshot", metavar="PNG", help="also save a PNG of the page, "
                        "taken with headless Chromium")
    report.add_argument("--width", type=int, default=1280, help=argparse.SUPPRESS)


def _add_log(sub: Any) -> None:
    log = sub.add_parser("log", help="print the log of a step's last build")
    _recipe_args(log, targets=False)
    log.add_argument("step")


_SUBPARSERS = {"run": _add_run, "plan": _add_plan, "repro": _add_repro, "graph": _add_graph,
               "cache": _add_cache,
               "tune-db": _add_tune_db, "remote": _add_remote, "trust": _add_trust,
               "schema": _add_schema, "kinds": _add_kinds, "log": _add_log,
               "report": _add_report}


# `run`'s options for the fast path below: flag -> (attribute, kind). Keep in step with _add_run
# (tests/test_cli_args.py holds the two to the same results).
_RUN_OPTIONS: Dict[str, tuple] = {
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


def _fast_run_args(argv: Sequence[str]) -> Optional[SimpleNamespace]:
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
        spec = _RUN_OPTIONS.get(name)
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
        elif kind == "append":
            args[attr] = args[attr] + [value]
        elif kind == "str":
            args[attr] = value
        elif value in kind:
            args[attr] = value
        else:
            return None
    if not positionals:
        return None
    args["recipe"], args["targets"] = positionals[0], positionals[1:]
    return SimpleNamespace(**args)


def _version() -> str:
    from buildgraph import __version__

    return __version__


def main(argv: Optional[Sequence[str]] = None) -> None:
    sys.exit(run_cli(argv))


BACKEND_COMMANDS = {"tune-db": "buildgraph.backends.tvm.tunedb_cli:cli_main",
                    "remote": "buildgraph.cli.remote:remote_main",
                    "trust": "buildgraph.cli.remote:trust_main"}
"""Commands a backend registers: name -> ``"module:function(argv) -> exit code"``, imported only
when used (the tuning-record tools need neither the engine nor TVM)."""


def run_cli(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in BACKEND_COMMANDS:  # a backend's own command, e.g. tune-db
        from buildgraph.engine.executor import import_object

        command = import_object(BACKEND_COMMANDS[argv[0]], what=f"command '{argv[0]}'")
        try:
            return command(argv[1:])
        except KeyboardInterrupt:
            return 130
    args = _fast_run_args(argv) or _parse(argv)
    if args is None:
        return 2
    if _stamped(args):  # a repeated no-op, answered from its stamp (engine/noop.py)
        from buildgraph.engine import noop

        args.argv = argv
        if noop.answer(argv, _cache_dir(args)):
            return 0
    from buildgraph.errors import BuildgraphError

    try:
        return _dispatch(args)
    except BuildgraphError as exc:
        if os.environ.get("BUILDGRAPH_DEBUG"):
            raise
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # a directory we cannot create or write: one line, no traceback
        if os.environ.get("BUILDGRAPH_DEBUG"):
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}\n  hint: check that the cache and build "
              "directories (--cache-dir, --build-dir) can be created and written",
              file=sys.stderr)
        return 2


def _stamped(args: Any) -> bool:
    """Can a no-op of this ``run`` be answered from (and recorded in) a stamp? Only the plain
    console form: ``--json``/``--verbose`` print per-step lines, and forcing, ``--no-cache``
    and ``--rebench`` never give a no-op. ``BUILDGRAPH_NO_STAMP=1`` always decides in full."""
    return args.command == "run" and not (args.json or args.verbose or args.force or
                                          args.always_make or args.no_cache or args.rebench or
                                          os.environ.get("BUILDGRAPH_NO_STAMP"))


def _cache_dir(args: Any) -> str:
    from buildgraph.engine import default_cache_dir_name

    return str(args.cache_dir or default_cache_dir_name())


def _parse(argv: List[str]) -> Optional[argparse.Namespace]:
    """argparse's reading of ``argv``; None (after printing the help) when it names no
    command. Errors exit with status 2, as argparse does."""
    parser = _parser(argv[0] if argv and argv[0] in _SUBPARSERS else None)
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


def _dispatch(args: Any) -> int:
    import json

    from buildgraph.errors import BuildgraphError

    command = args.command
    if command == "run":
        return _run(args)
    if command == "plan":
        from buildgraph import api
        from buildgraph.explain import plan_json, plan_text

        graph = api.load(args.recipe, args.overrides, args.cache_dir)
        decisions = api.plan(graph, args.targets, force=args.force, cache_dir=args.cache_dir,
                             build_dir=args.build_dir, remote=args.remote,
                             warn=lambda m: print(f"warning: {m}", file=sys.stderr))
        print(plan_json(graph, decisions) if args.json else plan_text(graph, decisions,
                                                                         args.verbose))
        return 0
    if command == "repro":
        return _repro(args)
    if command == "graph":
        return _graph(args)
    if command == "cache":
        return _cache(args)
    if command == "schema":
        from buildgraph.recipe.json_schema import recipe_json_schema

        print(json.dumps(recipe_json_schema(), indent=2))
        return 0
    if command == "kinds":
        from buildgraph.engine.executor import known_kinds, load_executor

        for kind, target in known_kinds().items():
            try:
                cls = load_executor(kind)
                doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()
                summary = doc.splitlines()[0] if doc else ""
            except BuildgraphError as exc:
                summary = f"(cannot load: {exc.message})"
            print(f"{kind:<18} {summary}")
        return 0
    if command == "log":
        return _log(args)
    if command == "report":
        from buildgraph.html_report.command import run as report_command

        return report_command(args)
    raise AssertionError(f"unknown command {command}")  # pragma: no cover


def _run(args: Any) -> int:
    import signal

    from buildgraph import api
    from buildgraph.report import ConsoleReporter, JsonReporter

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
        from buildgraph.report import summary_line

        noop.write_stamp(args.argv, _cache_dir(args), summary_line(result, timed=False),
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


def _repro(args: argparse.Namespace) -> int:
    import json

    from buildgraph import api
    from buildgraph.repro import render
    from buildgraph.report import ConsoleReporter

    graph = api.load(args.recipe, args.overrides, args.cache_dir)
    result = api.repro(graph, args.targets, cache_dir=args.cache_dir, build_dir=args.build_dir,
                       jobs=args.jobs, reporter=ConsoleReporter(sys.stderr), keep=args.keep)
    if args.json:
        print(json.dumps(result.as_json(), indent=2, default=str))
    else:
        sys.stdout.write(render(result))
    return 0 if result.ok else 1


def _graph(args: argparse.Namespace) -> int:
    from buildgraph.errors import BuildgraphError

    import shutil
    import subprocess

    from buildgraph import api
    from buildgraph.explain import dot, mermaid

    graph = api.load(args.recipe, args.overrides, args.cache_dir)
    decisions = api.plan(graph, cache_dir=args.cache_dir, build_dir=args.build_dir) \
        if args.status else None
    if args.format == "mermaid":
        text = mermaid(graph, decisions)
    else:
        text = dot(graph, decisions)
    if args.format in ("png", "svg"):
        if not args.output:
            raise BuildgraphError(f"--format {args.format} needs -o FILE")
        exe = shutil.which("dot")
        if exe is None:
            raise BuildgraphError("Graphviz 'dot' is not installed, so PNG/SVG cannot be drawn",
                                  hint="install graphviz (apt-get install graphviz), or use "
                                       "--format dot / mermaid")
        proc = subprocess.run([exe, f"-T{args.format}", "-o", args.output], input=text.encode(),
                              capture_output=True)
        if proc.returncode != 0:
            raise BuildgraphError(f"dot failed: {proc.stderr.decode(errors='replace').strip()}")
        print(f"wrote {args.output}", file=sys.stderr)
        return 0
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _cache(args: argparse.Namespace) -> int:
    import json

    from buildgraph.errors import BuildgraphError

    import datetime

    from buildgraph.engine import maintenance
    from buildgraph.engine.sizes import format_size, parse_size
    from buildgraph.engine.store import Store

    store = Store(Path(args.cache_dir) if args.cache_dir else None,
                  warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    action = args.cache_command
    if action is None:
        print("usage: buildgraph cache {ls,du,verify,gc,clear,push,pull}", file=sys.stderr)
        return 2
    if action in ("push", "pull"):
        from buildgraph.cli.remote import cache_transfer

        return cache_transfer(args)
    if action == "ls":
        rows = []
        for key, entry, st in store.iter_actions():
            if entry is None:
                rows.append({"key": key, "broken": True})
                continue
            size = sum(o.get("size", 0) for o in entry["outputs"].values())
            rows.append({"key": key, "recipe": entry.get("recipe"), "step": entry.get("step"),
                         "kind": entry.get("kind"), "size": size,
                         "wall_s": entry.get("wall_s"),
                         "last_used": datetime.datetime.fromtimestamp(st.st_mtime).isoformat(
                             timespec="seconds")})
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                if r.get("broken"):
                    print(f"{r['key'][:16]}  (unreadable entry)")
                    continue
                print(f"{r['key'][:16]}  {r['last_used']}  {format_size(r['size']):>10}  "
                      f"{r['recipe']}/{r['step']} ({r['kind']})")
            print(f"{len(rows)} cached actions in {store.root}")
        return 0
    if action == "du":
        usage = maintenance.usage(store)
        print(f"{format_size(usage['bytes'])} in {usage['objects']} objects, "
              f"{usage['actions']} actions ({store.root})")
        return 0
    if action == "verify":
        with store.using():
            report = maintenance.verify(store, repair=args.repair)
        for digest in report.corrupt_blobs:
            print(f"corrupt object {digest}" + (" (deleted)" if args.repair else ""))
        for key in report.broken_actions:
            print(f"broken action {key}" + (" (deleted)" if args.repair else ""))
        print(f"checked {report.blobs} objects and {report.actions} actions: "
              + ("ok" if report.ok else f"{len(report.corrupt_blobs)} corrupt objects, "
                 f"{len(report.broken_actions)} broken actions"))
        return 0 if report.ok or args.repair else 1
    if action == "gc":
        try:
            limit = parse_size(args.max_size) if args.max_size else None
        except ValueError as exc:
            raise BuildgraphError(f"--max-size: {exc}") from None
        with store.using(exclusive=True, timeout=10):
            stats = maintenance.gc(store, limit)
        print(f"removed {stats['removed_actions']} actions and {stats['removed_objects']} "
              f"objects ({format_size(stats['freed_bytes'])}); cache holds "
              f"{format_size(stats['kept_bytes'])}")
        return 0
    if action == "clear":
        with store.using(exclusive=True, timeout=10):
            maintenance.clear(store)
        print(f"cleared {store.root} (shared TVM tuning records and TensorRT timing caches are "
              "kept: 'buildgraph tune-db clear' removes the former)")
        return 0
    return 2  # pragma: no cover


def _log(args: argparse.Namespace) -> int:
    from buildgraph import api
    from buildgraph.engine.scheduler import default_build_dir

    graph = api.load(args.recipe, args.overrides, args.cache_dir)
    ids: List[str] = graph.select([args.step])
    ids = [i for i in ids if i == args.step or graph.steps[i].base_id == args.step]
    build_dir = Path(args.build_dir) if args.build_dir else default_build_dir(graph)
    status = 0
    for sid in ids:
        path = build_dir / ".logs" / f"{sid}.log"
        if not path.exists():
            print(f"{sid}: no log (the step has not run here; cached results keep theirs in the "
                  "cache)", file=sys.stderr)
            status = 1
            continue
        if len(ids) > 1:
            print(f"== {sid}")
        sys.stdout.write(path.read_text(encoding="utf-8", errors="replace"))
    return status
