"""``buildgraph cache``: inspect and maintain the local cache; push to and pull from the team
cache."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import argparse
    from typing import Any

HELP = 'inspect and maintain the cache'


def add_arguments(cache: argparse.ArgumentParser) -> None:
    import argparse

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


import sys
from pathlib import Path


def main(args: argparse.Namespace) -> int:
    from buildgraph.engine.store.cache import Store

    action = args.cache_command
    if action is None:
        print("usage: buildgraph cache {ls,du,verify,gc,clear,push,pull}", file=sys.stderr)
        return 2
    if action in ("push", "pull"):
        from buildgraph.cli.remote import cache_transfer

        return cache_transfer(args)
    store = Store(Path(args.cache_dir) if args.cache_dir else None,
                  warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    return {"ls": _ls, "du": _du, "verify": _verify, "gc": _gc, "clear": _clear}[action](
        store, args)


def _ls(store: Any, args: argparse.Namespace) -> int:
    import datetime
    import json

    from buildgraph.engine.sizes import format_size

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
        return 0
    for r in rows:
        if r.get("broken"):
            print(f"{r['key'][:16]}  (unreadable entry)")
            continue
        print(f"{r['key'][:16]}  {r['last_used']}  {format_size(r['size']):>10}  "
              f"{r['recipe']}/{r['step']} ({r['kind']})")
    print(f"{len(rows)} cached actions in {store.root}")
    return 0


def _du(store: Any, args: argparse.Namespace) -> int:
    from buildgraph.engine.sizes import format_size
    from buildgraph.engine.store import maintenance

    usage = maintenance.usage(store)
    print(f"{format_size(usage['bytes'])} in {usage['objects']} objects, "
          f"{usage['actions']} actions ({store.root})")
    return 0


def _verify(store: Any, args: argparse.Namespace) -> int:
    from buildgraph.engine.store import maintenance

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


def _gc(store: Any, args: argparse.Namespace) -> int:
    from buildgraph.engine.sizes import format_size, parse_size
    from buildgraph.engine.store import maintenance
    from buildgraph.errors import BuildgraphError

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


def _clear(store: Any, args: argparse.Namespace) -> int:
    from buildgraph.engine.store import maintenance

    with store.using(exclusive=True, timeout=10):
        maintenance.clear(store)
    print(f"cleared {store.root} (shared TVM tuning records and TensorRT timing caches are "
          "kept: 'buildgraph tune-db clear' removes the former)")
    return 0
