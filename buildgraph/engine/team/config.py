"""Where the team cache is and whom it trusts: the project's config file, ``BUILDGRAPH_REMOTE``.

Settings live in ``buildgraph.toml`` (beside the recipes, or in a directory above them), or in
the ``[tool.buildgraph]`` table of ``pyproject.toml``; the nearest directory holding either
wins::

    default_remote = "team"

    [remotes.team]
    url = "s3://ml-builds/buildgraph"       # any fsspec URL: s3://, gs://, file:///mnt/nfs/bg
    read_only = false
    options = { endpoint_url = "http://minio.internal:9000" }   # fsspec storage options

    [trust]
    keys = ["keys/alice.pub", "keys/ci.pub"]   # entries must be signed by one of these

``BUILDGRAPH_REMOTE`` picks a configured remote by name, or gives a URL directly; ``off``
disables the team cache. Credentials never come from here (nor from recipes or lock files):
the storage's own libraries find them where its own tools look (AWS environment variables and
``~/.aws``, ``gcloud``'s application-default credentials), and an option that looks like a
secret is refused.

This module is imported on every run to learn whether a remote is configured at all, so it
imports nothing heavy: TOML is parsed only when a config file exists (``tomllib``), and
written with ``tomlkit`` (which keeps the file's comments and layout) only by ``remote add``
and ``trust add``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from buildgraph.errors import BuildgraphError

CONFIG_FILE = "buildgraph.toml"
PYPROJECT = "pyproject.toml"
ENV_REMOTE = "BUILDGRAPH_REMOTE"
ENV_READ_ONLY = "BUILDGRAPH_REMOTE_READ_ONLY"
ENV_SIGNING_KEY = "BUILDGRAPH_SIGNING_KEY"
OFF = ("", "off", "none", "0", "false", "no")

SECRET_OPTIONS = {"key", "secret", "token", "password", "access_key", "secret_key",
                  "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
                  "session_token", "account_key", "sas_token", "client_secret", "credentials",
                  "connection_string"}
"""fsspec storage options that carry credentials: never read from a project file."""


class RemoteConfigError(BuildgraphError):
    """The project's remote or trust settings are wrong (a bad URL, an unknown name...)."""


@dataclass(frozen=True)
class RemoteSpec:
    """One remote: a name, an fsspec URL, storage options without secrets."""

    name: str
    url: str
    read_only: bool = False
    options: Dict[str, Any] = field(default_factory=dict)
    source: str = ""
    """Where it was configured (a file, or the environment), for messages."""


@dataclass
class ProjectConfig:
    """The ``buildgraph`` settings of one project (empty when there is no config file)."""

    path: Optional[Path] = None
    remotes: Dict[str, RemoteSpec] = field(default_factory=dict)
    default: Optional[str] = None
    trusted_keys: List[Path] = field(default_factory=list)
    cluster: Optional[str] = None
    """The Ray cluster ``run --cluster`` (given without an address) uses."""

    @property
    def directory(self) -> Optional[Path]:
        return self.path.parent if self.path is not None else None


def find_config(start: Optional[Path] = None) -> Optional[Path]:
    """The nearest ``buildgraph.toml``, or ``pyproject.toml`` with a ``[tool.buildgraph]``
    table, in ``start`` or a directory above it, up to the repository root (a directory
    holding ``.git``) or the home directory, whichever comes first: a config planted in a
    shared parent (``/tmp``) never steers a project. A file owned by another user, or
    writable by group or others, is skipped with a warning (git's ``safe.directory``
    reasoning): whoever can write it could pick the remote results are pushed to. A few
    ``stat`` calls; a pyproject is read as bytes and only searched for the table's name."""
    here = Path(start if start is not None else Path.cwd()).absolute()
    try:
        home: Optional[Path] = Path.home().absolute()
    except (KeyError, RuntimeError):
        home = None
    for directory in (here, *here.parents):
        candidate = directory / CONFIG_FILE
        if candidate.is_file() and _safe(candidate):
            return candidate
        pyproject = directory / PYPROJECT
        try:
            data = pyproject.read_bytes()
        except OSError:
            data = b""
        if b"tool.buildgraph" in data and _safe(pyproject):
            return pyproject
        if directory == home or (directory / ".git").exists():
            break  # the repository root (or home): nothing above is the project's
    return None


