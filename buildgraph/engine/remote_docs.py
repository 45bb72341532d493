"""The team cache's documents: formats, the producer stamp, what a signature covers, and the
strict schema every action entry is parsed with before anything uses it.

Both :mod:`buildgraph.engine.team.remote` (entries, blobs) and
:mod:`buildgraph.engine.team.records` (record segments) depend on this module, and it on
neither: the two stay out of each other's imports.

An entry comes from whoever can write the bucket. It is parsed with
:func:`buildgraph.engine.names.parse_json` (no NaN/Infinity, bounded numbers and nesting),
then validated against a strict pydantic schema (exact types, lowercase-hex digests of the
right length, safe names, a known format version); any failure is one reason, and the entry
is ignored like one with a bad signature.
"""

from __future__ import annotations

import functools
import getpass
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any, Dict, Optional

from buildgraph.engine.hashing import canonical_json
from buildgraph.registry import RECORD_AREAS
from buildgraph.engine.names import InvalidName, parse_json

ACTION_FORMAT = "buildgraph-action"
RECORDS_FORMAT = "buildgraph-records"
SCHEMA = 1
COMPACT_AT = 8
"""A record scope with more segments than this is compacted by the next push."""

AREA_SYNC = {name: sync for name, (_, sync) in RECORD_AREAS.items()}
"""Record areas the team cache synchronises: name -> ``"module:Class"`` with
``Class(area_dir)``, ``scopes() -> [scope]``, ``export(scope) -> JSON payload or None`` and
``merge(scope, payloads) -> str`` (a one-line summary). Imported only when used."""

MAX_BLOB_SIZE = 1 << 44
"""Largest blob size an entry may declare (16 TiB); more is a lie, not a model."""


def b3_bytes(data: bytes) -> str:
    import blake3

    return blake3.blake3(data).hexdigest()


def b3_file(path: Path) -> str:
    import blake3

    hasher = blake3.blake3()
    with open(path, "rb", buffering=0) as fh:
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        while True:
            n = fh.readinto(buffer)
            if not n:
                break
            hasher.update(view[:n])
    return hasher.hexdigest()


def producer() -> Dict[str, Any]:
    """Who made an entry: user, host, buildgraph and Python versions, when."""
    from buildgraph import __version__

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return {"user": user, "host": socket.gethostname(), "buildgraph": __version__,
            "python": platform.python_version(),
            "platform": f"{platform.system().lower()}-{platform.machine()}",
            "time": round(time.time(), 3)}


def who(doc: Dict[str, Any]) -> str:
    p = doc.get("producer") if isinstance(doc.get("producer"), dict) else {}
    return f"{p.get('user', '?')}@{p.get('host', '?')}"


def signed_payload(doc: Dict[str, Any]) -> bytes:
    """What a signature covers: the document without its signature, canonical JSON."""
    return canonical_json({k: v for k, v in doc.items() if k != "signature"})


@functools.lru_cache(maxsize=None)
def _models() -> Any:
    """The pydantic models (built on first use: a cached run never parses an entry)."""
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field, StringConstraints
    from typing_extensions import Annotated

    Hex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._@+-]*$",
                                            max_length=200)]
    Size = Annotated[int, Field(ge=0, le=MAX_BLOB_SIZE)]
    Text = Annotated[str, StringConstraints(max_length=1000)]

    class Strict(BaseModel):
        model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)

    class FileOutput(Strict):
        model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
        type: Literal["file"]
        digest: Hex32
        size: Size
        exec: bool = False

    class DirOutput(Strict):
        model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
        type: Literal["dir"]
        digest: Hex32
        size: Size
        manifest: Hex32
        files: Annotated[int, Field(ge=0, le=1 << 32)]

    Output = Annotated[FileOutput | DirOutput, Field(discriminator="type")]

    class Entry(Strict):
        step: Optional[Annotated[str, StringConstraints(max_length=500)]] = None
        recipe: Optional[Text] = None
        kind: Optional[Text] = None
        parts: Dict[str, Any]
        outputs: Dict[Name, Output]
        log: Optional[Hex32] = None
        meta: Dict[str, Any] = {}
        wall_s: Annotated[float, Field(ge=0, le=1e9)] = 0.0
        created: Optional[Annotated[float, Field(ge=0, le=1e11)]] = None

    class BlobRef(Strict):
        model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
        b3: Hex64
        size: Size

    class Producer(Strict):
        user: Optional[Text] = None
        host: Optional[Text] = None
        time: Optional[Annotated[float, Field(ge=0, le=1e11)]] = None

    class Signature(Strict):
        model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
        alg: Text
        key: Text
        sig: Annotated[str, StringConstraints(max_length=4096)]

    class ActionDoc(Strict):
        model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
        format: Literal["buildgraph-action"]
        schema_: Literal[1] = Field(alias="schema")
        key: Hex32
        entry: Entry
        blobs: Dict[Hex32, BlobRef]
        producer: Optional[Producer] = None
        signature: Optional[Signature] = None

    class RecordDoc(Strict):
        format: Literal["buildgraph-records"]
        schema_: Literal[1] = Field(alias="schema")
        area: Text
        scope: Text
        payload: Any
        producer: Optional[Producer] = None
        signature: Optional[Signature] = None

    return ActionDoc, RecordDoc


def _reason(exc: Any) -> str:
    """pydantic's first error as one phrase: ``entry.outputs.model.size: Input should be a
    valid integer``."""
    errors = exc.errors()
    if not errors:
        return "malformed"
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("file", "dir"))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc or 'document'}: {first.get('msg', 'invalid')}{more}"


def parse_action_doc(data: bytes) -> Dict[str, Any]:
    """An action entry document, parsed and validated (a plain dict, as it was written);
    raises :class:`InvalidName` with the reason."""
    return _parse_doc(data, ACTION_FORMAT, "not a buildgraph action entry", "entry", 0)


def parse_record_doc(data: bytes) -> Dict[str, Any]:
    """A record segment document, parsed and validated; raises :class:`InvalidName`."""
    return _parse_doc(data, RECORDS_FORMAT, "not a record segment", "segment", 1)


def _parse_doc(data: bytes, fmt: str, not_it: str, what: str, model: int) -> Dict[str, Any]:
    """Parse with limits, check format and schema, then validate against ``_models()[model]``."""
    from pydantic import ValidationError

    doc = parse_json(data)
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise InvalidName(not_it)
    if doc.get("schema") != SCHEMA:
        raise InvalidName(f"{what} schema {str(doc.get('schema'))[:20]!r} (this buildgraph "
                          f"reads {SCHEMA})")
    try:
        _models()[model].model_validate(doc)
    except ValidationError as exc:
        raise InvalidName(_reason(exc)) from None
    return doc
