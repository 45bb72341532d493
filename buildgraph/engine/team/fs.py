"""The team cache's transport: files on any fsspec storage, streamed, verified, retried.

Everything the team cache reads or writes goes through :class:`RemoteFS`, a thin layer over
one fsspec file system (``s3fs`` for ``s3://``, ``gcsfs`` for ``gs://``, the built-in local
file system for ``file://`` and NFS mounts):

* **Atomic writes on the storage's own terms.** Object stores make a single PUT (or a completed
  multipart upload) visible at once; anything else gets a write to a temporary name, then a
  rename. Readers never see half an object.
* **Streaming.** Nothing is read whole into memory: downloads go to a file in fixed-size
  chunks, hashed as they arrive (BLAKE3 for the remote name, xxh3 for the local one), so peak
  memory does not grow with the artifact. On object stores a large object is fetched as
  parallel ranged GETs (``workers`` chunks in flight, one event loop each), like ``boto3``'s
  ``download_file``.
* **Errors in one line.** A transient error (a reset connection, a timeout, a 5xx) is retried
  with backoff; then, and at once for a permission error, a missing bucket or a missing share,
  :class:`RemoteUnavailable` says what is wrong and where to look.

fsspec and the storage's library are imported on first use, never when a run finds everything
in its local cache.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from buildgraph.errors import BuildgraphError

OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"}
"""Protocols whose PUT is atomic and whose reads are HTTP requests (ranged GETs pay off)."""
CHUNK = 8 << 20  # boto3's part size: fewer requests to sign and parse (4 MiB: 0.49x its speed)
PARALLEL_MIN = 32 << 20
"""Objects at least this big are fetched as parallel ranged GETs on object stores."""
RETRY_DELAYS = (0.25, 0.75, 2.0)
LIBRARIES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
             "abfs": "adlfs", "abfss": "adlfs"}


class RemoteUnavailable(BuildgraphError):
    """The remote cannot be used: unreachable, permission denied, no such bucket or share."""


class IntegrityError(Exception):
    """Downloaded bytes do not match the name they were asked for."""


def _protocol(fs: Any) -> str:
    proto = fs.protocol
    return proto[0] if isinstance(proto, (tuple, list)) else str(proto)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:199] + "…"
    return text or type(exc).__name__


def _fatal(exc: BaseException) -> Optional[str]:
    """Why ``exc`` will not go away by retrying, or None when it may be transient."""
    name = type(exc).__name__
    if isinstance(exc, PermissionError) or name in ("NoCredentialsError",
                                                    "PartialCredentialsError"):
        if name.endswith("CredentialsError"):
            return "no credentials found"
        return "permission denied (" + _short(exc) + ")"
    if isinstance(exc, FileNotFoundError) and "bucket" in str(exc).lower():
        return "the bucket does not exist"
    if isinstance(exc, (ValueError, TypeError, NotImplementedError)):
        return _short(exc)
    return None


def _unreachable(exc: BaseException) -> bool:
    """A connection that could not be made (refused, no route, no name): the storage
    library's own retries have been spent on it already."""
    import socket

    name = type(exc).__name__
    return isinstance(exc, (ConnectionRefusedError, socket.gaierror)) or \
        "ConnectionError" in name or "ConnectorError" in name