_WARNED: set = set()


def _safe(path: Path) -> bool:
    """May this config file be used? Not when another user owns it or group/others can
    write it (then one warning per process on stderr, naming the fix)."""
    if not hasattr(os, "geteuid"):
        return True
    try:
        st = path.stat()
    except OSError:
        return False
    why = ""
    if st.st_uid != os.geteuid():
        why = f"it is owned by another user (uid {st.st_uid})"
    elif st.st_mode & 0o022:
        why = "it is writable by group or others"
    if not why:
        return True
    if str(path) not in _WARNED:
        _WARNED.add(str(path))
        fix = "chmod go-w" if "writable" in why else "chown it to yourself"
        print(f"buildgraph: warning: ignoring {path}: {why}, so whoever can write it could "
              f"choose where results are pushed; {fix} if it is yours", file=sys.stderr)
    return False


def _parse_toml(path: Path) -> Dict[str, Any]:
    try:
        import tomllib as toml  # Python 3.11+
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as toml  # type: ignore[no-redef]
        except ImportError:
            import tomlkit

            try:
                return dict(tomlkit.parse(path.read_text(encoding="utf-8")).unwrap())
            except Exception as exc:  # noqa: BLE001 - tomlkit's parse errors
                raise RemoteConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        with open(path, "rb") as fh:
            return toml.load(fh)
    except OSError as exc:
        raise RemoteConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except toml.TOMLDecodeError as exc:
        raise RemoteConfigError(f"{path}: not valid TOML: {exc}") from None


