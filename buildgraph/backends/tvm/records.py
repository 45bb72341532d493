"""MetaSchedule tuning databases: read, merge, filter, prune, and share them (no TVM import).

A MetaSchedule JSON database is a directory of two line-per-entry files:

* ``database_workload.json``: one ``[structural_hash, base64_module]`` line per workload;
* ``database_tuning_record.json``: one ``[workload_line, [trace, run_secs, target, args]]``
  line per measured schedule, pointing at its workload **by line number**.

Because records link to workloads by line number and TVM appends without a lock, two writers
must never share one directory: every ``tvm.tune`` step tunes into its own scratch directory,
and this module merges databases afterwards, deterministically (same inputs, same bytes).

TVM's database also ignores the target when it is queried: a record tuned for one CPU would be
applied to another. buildgraph therefore groups and filters records by
:func:`~buildgraph.backends.tvm.target.target_identity` of the target each record carries.

**The shared area.** So that nobody tunes the same workload twice, every tuning step publishes
its records under the cache directory, keyed per (TVM version, target identity, workload
structural hash)::

    <cache>/tunedb/
      lock                                   held while the area is written
      v1/<tvm version>/<target id>/target.json         the target identity
      v1/<tvm version>/<target id>/<hash>.json         one workload: its module, the task
                                                       name, trials spent, best records

Each workload file is replaced atomically under the lock, so concurrent tuning steps (and a
step killed mid-way: records are published after every measured batch) never leave a torn
file. Before tuning, ``tvm.tune`` looks every extracted task up here and tunes only those that
lack records. ``buildgraph tune-db`` lists, merges, prunes, imports and exports databases.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from buildgraph.errors import BuildgraphError
from buildgraph.engine.files import atomic_write
from buildgraph.backends.tvm.target import canonical_target, identity_digest, target_identity, target_text

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
MANIFEST_FILE = "tunedb.json"
SHARED_SCHEMA = 1
AREA = "tvm-tunedb"
"""The store's record area holding every tuning step's records."""
INVALID_SECONDS = 1e9
"""MetaSchedule writes 1e10 s (or nothing) for candidates that failed to build or run."""

Record = List[Any]
"""``[trace, run_secs, target, args_info]`` exactly as MetaSchedule writes it."""


class TuneDbError(BuildgraphError):
    """A tuning database that cannot be read or written."""


# --- records ---------------------------------------------------------------------------------

def record_seconds(record: Record) -> Optional[float]:
    """Mean measured run time of a record, or None when it failed to build or run."""
    secs = record[1] if len(record) > 1 else None
    if not secs:
        return None
    try:
        values = [float(s) for s in secs]
    except (TypeError, ValueError):
        return None
    if not values or any(math.isnan(v) or v <= 0 or v >= INVALID_SECONDS for v in values):
        return None
    return sum(values) / len(values)


def record_target(record: Record) -> Dict[str, Any]:
    target = record[2] if len(record) > 2 else None
    return dict(target) if isinstance(target, Mapping) else {}


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _record_sort_key(shash: str, record: Record) -> Tuple[Any, ...]:
    secs = record_seconds(record)
    return (shash, secs is None, secs if secs is not None else 0.0, _canon(record))


def _identity_key(target: Mapping[str, Any]) -> str:
    try:
        return _canon(target_identity(target))
    except BuildgraphError:
        return _canon({"unreadable": _canon(target)})


# --- a database in memory ------------------------------------------------------------------

@dataclass
class TuneDatabase:
    """Workloads by structural hash, and records as ``(hash, record)`` pairs."""

    workloads: Dict[str, str] = field(default_factory=dict)
    records: List[Tuple[str, Record]] = field(default_factory=list)

    def by_workload(self) -> Dict[str, List[Record]]:
        out: Dict[str, List[Record]] = {}
        for shash, rec in self.records:
            out.setdefault(shash, []).append(rec)
        return out

    def best(self, shash: str) -> Optional[float]:
        times = [t for h, r in self.records if h == shash
                 for t in [record_seconds(r)] if t is not None]
        return min(times) if times else None

    def valid_count(self, shash: str) -> int:
        return sum(1 for h, r in self.records if h == shash and record_seconds(r) is not None)

    def targets(self) -> List[Dict[str, Any]]:
        seen: Dict[str, Dict[str, Any]] = {}
        for _, rec in self.records:
            t = record_target(rec)
            seen.setdefault(_identity_key(t), target_identity(t) if t else {})
        return [seen[k] for k in sorted(seen)]


def read_db(path: Path) -> TuneDatabase:
    """Read a MetaSchedule JSON database directory (missing files read as empty)."""
    path = Path(path)
    if not path.is_dir():
        raise TuneDbError(f"tuning database {path} is not a directory",
                          hint=f"a MetaSchedule JSON database is a directory holding "
                               f"{WORKLOAD_FILE} and {RECORD_FILE}")
    db = TuneDatabase()
    lines: List[str] = []
    wl = path / WORKLOAD_FILE
    if wl.exists():
        for n, line in enumerate(wl.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                lines.append("")
                continue
            try:
                shash, module = json.loads(line)
            except (ValueError, TypeError):
                raise TuneDbError(f"{wl}:{n}: not a [hash, module] workload line") from None
            shash = str(shash)
            lines.append(shash)
            if shash not in db.workloads or module < db.workloads[shash]:
                db.workloads[shash] = module
    rec = path / RECORD_FILE
    if rec.exists():
        for n, line in enumerate(rec.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                index, record = json.loads(line)
                shash = lines[int(index)]
            except (ValueError, TypeError, IndexError):
                # a torn last line (killed writer) or a record without its workload
                if n == sum(1 for _ in rec.open(encoding="utf-8")):
                    continue
                raise TuneDbError(f"{rec}:{n}: record does not point at a workload of "
                                  f"{wl.name}") from None
            if not shash or not isinstance(record, list) or len(record) < 4:
                raise TuneDbError(f"{rec}:{n}: not a MetaSchedule tuning record")
            db.records.append((shash, record))
    return db


def write_db(db: TuneDatabase, path: Path) -> None:
    """Write ``db`` as a MetaSchedule JSON database: workloads sorted by hash, records by
    workload then latency, so equal content gives equal bytes."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    used = sorted({h for h, _ in db.records} | set(db.workloads), key=_hash_order)
    missing = [h for h in used if h not in db.workloads]
    if missing:
        raise TuneDbError(f"records for workload {missing[0]} have no workload module")
    index = {h: i for i, h in enumerate(used)}
    atomic_write(path / WORKLOAD_FILE, "".join(
        json.dumps([h, db.workloads[h]]) + "\n" for h in used))
    records = sorted(db.records, key=lambda hr: (index[hr[0]],) + _record_sort_key(*hr)[1:])
    atomic_write(path / RECORD_FILE, "".join(
        json.dumps([index[h], r], separators=(",", ":")) + "\n" for h, r in records))


