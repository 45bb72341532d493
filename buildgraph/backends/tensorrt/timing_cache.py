"""The team's shared TensorRT timing caches: store, merge and hit-rate bookkeeping on byte blobs.

A timing cache records how fast each tactic ran for a layer configuration on one GPU; a build
that starts from it skips the timing it already has. Caches are only valid for the GPU, compute
capability, CUDA and TensorRT version that made them, and for the flags that change which
tactics exist, so each such *scope* gets its own directory::

    <cache dir>/trt-timing/
      <gpu>-sm<cc>-cuda<v>-trt<v>-<hash>/
        cache.bin          the serialized ITimingCache
        meta.json          schema, scope, sha256 and size of cache.bin, entries, updated, builds
        lock               held while merging
        networks/<key>.json  timing keys each network needed (for the hit rate)
        rejected/          corrupt or refused caches, moved aside with the reason

Rules (the issue's): a cache of another scope is never combined in (its meta says so, and the
directory name keeps scopes apart); a corrupt or refused cache is reported, moved to
``rejected/`` and replaced, never fatal; merges happen under a lock after the build, re-reading
the current cache so that concurrent builds on one machine do not lose each other's entries.
Unknown ``meta.json`` schemas are discarded like ninja's versioned logs.

TensorRT itself is behind the ``combine(base, new) -> bytes`` callable the executor passes
(``ITimingCache.combine``); tests pass a fake one, so everything here runs on byte blobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from buildgraph.engine.files import atomic_write

SCHEMA = 1
DIRNAME = "trt-timing"


class CacheRejected(Exception):
    """TensorRT refused a cache (combine failed, header mismatch, unreadable blob)."""


@dataclass(frozen=True)
class CacheScope:
    """What a timing cache is valid for."""

    gpu: str
    compute_capability: str
    cuda: str
    tensorrt: str
    flags: Tuple[str, ...] = ()

    def as_dict(self) -> Dict[str, object]:
        d = asdict(self)
        d["flags"] = list(self.flags)
        return d

    def digest(self) -> str:
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def dirname(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu).strip("-").lower() or "gpu"
        cc = self.compute_capability.replace(".", "")
        return (f"{slug}-sm{cc}-cuda{_clean(self.cuda)}-trt{_clean(self.tensorrt)}-"
                f"{self.digest()[:10]}")


def _clean(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text or "none")


@dataclass
class Loaded:
    """The shared cache as found: ``status`` is empty, loaded, corrupt or foreign."""

    status: str
    blob: Optional[bytes] = None
    message: str = ""
    entries: Optional[int] = None
    path: Optional[Path] = None

    @property
    def usable(self) -> bool:
        return self.status == "loaded" and self.blob is not None


@dataclass
class Merged:
    """What merging a build's cache into the shared one did: created, combined or replaced."""

    status: str
    size: int
    message: str = ""
    path: Optional[Path] = None


def default_root(cache_dir: Optional[Path] = None) -> Path:
    """``<cache dir>/trt-timing`` (the store's ``trt-timing`` area), for tools outside a run;
    steps get the area from the store (``task.areas``)."""
    from buildgraph.engine.store.cache import default_cache_dir

    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / DIRNAME


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