class RemoteFS:
    """Files under one fsspec URL (see the module's doc)."""

    def __init__(self, url: str, options: Optional[Dict[str, Any]] = None, workers: int = 8):
        self.url = url
        self.options = dict(options or {})
        self.workers = max(1, workers)
        self._fs: Any = None
        self._lanes: Optional[List[Any]] = None
        self._root = ""
        self._lock = threading.Lock()
        self.atomic = False
        self.ranged = False
        self.protocol = ""
        self.requests = 0
        """Storage calls made (each one or a few HTTP requests on object stores)."""
        self.bytes_down = 0
        self.bytes_up = 0

    # --- opening -------------------------------------------------------------------------
    @property
    def fs(self) -> Any:
        if self._fs is None:
            with self._lock:
                if self._fs is None:
                    self._open()
        return self._fs

    def _open(self) -> None:
        proto = self.url.split("://", 1)[0] if "://" in self.url else "file"
        try:
            import fsspec
        except ImportError:
            raise RemoteUnavailable("the team cache needs fsspec",
                                    hint="pip install 'buildgraph[remote]'") from None
        options = _with_defaults(proto, self.options)
        try:
            fs, root = fsspec.core.url_to_fs(self.url, **options)
        except ImportError as exc:
            lib = LIBRARIES.get(proto, "the fsspec implementation for it")
            raise RemoteUnavailable(f"{self.url}: cannot open {proto}:// storage ({_short(exc)})",
                                    hint=f"pip install {lib}") from None
        except (ValueError, TypeError) as exc:
            raise RemoteUnavailable(f"{self.url}: not a usable storage URL ({_short(exc)})"
                                    ) from None
        self.protocol = _protocol(fs)
        self.atomic = self.protocol in OBJECT_STORES
        self.ranged = self.atomic
        self._root = root.rstrip("/")
        if not self.atomic and not fs.isdir(self._root):
            self._fs = None
            raise RemoteUnavailable(f"{self.url}: the directory {self._root} does not exist",
                                    hint="is the share mounted? `buildgraph remote add` "
                                         "creates a new one")
        self._fs = fs

    def lanes(self) -> List[Any]:
        """File systems for parallel ranged GETs: on async implementations (s3fs, gcsfs) one
        instance per worker, each with its own event loop thread. One shared loop does every
        connection's I/O in one thread (measured: no faster than a single stream on 2 cores);
        separate loops read in parallel, as boto3's threads do."""
        if self._lanes is None:
            fs = self.fs
            with self._lock:
                if self._lanes is None:
                    lanes = [fs]
                    if getattr(fs, "async_impl", False):
                        import asyncio

                        import inspect

                        options = {k: v for k, v in fs.storage_options.items()
                                   if k not in ("loop", "asynchronous", "skip_instance_cache")}
                        if getattr(fs, "session", None) is not None and "session" in \
                                inspect.signature(type(fs).__init__).parameters:
                            # s3fs: one botocore session (its service models, ~18 MB) for all
                            options["session"] = fs.session
                        for i in range(1, self.workers):
                            loop = asyncio.new_event_loop()
                            threading.Thread(target=loop.run_forever, daemon=True,
                                             name=f"buildgraph-io-{i}").start()
                            lanes.append(type(fs)(loop=loop, asynchronous=False,
                                                  skip_instance_cache=True, **options))
                    self._lanes = lanes
        return self._lanes

    def _lane(self) -> Any:
        """The next lane, round robin: concurrent small downloads spread over the loops."""
        lanes = self.lanes()
        with self._lock:
            self._turn = (getattr(self, "_turn", 0) + 1) % len(lanes)
            return lanes[self._turn]

    def create_root(self) -> None:
        """Make the remote's directory (file systems only; buckets exist or not)."""
        proto = self.url.split("://", 1)[0] if "://" in self.url else "file"
        if proto in OBJECT_STORES:
            return
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.url, **_with_defaults(proto, self.options))
        fs.makedirs(root, exist_ok=True)

    def path(self, *parts: str) -> str:
        return "/".join([self._root_path(), *parts])

    def _root_path(self) -> str:
        self.fs  # noqa: B018 - opens, which sets the root
        return self._root

    # --- the one place errors are judged -----------------------------------------------
    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args)`` with retries on transient errors; FileNotFoundError passes through
        (a missing object is an answer, not an error); everything else ends in one
        :class:`RemoteUnavailable` line."""
        delays = list(RETRY_DELAYS)
        while True:
            self.requests += 1
            try:
                return fn(*args, **kwargs)
            except FileNotFoundError as exc:
                if "bucket" not in str(exc).lower():
                    raise
                raise RemoteUnavailable(f"{self.url}: the bucket does not exist",
                                        hint="create it, or fix the URL "
                                             "(`buildgraph remote ls`)") from None
            except (IntegrityError, IsADirectoryError, NotADirectoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - every storage library has its own
                fatal = _fatal(exc)
                if fatal is not None:
                    raise RemoteUnavailable(f"{self.url}: {what}: {fatal}",
                                            hint=_credentials_hint(self.protocol)
                                            if "denied" in fatal or "credentials" in fatal
                                            else "") from None
                if not delays or _unreachable(exc):  # the library has retried connecting
                    raise RemoteUnavailable(f"{self.url}: {what}: cannot reach the storage "
                                            f"({_short(exc)})",
                                            hint="check the network and the URL") from None
                time.sleep(delays.pop(0))

    # --- small objects -----------------------------------------------------------------
    def cat(self, rpath: str) -> Optional[bytes]:
        """An object's bytes, or None when it does not exist (small objects only)."""
        try:
            data = self.call("read", self.fs.cat_file, rpath)
        except (FileNotFoundError, IsADirectoryError):
            return None
        self.bytes_down += len(data)
        return bytes(data)

    def exists(self, rpath: str) -> bool:
        try:
            self.call("stat", self.fs.info, rpath)
            return True
        except FileNotFoundError:
            return False

    def size(self, rpath: str) -> Optional[int]:
        try:
            info = self.call("stat", self.fs.info, rpath)
        except FileNotFoundError:
            return None
        return int(info.get("size") or 0)

    def put_bytes(self, rpath: str, data: bytes) -> None:
        if self.atomic:
            self.call("write", self.fs.pipe_file, rpath, data)
        else:
            self._via_temporary(rpath, lambda tmp: self.fs.pipe_file(tmp, data))
        self.bytes_up += len(data)

    def put_file(self, lpath: Path, rpath: str) -> None:
        """Upload a local file (streamed by the storage library: multipart on S3)."""
        size = os.path.getsize(lpath)
        if self.atomic:
            self.call("upload", self.fs.put_file, str(lpath), rpath)
        else:
            self._via_temporary(rpath, lambda tmp: self.fs.put_file(str(lpath), tmp))
        self.bytes_up += size

    def _via_temporary(self, rpath: str, write: Callable[[str], Any]) -> None:
        parent, _, name = rpath.rpartition("/")
        tmp = f"{parent}/.{name}.tmp-{os.urandom(6).hex()}"

        def attempt() -> None:
            self.fs.makedirs(parent, exist_ok=True)
            try:
                write(tmp)
                self.fs.mv(tmp, rpath)
            finally:
                try:
                    if self.fs.exists(tmp):
                        self.fs.rm_file(tmp)
                except OSError:
                    pass

        self.call("write", attempt)

    def find(self, prefix: str) -> Dict[str, Dict[str, Any]]:
        """Objects under ``prefix`` (full path -> info with size and mtime)."""
        try:
            found = self.call("list", self.fs.find, prefix, detail=True)
        except FileNotFoundError:
            return {}
        return {p: {"size": int(i.get("size") or 0), "mtime": _mtime(i)}
                for p, i in found.items() if i.get("type", "file") != "directory"
                and "/." not in p[len(prefix):]}

    def rm(self, paths: List[str]) -> None:
        for start in range(0, len(paths), 500):
            batch = paths[start:start + 500]
            try:
                self.call("delete", self.fs.rm, batch)
            except FileNotFoundError:
                for p in batch:
                    try:
                        self.call("delete", self.fs.rm_file, p)
                    except FileNotFoundError:
                        pass

    # --- large objects -----------------------------------------------------------------
    def download(self, rpath: str, dest: Path, size: Optional[int],
                 progress: Optional[Callable[[int], None]] = None) -> Tuple[str, str, int]:
        """Stream ``rpath`` into ``dest``; returns (BLAKE3, xxh3-128, bytes) of what was
        written, computed as it arrived. The caller compares them with the names it expects.

        ``size`` is what the entry declares: at most ``size + 1`` bytes are read (the one
        more tells an object that is longer than declared), so an entry that lies about a
        small blob cannot make a client pull gigabytes. ``None``: no declared size (``remote
        verify --all`` of an object no entry names)."""
        import blake3
        import xxhash

        progress = progress or (lambda n: None)
        if self.ranged and size is not None and size >= PARALLEL_MIN:
            actual = self.size(rpath)
            if actual is not None and actual != size:
                raise IntegrityError(f"{rpath}: {actual} bytes, its entry says {size}")
            return self._ranged(rpath, dest, size, progress, blake3, xxhash)
        limit = None if size is None else size + 1

        def attempt() -> Tuple[str, str, int]:
            b3, xx, written = blake3.blake3(), xxhash.xxh3_128(), 0
            with open(dest, "wb") as out:
                if self.ranged:  # a small object: one GET (a ranged one when capped)
                    if limit is None:
                        data = self._lane().cat_file(rpath)
                    else:
                        data = self._lane().cat_file(rpath, start=0, end=limit)[:limit]
                    b3.update(data)
                    xx.update(data)
                    out.write(data)
                    written = len(data)
                    progress(written)
                else:
                    with self.fs.open(rpath, "rb", block_size=CHUNK) as src:
                        while limit is None or written < limit:
                            want = CHUNK if limit is None else min(CHUNK, limit - written)
                            data = src.read(want)
                            if not data:
                                break
                            b3.update(data)
                            xx.update(data)
                            out.write(data)
                            written += len(data)
                            progress(len(data))
            return b3.hexdigest(), xx.hexdigest(), written

        result = self.call("download", attempt)
        self.bytes_down += result[2]
        if limit is not None and result[2] > size:
            raise IntegrityError(f"{rpath} is longer than the {size} bytes its entry says "
                                 f"(stopped after {result[2]})")
        return result

    def _ranged(self, rpath: str, dest: Path, size: int, progress: Callable[[int], None],
                blake3: Any, xxhash: Any) -> Tuple[str, str, int]:
        """Parallel ranged GETs (botocore's client on S3, else one event loop each, see
        :meth:`lanes`); this thread takes the chunks in order, writes them sequentially and
        hashes them. At most ``1.5 * workers``
        chunks are held, however big the object, and a slow chunk stalls the others only once
        that many have arrived behind it. (Writing each chunk in place from its own thread
        costs more: concurrent writers to one file contend for its lock, measured 1.3 s of CPU
        per GiB on 2 cores.)"""
        from concurrent.futures import ThreadPoolExecutor

        b3, xx = blake3.blake3(), xxhash.xxh3_128()
        chunks = (size + CHUNK - 1) // CHUNK
        window = self.workers + self.workers // 2
        s3 = self._s3_client()
        lanes = self.lanes() if s3 is None else []
        bucket, _, key = rpath.partition("/")

        def get(i: int, start: int, end: int) -> bytes:
            if s3 is not None:  # botocore in this thread (see _s3_client)
                return _s3_range(s3, bucket, key, start, end)
            return lanes[i % len(lanes)].cat_file(rpath, start=start, end=end)

        def fetch(i: int) -> bytes:
            start = i * CHUNK
            end = min(size, start + CHUNK)
            data = self.call("download", get, i, start, end)
            if len(data) != end - start:
                raise IntegrityError(f"{rpath}: got {len(data)} bytes at {start}, expected "
                                     f"{end - start} (the object is shorter than its entry "
                                     "says)")
            return data

        with open(dest, "wb") as out, \
                ThreadPoolExecutor(max_workers=min(self.workers, chunks),
                                   thread_name_prefix="buildgraph-get") as pool:
            pending: Dict[int, Any] = {}
            submitted = 0
            try:
                for i in range(chunks):
                    while submitted < chunks and submitted < i + window:
                        pending[submitted] = pool.submit(fetch, submitted)
                        submitted += 1
                    data = pending.pop(i).result()
                    out.write(data)
                    b3.update(data)
                    xx.update(data)
                    progress(len(data))
                    del data
            finally:
                for future in pending.values():
                    future.cancel()
        self.bytes_down += size
        return b3.hexdigest(), xx.hexdigest(), size

    def _s3_client(self) -> Any:
        """A synchronous botocore client for ranged GETs on s3://, or None elsewhere.

        s3fs reads through aiobotocore and aiohttp, one event loop per lane; measured on 2 cores
        against SeaweedFS, a 1 GiB pull cost 3.0-3.4 s of CPU that way against boto3's 1.5 s,
        for 0.5-0.75x its throughput. botocore's own client (urllib3, what boto3's
        ``download_file`` uses) in our threads reads at boto3's cost. It is built from the
        same storage options, so credentials come from where s3fs finds them."""
        if self.protocol not in ("s3", "s3a"):
            return None
        client = getattr(self, "_s3", None)
        if client is None:
            with self._lock:
                client = getattr(self, "_s3", None)
                if client is None:
                    client = self._s3 = _botocore_client(
                        _with_defaults("s3", self.options), self.workers)
        return client or None

    def close(self) -> None:
        self._fs = None


