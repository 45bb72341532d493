"""Writing files so that readers never see half of one, and failures leave nothing behind."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Union


def atomic_write(path: Union[str, Path], data: Union[bytes, str]) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsync, rename.

    A reader sees the old content or the new, never a mix; the temporary file is removed
    whatever happens (a full disk, an interrupt)."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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
