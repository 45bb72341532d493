"""Memoised derived facts, kept beside the store: step descriptions and upstream views.

Asking an executor for its description means importing its module (pydantic, and for some the
GPU probe); a no-op run of a cached recipe must not pay that. The planner therefore keeps each
description here under a key covering everything it was computed from (kind, version, params,
the recipe's models, the Python environment), and re-validates a hit by the digests of the
files the description named: a model source that gained a local import is described again.

One SQLite table in ``<cache>/memo.db`` (WAL: safe for concurrent runs). Losing it costs only
re-describing; a corrupt or unreadable database is ignored.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Dict, Optional, Tuple


class Memo:
    """``(namespace, key) -> JSON value``; writes are batched until :meth:`flush`."""

    def __init__(self, db_path: Optional[Path]):
        self._db_path = db_path
        self._conn: Optional[sqlite3.Connection] = None
        self._pending: Dict[Tuple[str, str], str] = {}
        self._loaded: Dict[str, Dict[str, str]] = {}
        """Namespaces read whole, in one query, on their first lookup: a 1,000-step plan asks
        for 1,000 descriptions, and one SELECT each would cost more than the plan itself."""

    def _connect(self) -> Optional[sqlite3.Connection]:
        if self._conn is None and self._db_path is not None:
            try:
                self._db_path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(self._db_path), timeout=30, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("CREATE TABLE IF NOT EXISTS memo (ns TEXT, key TEXT, value TEXT, "
                             "PRIMARY KEY (ns, key))")
                self._conn = conn
            except sqlite3.Error:
                self._db_path = None
        return self._conn

    def get(self, namespace: str, key: str) -> Optional[Any]:
        text = self._pending.get((namespace, key))
        if text is None:
            loaded = self._loaded.get(namespace)
            if loaded is None:
                conn = self._connect()
                if conn is None:
                    return None
                try:
                    rows = conn.execute("SELECT key, value FROM memo WHERE ns = ?",
                                        (namespace,)).fetchall()
                except sqlite3.Error:
                    return None
                loaded = self._loaded[namespace] = dict(rows)
            text = loaded.get(key)
            if text is None:
                return None
        try:
            return json.loads(text)
        except ValueError:
            return None

    def put(self, namespace: str, key: str, value: Any) -> None:
        self._pending[(namespace, key)] = json.dumps(value, sort_keys=True)

    def flush(self) -> None:
        if not self._pending:
            return
        conn = self._connect()
        if conn is None:
            self._pending.clear()
            return
        rows = [(ns, key, value) for (ns, key), value in self._pending.items()]
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO memo VALUES (?, ?, ?)", rows)
            conn.execute("COMMIT")
            self._pending.clear()
        except sqlite3.Error:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def clear(self) -> None:
        self._pending.clear()
        self._loaded.clear()
        conn = self._connect()
        if conn is not None:
            try:
                conn.execute("DELETE FROM memo")
            except sqlite3.Error:
                pass

    def close(self) -> None:
        self.flush()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