def _hash_order(shash: str) -> Tuple[int, str]:
    return (int(shash), shash) if shash.isdigit() else (-1, shash)


def merge(dbs: Iterable[TuneDatabase], top_k: Optional[int] = None,
          target: Optional[Mapping[str, Any]] = None,
          workloads: Optional[Iterable[str]] = None, valid_only: bool = False) -> TuneDatabase:
    """Union of ``dbs``: duplicate records (same workload, trace and target) kept once (the
    faster measurement), optionally only ``target``'s records (by identity), only some
    ``workloads``, only valid records, and the ``top_k`` fastest per (workload, target).

    The result does not depend on the order of ``dbs``."""
    want = _identity_key(target) if target is not None else None
    only = set(workloads) if workloads is not None else None
    out = TuneDatabase()
    candidates: List[Tuple[str, Record]] = []
    for db in dbs:
        for shash, module in db.workloads.items():
            if only is not None and shash not in only:
                continue
            if shash not in out.workloads or module < out.workloads[shash]:
                out.workloads[shash] = module
        for shash, rec in db.records:
            if only is not None and shash not in only:
                continue
            if want is not None and _identity_key(record_target(rec)) != want:
                continue
            if valid_only and record_seconds(rec) is None:
                continue
            candidates.append((shash, rec))
    candidates.sort(key=lambda hr: _record_sort_key(*hr))
    seen = set()
    per_group: Dict[Tuple[str, str], int] = {}
    for shash, rec in candidates:
        ident = _identity_key(record_target(rec))
        dedup = (shash, _canon(rec[0]), ident, _canon(rec[3] if len(rec) > 3 else None))
        if dedup in seen:
            continue
        seen.add(dedup)
        group = (shash, ident)
        if top_k is not None and per_group.get(group, 0) >= top_k:
            continue
        per_group[group] = per_group.get(group, 0) + 1
        out.records.append((shash, rec))
    if target is not None or only is not None:
        used = {h for h, _ in out.records}
        if only is None:
            out.workloads = {h: m for h, m in out.workloads.items() if h in used}
    return out


