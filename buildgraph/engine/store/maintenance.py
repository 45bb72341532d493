"""Cache maintenance: verify, usage, LRU garbage collection, clear.

Kept apart from :mod:`buildgraph.engine.store.cache` (what a build needs: put, get, materialize) because
these walk the whole cache and run only from ``buildgraph cache ...``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

from buildgraph.engine.hashing import hash_file
from buildgraph.engine.files import rmtree_writable

if TYPE_CHECKING:  # pragma: no cover
    from buildgraph.engine.store.cache import Store


@dataclass
class VerifyReport:
    """What ``cache verify`` found."""

    blobs: int = 0
    actions: int = 0
    corrupt_blobs: List[str] = None  # type: ignore[assignment]
    broken_actions: List[str] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.corrupt_blobs = self.corrupt_blobs or []
        self.broken_actions = self.broken_actions or []

    @property
    def ok(self) -> bool:
        return not self.corrupt_blobs and not self.broken_actions


def verify(store: "Store", repair: bool = False,
           progress: Optional[Callable[[int], None]] = None) -> VerifyReport:
    """Re-hash every blob and check every action's references."""
    report = VerifyReport()
    bad = set()
    for digest, path in store.iter_blobs():
        report.blobs += 1
        actual, _ = hash_file(path)
        if actual != digest:
            report.corrupt_blobs.append(digest)
            bad.add(digest)
            if repair:
                path.unlink()
        if progress:
            progress(report.blobs)
    for key, entry, _ in store.iter_actions():
        report.actions += 1
        ok = entry is not None
        if ok:
            for digest in store.referenced_blobs(entry):
                if digest in bad or not store.blob_path(digest).exists():
                    ok = False
                    break
        if not ok:
            report.broken_actions.append(key)
            if repair:
                store.action_path(key).unlink(missing_ok=True)
    store.stat_cache.flush()
    return report

def usage(store: "Store") -> Dict[str, int]:
    size = count = 0
    for _, path in store.iter_blobs():
        size += path.stat().st_size
        count += 1
    actions = sum(1 for _ in store.iter_actions())
    return {"bytes": size, "objects": count, "actions": actions}

def sweep_object_temps(store: "Store") -> int:
    """Remove ``objects/xx/.tmp-*`` files that a killed run or a full disk left behind. gc
    holds the store exclusively, so no run is writing one now. Returns how many."""
    removed = 0
    if not store.objects.is_dir():
        return 0
    for sub in store.objects.iterdir():
        if not sub.is_dir():
            continue
        for f in sub.glob(".tmp-*"):
            try:
                f.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def gc(store: "Store", max_size: Optional[int] = None) -> Dict[str, int]:
    """Drop least-recently-used actions until blobs fit ``max_size``; then unreferenced blobs."""
    actions = [(st.st_mtime, key, entry) for key, entry, st in store.iter_actions()]
    actions.sort(key=lambda a: a[0])
    paths = dict(store.iter_blobs())
    sizes = {d: p.stat().st_size for d, p in paths.items()}
    refs: Dict[str, int] = {}
    per_action: Dict[str, List[str]] = {}
    removed_actions = 0
    for _, key, entry in actions:
        if entry is None:
            store.action_path(key).unlink(missing_ok=True)
            removed_actions += 1
            continue
        digests = [d for d in set(store.referenced_blobs(entry)) if d in sizes]
        per_action[key] = digests
        for d in digests:
            refs[d] = refs.get(d, 0) + 1
    live = sum(sizes[d] for d in refs)
    if max_size is not None:
        for _, key, entry in actions:
            if live <= max_size:
                break
            if key not in per_action:
                continue
            store.action_path(key).unlink(missing_ok=True)
            removed_actions += 1
            for d in per_action.pop(key):
                refs[d] -= 1
                if refs[d] == 0:
                    del refs[d]
                    live -= sizes[d]
    removed_blobs = freed = 0
    for digest, size in sizes.items():
        if digest not in refs:
            paths[digest].unlink(missing_ok=True)  # a stray name too (not a digest)
            removed_blobs += 1
            freed += size
    tmp = store.clean_tmp() + sweep_object_temps(store)
    store.memo.clear()  # memoised descriptions and views: regenerable, and never pruned else
    for regenerable in ("recipes", "derived"):  # resolved recipes, memoised digests
        shutil.rmtree(store.root / regenerable, ignore_errors=True)
    return {"removed_actions": removed_actions, "removed_objects": removed_blobs,
            "freed_bytes": freed, "kept_bytes": live, "removed_tmp": tmp}

def clear(store: "Store") -> None:
    for sub in (store.objects, store.actions, store.tmp, store.locks, store.root / "recipes",
                store.root / "derived", store.root / "noop"):
        if sub.exists():
            rmtree_writable(sub)
    store.stat_cache.close()
    store.memo.close()
    for db in ("stat.db", "memo.db"):
        for extra in ("", "-wal", "-shm"):
            (store.root / (db + extra)).unlink(missing_ok=True)
