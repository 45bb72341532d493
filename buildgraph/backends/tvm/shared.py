"""The shared tuning-record area, so that nobody tunes the same workload twice.

Every tuning step publishes
its records under the cache directory, keyed per (TVM version, target identity, workload
structural hash)::

    <cache>/tunedb/
      lock                                   held while the area is written
      v1/<tvm version>/<target id>/target.json         the target identity
      v1/<tvm version>/<target id>/<hash>.json         one workload: its module, the task
                                                       name, trials spent (per contributing
                                                       cache), best records
      contributor                            this cache's id among the team's

Each workload file is replaced atomically under the lock, so concurrent tuning steps (and a
step killed mid-way: records are published after every measured batch) never leave a torn
file. Before tuning, ``tvm.tune`` looks every extracted task up here and tunes only those that
lack records. ``buildgraph tune-db`` lists, merges, prunes, imports and exports databases.

With a team cache (:mod:`buildgraph.engine.team.remote`), :class:`RecordSync` exchanges each
(TVM version, target identity) directory with the team: records are united and cut to the best
``top_k`` per workload, and trials are counted per contributing cache (the maximum each one
reported), so that merging the same records twice, or in another order, gives the same file.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    """Trials measured for this workload by the whole team (every contributing cache)."""
    records: List[Record]
    path: Optional[Path] = None
    trials_by: Dict[str, int] = field(default_factory=dict)
    """Trials per contributing cache (its ``contributor`` id)."""

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
            from buildgraph.engine.store.cache import Store

            root = Store().area(AREA)
        self.root = Path(root).absolute()
        self.top_k = top_k

    def target_dir(self, tvm_version: str, target: Mapping[str, Any]) -> Path:
        return self.root / f"v{SHARED_SCHEMA}" / _safe(tvm_version) / identity_digest(target)

    def contributor(self) -> str:
        """This cache's id in trial counts (created on first use): counts from other caches
        arrive under theirs, so a merge takes each one's maximum instead of adding twice."""
        path = self.root / "contributor"
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError:
            pass
        self.root.mkdir(parents=True, exist_ok=True)
        ident = uuid.uuid4().hex[:16]
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return path.read_text(encoding="utf-8").strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(ident + "\n")
        return ident

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
        by = data.get("trials_by")
        if isinstance(by, dict):
            trials_by = {str(k): int(v) for k, v in by.items() if isinstance(v, int)}
        else:  # written before trials were counted per cache: all of them were this cache's
            trials = int(data.get("trials", 0))
            trials_by = {self.contributor(): trials} if trials else {}
        return SharedEntry(str(data["shash"]), data["workload"], data.get("task", ""),
                           sum(trials_by.values()), list(data.get("records", [])), path,
                           trials_by)

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
        own = self.contributor() if trials else ""
        with self.locked():
            for (key, shash), recs in sorted(groups.items()):
                ident = idents[key]
                tdir = self.target_dir(tvm_version, ident)
                path = tdir / f"{_safe(shash)}.json"
                old = self._read(path)
                before = old.records if old else []
                by = dict(old.trials_by) if old else {}
                if trials.get(shash):
                    by[own] = by.get(own, 0) + int(trials[shash])
                new_records = self._write(tvm_version, ident, shash, db.workloads[shash],
                                          tasks.get(shash) or "", by, before + recs, old)
                known = {canonical_text(r) for r in before}
                added[shash] = sum(1 for r in new_records if canonical_text(r) not in known)
        return added

    def _write(self, tvm_version: str, ident: Dict[str, Any], shash: str, workload: str,
               task: str, trials_by: Dict[str, int], records: List[Record],
               old: Optional[SharedEntry]) -> List[Record]:
        """Merge ``records`` (best ``top_k``, valid only, deterministic) into one workload's
        file, atomically; the caller holds the lock. Returns the records kept."""
        tdir = self.target_dir(tvm_version, ident)
        tdir.mkdir(parents=True, exist_ok=True)
        meta = tdir / "target.json"
        if not meta.exists():
            atomic_write(meta, json.dumps({"schema": SHARED_SCHEMA, "tvm": tvm_version,
                                            "identity": ident}, sort_keys=True,
                                           indent=1) + "\n")
        workload = old.workload if old else workload
        merged = merge([TuneDatabase({shash: workload}, [(shash, r) for r in records])],
                       top_k=self.top_k, valid_only=True)
        kept = [r for _, r in merged.records]
        trials_by = {k: v for k, v in sorted(trials_by.items()) if v}
        entry = {"schema": SHARED_SCHEMA, "shash": shash, "workload": workload,
                 "task": task or (old.task if old else ""),
                 "trials": sum(trials_by.values()), "trials_by": trials_by,
                 "tvm": tvm_version, "target": ident, "records": kept}
        atomic_write(tdir / f"{_safe(shash)}.json", json.dumps(entry, sort_keys=True) + "\n")
        return kept

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


class RecordSync:
    """The team cache's view of this area (see :data:`buildgraph.engine.team.remote.AREA_SYNC`):
    one scope per (TVM version, target identity) directory, exported as one JSON payload and
    merged back deterministically (best ``top_k`` records, trials per contributor)."""

    def __init__(self, root: Path, top_k: int = 32):
        self.db = SharedTuneDB(root, top_k=top_k)

    def scopes(self) -> List[str]:
        base = self.db.root / f"v{SHARED_SCHEMA}"
        if not base.is_dir():
            return []
        return [f"v{SHARED_SCHEMA}/{t.parent.name}/{t.name}"
                for t in sorted(base.glob("*/*")) if (t / "target.json").is_file()]

    def export(self, scope: str) -> Optional[Dict[str, Any]]:
        tdir = self.db.root / scope
        try:
            meta = json.loads((tdir / "target.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        workloads = {}
        for f in sorted(tdir.glob("*.json")):
            if f.name == "target.json":
                continue
            entry = self.db._read(f)
            if entry is None or not entry.records:
                continue
            workloads[entry.shash] = {"workload": entry.workload, "task": entry.task,
                                      "trials_by": dict(sorted(entry.trials_by.items())),
                                      "records": entry.records}
        if not workloads:
            return None
        return {"tvm": meta.get("tvm"), "identity": meta.get("identity"),
                "workloads": workloads}

    def merge(self, scope: str, payloads: List[Dict[str, Any]]) -> str:
        """Unite the team's payloads of ``scope`` with the local records. Returns a summary."""
        added = workloads = 0
        with self.db.locked():
            for payload in payloads:
                try:
                    version, ident = str(payload["tvm"]), dict(payload["identity"])
                    items = dict(payload["workloads"])
                except (KeyError, TypeError, ValueError):
                    continue
                tdir = self.db.target_dir(version, ident)
                if tdir.relative_to(self.db.root).as_posix() != scope:
                    continue  # a payload that claims another scope: not ours to place
                for shash, w in sorted(items.items()):
                    if not isinstance(w, dict) or not isinstance(w.get("records"), list):
                        continue
                    path = tdir / f"{_safe(shash)}.json"
                    old = self.db._read(path)
                    before = old.records if old else []
                    by = dict(old.trials_by) if old else {}
                    for k, v in (w.get("trials_by") or {}).items():
                        if isinstance(v, int):
                            by[str(k)] = max(by.get(str(k), 0), v)
                    kept = self.db._write(version, ident, str(shash), str(w.get("workload")),
                                          str(w.get("task") or ""), by,
                                          before + list(w["records"]), old)
                    known = {canonical_text(r) for r in before}
                    added += sum(1 for r in kept if canonical_text(r) not in known)
                    workloads += 1
        return f"{workloads} workloads merged, {added} new records"
