"""The local cache: a content-addressed object store plus an action cache.

Layout (under ``.cache/`` by default)::

    objects/ab/cdef...      blobs named by their xxh3-128 digest, read-only
    actions/ab/cdef....json action key -> result (output manifest, log, key parts)
    tmp/                    scratch directories of running steps
    locks/                  one lock file per action key being built
    stat.db                 the stat cache (see hashing.StatCache)

Bazel separates the action cache (key -> result) from the CAS (digest -> bytes); so do we.
Every write is a write to a temporary name followed by ``os.replace``, and an action entry is
written only after all the blobs it names, so a killed run can leave garbage in ``tmp/`` but
never an entry that points at missing or half-written data. A blob whose content no longer
matches its name (``cache verify`` would flag it) is treated as a cache miss, with a warning,
and removed; it is never handed out.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat as stat_module
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from buildgraph.errors import CacheError
from buildgraph.engine.files import atomic_write, rmtree_writable  # noqa: F401 - re-exported
from buildgraph.engine.store.memo import Memo
from buildgraph.registry import RECORD_AREAS
from buildgraph.engine.hashing import StatCache, file_digest, hash_file, tree_digest
from buildgraph.engine.names import InvalidName, check_digest, check_rel_path

ACTION_SCHEMA = 1


def default_cache_dir() -> Path:
    """The cache directory when none is given: $BUILDGRAPH_CACHE_DIR, else ``.cache`` (relative
    to the working directory), as ``buildgraph.engine.default_cache_dir_name`` decides."""
    from buildgraph.engine import default_cache_dir_name

    return Path(default_cache_dir_name())


AREA_DIRS = {name: folder for name, (folder, _) in RECORD_AREAS.items()}
"""Shared record areas and their folders under the cache directory; other names (plugins) live
under ``areas/``. The team cache synchronises these folders."""


class Store:
    """The cache directory. Cheap to create: nothing is touched until used."""

    def __init__(self, root: Optional[Path] = None, warn: Optional[Callable[[str], None]] = None):
        self.root = (Path(root) if root is not None else default_cache_dir()).absolute()
        self.objects = self.root / "objects"
        self.actions = self.root / "actions"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self.stat_cache = StatCache(self.root / "stat.db")
        self.memo = Memo(self.root / "memo.db")
        """Memoised step descriptions and upstream views (see ``engine.store.memo``)."""
        self._warn = warn or (lambda message: None)
        self._verified: Dict[str, bool] = {}

    # --- shared record areas ----------------------------------------------------------------
    def area(self, name: str) -> Path:
        """The folder of shared record area ``name`` (TVM tuning records, TensorRT timing
        caches), created on first use. Steps get it through ``Task.areas`` when their
        description lists it; they merge into it under their own locks."""
        if not name or "/" in name or name.startswith("."):
            raise CacheError(f"invalid record area name {name!r}")
        path = self.root / AREA_DIRS.get(name, f"areas/{name}")
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- blobs ----------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        """Where blob ``digest`` lives. Anything but an xxh3-128 digest is refused
        (CacheError): a name from the team cache never becomes a path elsewhere."""
        try:
            check_digest(digest, "xxh3", "blob name")
        except InvalidName as exc:
            raise CacheError(str(exc)) from None
        return self.objects / digest[:2] / digest[2:]

    def put_file(self, src: Path, move: bool = True) -> Tuple[str, int]:
        """Add a file's content; returns (digest, size). ``move`` consumes ``src``."""
        import shutil

        digest, size = hash_file(src)
        dest = self.blob_path(digest)
        if dest.exists() and self.check_blob(digest):
            if move:
                os.unlink(src)
            return digest, size
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".tmp-{os.urandom(16).hex()}"
        try:
            if move:
                try:
                    os.replace(src, tmp)
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    shutil.copy2(src, tmp)
                    os.unlink(src)
            else:
                shutil.copy2(src, tmp)
            os.chmod(tmp, 0o444 | (os.stat(tmp).st_mode & 0o111))
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
        self.stat_cache.put(str(dest), os.stat(dest), digest)
        self._verified[digest] = True
        return digest, size

    def put_verified(self, src: Path, digest: str) -> None:
        """Move ``src`` into the store as blob ``digest``, which the caller has just computed
        from the same bytes as it wrote them (the team cache hashes downloads as they
        arrive): a second full read of a large blob would cost as much as the download."""
        dest = self.blob_path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(src, 0o444)
        os.replace(src, dest)
        self.stat_cache.put(str(dest), os.stat(dest), digest)
        self._verified[digest] = True

    def put_bytes(self, data: bytes) -> str:
        from buildgraph.engine.hashing import digest_bytes

        digest = digest_bytes(data)
        dest = self.blob_path(digest)
        if dest.exists() and self.check_blob(digest):
            return digest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".tmp-{os.urandom(16).hex()}"
        try:
            tmp.write_bytes(data)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)  # a full disk must not leave a 0-byte temp behind
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CacheError(f"no space left for the cache in {self.root} "
                                 f"({len(data)} bytes to write)",
                                 hint="free some space, or `buildgraph cache gc "
                                      "--max-size SIZE`") from None
            raise
        self._verified[digest] = True
        return digest

    def read_bytes(self, digest: str) -> Optional[bytes]:
        if not self.check_blob(digest):
            return None
        return self.blob_path(digest).read_bytes()

    def put_output(self, path: Path) -> Dict[str, Any]:
        """Move a step's output (file or directory) into the store; return its manifest entry."""
        st = path.lstat()
        if stat_module.S_ISLNK(st.st_mode):
            raise CacheError(f"output {path.name} is a symbolic link; outputs must be real "
                             "files or directories")
        if stat_module.S_ISDIR(st.st_mode):
            manifest: Dict[str, Dict[str, Any]] = {}
            for dirpath, dirnames, filenames in os.walk(path):
                for name in dirnames + filenames:
                    full = Path(dirpath) / name
                    if full.is_symlink():
                        raise CacheError(f"output {path.name} contains a symbolic link "
                                         f"({full.relative_to(path)}); outputs must hold real "
                                         "files only")
            for rel_path in sorted(p for p in path.rglob("*") if p.is_file()):
                rel = rel_path.relative_to(path).as_posix()
                exec_bit = bool(rel_path.stat().st_mode & stat_module.S_IXUSR)
                digest, size = self.put_file(rel_path, move=True)
                manifest[rel] = {"digest": digest, "size": size, "exec": exec_bit}
            tree = tree_digest(manifest)
            manifest_blob = self.put_bytes(json.dumps(manifest, sort_keys=True).encode())
            return {"type": "dir", "digest": tree, "size": sum(e["size"] for e in
                                                                  manifest.values()),
                    "manifest": manifest_blob, "files": len(manifest)}
        if not stat_module.S_ISREG(st.st_mode):
            raise CacheError(f"output {path.name} is not a regular file or directory")
        exec_bit = bool(st.st_mode & stat_module.S_IXUSR)
        digest, size = self.put_file(path, move=True)
        return {"type": "file", "digest": digest, "size": size, "exec": exec_bit}

    def tree(self, entry: Dict[str, Any]) -> Optional[Dict[str, Dict[str, Any]]]:
        """A directory output's manifest (relative path -> file entry), or None when it is
        missing, does not match the output's digest, or names a path or digest that is not
        safe (see :func:`tree_problem`)."""
        manifest, _ = self.tree_checked(entry)
        return manifest

    def tree_checked(self, entry: Dict[str, Any]
                     ) -> Tuple[Optional[Dict[str, Dict[str, Any]]], str]:
        """(manifest, "") or (None, why)."""
        try:
            data = self.read_bytes(entry["manifest"])
        except (CacheError, KeyError, TypeError):
            return None, "its manifest name is not a digest"
        if data is None:
            return None, "its manifest is missing"
        from buildgraph.engine.names import parse_json

        try:
            manifest = parse_json(data)
        except InvalidName as exc:
            return None, f"its manifest is unreadable: {exc}"
        try:
            if tree_digest(manifest) != entry["digest"]:
                return None, "its manifest does not match its digest"
        except (ValueError, TypeError):
            return None, "its manifest is unreadable"
        why = tree_problem(manifest)
        if why:
            return None, why
        return manifest, ""

    def check_blob(self, digest: str) -> bool:
        """True if the blob exists and its content matches its name.

        A stat-cache hit makes this one ``stat``; otherwise the blob is hashed. A mismatch
        removes the blob (it can only be corruption) and warns.
        """
        if self._verified.get(digest):
            return True
        try:
            path = self.blob_path(digest)
        except CacheError as exc:  # never hash, let alone delete, what a bad name points at
            self._warn(f"ignored a blob reference: {exc}")
            return False
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        key = str(path)
        known = self.stat_cache.get(key, st)
        if known is None:
            known, _ = hash_file(path)
            self.stat_cache.put(key, st, known)
        if known != digest:
            self._warn(f"cache object {digest[:12]} is corrupt (content changed on disk); "
                       "discarding it and rebuilding")
            try:
                path.unlink()
            except OSError:
                pass
            return False
        self._verified[digest] = True
        return True

    def check_output(self, entry: Dict[str, Any]) -> bool:
        """All blobs of an output manifest entry exist and are intact."""
        if entry["type"] == "file":
            return self.check_blob(entry["digest"])
        manifest = self.tree(entry)
        return manifest is not None and all(self.check_blob(e["digest"])
                                            for e in manifest.values())

    # --- materialization into the build directory -------------------------------------------
    def materialize(self, entry: Dict[str, Any], dest: Path, link: str = "hardlink") -> None:
        """Make ``dest`` hold the output atomically (hard link, or copy across filesystems)."""
        import shutil

        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = _scratch_name(dest, "tmp")
        try:
            if entry["type"] == "file":
                self._place(entry["digest"], entry.get("exec", False), tmp, link)
            else:
                manifest, why = self.tree_checked(entry)
                if manifest is None:
                    raise CacheError(f"tree manifest of {dest.name} refused: {why}")
                tmp.mkdir()
                base = os.path.realpath(tmp) + os.sep
                checked = set()
                for rel, file_entry in manifest.items():
                    target = tmp / rel  # rel was checked as a string (tree_problem)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if target.parent not in checked:  # second line: the resolved folder
                        real = os.path.realpath(target.parent) + os.sep
                        if not real.startswith(base):
                            raise CacheError(f"output {dest.name}: manifest path {rel!r} "
                                             "resolves outside its directory")
                        checked.add(target.parent)
                    self._place(file_entry["digest"], file_entry.get("exec", False), target, link)
            if dest.is_dir() and not dest.is_symlink():
                # A directory cannot be renamed over a non-empty one. Swap the two in one
                # atomic step where the OS can (tmp then holds the old output, removed
                # below); else move the old one aside first, which leaves a moment with no
                # output: a kill there leaves `.NAME.old-PID-*`, swept by the next run
                # (sweep_build_dir), which also restores the output from the cache.
                if not _exchange(tmp, dest):
                    trash = _scratch_name(dest, "old")
                    os.replace(dest, trash)
                    os.replace(tmp, dest)
                    shutil.rmtree(trash, ignore_errors=True)
            else:
                if tmp.is_dir() and dest.exists():
                    dest.unlink()
                os.replace(tmp, dest)
        finally:
            if tmp.exists() or tmp.is_symlink():
                if tmp.is_dir() and not tmp.is_symlink():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink()
        self._record_materialized(entry, dest)

    def _place(self, digest: str, exec_bit: bool, target: Path, link: str) -> None:
        import shutil

        blob = self.blob_path(digest)
        if link == "hardlink":
            try:
                os.link(blob, target)
                return
            except OSError:
                pass
        shutil.copy2(blob, target)
        os.chmod(target, 0o755 if exec_bit else 0o644)

    def _record_materialized(self, entry: Dict[str, Any], dest: Path) -> None:
        if entry["type"] == "file":
            self.stat_cache.put(str(dest.absolute()), os.stat(dest), entry["digest"])
        else:
            manifest = self.tree(entry) or {}
            for rel, file_entry in manifest.items():
                p = dest / rel
                self.stat_cache.put(str(p.absolute()), os.stat(p), file_entry["digest"])

    def is_materialized(self, entry: Dict[str, Any], dest: Path) -> bool:
        """Does ``dest`` hold exactly this output? (stat-cache fast path, no hashing if cached)"""
        try:
            if entry["type"] == "file":
                st = os.stat(dest)
                if not stat_module.S_ISREG(st.st_mode) or st.st_size != entry["size"]:
                    return False
                return file_digest(dest, self.stat_cache, st)[0] == entry["digest"]
            if not dest.is_dir():
                return False
            manifest = self.tree(entry)
            if manifest is None:
                return False
            present = {rel for rel, _, _ in _files(dest)}
            if present != set(manifest):
                return False
            return all(file_digest(dest / rel, self.stat_cache)[0] == e["digest"]
                       for rel, e in manifest.items())
        except OSError:
            return False

    # --- actions -----------------------------------------------------------------------------
    def action_path(self, key: str) -> Path:
        """Where action ``key``'s entry lives; anything but an xxh3-128 key is refused."""
        try:
            check_digest(key, "xxh3", "action key")
        except InvalidName as exc:
            raise CacheError(str(exc)) from None
        return self.actions / key[:2] / f"{key[2:]}.json"

    def get_action(self, key: str) -> Optional[Dict[str, Any]]:
        try:
            path = self.action_path(key)
        except CacheError as exc:
            self._warn(f"ignored a cache entry: {exc}")
            return None
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            entry = json.loads(data)
            if entry.get("schema") != ACTION_SCHEMA or entry.get("key") != key:
                raise ValueError("wrong schema or key")
            if not isinstance(entry.get("outputs"), dict):
                raise ValueError("no outputs")
        except ValueError:
            self._warn(f"cache entry {key[:12]} is unreadable; ignoring it")
            return None
        return entry

    def put_action(self, key: str, entry: Dict[str, Any]) -> None:
        entry = dict(entry, schema=ACTION_SCHEMA, key=key)
        path = self.action_path(key)
        atomic_write(path, json.dumps(entry, sort_keys=True, indent=1).encode())

    def touch_action(self, key: str) -> None:
        """Record use for LRU eviction (``cache gc --max-size``)."""
        try:
            os.utime(self.action_path(key))
        except OSError:
            pass

    def iter_actions(self) -> Iterator[Tuple[str, Optional[Dict[str, Any]], os.stat_result]]:
        if not self.actions.is_dir():
            return
        for sub in sorted(self.actions.iterdir()):
            if not sub.is_dir():
                continue
            for f in sorted(sub.glob("*.json")):
                key = sub.name + f.stem
                try:
                    st = f.stat()
                except OSError:
                    continue
                yield key, self.get_action(key), st

    def iter_blobs(self) -> Iterator[Tuple[str, Path]]:
        if not self.objects.is_dir():
            return
        for sub in sorted(self.objects.iterdir()):
            if sub.is_dir():
                for f in sorted(sub.iterdir()):
                    if not f.name.startswith("."):
                        yield sub.name + f.name, f

    def referenced_blobs(self, entry: Dict[str, Any]) -> List[str]:
        digests: List[str] = []
        for out in entry.get("outputs", {}).values():
            if out.get("type") == "dir":
                digests.append(out["manifest"])
                manifest = self.tree(out) or {}
                digests.extend(e["digest"] for e in manifest.values())
            else:
                digests.append(out["digest"])
        if entry.get("log"):
            digests.append(entry["log"])
        return digests

    # --- locks -------------------------------------------------------------------------------
    def action_lock(self, key: str) -> Any:
        """An inter-process lock held while one process builds ``key``."""
        from filelock import FileLock

        self.locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.locks / f"{key}.lock"))

    @contextmanager
    def using(self, exclusive: bool = False, timeout: float = 0) -> Iterator[None]:
        """Runs hold the store shared; ``gc``/``clear`` hold it exclusively, so they never
        delete what a running build is about to reference."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "store.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise CacheError(f"the cache {self.root} is in use by another "
                                         "buildgraph process",
                                         hint="wait for it to finish, then try again") from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)

    def scratch_dir(self, key: str) -> Path:
        path = self.tmp / f"{key[:16]}-{os.getpid()}-{os.urandom(3).hex()}"
        path.mkdir(parents=True)
        return path

    def clean_tmp(self) -> int:
        """Remove scratch directories of processes that no longer run. Returns how many."""
        removed = 0
        if not self.tmp.is_dir():
            return 0
        for d in self.tmp.iterdir():
            parts = d.name.split("-")
            pid = int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else None
            if pid is not None and pid != os.getpid() and _alive(pid):
                continue
            if pid == os.getpid():
                continue
            import shutil  # only here: most runs find nothing to remove

            shutil.rmtree(d, ignore_errors=True)
            removed += 1
        return removed

    def sweep_build_dir(self, build_dir: Path) -> int:
        """Remove what killed runs left beside outputs in ``build_dir/STEP/``: an output being
        placed (``.NAME.tmp-PID-*``) or the one it replaced (``.NAME.old-PID-*``). Only entries
        of processes that no longer run go (a concurrent run may be placing its own); names
        without a pid come from older versions and go too. Returns how many were removed."""
        removed = 0
        try:
            step_dirs = [d for d in build_dir.iterdir() if d.is_dir() and not d.is_symlink()]
        except OSError:
            return 0
        for step_dir in step_dirs:
            try:
                entries = list(step_dir.iterdir())
            except OSError:
                continue
            for entry in entries:
                match = _SCRATCH_RE.match(entry.name)
                if match is None:
                    continue
                pid = int(match.group(1)) if match.group(1) else None
                if pid is not None and (pid == os.getpid() or _alive(pid)):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    rmtree_writable(entry)
                else:
                    entry.unlink(missing_ok=True)
                removed += 1
        return removed

    def close(self) -> None:
        self.stat_cache.close()
        self.memo.close()


def tree_problem(manifest: Any) -> str:
    """Why a directory manifest is not safe to materialise ("" when it is): every path
    relative and normalised (no ``..``, NUL, backslash, absolute or empty parts), no path
    both a file and a directory, every digest an xxh3-128 digest."""
    if not isinstance(manifest, dict):
        return "its manifest is not a mapping"
    paths = set(manifest)
    for rel, file_entry in manifest.items():
        try:
            check_rel_path(rel, "manifest path")
            if not isinstance(file_entry, dict):
                raise InvalidName(f"manifest entry {rel!r} is not a mapping")
            check_digest(file_entry.get("digest"), "xxh3", f"digest of {rel!r}")
        except InvalidName as exc:
            return str(exc)
        parent = rel.rpartition("/")[0]
        while parent:
            if parent in paths:
                return f"manifest path {parent!r} is both a file and a directory"
            parent = parent.rpartition("/")[0]
    return ""


def _files(root: Path) -> Iterator[Tuple[str, Path, None]]:
    for p in root.rglob("*"):
        if p.is_file():
            yield p.relative_to(root).as_posix(), p, None


# `.NAME.tmp-PID-XXXXXXXX` / `.NAME.old-PID-XXXXXXXX` (older versions: no PID)
_SCRATCH_RE = re.compile(r"^\..+\.(?:tmp|old)-(?:([0-9]+)-)?[0-9a-f]{8}$")


def _scratch_name(dest: Path, what: str) -> Path:
    """A hidden sibling of ``dest`` that names the process using it, so that a later run can
    tell a dead run's leftovers from a live run's work in progress."""
    return dest.parent / f".{dest.name}.{what}-{os.getpid()}-{os.urandom(4).hex()}"


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``, glibc 2.28+). False
    where the OS, the C library or the file system cannot; the caller then renames twice."""
    fn = _renameat2()
    if fn is None:
        return False
    import ctypes

    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


_renameat2_fn: List[Any] = []


def _renameat2() -> Any:
    if not _renameat2_fn:
        fn = None
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                fn = ctypes.CDLL(None, use_errno=True).renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                               ctypes.c_uint]
                fn.restype = ctypes.c_int
            except (AttributeError, OSError):
                fn = None
        _renameat2_fn.append(fn)
    return _renameat2_fn[0]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