class TimingCacheStore:
    """The shared timing caches under ``root`` (see the module's doc)."""

    def __init__(self, root: Path, lock_timeout: float = 600.0):
        self.root = Path(root)
        self.lock_timeout = lock_timeout

    def scope_dir(self, scope: CacheScope) -> Path:
        return self.root / scope.dirname()

    # --- reading ------------------------------------------------------------------------------
    def load(self, scope: CacheScope) -> Loaded:
        """The shared cache of ``scope``; a bad one is moved to ``rejected/`` and reported."""
        d = self.scope_dir(scope)
        blob_path, meta_path = d / "cache.bin", d / "meta.json"
        if not blob_path.exists():
            return Loaded("empty", message="no shared timing cache yet for this GPU/CUDA/"
                                           "TensorRT")
        problem = ""
        meta: Dict[str, object] = {}
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as exc:
            problem = f"its meta.json is unreadable ({type(exc).__name__})"
        try:
            blob = blob_path.read_bytes()
        except OSError as exc:
            return self._reject(scope, "corrupt", f"cannot read it ({exc})")
        if not problem and meta.get("schema") != SCHEMA:
            problem = f"unknown meta.json schema {meta.get('schema')!r} (this buildgraph " \
                      f"writes {SCHEMA})"
        if not problem and meta.get("scope") != scope.as_dict():
            return self._reject(scope, "foreign",
                                "it was made for another GPU/CUDA/TensorRT/flags: "
                                + _scope_text(meta.get("scope")))
        if not problem and meta.get("sha256") != _sha256(blob):
            problem = "its content does not match the checksum in meta.json (truncated or " \
                      "modified)"
        if problem:
            return self._reject(scope, "corrupt", problem)
        entries = meta.get("entries")
        return Loaded("loaded", blob, f"shared timing cache: {len(blob)} bytes"
                      + (f", {entries} entries" if isinstance(entries, int) else ""),
                      entries if isinstance(entries, int) else None, blob_path)

    def _reject(self, scope: CacheScope, status: str, reason: str) -> Loaded:
        moved = self.quarantine(scope, reason)
        where = f"; moved to {moved}" if moved else ""
        return Loaded(status, message=f"shared timing cache rejected: {reason}{where}; "
                                      "starting from an empty one, which replaces it after "
                                      "the build")

    def quarantine(self, scope: CacheScope, reason: str) -> Optional[Path]:
        """Move the scope's cache aside into ``rejected/`` with a note of ``reason``."""
        d = self.scope_dir(scope)
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-{time.monotonic_ns() % 10**6}"
        dest = d / "rejected" / stamp
        moved = False
        for name in ("cache.bin", "meta.json"):
            src = d / name
            if src.exists():
                dest.mkdir(parents=True, exist_ok=True)
                os.replace(src, dest / name)
                moved = True
        if not moved:
            return None
        (dest / "reason.txt").write_text(reason + "\n", encoding="utf-8")
        return dest

    # --- writing ------------------------------------------------------------------------------
    def merge(self, scope: CacheScope, new_blob: bytes,
              combine: Callable[[bytes, bytes], bytes], entries: Optional[int] = None,
              count_entries: Optional[Callable[[bytes], Optional[int]]] = None) -> Merged:
        """Combine ``new_blob`` (a build's cache) into the shared cache of ``scope``.

        Under the scope's lock the current cache is read again (another build may have merged
        since this one started); ``combine(current, new)`` merges them (TensorRT's
        ``ITimingCache.combine``). A current cache that is bad, or that ``combine`` refuses
        (:class:`CacheRejected`), is moved aside and ``new_blob`` replaces it."""
        from filelock import FileLock

        d = self.scope_dir(scope)
        d.mkdir(parents=True, exist_ok=True)
        with FileLock(str(d / "lock"), timeout=self.lock_timeout):
            current = self.load(scope)
            builds = 1
            if current.usable:
                assert current.blob is not None
                try:
                    merged = combine(current.blob, new_blob)
                    status, message = "combined", "combined into the shared timing cache"
                    builds = self._builds(d) + 1
                except CacheRejected as exc:
                    moved = self.quarantine(scope, f"combine refused it: {exc}")
                    merged = new_blob
                    status = "replaced"
                    message = (f"the shared timing cache could not be combined ({exc}); "
                               f"replaced by this build's (old one in {moved})")
            else:
                merged = new_blob
                status = "created" if current.status == "empty" else "replaced"
                message = "shared timing cache created" if status == "created" else \
                    "shared timing cache replaced (" + current.message.split(";")[0] + ")"
            if count_entries is not None:
                entries = count_entries(merged)
            atomic_write(d / "cache.bin", merged)
            meta = {"schema": SCHEMA, "scope": scope.as_dict(), "sha256": _sha256(merged),
                    "size": len(merged), "entries": entries, "builds": builds,
                    "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            atomic_write(d / "meta.json", (json.dumps(meta, indent=2, sort_keys=True) + "\n")
                          .encode())
        return Merged(status, len(merged), message, d / "cache.bin")

    @staticmethod
    def _builds(d: Path) -> int:
        try:
            value = json.loads((d / "meta.json").read_text(encoding="utf-8")).get("builds", 0)
            return int(value) if isinstance(value, int) else 0
        except (OSError, ValueError, AttributeError):
            return 0

    # --- hit-rate bookkeeping -----------------------------------------------------------------
    def needed_keys(self, scope: CacheScope, network: str) -> Optional[Set[str]]:
        """The timing keys ``network`` needed when last built in this scope (None: unknown)."""
        path = self.scope_dir(scope) / "networks" / f"{network}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return set(data["keys"]) if data.get("complete") else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def record_needed(self, scope: CacheScope, network: str, keys: Iterable[str]) -> None:
        path = self.scope_dir(scope) / "networks" / f"{network}.json"
        atomic_write(path, (json.dumps({"complete": True, "keys": sorted(keys)}) + "\n")
                      .encode())

    def scopes(self) -> List[Dict[str, object]]:
        """meta.json of every scope (for ``cache`` listings and tests)."""
        out = []
        if self.root.is_dir():
            for d in sorted(self.root.iterdir()):
                try:
                    out.append(json.loads((d / "meta.json").read_text(encoding="utf-8")))
                except (OSError, ValueError):
                    continue
        return out