def merge_dirs(sources: Sequence[Path], dest: Path, top_k: Optional[int] = None,
               target: Optional[Mapping[str, Any]] = None) -> TuneDatabase:
    """Merge database directories into ``dest`` (a new MetaSchedule JSON database)."""
    merged = merge([read_db(p) for p in sources], top_k=top_k, target=target)
    write_db(merged, dest)
    return merged


def summary(db: TuneDatabase) -> List[Dict[str, Any]]:
    """Per workload: hash, records, valid records, best seconds, targets."""
    rows = []
    groups = db.by_workload()
    for shash in sorted(set(db.workloads) | set(groups), key=_hash_order):
        recs = groups.get(shash, [])
        times = [t for r in recs for t in [record_seconds(r)] if t is not None]
        rows.append({"workload": shash, "records": len(recs), "valid": len(times),
                     "best_s": min(times) if times else None,
                     "targets": sorted({target_text(target_identity(record_target(r)))
                                        for r in recs if record_target(r)})})
    return rows


# --- the shared area under the cache ------------------------------------------------------

@dataclass
class SharedEntry:
    """One workload's records in the shared area."""

    shash: str
    workload: str
    task: str
    trials: int
    records: List[Record]
    path: Optional[Path] = None

    @property
    def valid(self) -> int:
        return sum(1 for r in self.records if record_seconds(r) is not None)

    @property
    def best(self) -> Optional[float]:
        times = [t for r in self.records for t in [record_seconds(r)] if t is not None]
        return min(times) if times else None


