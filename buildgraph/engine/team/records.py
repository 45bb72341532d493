"""The team cache's shared records: TVM tuning records and TensorRT timing caches, which
accumulate instead of being built once.

Each record area (``AREA_SYNC``) is kept per scope (kind, tool version, target or GPU
fingerprint) as append-only **segments** under ``v1/records/<area>/<scope>/<blake3>.json``,
named by the BLAKE3 of their payload and optionally signed. A pull merges every segment not
seen before into the local area (the area's own ``RecordSync`` does the merge: best-k records
per workload for TVM, TensorRT's ``combine`` for timing caches). A push first pulls, then
writes one segment holding the union when it holds something the team's do not, and deletes
the segments it merged only once its own is written: concurrent pushes never lose records.
What this cache has merged and published is kept beside the area
(``<area>/.remote/<remote id>.json``), under a file lock.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from buildgraph.engine.hashing import canonical_json
from buildgraph.engine.names import InvalidName, check_scope, is_digest
from buildgraph.engine.remote_docs import (AREA_SYNC, COMPACT_AT, RECORDS_FORMAT, SCHEMA,
                                           b3_bytes, parse_record_doc, producer, signed_payload)


class RecordAreas:
    """Pull and push the record areas of one team cache (see the module's doc)."""

    def __init__(self, team: Any):
        """``team``: the :class:`buildgraph.engine.team.remote.TeamCache` these areas belong to
        (not imported: remote imports this module, never the other way round)."""
        self.team = team
        self._lock = threading.Lock()
        self._areas_pulled: Set[str] = set()
        self._area_locks: Dict[str, threading.Lock] = {}

    def _handler(self, area: str, store: Any) -> Any:
        from buildgraph.engine.executor import import_object

        cls = import_object(AREA_SYNC[area], what=f"the record sync of area '{area}'")
        return cls(store.area(area))

    def _area_lock(self, area: str) -> threading.Lock:
        with self._lock:
            return self._area_locks.setdefault(area, threading.Lock())

    def pull_areas(self, store: Any, areas: Iterable[str], force: bool = False) -> List[str]:
        """Merge the team's records of ``areas`` into the local ones (once per run, unless
        ``force``). Returns one line per scope that changed."""
        lines: List[str] = []
        for area in areas:
            if area not in AREA_SYNC:
                continue
            with self._area_lock(area):
                if area in self._areas_pulled and not force:
                    continue
                got = self.team.guard(lambda: self._pull_area(store, area), None)
                self._areas_pulled.add(area)
                lines.extend(got or [])
        return lines

    def push_areas(self, store: Any, areas: Iterable[str]) -> int:
        """Merge, then publish the local records of ``areas`` as new segments where they
        hold something the team's do not. Returns segments written."""
        if self.team.read_only:
            return 0
        written = 0
        for area in areas:
            if area not in AREA_SYNC:
                continue
            with self._area_lock(area):
                written += self.team.guard(lambda: self._push_area(store, area), 0) or 0
        with self.team.lock:
            self.team.summary.records += written
        return written

    def _state(self, store: Any, area: str) -> "_SyncState":
        return _SyncState(store.area(area) / ".remote" / f"{self.team.remote_id}.json")

    def listing(self, area: str) -> Dict[str, Dict[str, Dict[str, Any]]]:
        """scope -> segment name -> info, of the remote's segments of ``area``."""
        prefix = self.team.records_prefix(area)
        scopes: Dict[str, Dict[str, Dict[str, Any]]] = {}
        for path, info in self.team.rfs.find(prefix).items():
            rel = path[len(prefix):].strip("/")
            scope, _, name = rel.rpartition("/")
            if not name.endswith(".json") or not is_digest(name[:-5], "blake3"):
                continue
            try:
                check_scope(scope)
            except InvalidName:
                continue  # never a path of ours: nothing is built from it
            scopes.setdefault(scope, {})[name[:-5]] = dict(info, path=path)
        return scopes

    def _pull_area(self, store: Any, area: str) -> List[str]:
        handler = self._handler(area, store)
        state = self._state(store, area)
        lines: List[str] = []
        with state.locked():
            state.load()
            listing = self.listing(area)
            for scope, segments in sorted(listing.items()):
                seen = state.seen(scope)
                # were the local records all published (or pulled) before this merge? then what
                # the merge makes is only the team's, and a push has nothing to add
                before = handler.export(scope)
                mine = b3_bytes(canonical_json(before)) if before is not None else None
                clean = mine is None or mine in seen or mine == state.synced.get(scope)
                payloads = []
                if set(segments) - seen:
                    self.team._say_unsigned()
                for name in sorted(set(segments) - seen):
                    payload, why = self._read_segment(area, scope, name,
                                                      segments[name]["path"])
                    if payload is not None:
                        payloads.append(payload)
                    elif why:
                        state.rejected(scope).add(name)
                    seen.add(name)
                if payloads:
                    summary = handler.merge(scope, payloads)
                    lines.append(f"{area} {scope}: {summary}")
                    exported = handler.export(scope)
                    if exported is not None and clean:
                        state.synced[scope] = b3_bytes(canonical_json(exported))
                state.listed[scope] = sorted(segments)
            state.save()
        return lines

    def _read_segment(self, area: str, scope: str, name: str, path: str
                      ) -> Tuple[Optional[Dict[str, Any]], str]:
        """A segment's payload, verified; else (None, why) - why is empty for a segment that
        was compacted away since the listing (its content is in a newer one)."""
        data = self.team.rfs.cat(path)
        if data is None:
            return None, ""
        why = ""
        try:
            doc = parse_record_doc(data)  # limits (NaN, nesting, numbers), strict schema
            payload = doc["payload"]
            if doc.get("area") != area or doc.get("scope") != scope:
                raise InvalidName("not a record segment of this scope")
        except InvalidName as exc:
            why = str(exc)
        else:
            try:
                if b3_bytes(canonical_json(payload)) != name:
                    why = "its content does not match its name (corrupt or replaced)"
                else:
                    why = self.team.trust().check(signed_payload(doc),
                                                  doc.get("signature")) or ""
            except (ValueError, TypeError) as exc:
                why = f"unreadable ({type(exc).__name__})"
        if why:
            message = f"{self.team.label()}: ignored {area} records {scope}/{name[:12]}: {why}"
            self.team.rejected.append(message)
            self.team.warn(message)
            return None, why
        return payload, ""

    def _push_area(self, store: Any, area: str) -> int:
        self._pull_area(store, area)  # merge-on-push: publish the union
        handler = self._handler(area, store)
        state = self._state(store, area)
        written = 0
        with state.locked():
            state.load()
            for scope in handler.scopes():
                try:
                    check_scope(scope)
                except InvalidName:
                    continue
                payload = handler.export(scope)
                if payload is None:
                    continue
                name = b3_bytes(canonical_json(payload))
                seen = state.seen(scope)
                if name in seen or state.synced.get(scope) == name:
                    continue  # nothing the team does not have
                doc = self.team.sign({"format": RECORDS_FORMAT, "schema": SCHEMA, "area": area,
                                  "scope": scope, "payload": payload, "producer": producer()})
                prefix = f"{self.team.records_prefix(area)}/{scope}"
                self.team.rfs.put_bytes(f"{prefix}/{name}.json",
                                   json.dumps(doc, sort_keys=True).encode())
                written += 1
                seen.add(name)
                state.synced[scope] = name
                listed = [n for n in state.listed.get(scope, []) if n != name]
                if len(listed) + 1 > COMPACT_AT and listed:
                    # the new segment merged every listed one: they are redundant now
                    ours_signed = "signature" in doc
                    if ours_signed or not self.team.trust().required:
                        self.team.rfs.rm([f"{prefix}/{n}.json" for n in listed
                                     if n in seen and n not in state.rejected(scope)])
                        listed = []
                state.listed[scope] = sorted(listed + [name])
            state.save()
        return written


class _SyncState:
    """What this cache has merged from, and published to, one remote's records of one area:
    segment names per scope (content hashes, so 'seen' means 'merged')."""

    def __init__(self, path: Path):
        self.path = path
        self._seen: Dict[str, Set[str]] = {}
        self._rejected: Dict[str, Set[str]] = {}
        self.synced: Dict[str, str] = {}
        self.listed: Dict[str, List[str]] = {}

    def locked(self) -> Any:
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path) + ".lock")

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict) or data.get("schema") != 1:
            data = {}
        self._seen = {s: set(v) for s, v in (data.get("seen") or {}).items()}
        self._rejected = {s: set(v) for s, v in (data.get("rejected") or {}).items()}
        self.synced = dict(data.get("synced") or {})
        self.listed = {s: list(v) for s, v in (data.get("listed") or {}).items()}

    def seen(self, scope: str) -> Set[str]:
        return self._seen.setdefault(scope, set())

    def rejected(self, scope: str) -> Set[str]:
        return self._rejected.setdefault(scope, set())

    def save(self) -> None:
        from buildgraph.engine.files import atomic_write

        # forget segments that are no longer listed (compacted away): the state stays small
        seen = {s: sorted(v & set(self.listed.get(s, v)) | ({self.synced[s]}
                                                              if s in self.synced else set()))
                for s, v in self._seen.items()}
        atomic_write(self.path, json.dumps({"schema": 1, "seen": seen,
                                            "rejected": {s: sorted(v) for s, v in
                                                         self._rejected.items() if v},
                                            "synced": self.synced, "listed": self.listed},
                                           sort_keys=True, indent=1))
