"""Writing files so that readers never see half of one, and failures leave nothing behind;
archives whose bytes depend on their content only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

ARCHIVE_MTIME = 315532800
"""1980-01-01 00:00:00 UTC, the earliest time a zip can hold (and what torch writes in its
archives): the mtime of every entry of an archive :func:`write_tar_gz` writes."""


def atomic_write(path: Union[str, Path], data: Union[bytes, str]) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsync, rename.

    A reader sees the old content or the new, never a mix; the temporary file is removed
    whatever happens (a full disk, an interrupt)."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def write_tar_gz(src: Path, dest: Path, top: Optional[str] = None, compresslevel: int = 6
                 ) -> None:
    """The tree under ``src`` as a gzipped tar ``dest``, under the folder ``top`` (or at the
    archive's root), with nothing in it but names, contents and executable bits: entries
    sorted by name, every mtime ARCHIVE_MTIME, owner 0:0 without names, mode 0644 (0755 for
    directories and executables), GNU format, and a gzip header without time or file name. The
    same files give the same bytes (given the same zlib), whenever and by whomever written."""
    import gzip
    import tarfile

    src, dest = Path(src), Path(dest)
    entries = sorted(src.rglob("*"), key=lambda p: p.relative_to(src).as_posix())
    if top is not None:
        entries.insert(0, src)
    with open(dest, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                          compresslevel=compresslevel) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in entries:
            rel = path.relative_to(src).as_posix()
            name = (top if rel == "." else f"{top}/{rel}") if top is not None else rel
            info = tarfile.TarInfo(name)
            info.mtime = ARCHIVE_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            st = path.stat()
            info.size = st.st_size
            info.mode = 0o755 if st.st_mode & 0o100 else 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)


def rmtree_writable(path: Path) -> None:
    """Remove a tree even where a step left read-only folders in it (tools do)."""
    import shutil

    def onerror(func: Any, p: str, _: Any) -> None:
        os.chmod(os.path.dirname(p), 0o755)
        func(p)

    shutil.rmtree(path, onerror=onerror)