class SharedTuneDB:
    """The tuning records of every tuning step that used this cache directory."""

    def __init__(self, root: Optional[Path] = None, top_k: int = 32):
        """``root``: the store's ``tvm-tunedb`` area (default: the default cache's)."""
        if root is None:
            from buildgraph.engine.store import Store

            root = Store().area(AREA)
        self.root = Path(root).absolute()
        self.top_k = top_k

    def target_dir(self, tvm_version: str, target: Mapping[str, Any]) -> Path:
        return self.root / f"v{SHARED_SCHEMA}" / _safe(tvm_version) / identity_digest(target)

    @contextmanager
    def locked(self) -> Iterator[None]:
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / "lock")):
            yield

    # --- reading -------------------------------------------------------------------------
    def lookup(self, tvm_version: str, target: Mapping[str, Any],
               hashes: Iterable[str]) -> Dict[str, SharedEntry]:
        """The shared entries of ``hashes`` for ``target`` (by identity) and TVM version."""
        base = self.target_dir(tvm_version, target)
        found = {}
        for shash in hashes:
            entry = self._read(base / f"{_safe(shash)}.json")
            if entry is not None:
                found[shash] = entry
        return found

    def _read(self, path: Path) -> Optional[SharedEntry]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable: treated as absent; the next write replaces it
        if not isinstance(data, dict) or data.get("schema") != SHARED_SCHEMA:
            return None
        return SharedEntry(str(data["shash"]), data["workload"], data.get("task", ""),
                           int(data.get("trials", 0)), list(data.get("records", [])), path)

    def entries(self) -> Iterator[Tuple[str, Dict[str, Any], SharedEntry]]:
        """Every (TVM version, target identity, entry) in the area, in a stable order."""
        base = self.root / f"v{SHARED_SCHEMA}"
        if not base.is_dir():
            return
        for vdir in sorted(p for p in base.iterdir() if p.is_dir()):
            for tdir in sorted(p for p in vdir.iterdir() if p.is_dir()):
                try:
                    meta = json.loads((tdir / "target.json").read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                for f in sorted(tdir.glob("*.json")):
                    if f.name == "target.json":
                        continue
                    entry = self._read(f)
                    if entry is not None:
                        yield meta.get("tvm", vdir.name), meta.get("identity", {}), entry

    def export(self, tvm_version: Optional[str] = None,
               target: Optional[Mapping[str, Any]] = None) -> TuneDatabase:
        """All shared records (optionally of one TVM version / target) as one database."""
        want = _identity_key(target) if target is not None else None
        db = TuneDatabase()
        for version, ident, entry in self.entries():
            if tvm_version is not None and version != tvm_version:
                continue
            if want is not None and _canon(ident) != want:
                continue
            db.workloads.setdefault(entry.shash, entry.workload)
            db.records.extend((entry.shash, r) for r in entry.records)
        return merge([db])

    # --- writing -------------------------------------------------------------------------
    def publish(self, tvm_version: str, db: TuneDatabase, tasks: Mapping[str, str] = {},
                trials: Mapping[str, int] = {}) -> Dict[str, int]:
        """Merge ``db``'s valid records into the area, grouped by each record's target.

        ``tasks`` names workloads (hash -> task name), ``trials`` adds trials spent per
        workload (failed candidates included). Returns records added per workload."""
        groups: Dict[Tuple[str, str], List[Record]] = {}
        idents: Dict[str, Dict[str, Any]] = {}
        for shash, rec in db.records:
            if record_seconds(rec) is None:
                continue
            t = record_target(rec)
            if not t:
                continue
            key = _identity_key(t)
            idents[key] = target_identity(t)
            groups.setdefault((key, shash), []).append(rec)
        added: Dict[str, int] = {}
        if not groups and not trials:
            return added
        with self.locked():
            for (key, shash), recs in sorted(groups.items()):
                ident = idents[key]
                tdir = self.target_dir(tvm_version, ident)
                tdir.mkdir(parents=True, exist_ok=True)
                meta = tdir / "target.json"
                if not meta.exists():
                    atomic_write(meta, json.dumps({"schema": SHARED_SCHEMA, "tvm": tvm_version,
                                                    "identity": ident}, sort_keys=True,
                                                   indent=1) + "\n")
                path = tdir / f"{_safe(shash)}.json"
                old = self._read(path)
                before = old.records if old else []
                merged = merge([TuneDatabase({shash: db.workloads[shash]},
                                             [(shash, r) for r in before + recs])],
                               top_k=self.top_k, valid_only=True)
                new_records = [r for _, r in merged.records]
                known = {_canon(r) for r in before}
                added[shash] = sum(1 for r in new_records if _canon(r) not in known)
                entry = {"schema": SHARED_SCHEMA, "shash": shash,
                         "workload": old.workload if old else db.workloads[shash],
                         "task": tasks.get(shash) or (old.task if old else ""),
                         "trials": (old.trials if old else 0) + int(trials.get(shash, 0)),
                         "tvm": tvm_version, "target": ident, "records": new_records}
                atomic_write(path, json.dumps(entry, sort_keys=True) + "\n")
        return added

    def prune(self, top_k: int) -> Dict[str, int]:
        """Keep only the ``top_k`` fastest records of every workload. Returns counts."""
        kept = removed = 0
        with self.locked():
            for _, _, entry in list(self.entries()):
                assert entry.path is not None
                data = json.loads(entry.path.read_text(encoding="utf-8"))
                merged = merge([TuneDatabase({entry.shash: entry.workload},
                                             [(entry.shash, r) for r in entry.records])],
                               top_k=top_k, valid_only=True)
                data["records"] = [r for _, r in merged.records]
                removed += len(entry.records) - len(data["records"])
                kept += len(data["records"])
                atomic_write(entry.path, json.dumps(data, sort_keys=True) + "\n")
        return {"kept": kept, "removed": removed}

    def clear(self) -> None:
        import shutil

        with self.locked():
            shutil.rmtree(self.root / f"v{SHARED_SCHEMA}", ignore_errors=True)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._+-" else "_" for c in str(name)) or "_"


def tvm_version() -> str:
    """The installed apache-tvm version, without importing TVM."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("apache-tvm")
    except PackageNotFoundError:
        return "none"


# --- the `buildgraph tune-db` command --------------------------------------------------------

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
    from buildgraph.engine.store import Store

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
