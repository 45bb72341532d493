"""This machine and this Python environment, as tokens that change when they change.

Two things are keyed on them: the resolved-recipe cache (a recipe resolves differently when a
plugin is installed) and the memoised step descriptions (tool versions are read from installed
metadata). Computed once per process.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, List, Optional, Tuple

TOKEN_FORMAT = 2


def stat_signature(path: str) -> Optional[Tuple[int, int, int]]:
    """(size, mtime_ns, inode) of ``path``, or None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


@lru_cache(maxsize=1)
def host_identity() -> Tuple[Any, ...]:
    """This machine: a cache directory may be shared between hosts (network file systems).
    (host name, machine, core count, CPU model line). ``os.uname`` where it exists: importing
    ``platform`` costs a cached no-op run ~3 ms."""
    if hasattr(os, "uname"):
        node, machine = os.uname().nodename, os.uname().machine
    else:  # pragma: no cover - Windows
        import platform

        node, machine = platform.node(), platform.machine()
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            cpu = next((line for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    return (node, machine, os.cpu_count(), cpu)


def host_cpu() -> str:
    """The CPU model and core count, for keys of steps that measure this machine."""
    _, machine, cores, cpu = host_identity()
    return f"{cpu.split(':', 1)[-1].strip() or machine}, {cores} cores"


@lru_cache(maxsize=1)
def environment_token() -> str:
    """Changes when the host, interpreter, installed packages or buildgraph's sources change.

    Installing or upgrading a package touches its site-packages directory, which covers the
    tool versions that descriptions record and the plugins that provide step kinds."""
    from buildgraph.engine.hashing import digest_bytes

    parts: List[Any] = [sys.version, sys.executable, TOKEN_FORMAT, list(host_identity())]
    for path in environment_paths():
        parts.append((os.path.dirname(path), os.path.basename(path), stat_signature(path))
                     if path.endswith(".py") else (path, stat_signature(path)))
    return digest_bytes(repr(sorted(map(repr, parts))).encode())


@lru_cache(maxsize=1)
def environment_paths() -> Tuple[str, ...]:
    """The paths whose signatures the environment token covers: the site-packages directories
    on the import path and buildgraph's own sources (a no-op stamp watches them too; walked
    once per process)."""
    paths = [entry for entry in sys.path
             if entry and ("site-packages" in entry or "dist-packages" in entry)]
    package = Path(__file__).resolve().parent.parent
    for directory, _, files in os.walk(package):
        paths.extend(os.path.join(directory, name) for name in files if name.endswith(".py"))
    return tuple(paths)


def package_version(dist: str, missing: str = "not installed") -> str:
    """An installed distribution's version, from its metadata (never imports the package)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return missing


def package_versions(*dists: str, missing: str = "not installed") -> dict:
    """``{dist: version}`` for a step's environment."""
    return {d: package_version(d, missing) for d in dists}


def python_version() -> str:
    return "%d.%d" % sys.version_info[:2]
