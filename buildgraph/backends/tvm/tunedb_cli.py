"""``buildgraph tune-db``: list, merge, prune, import and export tuning databases and the
shared area. The TVM backend's command, registered in ``buildgraph.registry.COMMANDS``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from buildgraph.errors import BuildgraphError
from buildgraph.backends.tvm.records import (TuneDbError, merge, merge_dirs, read_db, summary,
                                             write_db)
from buildgraph.backends.tvm.target import canonical_target, target_text
from buildgraph.backends.tvm.shared import AREA, SharedTuneDB, tvm_version  # noqa: F401

HELP = "list, merge, prune, import and export TVM tuning databases"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's arguments (the CLI's registration interface, :mod:`buildgraph.cli`)."""
    _fill_parser(p)


def main(args: argparse.Namespace) -> int:
    return run_command(args)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``tune-db`` to an argparse subparsers object (the ``buildgraph`` CLI)."""
    p = sub.add_parser("tune-db", help="list, merge, prune, import and export TVM tuning "
                                        "databases")
    _fill_parser(p)
    return p


def _fill_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", help="cache directory whose shared tuning records are used "
                                       "(default: $BUILDGRAPH_CACHE_DIR or .cache)")
    tsub = p.add_subparsers(dest="tunedb_command", metavar="ACTION")
    ls = tsub.add_parser("list", help="workloads, records and best latency, per target "
                                      "(the shared records, or the databases given)")
    ls.add_argument("databases", nargs="*", type=Path, metavar="DB_DIR")
    ls.add_argument("--json", action="store_true", help="print JSON")
    mg = tsub.add_parser("merge", help="merge databases into a new one (deterministic)")
    mg.add_argument("databases", nargs="+", type=Path, metavar="DB_DIR")
    mg.add_argument("-o", "--output", required=True, type=Path, help="directory to write")
    mg.add_argument("--top-k", type=int, help="keep the k fastest records per workload")
    mg.add_argument("--target", help="keep only this target's records")
    pr = tsub.add_parser("prune", help="keep the k fastest records per workload")
    pr.add_argument("databases", nargs="*", type=Path, metavar="DB_DIR",
                    help="databases to prune in place (default: the shared records)")
    pr.add_argument("--top-k", type=int, required=True)
    im = tsub.add_parser("import", help="add databases' records to the shared records")
    im.add_argument("databases", nargs="+", type=Path, metavar="DB_DIR")
    im.add_argument("--tvm-version", help="TVM version the records were tuned with "
                                          "(default: the installed one)")
    ex = tsub.add_parser("export", help="write the shared records as one database")
    ex.add_argument("-o", "--output", required=True, type=Path)
    ex.add_argument("--target", help="only this target's records")
    ex.add_argument("--tvm-version", help="only records of this TVM version (default: the "
                                          "installed one)")
    tsub.add_parser("clear", help="delete the shared records")


def run_command(args: argparse.Namespace, out: Any = None) -> int:
    """Run a parsed ``tune-db`` command; returns the exit status."""
    out = out or sys.stdout
    from buildgraph.engine.store.cache import Store

    cache_dir = getattr(args, "cache_dir", None)
    shared = SharedTuneDB(Store(Path(cache_dir) if cache_dir else None).area(AREA))
    action = getattr(args, "tunedb_command", None)
    if action is None:
        print("usage: buildgraph tune-db {list,merge,prune,import,export,clear}", file=sys.stderr)
        return 2
    target = canonical_target(args.target) if getattr(args, "target", None) else None
    if action == "list":
        return _list(shared, args.databases, args.json, out)
    if action == "merge":
        merged = merge_dirs(args.databases, args.output, top_k=args.top_k, target=target)
        print(f"merged {len(args.databases)} databases into {args.output}: "
              f"{len(merged.workloads)} workloads, {len(merged.records)} records", file=out)
        return 0
    if action == "prune":
        if args.top_k < 1:
            raise TuneDbError("--top-k must be at least 1")
        if args.databases:
            for d in args.databases:
                before = read_db(d)
                pruned = merge([before], top_k=args.top_k, valid_only=True)
                write_db(pruned, d)
                print(f"{d}: kept {len(pruned.records)} of {len(before.records)} records",
                      file=out)
        else:
            stats = shared.prune(args.top_k)
            print(f"{shared.root}: kept {stats['kept']} records, removed {stats['removed']}",
                  file=out)
        return 0
    if action == "import":
        version = args.tvm_version or tvm_version()
        total = 0
        for d in args.databases:
            added = shared.publish(version, read_db(d))
            total += sum(added.values())
        print(f"imported {total} new records into {shared.root} (TVM {version})", file=out)
        return 0
    if action == "export":
        db = shared.export(args.tvm_version or tvm_version(), target)
        write_db(db, args.output)
        print(f"wrote {len(db.workloads)} workloads, {len(db.records)} records to "
              f"{args.output}", file=out)
        return 0
    if action == "clear":
        shared.clear()
        print(f"cleared {shared.root}", file=out)
        return 0
    return 2  # pragma: no cover


def _list(shared: SharedTuneDB, databases: Sequence[Path], as_json: bool, out: Any) -> int:
    rows: List[Dict[str, Any]] = []
    if databases:
        for d in databases:
            for row in summary(read_db(d)):
                rows.append({"database": str(d), **row})
    else:
        for version, ident, entry in shared.entries():
            rows.append({"tvm": version, "target": target_text(ident) if ident else "?",
                         "workload": entry.shash, "task": entry.task, "trials": entry.trials,
                         "records": len(entry.records), "valid": entry.valid,
                         "best_s": entry.best})
    if as_json:
        print(json.dumps(rows, indent=2), file=out)
        return 0
    if not rows:
        print("no tuning records" + ("" if databases else f" in {shared.root}"), file=out)
        return 0
    for row in rows:
        best = f"{row['best_s'] * 1e6:10.1f} us" if row.get("best_s") else "         - "
        where = row.get("database") or f"TVM {row['tvm']}  {row['target']}"
        name = row.get("task") or ""
        extra = f"  {row['trials']} trials" if "trials" in row else ""
        targets = "  " + "; ".join(row["targets"]) if row.get("targets") else ""
        print(f"{where}  {row['workload']:>20}  {name:28} {row['valid']:4} records{extra}  "
              f"best {best}{targets}", file=out)
    print(f"{len(rows)} workloads", file=out)
    return 0


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """``buildgraph tune-db ...`` as a standalone entry point (``argv`` after ``tune-db``)."""
    p = argparse.ArgumentParser(prog="buildgraph tune-db",
                                description="TVM MetaSchedule tuning databases")
    _fill_parser(p)
    args = p.parse_args(argv)
    try:
        return run_command(args)
    except BuildgraphError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main())