def _table(path: Path, data: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
    """The buildgraph table of a parsed file, and the prefix its keys are named with."""
    if path.name == PYPROJECT:
        table = data.get("tool", {}).get("buildgraph", {})
        return (table if isinstance(table, dict) else {}), "tool.buildgraph."
    return data, ""


def load_config(start: Optional[Path] = None, path: Optional[Path] = None) -> ProjectConfig:
    """Read the project config found from ``start`` (or the file ``path``); an empty config
    when there is none. Raises RemoteConfigError naming the file and key on bad settings."""
    path = path if path is not None else find_config(start)
    if path is None:
        return ProjectConfig()
    table, prefix = _table(path, _parse_toml(path))
    config = ProjectConfig(path=path)

    def bad(key: str, message: str, hint: str = "") -> RemoteConfigError:
        return RemoteConfigError(f"{path}: {prefix}{key}: {message}", hint=hint)

    remotes = table.get("remotes", {})
    if not isinstance(remotes, dict):
        raise bad("remotes", "expected a table of named remotes ([remotes.NAME] url = ...)")
    for name, raw in remotes.items():
        if not isinstance(raw, dict):
            raise bad(f"remotes.{name}", "expected a table with url = ...")
        url = raw.get("url")
        if not isinstance(url, str) or not url:
            raise bad(f"remotes.{name}.url", "missing (an fsspec URL such as "
                      "s3://bucket/prefix or file:///mnt/share/buildgraph)")
        unknown = sorted(set(raw) - {"url", "read_only", "options"})
        if unknown:
            raise bad(f"remotes.{name}.{unknown[0]}", "unknown setting (known: url, read_only, "
                      "options)")
        read_only = raw.get("read_only", False)
        if not isinstance(read_only, bool):
            raise bad(f"remotes.{name}.read_only", f"expected true or false; got {read_only!r}")
        options = raw.get("options", {})
        if not isinstance(options, dict):
            raise bad(f"remotes.{name}.options", "expected a table of storage options")
        check_options(options, lambda key, msg, hint: bad(f"remotes.{name}.options.{key}",
                                                          msg, hint))
        config.remotes[name] = RemoteSpec(name, normalize_url(url, path.parent), read_only,
                                          dict(options), str(path))
    default = table.get("default_remote")
    if default is not None:
        if not isinstance(default, str) or default not in config.remotes:
            from buildgraph.errors import did_you_mean

            raise bad("default_remote", f"no remote named {default!r}"
                      + did_you_mean(str(default), config.remotes),
                      hint="remotes: " + (", ".join(sorted(config.remotes)) or "none"))
        config.default = default
    trust = table.get("trust", {})
    if not isinstance(trust, dict):
        raise bad("trust", "expected a table ([trust] keys = [...])")
    keys = trust.get("keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise bad("trust.keys", "expected a list of public key files")
    config.trusted_keys = [(path.parent / os.path.expanduser(k)).absolute() for k in keys]
    cluster = table.get("cluster")
    if cluster is not None and (not isinstance(cluster, str) or not cluster.strip()):
        raise bad("cluster", f"expected a Ray address (ray://HOST:10001, HOST:PORT or auto); "
                             f"got {cluster!r}")
    config.cluster = cluster.strip() if isinstance(cluster, str) else None
    return config


def check_options(options: Dict[str, Any], bad: Any) -> None:
    """Refuse credentials among storage options: they belong where the storage's own tools
    look for them, not in a file committed with the project."""
    for key in options:
        if str(key).lower() in SECRET_OPTIONS:
            raise bad(key, "credentials are not read from the project's files",
                      "set them where the storage's own tools look: AWS_ACCESS_KEY_ID / "
                      "AWS_PROFILE or ~/.aws/credentials for S3, `gcloud auth "
                      "application-default login` for GCS")


def normalize_url(url: str, base: Path) -> str:
    """An fsspec URL; a bare path becomes ``file://`` (relative to ``base``)."""
    if "://" in url:
        return url.rstrip("/") if not url.endswith(":///") else url
    return "file://" + str((base / os.path.expanduser(url)).absolute())


def resolve(start: Optional[Path] = None, name: Optional[str] = None,
            read_only: bool = False, config: Optional[ProjectConfig] = None
            ) -> Optional[RemoteSpec]:
    """The remote a run uses, or None: ``name`` (``--remote``, a configured name or a URL),
    else ``BUILDGRAPH_REMOTE``, else the config's ``default_remote``. ``read_only``
    (``--remote-read-only`` or ``BUILDGRAPH_REMOTE_READ_ONLY=1``) keeps it from being written."""
    read_only = read_only or os.environ.get(ENV_READ_ONLY, "").lower() not in OFF
    wanted = name if name is not None else os.environ.get(ENV_REMOTE)
    source = "--remote" if name is not None else f"${ENV_REMOTE}"
    if wanted is not None and wanted.strip().lower() in OFF:
        return None
    if wanted is None and config is None and find_config(start) is None:
        return None  # the common case: no team cache, nothing parsed
    config = config if config is not None else load_config(start)
    if wanted is None:
        if config.default is None:
            if len(config.remotes) == 1:
                spec = next(iter(config.remotes.values()))
                return _with_read_only(spec, read_only)
            return None
        wanted = config.default
        source = f"{config.path}: default_remote"
    wanted = wanted.strip()
    if wanted in config.remotes:
        return _with_read_only(config.remotes[wanted], read_only)
    if "://" in wanted or wanted.startswith(("/", "./", "~")):
        return RemoteSpec(_name_of(wanted), normalize_url(wanted, Path.cwd()), read_only,
                          {}, source)
    from buildgraph.errors import did_you_mean

    where = f" in {config.path}" if config.path else " (there is no buildgraph.toml)"
    raise RemoteConfigError(f"{source}: no remote named {wanted!r}{where}"
                            + did_you_mean(wanted, config.remotes),
                            hint="add one with `buildgraph remote add NAME URL`, or give a URL")


def _with_read_only(spec: RemoteSpec, read_only: bool) -> RemoteSpec:
    if read_only and not spec.read_only:
        return RemoteSpec(spec.name, spec.url, True, spec.options, spec.source)
    return spec


def _name_of(url: str) -> str:
    tail = url.rstrip("/").rsplit("/", 1)[-1]
    return tail or "remote"


# --- writing ---------------------------------------------------------------------------------

def writable_config(start: Optional[Path] = None) -> Path:
    """The file ``remote add`` and ``trust add`` write: the existing config, else a new
    ``buildgraph.toml`` in ``start``."""
    found = find_config(start)
    return found if found is not None else Path(start or Path.cwd()).absolute() / CONFIG_FILE


def edit_config(path: Path, change: Any) -> None:
    """Apply ``change(table)`` to the buildgraph table of ``path`` (created if missing),
    keeping the rest of the file (comments, other tools' tables) as it was."""
    try:
        import tomlkit
    except ImportError:
        raise RemoteConfigError("writing buildgraph.toml needs tomlkit",
                                hint="pip install 'buildgraph[remote]'") from None
    from buildgraph.engine.files import atomic_write

    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        doc = tomlkit.parse(text)
    except OSError as exc:
        raise RemoteConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - tomlkit's parse errors
        raise RemoteConfigError(f"{path}: not valid TOML: {exc}") from None
    if path.name == PYPROJECT:
        tool = doc.setdefault("tool", tomlkit.table(True))
        table = tool.setdefault("buildgraph", tomlkit.table())
    else:
        table = doc
    change(table, tomlkit)
    atomic_write(path, tomlkit.dumps(doc))


def add_remote(path: Path, name: str, url: str, options: Dict[str, Any], read_only: bool,
               make_default: Optional[bool] = None) -> bool:
    """Add (or replace) remote ``name`` in ``path``; it becomes the default when asked, or
    when there is no default yet. Returns whether it is the default."""
    check_options(options, lambda key, msg, hint: RemoteConfigError(
        f"--option {key}: {msg}", hint=hint))
    made_default = [False]

    def change(table: Any, tomlkit: Any) -> None:
        remotes = table.setdefault("remotes", tomlkit.table(True))
        entry = tomlkit.table()
        entry["url"] = url
        if read_only:
            entry["read_only"] = True
        if options:
            inline = tomlkit.inline_table()
            inline.update(options)
            entry["options"] = inline
        remotes[name] = entry
        if make_default or (make_default is None and "default_remote" not in table):
            table["default_remote"] = name
            made_default[0] = True

    edit_config(path, change)
    return made_default[0]


def remove_remote(path: Path, name: str) -> bool:
    found = [False]

    def change(table: Any, tomlkit: Any) -> None:
        remotes = table.get("remotes", {})
        if name in remotes:
            del remotes[name]
            found[0] = True
        if table.get("default_remote") == name:
            del table["default_remote"]

    edit_config(path, change)
    return found[0]


def add_trusted_key(path: Path, key_file: str) -> bool:
    """List ``key_file`` (relative to the config's directory) under ``[trust] keys``.
    Returns False when it was listed already."""
    added = [False]

    def change(table: Any, tomlkit: Any) -> None:
        trust = table.setdefault("trust", tomlkit.table())
        keys = trust.setdefault("keys", tomlkit.array())
        if key_file not in [str(k) for k in keys]:
            keys.append(key_file)
            added[0] = True

    edit_config(path, change)
    return added[0]


def user_config_dir() -> Path:
    """``$XDG_CONFIG_HOME/buildgraph`` (``~/.config/buildgraph``): the signing key's home."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "buildgraph"


def signing_key_path() -> Optional[Path]:
    """The private key this user signs pushed entries with: ``BUILDGRAPH_SIGNING_KEY``, else
    ``~/.config/buildgraph/signing_key`` if it exists."""
    env = os.environ.get(ENV_SIGNING_KEY)
    if env:
        return Path(os.path.expanduser(env))
    default = user_config_dir() / "signing_key"
    return default if default.exists() else None