def _with_defaults(proto: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """Storage options with short timeouts: a remote that is down must cost seconds, not the
    minutes botocore's default retries take, and never fail a build that can go on locally."""
    options = dict(options)
    if proto in ("s3", "s3a"):
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("connect_timeout", 5)
        config.setdefault("read_timeout", 120)
        config.setdefault("retries", {"max_attempts": 2, "mode": "standard"})
        config.setdefault("max_pool_connections", 32)
        options["config_kwargs"] = config
        options.setdefault("skip_instance_cache", True)
    elif proto == "file":
        options.setdefault("auto_mkdir", True)
    return options


def _botocore_client(options: Dict[str, Any], workers: int) -> Any:
    """botocore's S3 client for s3fs's storage options (key/secret/token, anon, profile,
    endpoint_url, client_kwargs, config_kwargs); False when botocore cannot make one (the
    lanes of s3fs are used then)."""
    try:
        import botocore.session
        from botocore import UNSIGNED
        from botocore.config import Config
    except ImportError:
        return False
    config = dict(options.get("config_kwargs") or {})
    config["max_pool_connections"] = max(workers, int(config.get("max_pool_connections", 0)))
    if options.get("anon"):
        config["signature_version"] = UNSIGNED
    client_kwargs = dict(options.get("client_kwargs") or {})
    if options.get("endpoint_url"):
        client_kwargs.setdefault("endpoint_url", options["endpoint_url"])
    try:
        session = botocore.session.Session(profile=options.get("profile"))
        return session.create_client(
            "s3", aws_access_key_id=options.get("key"),
            aws_secret_access_key=options.get("secret"),
            aws_session_token=options.get("token"), config=Config(**config), **client_kwargs)
    except Exception:  # noqa: BLE001 - any setup problem: s3fs's own path reports it
        return False


def _s3_range(client: Any, bucket: str, key: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of an object; a missing one is FileNotFoundError, as from s3fs."""
    from botocore.exceptions import ClientError

    try:
        body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")["Body"]
        try:
            return body.read()
        finally:
            body.close()
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(f"{bucket}/{key}") from None
        if code == "NoSuchBucket":
            raise FileNotFoundError(f"no such bucket: {bucket}") from None
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise PermissionError(f"{code}: {bucket}/{key}") from None
        raise


def _credentials_hint(protocol: str) -> str:
    if protocol in ("s3", "s3a"):
        return ("S3 credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE "
                "or ~/.aws/credentials; check that they may read (and, unless read-only, "
                "write) this bucket")
    if protocol in ("gs", "gcs"):
        return "run `gcloud auth application-default login`, or set " \
               "GOOGLE_APPLICATION_CREDENTIALS"
    return "check the permissions of the remote's directory"


def _mtime(info: Dict[str, Any]) -> float:
    value = info.get("LastModified") or info.get("mtime") or info.get("updated") or 0
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        return float(value)
    except (TypeError, ValueError):
        import datetime

        try:
            return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except ValueError:
            return 0.0
