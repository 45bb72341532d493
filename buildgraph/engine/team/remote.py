"""The team cache: the local store's layout on shared storage, verified and signed.

A run checks its local cache, then the team's. A remote hit is downloaded, checked and placed
in the local store, then restored like any local hit; a step built here is uploaded, blobs
first and the action entry last, so that no reader ever sees an entry whose blobs are missing.
Layout under the remote's URL (the ``v1`` is the layout's version: another one is invisible,
never misread)::

    v1/cas/ab/<blake3>            blobs named by the BLAKE3-256 of their bytes
    v1/ac/ab/<key>.json           action entries: the local entry, the blobs it names
                                  (xxh3 -> BLAKE3 and size), who produced it, a signature
    v1/records/<area>/<scope>/<blake3>.json
                                  shared records (TVM tuning records, TensorRT timing caches)
                                  as append-only segments, merged on read

Integrity: the local store names blobs by xxh3, which is fast but not collision resistant; on
the remote a blob's name is its BLAKE3, and a download is hashed as it arrives, so a blob whose
bytes do not match its name (a corrupt or replaced object) is rejected, reported and never
used. An entry's key parts must hash to its key. An entry says who produced it (user, host,
tool versions) and may be signed with ed25519 (:mod:`buildgraph.engine.team.signing`); a project
that lists trusted keys ignores any other entry, and ``plan`` says why.

Concurrency: two machines building the same key both upload; each object is written
atomically (a single PUT, or a write and a rename), so the remote ends with one valid entry.
Records are never rewritten in place: a push adds a segment named by its content after merging
every segment it can see, and deletes segments only once one of its own contains them, so no
concurrent push is lost (append-only segments merged on read).

A remote that is down never fails a build that can go on locally: the first error is one
warning, and the run goes on without the remote. Nothing here imports fsspec, BLAKE3 or
cryptography until the remote is actually used: a run that finds everything in its local
cache makes no request and loads none of them.
"""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from buildgraph.engine.names import InvalidName, check_digest, is_digest
from buildgraph.engine.team.config import RemoteSpec
from buildgraph.engine.remote_docs import (ACTION_FORMAT, AREA_SYNC, COMPACT_AT,  # noqa: F401
                                           RECORDS_FORMAT, SCHEMA, b3_bytes, b3_file,
                                           parse_action_doc, producer, signed_payload, who)
from buildgraph.engine.team.fs import IntegrityError, RemoteFS, RemoteUnavailable
from buildgraph.engine.sizes import format_size
from buildgraph.errors import BuildgraphError
from buildgraph.registry import RECORD_AREAS

LAYOUT = "v1"
EXISTS_CHECK_MIN = 256 << 10
"""Blobs at least this big are looked up before uploading; smaller ones are just written."""


@dataclass
class Found:
    """What the team cache holds for one key: a usable entry, or why there is none."""

    entry: Optional[Dict[str, Any]] = None
    doc: Optional[Dict[str, Any]] = None
    reason: str = ""
    size: int = 0


@dataclass
class PushSummary:
    entries: int = 0
    blobs: int = 0
    bytes: int = 0
    skipped: int = 0
    records: int = 0
    problems: List[str] = field(default_factory=list)


class _Corrupt(Exception):
    """A downloaded blob or entry is not what its name or its entry says."""


def _entry_blobs(entry: Dict[str, Any]) -> List[str]:
    """Digests an entry names directly: file outputs, directory manifests, the log."""
    digests = []
    for out in entry.get("outputs", {}).values():
        digests.append(out["manifest"] if out.get("type") == "dir" else out["digest"])
    if entry.get("log"):
        digests.append(entry["log"])
    return digests


