"""The shared tuning-record area, so that nobody tunes the same workload twice.

Every tuning step publishes
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

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from buildgraph.engine.files import atomic_write
from buildgraph.backends.tvm.records import (Record, TuneDatabase, canonical_text, identity_key,  # noqa: F401
                                             merge, record_seconds, record_target)
from buildgraph.backends.tvm.target import identity_digest, target_identity

SHARED_SCHEMA = 1
AREA = "tvm-tunedb"
"""The store's record area holding every tuning step's records."""

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
        want = identity_key(target) if target is not None else None
        db = TuneDatabase()
        for version, ident, entry in self.entries():
            if tvm_version is not None and version != tvm_version:
                continue
            if want is not None and canonical_text(ident) != want:
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
            key = identity_key(t)
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
                known = {canonical_text(r) for r in before}
                added[shash] = sum(1 for r in new_records if canonical_text(r) not in known)
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