def _scope_text(scope: object) -> str:
    if not isinstance(scope, dict):
        return "(unknown)"
    flags = ",".join(scope.get("flags") or []) or "no flags"
    return (f"{scope.get('gpu')} sm{scope.get('compute_capability')}, CUDA "
            f"{scope.get('cuda')}, TensorRT {scope.get('tensorrt')}, {flags}")


@dataclass
class HitStats:
    """Timing-cache use of one build. ``hits``/``hit_rate`` are None when unknown; every count
    is None where TensorRT cannot list a cache's keys (before 10.8)."""

    entries_before: Optional[int]
    entries_after: Optional[int]
    timed: Optional[int]
    """Tactic timings this build measured (keys it added): the misses."""
    hits: Optional[int] = None
    hit_rate: Optional[float] = None
    note: str = ""

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)

    def line(self) -> str:
        if self.timed is None:
            return f"timing cache: hit rate unknown ({self.note})"
        if self.hit_rate is None:
            return (f"timing cache: {self.timed} tactic timings measured, "
                    f"{self.entries_before} entries available; hit rate unknown ({self.note})")
        return (f"timing cache: hit rate {self.hit_rate:.0%} ({self.hits} reused, "
                f"{self.timed} measured; {self.entries_before} -> {self.entries_after} entries)")


def hit_stats(before: Optional[Set[str]], after: Optional[Set[str]],
              needed: Optional[Set[str]], unknown: str = "") -> HitStats:
    """Hits and misses of one build from the cache's keys before and after it.

    TensorRT says which keys a cache holds (``ITimingCache.queryKeys``), not which ones a build
    looked up; so the keys this network needs are remembered per network and scope
    (``needed``): hits are the needed keys the cache already had. A first build from an empty
    cache needs exactly what it added; a first build from a non-empty one leaves the hit count
    unknown (it is known from the next build on). ``before``/``after`` None: TensorRT could not
    list the keys (``unknown`` says why); nothing is known."""
    if before is None or after is None:
        return HitStats(None, None, None, note=unknown or "the cache's keys are unknown")
    timed = len(after - before)
    if needed is None and not before:
        needed = set(after)
    if needed is None:
        return HitStats(len(before), len(after), timed,
                        note="first build of this network against a non-empty cache")
    needed = needed | (after - before)
    hits = len(needed & before)
    total = hits + timed
    return HitStats(len(before), len(after), timed, hits,
                    (hits / total) if total else 1.0)


def learned_needed(before: Optional[Set[str]], after: Optional[Set[str]],
                   known: Optional[Set[str]]) -> Optional[Set[str]]:
    """What to remember as the keys a network needs after a build (None: still unknown)."""
    if before is None or after is None:
        return None
    if known is not None:
        return known | (after - before)
    if not before:
        return set(after)
    return None


# --- the team cache's entry points ---------------------------------------------------------

