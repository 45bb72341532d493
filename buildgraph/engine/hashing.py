"""Content digests: canonical JSON, files, directories, and a stat cache to skip re-hashing.

Digests are xxh3-128, hex. Files are read in 1 MiB ``readinto`` chunks into one reused buffer:
as fast as ``xxhsum`` on warm files and constant memory (mmap is no faster and makes the whole
file resident). The stat cache (DVC's ``state``) maps (path, size, mtime, inode, ctime) to a
digest, so an unchanged 1 GiB file costs one ``stat`` and one indexed lookup.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat as stat_module
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import xxhash

CHUNK = 1 << 20
RACY_SECONDS = 2.0
"""A file modified this recently may change again within the same mtime tick: don't cache it."""


def canonical_json(obj: Any) -> bytes:
    """One byte string per value: sorted keys, no whitespace, UTF-8 (Bazel's canonical form)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def digest_bytes(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def digest_json(obj: Any) -> str:
    return digest_bytes(canonical_json(obj))


def hash_file(path: Union[str, Path]) -> Tuple[str, int]:
    """Digest and size of a file's content, in constant memory."""
    hasher = xxhash.xxh3_128()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    size = 0
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buffer)
            if not n:
                break
            hasher.update(view[:n])
            size += n
    return hasher.hexdigest(), size


@dataclass(frozen=True)
class Digest:
    """What a path holds: a file's or a directory tree's digest, and its total size."""

    type: str  # "file" | "dir"
    digest: str
    size: int


class StatCache:
    """(path, size, mtime_ns, inode, ctime_ns) -> digest, in SQLite beside the store.

    Safe for several processes (SQLite locking); writes are batched and committed by
    :meth:`flush` so a 1,000-step plan does not pay a transaction per file.
    """

    def __init__(self, db_path: Optional[Path]):
        self._db_path = db_path
        self._conn: Optional[sqlite3.Connection] = None
        self._pending: Dict[str, Tuple[int, int, int, int, str]] = {}
        self._memory: Dict[str, Tuple[int, int, int, int, str]] = {}
        self.consulted: set = set()
        """Every path asked about or recorded: what a no-op decision read (engine/noop.py)."""

    def _connect(self) -> Optional[sqlite3.Connection]:
        if self._conn is None and self._db_path is not None:
            try:
                self._db_path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(self._db_path), timeout=30, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("CREATE TABLE IF NOT EXISTS stat (path TEXT PRIMARY KEY, "
                             "size INTEGER, mtime INTEGER, ino INTEGER, ctime INTEGER, "
                             "digest TEXT)")
                self._conn = conn
            except sqlite3.Error:
                self._db_path = None  # an unusable stat cache only costs re-hashing
        return self._conn

    @staticmethod
    def _sig(st: os.stat_result) -> Tuple[int, int, int, int]:
        return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)

    def get(self, path: str, st: os.stat_result) -> Optional[str]:
        self.consulted.add(path)
        sig = self._sig(st)
        row = self._memory.get(path) or self._pending.get(path)
        if row is None:
            conn = self._connect()
            if conn is not None:
                try:
                    found = conn.execute("SELECT size, mtime, ino, ctime, digest FROM stat "
                                         "WHERE path = ?", (path,)).fetchone()
                except sqlite3.Error:
                    found = None
                if found:
                    row = tuple(found)  # type: ignore[assignment]
                    self._memory[path] = row  # type: ignore[assignment]
        if row is not None and tuple(row[:4]) == sig:
            return row[4]
        return None

    def put(self, path: str, st: os.stat_result, digest: str) -> None:
        self.consulted.add(path)
        if time.time() - st.st_mtime < RACY_SECONDS:
            return
        row = self._sig(st) + (digest,)
        self._memory[path] = row
        self._pending[path] = row

    def flush(self) -> None:
        if not self._pending:
            return
        conn = self._connect()
        if conn is None:
            self._pending.clear()
            return
        rows = [(p,) + r for p, r in self._pending.items()]
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO stat VALUES (?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
            self._pending.clear()
        except sqlite3.Error:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def close(self) -> None:
        self.flush()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def file_digest(path: Union[str, Path], cache: Optional[StatCache] = None,
                st: Optional[os.stat_result] = None) -> Tuple[str, int]:
    """Digest of a file, through ``cache`` when its stat signature is unchanged."""
    key = os.path.abspath(path)
    st = st or os.stat(key)
    if cache is not None:
        found = cache.get(key, st)
        if found is not None:
            return found, st.st_size
    digest, size = hash_file(key)
    if cache is not None:
        after = os.stat(key)
        if StatCache._sig(after) == StatCache._sig(st):
            cache.put(key, after, digest)
    return digest, size


def walk_files(root: Path) -> Iterator[Tuple[str, Path, os.stat_result]]:
    """Files under ``root`` as (posix relative path, path, stat), sorted; symlinks followed."""
    entries: List[Tuple[str, Path, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in filenames:
            full = Path(dirpath) / name
            st = full.stat()
            if stat_module.S_ISREG(st.st_mode):
                entries.append((full.relative_to(root).as_posix(), full, st))
    entries.sort(key=lambda e: e[0])
    return iter(entries)


def tree_manifest(root: Path, cache: Optional[StatCache] = None) -> Dict[str, Dict[str, Any]]:
    """``{relative path: {digest, size, exec}}`` for every file under ``root``."""
    manifest: Dict[str, Dict[str, Any]] = {}
    for rel, full, st in walk_files(root):
        digest, size = file_digest(full, cache, st)
        manifest[rel] = {"digest": digest, "size": size,
                         "exec": bool(st.st_mode & stat_module.S_IXUSR)}
    return manifest


def tree_digest(manifest: Dict[str, Dict[str, Any]]) -> str:
    return digest_json({"tree": manifest})


def path_digest(path: Union[str, Path], cache: Optional[StatCache] = None) -> Digest:
    """Digest of a file or of a directory tree (names, contents and exec bits)."""
    p = Path(path)
    st = p.stat()
    if stat_module.S_ISDIR(st.st_mode):
        manifest = tree_manifest(p, cache)
        if cache is not None:  # a file added or removed changes a folder, not a file read
            cache.consulted.update(root for root, _, _ in os.walk(p))
        return Digest("dir", tree_digest(manifest), sum(e["size"] for e in manifest.values()))
    digest, size = file_digest(p, cache, st)
    return Digest("file", digest, size)