class TeamCache:
    """One remote's action cache, blobs and shared records (see the module's doc).

    ``strict`` (the ``remote``/``cache push``/``cache pull`` commands) raises
    :class:`RemoteUnavailable`; otherwise (a run) the first error is one warning and the
    remote is then left alone."""

    def __init__(self, spec: RemoteSpec, trusted_keys: Sequence[Path] = (),
                 signing_key: Optional[Path] = None,
                 warn: Optional[Callable[[str], None]] = None, workers: int = 8,
                 strict: bool = False):
        self.spec = spec
        self.name = spec.name
        self.read_only = spec.read_only
        self.rfs = RemoteFS(spec.url, spec.options, workers=workers)
        self.workers = workers
        self.strict = strict
        self.warn = warn or (lambda message: None)
        self._trusted_keys = list(trusted_keys)
        self._signing_key = signing_key
        self._trust: Any = None
        self._said_unsigned = False
        self._signer: Any = False  # False: not loaded yet; None: no key
        self.lock = threading.Lock()
        self.down: Optional[str] = None
        self._found: Dict[str, Found] = {}
        self._records: Any = None
        self._push_pool: Optional[ThreadPoolExecutor] = None
        self._blob_pool: Optional[ThreadPoolExecutor] = None
        self._pending: List[Future] = []
        self.summary = PushSummary()
        self.pulled_bytes = 0
        self.rejected: List[str] = []
        self._heal: set = set()
        """Keys whose remote copy this run rejected as corrupt: the local rebuild replaces
        them (entry and every blob rewritten, see :meth:`_push`)."""
        self.healed: List[str] = []

    @property
    def remote_id(self) -> str:
        """A stable id of this remote (its URL), for the local record-sync state."""
        from buildgraph.engine.hashing import digest_bytes

        return digest_bytes(self.spec.url.encode())[:16]

    def label(self) -> str:
        return f"team cache '{self.name}'"

    # --- failure policy -------------------------------------------------------------------
    def guard(self, fn: Callable[[], Any], default: Any = None) -> Any:
        if self.down is not None:
            if self.strict:
                raise RemoteUnavailable(self.down)
            return default
        try:
            return fn()
        except RemoteUnavailable as exc:
            if self.strict:
                raise
            self._went_down(exc)
            return default
        except BuildgraphError as exc:  # a bad key file: the remote cannot be used safely
            if self.strict:
                raise
            self._went_down(exc)
            return default

    def _went_down(self, exc: BuildgraphError) -> None:
        with self.lock:
            if self.down is not None:
                return
            self.down = exc.message
        hint = f" ({exc.hint})" if exc.hint else ""
        self.warn(f"{self.label()} is unavailable: {exc.message}{hint}; going on without it")

    # --- trust ---------------------------------------------------------------------------
    def trust(self) -> Any:
        if self._trust is None:
            from buildgraph.engine.team.signing import Trust, load_trust

            self._trust = load_trust(self._trusted_keys) if self._trusted_keys else Trust()
        return self._trust

    def _say_unsigned(self) -> None:
        """Once per run, before the first entry is read: without trusted keys, whoever
        can write the remote decides what its entries say."""
        if self._said_unsigned:
            return
        with self.lock:
            if self._said_unsigned:
                return
            self._said_unsigned = True
        if not self.trust().required:
            self.warn(f"{self.label()}: entries are unauthenticated (no [trust] keys): "
                       "anyone who can write it can hand this machine wrong results; sign "
                       f"them (buildgraph remote add {self.name} URL --keygen, or "
                       "buildgraph trust keygen / trust add)")

    def signer(self) -> Any:
        if self._signer is False:
            from buildgraph.engine.team.signing import load_signer

            self._signer = load_signer(self._signing_key) if self._signing_key else None
        return self._signer

    def sign(self, doc: Dict[str, Any]) -> Dict[str, Any]:
        signer = self.signer()
        if signer is not None:
            doc["signature"] = signer.sign(signed_payload(doc))
        return doc

    # --- paths ---------------------------------------------------------------------------
    def entry_path(self, key: str) -> str:
        """The remote path of action ``key``'s entry; anything but an xxh3-128 key is
        refused (InvalidName), never made into a path."""
        check_digest(key, "xxh3", "action key")
        return self.rfs.path(LAYOUT, "ac", key[:2], f"{key}.json")

    def blob_path(self, b3: str) -> str:
        """The remote path of blob ``b3``; anything but a BLAKE3 digest is refused."""
        check_digest(b3, "blake3", "remote blob name")
        return self.rfs.path(LAYOUT, "cas", b3[:2], b3)

    def records_prefix(self, area: str) -> str:
        return self.rfs.path(LAYOUT, "records", area)

    # --- action entries ------------------------------------------------------------------
    def lookup(self, key: str, fresh: bool = False) -> Found:
        """The team's entry for ``key``, judged (format, key, signature), not downloaded.
        Answers are remembered for the run; ``fresh`` asks again (a cluster node has just
        pushed the entry that was missing when the step was planned)."""
        known = None if fresh else self._found.get(key)
        if known is not None:
            return known

        def look() -> Found:
            data = self.rfs.cat(self.entry_path(key))
            if data is None:
                return Found()
            self._say_unsigned()  # an entry will be used: say what it is worth
            return self.judge(key, data)

        found = self.guard(look, Found())  # a bad trusted key too: a warning, not a failure
        self._found[key] = found
        return found

    def judge(self, key: str, data: bytes) -> Found:
        """Can this entry document be used for ``key``? (Found.entry set) Else why not."""
        from buildgraph.engine.keys import action_key

        def ignored(why: str, doc: Optional[Dict[str, Any]] = None) -> Found:
            return Found(None, doc, f"{self.label()} has an entry, ignored: {why}")

        try:  # limits first (NaN, huge numbers, nesting), then the strict schema
            doc = parse_action_doc(data)
        except InvalidName as exc:
            return ignored(str(exc))
        entry = doc["entry"]
        blobs = doc["blobs"]
        if doc["key"] != key:
            return ignored("it is filed under another key", doc)
        try:
            if action_key(entry["parts"]) != key:
                return ignored("its key parts do not hash to its key (corrupt or forged)", doc)
            for digest in _entry_blobs(entry):
                if digest not in blobs:
                    return ignored(f"it names blob {digest[:12]} without uploading it", doc)
            why = self.trust().check(signed_payload(doc), doc.get("signature"))
        except (KeyError, TypeError, ValueError) as exc:
            return ignored(f"malformed entry ({type(exc).__name__})", doc)
        if why is not None:
            return ignored(why, doc)
        size = sum(r["size"] for r in blobs.values())
        signed = doc.get("signature")
        by = f", signed by {self.trust().signer_label(signed)}" \
            if isinstance(signed, dict) and self.trust().required else ""
        return Found(dict(entry, schema=1, key=key), doc,
                     f"in the {self.label()} (built by {who(doc)}{by}, {format_size(size)})",
                     size)

    def fetch(self, key: str, store: Any,
              progress: Optional[Callable[[int, int], None]] = None,
              found: Optional[Found] = None) -> Optional[Dict[str, Any]]:
        """Download what the team's entry for ``key`` names into ``store``, verify it, write
        the local entry; the local entry, or None (reported) when a blob is corrupt or the
        remote fails."""
        found = found if found is not None else self.lookup(key)
        if found.entry is None or found.doc is None:
            return None
        step = found.entry.get("step", key[:12])
        try:
            result = self.guard(lambda: self._fetch(key, found, store, progress), False)
        except _Corrupt as exc:
            message = f"{self.label()}: rejected the entry of {step}: {exc}; building it here"
            self.rejected.append(message)
            self.warn(message)
            self._found[key] = Found(None, found.doc, f"{self.label()} has an entry, "
                                                      f"rejected: {exc}")
            with self.lock:
                self._heal.add(key)
            return None
        if result is False:
            return None
        return result

    def _fetch(self, key: str, found: Found, store: Any,
               progress: Optional[Callable[[int, int], None]]) -> Optional[Dict[str, Any]]:
        entry, doc = dict(found.entry or {}), found.doc or {}
        blobs: Dict[str, Dict[str, Any]] = doc["blobs"]
        total = found.size
        done = [0]
        lock = threading.Lock()

        def advance(n: int) -> None:
            with lock:
                done[0] += n
                self.pulled_bytes += n
            if progress is not None:
                progress(done[0], total)

        scratch = store.scratch_dir(key)
        try:
            def get(digest: str) -> None:
                if store.check_blob(digest):
                    advance(int(blobs[digest].get("size", 0)))
                    return
                self._get_blob(digest, blobs[digest], store, scratch, advance)

            direct = list(dict.fromkeys(_entry_blobs(entry)))  # one download per blob
            self.parallel(get, direct)
            files: List[str] = []
            for name, out in entry["outputs"].items():
                if out.get("type") == "dir":
                    manifest, why = store.tree_checked(out)
                    if manifest is None:
                        raise _Corrupt(f"output {name}: {why}")
                    for rel, f in manifest.items():
                        if f["digest"] not in blobs:
                            raise _Corrupt(f"output {name}/{rel} names a blob the entry does "
                                           "not upload")
                        files.append(f["digest"])
            self.parallel(get, sorted(set(files) - set(direct)))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        local = {k: v for k, v in entry.items() if k not in ("schema", "key")}
        signature = doc.get("signature") or {}
        # trusted: a key this project trusts signed it (checked in judge); only then may a
        # pickle among its outputs be loaded as code (see engine.origin)
        local["origin"] = {"remote": self.name, "producer": doc.get("producer"),
                           "signature": signature.get("key"),
                           "trusted": bool(self.trust().required and signature)}
        store.put_action(key, local)  # last: the blobs are all in place
        return store.get_action(key)

    def parallel(self, fn: Callable[[str], None], items: Sequence[str]) -> None:
        if len(items) <= 1:
            for item in items:
                fn(item)
            return
        with ThreadPoolExecutor(max_workers=min(self.workers, len(items)),
                                thread_name_prefix="buildgraph-pull") as pool:
            futures = [pool.submit(fn, item) for item in items]
            error: Optional[BaseException] = None
            for future in futures:
                try:
                    future.result()
                except BaseException as exc:  # noqa: BLE001 - the first one is raised
                    error = error or exc
            if error is not None:
                raise error

    def _get_blob(self, digest: str, ref: Dict[str, Any], store: Any, scratch: Path,
                  advance: Callable[[int], None]) -> None:
        try:
            check_digest(digest, "xxh3", "blob name")
            b3 = check_digest(ref.get("b3"), "blake3", "remote blob name")
        except InvalidName as exc:
            raise _Corrupt(str(exc)) from None
        size = ref.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _Corrupt(f"blob {b3[:16]} has no valid size")
        tmp = scratch / f"{digest}.part"
        try:
            got_b3, got_xx, n = self.rfs.download(self.blob_path(b3), tmp, size, advance)
        except FileNotFoundError:
            raise _Corrupt(f"blob {b3[:16]} is missing on the remote") from None
        except IntegrityError as exc:
            raise _Corrupt(str(exc)) from None
        if got_b3 != b3:
            raise _Corrupt(f"blob {b3[:16]} does not match its name (its content hashes to "
                           f"{got_b3[:16]}): corrupt or replaced on the remote; "
                           "`buildgraph remote verify --repair` removes it")
        if got_xx != digest or n != size:
            raise _Corrupt(f"blob {b3[:16]} is not the content the entry names")
        store.put_verified(tmp, digest)

    # --- single blobs (what a cluster node needs besides entries) -------------------------
    def put_blob(self, path: Path, size: int) -> Dict[str, Any]:
        """Upload the file at ``path`` as a blob unless the remote has it; its reference
        (``{"b3", "size"}``). Raises :class:`RemoteUnavailable` (no failure policy here: the
        caller, a cluster dispatch, cannot go on without it)."""
        b3 = b3_file(path)
        rpath = self.blob_path(b3)
        if size < EXISTS_CHECK_MIN or self.rfs.size(rpath) != size:
            self.rfs.put_file(path, rpath)
            with self.lock:
                self.summary.blobs += 1
                self.summary.bytes += size
        return {"b3": b3, "size": size}

    def get_blob(self, digest: str, ref: Dict[str, Any], store: Any, scratch: Path) -> None:
        """Download blob ``ref`` (``{"b3", "size"}``) into ``store`` as ``digest``, verified
        against both names; raises BuildgraphError when it is missing or not those bytes."""
        if store.check_blob(digest):
            return
        try:
            self._get_blob(digest, ref, store, scratch, lambda n: None)
        except _Corrupt as exc:
            raise BuildgraphError(f"{self.label()}: {exc}") from None

    # --- pushing -------------------------------------------------------------------------
    def push(self, key: str, store: Any, force: bool = False) -> str:
        """Upload ``key``'s blobs, then its entry. Returns what happened (one word:
        pushed, present, missing, read-only, down)."""
        if self.read_only:
            return "read-only"
        result = self.guard(lambda: self._push(key, store, force), "down")
        return result

    def _push(self, key: str, store: Any, force: bool) -> str:
        entry = store.get_action(key)
        if entry is None:
            return "missing"
        with self.lock:
            heal = key in self._heal
        force = force or heal  # the remote's copy is corrupt: rewrite it with good bytes
        if not force:
            existing = self.rfs.cat(self.entry_path(key))
            if existing is not None and self.judge(key, existing).entry is not None:
                with self.lock:
                    self.summary.skipped += 1
                return "present"
        digests = sorted(set(store.referenced_blobs(entry)))
        refs: Dict[str, Dict[str, Any]] = {}
        sent = [0, 0]
        lock = threading.Lock()

        def upload(digest: str) -> None:
            path = store.blob_path(digest)
            if not store.check_blob(digest):
                raise BuildgraphError(f"local blob {digest[:12]} of {entry.get('step')} is "
                                      "missing or corrupt; not pushing it")
            size = path.stat().st_size
            b3 = b3_file(path)
            refs_entry = {"b3": b3, "size": size}
            rpath = self.blob_path(b3)
            if heal or size < EXISTS_CHECK_MIN or self.rfs.size(rpath) != size:
                self.rfs.put_file(path, rpath)
                with lock:
                    sent[0] += 1
                    sent[1] += size
            with lock:
                refs[digest] = refs_entry

        self.parallel(upload, digests)
        doc = {"format": ACTION_FORMAT, "schema": SCHEMA, "key": key,
               "entry": {k: v for k, v in entry.items()
                         if k not in ("schema", "key", "origin")},
               "blobs": dict(sorted(refs.items())), "producer": producer()}
        self.rfs.put_bytes(self.entry_path(key), json.dumps(self.sign(doc), sort_keys=True,
                                                             indent=1).encode())
        with self.lock:
            self.summary.entries += 1
            self.summary.blobs += sent[0]
            self.summary.bytes += sent[1]
            if heal:
                self._heal.discard(key)
                self.healed.append(key)
        self._found.pop(key, None)
        if heal:
            self.warn(f"{self.label()}: replaced the corrupt entry of {entry.get('step')} "
                       "with the bytes built here")
            return "healed"
        return "pushed"

    def push_later(self, key: str, store: Any, areas: Iterable[str] = ()) -> None:
        """Push in the background (a step built; the run goes on). :meth:`wait` joins."""
        if self.read_only or self.down is not None:
            return
        areas = [a for a in areas if a in AREA_SYNC]
        with self.lock:
            if self._push_pool is None:
                self._push_pool = ThreadPoolExecutor(max_workers=2,
                                                     thread_name_prefix="buildgraph-push")
            pool = self._push_pool

        def job() -> None:
            self.push(key, store)
            if areas:
                self.push_areas(store, areas)

        self._pending.append(pool.submit(job))

    def wait(self) -> PushSummary:
        """Finish the background pushes (called before a run ends)."""
        for future in list(self._pending):
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - a push never fails a build
                self.summary.problems.append(str(exc))
                self.warn(f"{self.label()}: could not push: {exc}")
        self._pending.clear()
        if self._push_pool is not None:
            self._push_pool.shutdown(wait=True)
            self._push_pool = None
        return self.summary

    # --- shared records (engine/team/records.py) ------------------------------------------
    @property
    def records(self) -> Any:
        """The record-area synchroniser of this remote (created on first use)."""
        if self._records is None:
            from buildgraph.engine.team.records import RecordAreas

            with self.lock:
                if self._records is None:
                    self._records = RecordAreas(self)
        return self._records

    def pull_areas(self, store: Any, areas: Iterable[str], force: bool = False) -> List[str]:
        """Merge the team's records of ``areas`` into the local ones (once per run, unless
        ``force``). Returns one line per scope that changed."""
        return self.records.pull_areas(store, areas, force)

    def push_areas(self, store: Any, areas: Iterable[str]) -> int:
        """Merge, then publish the local records of ``areas`` as new segments where they
        hold something the team's do not. Returns segments written."""
        return self.records.push_areas(store, areas)

    # --- maintenance ---------------------------------------------------------------------
    def entry_paths(self) -> Dict[str, Dict[str, Any]]:
        """key -> info (size, mtime, path) of every action entry on the remote."""
        prefix = self.rfs.path(LAYOUT, "ac")
        out = {}
        for path, info in self.rfs.find(prefix).items():
            name = path.rsplit("/", 1)[-1]
            if name.endswith(".json"):
                out[name[:-5]] = dict(info, path=path)
        return out

    def blob_paths(self) -> Dict[str, Dict[str, Any]]:
        prefix = self.rfs.path(LAYOUT, "cas")
        return {path.rsplit("/", 1)[-1]: dict(info, path=path)
                for path, info in self.rfs.find(prefix).items()
                if is_digest(path.rsplit("/", 1)[-1], "blake3")}

    def read_docs(self, keys: Sequence[str]) -> Dict[str, Found]:
        """The judged entries of ``keys`` (read in parallel)."""
        found: Dict[str, Found] = {}
        lock = threading.Lock()

        def read(key: str) -> None:
            data = self.rfs.cat(self.entry_path(key))
            result = Found(reason="gone") if data is None else self.judge(key, data)
            with lock:
                found[key] = result

        self.parallel(read, list(keys))
        return found

    def check_blob(self, b3: str, size: Optional[int], scratch: Path,
                   digest: Optional[str] = None) -> Optional[str]:
        """Download one blob and check it against its name (and local digest); the problem,
        or None."""
        if not is_digest(b3, "blake3") or (digest is not None and not is_digest(digest)):
            return "its name is not a digest"
        if size is not None and (not isinstance(size, int) or size < 0):
            return "its size is not a number of bytes"
        tmp = scratch / f"{b3}.check"
        try:
            got_b3, got_xx, n = self.rfs.download(self.blob_path(b3), tmp, size)
        except FileNotFoundError:
            return "missing"
        except IntegrityError as exc:
            return str(exc)
        finally:
            tmp.unlink(missing_ok=True)
        if got_b3 != b3:
            return f"content hashes to {got_b3[:16]}, not to its name"
        if size is not None and n != size:
            return f"{n} bytes, the entry says {size}"
        if digest is not None and got_xx != digest:
            return "not the content its entry names"
        return None

    def close(self) -> None:
        self.wait()
        self.rfs.close()


def open_team_cache(start: Path, name: Optional[str] = None, read_only: bool = False,
                    warn: Optional[Callable[[str], None]] = None, strict: bool = False,
                    workers: int = 8) -> Optional[TeamCache]:
    """The team cache a run or command uses (see :mod:`remote_config`), or None."""
    from buildgraph.engine.team.config import find_config, load_config, resolve, \
        signing_key_path

    config_path = find_config(start)
    config = load_config(path=config_path) if config_path is not None else None
    spec = resolve(start, name, read_only, config=config)
    if spec is None:
        return None
    return TeamCache(spec, trusted_keys=config.trusted_keys if config else (),
                     signing_key=signing_key_path(), warn=warn, strict=strict,
                     workers=workers)


__all__ = ["TeamCache", "Found", "PushSummary", "RemoteUnavailable", "open_team_cache",
           "AREA_SYNC", "LAYOUT"]