class RecordSync:
    """The team cache's view of this area (``buildgraph.engine.team.remote.AREA_SYNC``): one scope
    per scope directory, exported as its cache blob (base64) with its scope and checksum, and
    merged back with TensorRT's own ``combine``.

    Merging never loses what is here: a team cache that TensorRT refuses to combine (or a
    machine without TensorRT, which can only adopt a cache when it has none) is skipped, not
    swapped in; a payload that claims another scope or fails its checksum is ignored."""

    def __init__(self, root: Path):
        self.store = TimingCacheStore(root)

    def scopes(self) -> List[str]:
        if not self.store.root.is_dir():
            return []
        return [d.name for d in sorted(self.store.root.iterdir())
                if (d / "cache.bin").is_file() and (d / "meta.json").is_file()]

    def export(self, scope: str) -> Optional[Dict[str, object]]:
        import base64

        d = self.store.root / scope
        try:
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
            blob = (d / "cache.bin").read_bytes()
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("schema") != SCHEMA \
                or meta.get("sha256") != _sha256(blob) or not isinstance(meta.get("scope"), dict):
            return None
        return {"scope": meta["scope"], "sha256": meta["sha256"], "size": len(blob),
                "entries": meta.get("entries"), "cache": base64.b64encode(blob).decode()}

    def merge(self, scope: str, payloads: List[Dict[str, object]]) -> str:
        import base64

        blobs: List[bytes] = []
        target: Optional[CacheScope] = None
        for payload in payloads:
            try:
                raw = dict(payload["scope"])  # type: ignore[arg-type]
                cs = CacheScope(str(raw["gpu"]), str(raw["compute_capability"]),
                                str(raw["cuda"]), str(raw["tensorrt"]),
                                tuple(str(f) for f in raw.get("flags") or ()))
                blob = base64.b64decode(str(payload["cache"]), validate=True)
            except (KeyError, TypeError, ValueError):
                continue
            if cs.dirname() != scope or _sha256(blob) != payload.get("sha256"):
                continue
            target = cs
            blobs.append(blob)
        if target is None:
            return "nothing usable"
        combine, count = _team_combiner()
        skipped = [0]

        def lenient(base: bytes, new: bytes) -> bytes:
            if combine is None:
                skipped[0] += 1
                return base
            try:
                return combine(base, new)
            except CacheRejected:
                skipped[0] += 1
                return base

        candidate = blobs[0]
        for blob in blobs[1:]:
            candidate = lenient(candidate, blob)
        outcome = self.store.merge(target, candidate, lenient, count_entries=count)
        note = f", {skipped[0]} not combined" + (" (TensorRT is not installed here)"
                                                   if combine is None else "") \
            if skipped[0] else ""
        return f"timing cache {outcome.status} ({outcome.size} bytes{note})"


# --- TensorRT's side of a timing cache (its ``ITimingCache``) -------------------------------

def cache_keys(cache: Any) -> Optional[Set[str]]:
    """The keys a timing cache holds; None where this TensorRT cannot list them
    (``ITimingCache.queryKeys`` is bound from 10.8 on)."""
    if cache is None:
        return set()
    query = getattr(cache, "queryKeys", None)
    if query is None:
        return None
    return {str(k) for k in query()}


NO_QUERY_KEYS = ("this TensorRT cannot list a timing cache's keys (ITimingCache.queryKeys "
                 "comes with 10.8), so the hit rate is not known")


def trt_combiner(config: Any) -> Callable[[bytes, bytes], bytes]:
    """``ITimingCache.combine`` on blobs, for :meth:`TimingCacheStore.merge`."""
    def combine(base: bytes, new: bytes) -> bytes:
        try:
            merged = config.create_timing_cache(base)
            incoming = config.create_timing_cache(new)
        except Exception as exc:  # noqa: BLE001
            raise CacheRejected(f"TensorRT cannot read it: {exc}") from None
        if merged is None or incoming is None:
            raise CacheRejected("TensorRT cannot read it")
        if not merged.combine(incoming, False):
            raise CacheRejected("TensorRT refused to combine it (another device or version)")
        return bytes(merged.serialize())

    return combine


def _team_combiner() -> Tuple[Optional[Callable[[bytes, bytes], bytes]],
                              Optional[Callable[[bytes], Optional[int]]]]:
    """TensorRT's ``combine`` and an entry counter, or (None, None) where TensorRT cannot be
    loaded (a machine that does not build engines only adopts a cache it lacks)."""
    try:
        from buildgraph.backends.tensorrt import env as trt_env
        from buildgraph.backends.tensorrt.trt_logging import worker_logger

        trt = trt_env.load_tensorrt(trt_env.probe())
        config = trt.Builder(worker_logger(trt)).create_builder_config()
    except Exception:  # noqa: BLE001 - no TensorRT, no GPU: adopt only
        return None, None

    def count(blob: bytes) -> Optional[int]:
        keys = cache_keys(config.create_timing_cache(blob))
        return len(keys) if keys is not None else None

    return trt_combiner(config), count
