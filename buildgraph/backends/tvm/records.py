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

The shared area that every tuning step publishes into is :mod:`buildgraph.backends.tvm.shared`;
the ``buildgraph tune-db`` command is :mod:`buildgraph.backends.tvm.tunedb_cli`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from buildgraph.errors import BuildgraphError
from buildgraph.engine.files import atomic_write
from buildgraph.backends.tvm.target import target_identity, target_text

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
MANIFEST_FILE = "tunedb.json"
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


def canonical_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _record_sort_key(shash: str, record: Record) -> Tuple[Any, ...]:
    secs = record_seconds(record)
    return (shash, secs is None, secs if secs is not None else 0.0, canonical_text(record))


def identity_key(target: Mapping[str, Any]) -> str:
    try:
        return canonical_text(target_identity(target))
    except BuildgraphError:
        return canonical_text({"unreadable": canonical_text(target)})


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
            seen.setdefault(identity_key(t), target_identity(t) if t else {})
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
    want = identity_key(target) if target is not None else None
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
            if want is not None and identity_key(record_target(rec)) != want:
                continue
            if valid_only and record_seconds(rec) is None:
                continue
            candidates.append((shash, rec))
    candidates.sort(key=lambda hr: _record_sort_key(*hr))
    seen = set()
    per_group: Dict[Tuple[str, str], int] = {}
    for shash, rec in candidates:
        ident = identity_key(record_target(rec))
        dedup = (shash, canonical_text(rec[0]), ident, canonical_text(rec[3] if len(rec) > 3 else None))
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
