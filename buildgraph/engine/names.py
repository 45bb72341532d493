"""Names that come from outside: digests, manifest paths, record scopes, remote JSON.

Everything that becomes part of a file path, or is parsed from bytes another machine wrote
(the team cache, a lock file, a release bundle, a run record), is checked here, in one place,
before anything builds a path from it. A digest is fixed-length lowercase hex and nothing
else, so ``ab/<absolute path>`` or ``../x`` can never name a file outside the store; a
manifest path is relative, normalised and stays inside its output (checked on the string, and
again on the resolved path as a second line of defence). Remote JSON is parsed with limits
(no NaN or Infinity, bounded numbers and nesting) so that one hostile entry is "ignored:
<reason>", never a traceback.

This module imports nothing else from buildgraph: the store, the remote, the lock file and
the release bundle all depend on it, and it on none of them.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Dict

DIGEST_LENGTHS: Dict[str, int] = {"xxh3": 32, "blake3": 64, "sha256": 64}
"""Hex length of each hash kind the project writes into names: xxh3-128 (local blobs,
action keys, tree digests), BLAKE3-256 (remote blobs, record segments), SHA-256."""

HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
SCOPE_RE = re.compile(r"^[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*\Z")
_HEX = {kind: re.compile(rf"^[0-9a-f]{{{n}}}\Z") for kind, n in DIGEST_LENGTHS.items()}

MAX_DEPTH = 32
"""Deepest nesting accepted in remote JSON (a real entry is about 6 deep)."""
MAX_INT = 2 ** 53
"""Largest integer accepted in remote JSON (sizes, counts, times all fit)."""
MAX_PATH_PARTS = 64
MAX_NAME = 255


class InvalidName(ValueError):
    """A name or document from outside is not acceptable; ``str()`` is the reason."""


def is_digest(value: Any, kind: str = "xxh3") -> bool:
    """True when ``value`` is a ``kind`` digest: a str of exactly that many lowercase hex."""
    return isinstance(value, str) and _HEX[kind].match(value) is not None


def check_digest(value: Any, kind: str = "xxh3", what: str = "digest") -> str:
    """``value`` if it is a ``kind`` digest; else :class:`InvalidName` saying why."""
    if is_digest(value, kind):
        return value
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    raise InvalidName(f"{what} {shown} is not a {kind} digest ({DIGEST_LENGTHS[kind]} "
                      "lowercase hex digits)")


def check_rel_path(value: Any, what: str = "path") -> str:
    """``value`` if it is a safe relative POSIX path inside an output: not empty, not
    absolute, no ``..``/``.``/empty parts, no NUL, no backslash, no control characters."""
    shown = repr(value)[:60]
    if not isinstance(value, str) or not value:
        raise InvalidName(f"{what} {shown} is not a relative path")
    if "\x00" in value:
        raise InvalidName(f"{what} {shown} contains a NUL byte")
    if "\\" in value:
        raise InvalidName(f"{what} {shown} contains a backslash")
    if any(ord(c) < 32 for c in value):
        raise InvalidName(f"{what} {shown} contains a control character")
    if value.startswith("/"):
        raise InvalidName(f"{what} {shown} is absolute")
    parts = value.split("/")
    if any(p in ("", ".") for p in parts):
        raise InvalidName(f"{what} {shown} is not normalised (empty or '.' part)")
    if ".." in parts:
        raise InvalidName(f"{what} {shown} leaves its directory ('..')")
    if len(parts) > MAX_PATH_PARTS or any(len(p.encode("utf-8", "surrogatepass")) > MAX_NAME
                                          for p in parts):
        raise InvalidName(f"{what} {shown} is too long")
    if PurePosixPath(value).as_posix() != value:
        raise InvalidName(f"{what} {shown} is not normalised")
    return value


def inside(root: Path, rel: str, what: str = "path") -> Path:
    """``root / rel`` after :func:`check_rel_path`, and only if the resolved result is still
    under the resolved ``root`` (a symbolic link on the way cannot lead out)."""
    check_rel_path(rel, what)
    target = Path(root) / rel
    base = os.path.realpath(root)
    real = os.path.realpath(target)
    if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
        raise InvalidName(f"{what} {rel!r} resolves outside its directory")
    return target


def check_scope(value: Any, what: str = "record scope") -> str:
    """A record scope: ``/``-separated parts of letters, digits and ``._+-``, no ``..``."""
    if not isinstance(value, str) or not SCOPE_RE.match(value) \
            or any(p in (".", "..") for p in value.split("/")) or len(value) > 512:
        raise InvalidName(f"{what} {repr(value)[:60]} is not a valid scope")
    return value


def check_area(value: Any) -> str:
    """A shared record area name: one plain path part."""
    if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]*\Z", value) \
            or len(value) > 64:
        raise InvalidName(f"record area name {repr(value)[:60]} is not valid")
    return value


def _reject_constant(name: str) -> Any:
    raise InvalidName(f"it holds {name}, which JSON does not allow")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidName(f"it holds a number out of range ({text[:20]})")
    return value


def _parse_int(text: str) -> int:
    if len(text) > 17:
        raise InvalidName(f"it holds a number out of range ({text[:20]}...)")
    value = int(text)
    if abs(value) > MAX_INT:
        raise InvalidName(f"it holds a number out of range ({text})")
    return value


def parse_json(data: Any, max_depth: int = MAX_DEPTH, what: str = "") -> Any:
    """JSON from outside, with limits: no NaN/Infinity, finite floats, integers up to
    2**53, nesting at most ``max_depth``. Raises :class:`InvalidName` with the reason."""
    try:
        value = json.loads(data, parse_constant=_reject_constant, parse_float=_parse_float,
                           parse_int=_parse_int)
    except InvalidName:
        raise
    except RecursionError:
        raise InvalidName("it is nested too deeply") from None
    except (ValueError, TypeError, UnicodeDecodeError):
        raise InvalidName("it is not valid JSON") from None
    check_depth(value, max_depth)
    return value


def check_depth(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`InvalidName` when ``value`` nests deeper than ``max_depth`` or holds
    something JSON cannot (NaN, Infinity, a huge integer)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                raise InvalidName("it is nested too deeply")
            stack.extend((v, depth + 1) for v in item.values())
            if not all(isinstance(k, str) for k in item):
                raise InvalidName("it has a non-string key")
        elif isinstance(item, (list, tuple)):
            if depth > max_depth:
                raise InvalidName("it is nested too deeply")
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidName("it holds NaN or Infinity")
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_INT:
            raise InvalidName("it holds a number out of range")


__all__ = ["InvalidName", "is_digest", "check_digest", "check_rel_path", "inside",
           "check_scope", "check_area", "parse_json", "check_depth", "HEX64", "SCOPE_RE",
           "DIGEST_LENGTHS"]
