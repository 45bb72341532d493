"""Ed25519 signatures on what the team cache holds: who may put an artifact on production
hardware.

A teammate's entry names its output blobs by their digests, and the blobs are checked against
those names on download; what is left to forge is the entry itself (a build of something else
under this key). A project that lists trusted public keys (``[trust] keys`` in buildgraph.toml)
therefore takes only entries signed by one of them; an unsigned entry, one signed by an
unknown key, or one whose signature does not verify is ignored, and ``plan`` says which.

Keys are OpenSSH's ed25519 format, so ``buildgraph trust keygen`` and ``ssh-keygen -t ed25519``
make interchangeable keys, and a key id is the fingerprint ``ssh-keygen -lf`` prints
(``SHA256:...``). The signature covers the canonical JSON of the whole document except its
``signature`` field. ``cryptography`` is imported only when something is signed or checked.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

from buildgraph.errors import BuildgraphError

ALGORITHM = "ed25519"


class SigningError(BuildgraphError):
    """A key file that cannot be used (missing, not ed25519, unreadable)."""


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise SigningError("signing needs the 'cryptography' package",
                           hint="pip install 'buildgraph[remote]'") from None
    return serialization


def fingerprint(raw_public: bytes) -> str:
    """``SHA256:<base64>`` of the OpenSSH key blob, as ``ssh-keygen -lf`` prints it."""
    blob = _ssh_blob(raw_public)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _ssh_blob(raw_public: bytes) -> bytes:
    name = b"ssh-ed25519"
    return (len(name).to_bytes(4, "big") + name + len(raw_public).to_bytes(4, "big")
            + raw_public)


@dataclass(frozen=True)
class PublicKey:
    key: Any = field(repr=False)
    key_id: str = ""
    comment: str = ""
    path: Optional[Path] = None

    @property
    def label(self) -> str:
        return f"{self.comment} ({self.key_id})" if self.comment else self.key_id


def read_public_key(path: Path) -> PublicKey:
    """An ed25519 public key from an OpenSSH ``.pub`` line (``ssh-ed25519 AAAA... comment``)."""
    serialization = _crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the public key: {exc.strerror or exc}") from None
    fields = text.split()
    try:
        key = serialization.load_ssh_public_key(" ".join(fields[:2]).encode())
    except (ValueError, IndexError, TypeError) as exc:
        raise SigningError(f"{path}: not an OpenSSH public key ({exc})",
                           hint="expected one line 'ssh-ed25519 AAAA... comment', as "
                                "`buildgraph trust keygen` or `ssh-keygen -t ed25519` write") \
            from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path}: a {fields[0]} key; buildgraph signs with ed25519 only",
                           hint="make one with `buildgraph trust keygen`")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PublicKey(key, fingerprint(raw), " ".join(fields[2:]), Path(path))


class Signer:
    """Signs documents with this user's private key."""

    def __init__(self, private_key: Any, comment: str = "", path: Optional[Path] = None):
        serialization = _crypto()
        self._key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                    serialization.PublicFormat.Raw)
        self.key_id = fingerprint(raw)
        self.comment = comment
        self.path = path

    def sign(self, payload: bytes) -> Dict[str, str]:
        return {"alg": ALGORITHM, "key": self.key_id,
                "sig": base64.b64encode(self._key.sign(payload)).decode()}

    def public_line(self) -> str:
        serialization = _crypto()
        line = self._key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                   serialization.PublicFormat.OpenSSH).decode()
        return f"{line} {self.comment}".strip()


def load_signer(path: Path) -> Signer:
    """This user's private key (OpenSSH or PEM PKCS#8, unencrypted, ed25519)."""
    serialization = _crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the signing key: {exc.strerror or exc}",
                           hint="make one with `buildgraph trust keygen`, or unset "
                                "BUILDGRAPH_SIGNING_KEY") from None
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not a usable private key ({exc})",
                           hint="buildgraph needs an unencrypted ed25519 key "
                                "(`buildgraph trust keygen`)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an ed25519 key",
                           hint="make one with `buildgraph trust keygen`")
    comment = ""
    pub = Path(str(path) + ".pub")
    if pub.exists():
        parts = pub.read_text(encoding="utf-8", errors="replace").split()
        comment = " ".join(parts[2:])
    return Signer(key, comment, Path(path))


def keygen(path: Path, comment: str, force: bool = False) -> Tuple[Path, Signer]:
    """A new ed25519 key pair: ``path`` (private, mode 0600) and ``path.pub``."""
    serialization = _crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    if path.exists() and not force:
        raise SigningError(f"{path} exists already",
                           hint="keep it (its public key is " + str(path) + ".pub), or "
                                "replace it with --force (entries it signed stay trusted only "
                                "while its public key is listed)")
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    os.replace(tmp, path)
    signer = Signer(key, comment, path)
    Path(str(path) + ".pub").write_text(signer.public_line() + "\n", encoding="utf-8")
    return path, signer


class Trust:
    """The public keys a project trusts; with none, signatures are not required."""

    def __init__(self, keys: Iterable[PublicKey] = ()):
        self.keys: Dict[str, PublicKey] = {k.key_id: k for k in keys}

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def check(self, payload: bytes, signature: Optional[Dict[str, Any]]) -> Optional[str]:
        """None when the document may be used; else why not (one phrase)."""
        if not self.required:
            return None
        if not isinstance(signature, dict) or not signature.get("sig"):
            return "it is not signed, and this project trusts only signed entries ([trust] " \
                   "keys)"
        key_id = str(signature.get("key", ""))
        known = self.keys.get(key_id)
        if known is None:
            return f"it is signed by a key this project does not trust ({key_id})"
        if signature.get("alg") != ALGORITHM:
            return f"unknown signature algorithm {signature.get('alg')!r}"
        try:
            known.key.verify(base64.b64decode(str(signature["sig"])), payload)
        except Exception:  # noqa: BLE001 - InvalidSignature, or a malformed value
            return f"its signature by {known.label} does not verify (changed after signing)"
        return None

    def signer_label(self, signature: Optional[Dict[str, Any]]) -> str:
        if not isinstance(signature, dict):
            return "unsigned"
        known = self.keys.get(str(signature.get("key", "")))
        return known.label if known else str(signature.get("key", "unknown key"))


def load_trust(paths: Iterable[Path]) -> Trust:
    return Trust(read_public_key(p) for p in paths)
