"""The team cache's commands: ``remote``, ``trust``, ``cache push`` and ``cache pull``.

Commands of the CLI (:mod:`buildgraph.cli`), imported only when one is used::

    buildgraph remote add team s3://ml-builds/buildgraph [-o endpoint_url=...] [--read-only]
    buildgraph remote ls [NAME]                 # configured remotes / one remote's entries
    buildgraph remote verify [NAME] [--all]     # re-hash a sample (or all) of it
    buildgraph remote gc [NAME] --keep-lock recipes/*.lock.json --max-age 90d
    buildgraph trust keygen                     # your signing key (~/.config/buildgraph)
    buildgraph trust add alice.pub              # entries signed by alice are trusted
    buildgraph cache push [RECIPE] [STEP...]    # upload what was built here
    buildgraph cache pull [RECIPE] [STEP...]    # download what the team built

The engine side (protocol, verification, records) is :mod:`buildgraph.engine.team.remote`; this
module parses arguments and prints. Errors are one block and exit status 2 (the CLI's one
error handler); a verification that finds a problem exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, TextIO

from buildgraph.errors import BuildgraphError

AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """``90d``, ``12h``, ``30m``, ``2w``, ``3600s`` (or plain seconds) -> seconds."""
    text = text.strip().lower()
    unit = text[-1:] if text[-1:] in AGE_UNITS else "s"
    number = text[:-1] if text[-1:] in AGE_UNITS else text
    try:
        value = float(number)
    except ValueError:
        raise BuildgraphError(f"{text!r} is not an age",
                              hint="write it as a number and a unit: 90d, 12h, 30m, 2w") from None
    if value < 0:
        raise BuildgraphError(f"{text!r}: an age cannot be negative")
    return value * AGE_UNITS[unit]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _open(start: Path, name: Optional[str], read_only: bool = False) -> Any:
    from buildgraph import api

    team = api.team_cache(start, name, read_only, _warn, strict=True)
    if team is None:
        raise BuildgraphError("no team cache is configured",
                              hint="add one with `buildgraph remote add NAME URL`, or name one "
                                   "with --remote NAME|URL or BUILDGRAPH_REMOTE")
    return team


def _size(n: int) -> str:
    from buildgraph.engine.sizes import format_size

    return format_size(n)


# --- buildgraph remote -----------------------------------------------------------------------

HELP = "the team cache: add, ls, verify, gc"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("The team cache: artifacts, TVM tuning records and TensorRT timing caches "
                     "shared through S3, GCS or a shared directory.")
    p.set_defaults(usage=p.format_help)
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    add = sub.add_parser("add", help="configure a remote in buildgraph.toml")
    add.add_argument("name")
    add.add_argument("url", help="any fsspec URL: s3://bucket/prefix, gs://bucket/prefix, "
                     "file:///mnt/nfs/buildgraph, or a directory")
    add.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                     help="a storage option (e.g. endpoint_url=http://minio:9000); never "
                          "credentials")
    add.add_argument("--read-only", action="store_true", help="never push to it")
    add.add_argument("--default", dest="default", action="store_true", default=None,
                     help="make it the default remote (the first one added is)")
    add.add_argument("--no-check", action="store_true",
                     help="do not try to reach it now")
    add.add_argument("--keygen", action="store_true",
                     help="also sign pushes: create your signing key if you have none "
                          "(~/.config/buildgraph/signing_key) and trust its public half in "
                          "this project, so that only signed entries are used")
    rm = sub.add_parser("remove", help="remove a remote from buildgraph.toml")
    rm.add_argument("name")
    ls = sub.add_parser("ls", help="list the configured remotes, or the entries of one")
    ls.add_argument("name", nargs="?", help="list this remote's entries")
    ls.add_argument("--json", action="store_true")
    verify = sub.add_parser("verify", help="download and re-hash a sample of a remote's "
                            "entries (or all of it)")
    verify.add_argument("name", nargs="?")
    verify.add_argument("--all", action="store_true", help="every entry and every object")
    verify.add_argument("--sample", type=int, default=20, metavar="N",
                        help="entries checked without --all (default 20)")
    verify.add_argument("--repair", action="store_true", help="delete corrupt objects and the "
                        "entries that use them")
    gc = sub.add_parser("gc", help="delete old entries and the objects nothing uses")
    gc.add_argument("name", nargs="?")
    gc.add_argument("--keep-lock", action="extend", nargs="+", default=[], metavar="LOCK",
                    help="never delete the entries these lock files name")
    gc.add_argument("--max-age", help="delete entries older than this (90d, 12h...)")
    gc.add_argument("--grace", default="1d", help="keep unreferenced objects younger than "
                    "this: a push uploads objects before its entry (default 1d)")
    gc.add_argument("--dry-run", action="store_true", help="say what would go")


def main(args: argparse.Namespace) -> int:
    if args.action is None:
        sys.stderr.write(args.usage())
        return 2
    return {"add": _remote_add, "remove": _remote_remove, "ls": _remote_ls,
            "verify": _remote_verify, "gc": _remote_gc}[args.action](args, sys.stdout)


def _options(items: List[str]) -> Dict[str, Any]:
    options: Dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise BuildgraphError(f"--option {item!r}: expected KEY=VALUE")
        lowered = value.lower()
        options[key] = True if lowered == "true" else False if lowered == "false" else \
            int(value) if value.isdigit() else value
    return options


def _remote_add(args: argparse.Namespace, out: TextIO) -> int:
    from buildgraph.engine.team.config import RemoteSpec, add_remote, normalize_url, \
        writable_config

    if not args.name.replace("-", "").replace("_", "").isalnum():
        raise BuildgraphError(f"remote name {args.name!r}: use letters, digits, - and _")
    options = _options(args.option)
    path = writable_config()
    url = normalize_url(args.url, Path.cwd())
    if not args.no_check:
        from buildgraph.engine.team.remote import TeamCache

        team = TeamCache(RemoteSpec(args.name, url, args.read_only, options), strict=True)
        team.rfs.create_root()
        entries = team.entry_paths()  # reaches it: one listing
        print(f"{url}: reachable, {len(entries)} entries", file=out)
    default = add_remote(path, args.name, url, options, args.read_only, args.default)
    print(f"added remote '{args.name}' ({url}) to {path}"
          + (" as the default" if default else ""), file=out)
    if args.keygen:
        _register_signing_key(out)
    return 0


def _register_signing_key(out: TextIO) -> None:
    """``remote add --keygen``: this user's signing key (created when missing), its public
    half copied beside the config and listed under ``[trust] keys``."""
    import getpass
    import socket

    from buildgraph.engine.team.config import signing_key_path, user_config_dir
    from buildgraph.engine.team.signing import keygen, load_signer

    key = signing_key_path()
    if key is None:
        key, signer = keygen(user_config_dir() / "signing_key",
                             f"{getpass.getuser()}@{socket.gethostname()}")
        print(f"wrote your signing key {key} (private: keep it to yourself) and {key}.pub",
              file=out)
    else:
        signer = load_signer(key)
        pub = Path(str(key) + ".pub")
        if not pub.is_file():
            pub.write_text(signer.public_line() + "\n", encoding="utf-8")
    _trust_add(argparse.Namespace(key=str(key) + ".pub", name=None), out)
    print(f"pushes are signed with {signer.key_id}; teammates sign theirs the same way "
          "(buildgraph trust keygen, then buildgraph trust add THEIR_KEY.pub)", file=out)


def _remote_remove(args: argparse.Namespace, out: TextIO) -> int:
    from buildgraph.engine.team.config import find_config, remove_remote

    path = find_config()
    if path is None or not remove_remote(path, args.name):
        raise BuildgraphError(f"no remote named {args.name!r} in "
                              f"{path or 'buildgraph.toml (there is none)'}")
    print(f"removed remote '{args.name}' from {path}", file=out)
    return 0


def _remote_ls(args: argparse.Namespace, out: TextIO) -> int:
    from buildgraph.engine.team.config import ENV_REMOTE, load_config, signing_key_path

    if args.name is None:
        config = load_config()
        rows = [{"name": n, "url": s.url, "read_only": s.read_only,
                 "default": n == config.default, "options": s.options}
                for n, s in sorted(config.remotes.items())]
        if args.json:
            print(json.dumps({"config": str(config.path) if config.path else None,
                              "remotes": rows,
                              "trusted_keys": [str(k) for k in config.trusted_keys]},
                             indent=2), file=out)
            return 0
        if not rows:
            print("no remotes configured (buildgraph remote add NAME URL)", file=out)
        for r in rows:
            flags = [f for f, on in (("default", r["default"]), ("read-only", r["read_only"]))
                     if on]
            print(f"{r['name']:<12} {r['url']}" + (f"  ({', '.join(flags)})" if flags else ""),
                  file=out)
        if os.environ.get(ENV_REMOTE):
            print(f"{ENV_REMOTE}={os.environ[ENV_REMOTE]} overrides the default", file=out)
        key = signing_key_path()
        print(f"trusted keys: {len(config.trusted_keys)}"
              + (" (entries must be signed by one of them)" if config.trusted_keys else
                 " (signatures are not required)")
              + f"; signing key: {key if key else 'none (pushes are unsigned)'}", file=out)
        return 0
    team = _open(Path.cwd(), args.name, read_only=True)
    entries = team.entry_paths()
    found = team.read_docs(sorted(entries))
    rows = []
    for key, f in sorted(found.items(), key=lambda kv: -entries[kv[0]].get("mtime", 0)):
        doc = f.doc or {}
        entry = doc.get("entry") or {}
        producer = doc.get("producer") or {}
        rows.append({"key": key, "recipe": entry.get("recipe"), "step": entry.get("step"),
                     "kind": entry.get("kind"), "size": f.size or entries[key]["size"],
                     "by": f"{producer.get('user', '?')}@{producer.get('host', '?')}",
                     "signed_by": (doc.get("signature") or {}).get("key"),
                     "pushed": entries[key].get("mtime"),
                     "usable": f.entry is not None, "reason": "" if f.entry else f.reason})
    if args.json:
        print(json.dumps(rows, indent=2), file=out)
        return 0
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["pushed"] or 0))
        line = (f"{r['key'][:16]}  {when}  {_size(r['size']):>10}  {r['recipe']}/{r['step']} "
                f"({r['kind']}) by {r['by']}")
        if not r["usable"]:
            line += f"  [{r['reason'].split(': ', 1)[-1]}]"
        print(line, file=out)
    total = sum(r["size"] for r in rows)
    print(f"{len(rows)} entries ({_size(total)} of outputs) in {team.spec.url}", file=out)
    return 0


def _remote_verify(args: argparse.Namespace, out: TextIO) -> int:
    team = _open(Path.cwd(), args.name, read_only=not args.repair)
    entries = team.entry_paths()
    keys = sorted(entries)
    if not args.all and len(keys) > args.sample:
        keys = sorted(random.sample(keys, args.sample))
    found = team.read_docs(keys)
    problems: List[str] = []
    bad_entries: List[str] = []
    blobs: Dict[str, Dict[str, Any]] = {}  # b3 -> size, digest, keys
    for key in keys:
        f = found[key]
        step = ((f.doc or {}).get("entry") or {}).get("step", "?")
        if f.entry is None:
            if f.reason != "gone":
                problems.append(f"entry {key[:16]} ({step}): {f.reason.split(': ', 1)[-1]}")
                if "signed" not in f.reason and "trust" not in f.reason:
                    bad_entries.append(key)
            continue
        for digest, ref in (f.doc or {}).get("blobs", {}).items():
            b = blobs.setdefault(ref["b3"], {"size": ref.get("size"), "digest": digest,
                                             "keys": []})
            b["keys"].append(key)
    if args.all:
        for b3, info in team.blob_paths().items():
            blobs.setdefault(b3, {"size": info["size"], "digest": None, "keys": []})
    corrupt: List[str] = []
    import threading

    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="buildgraph-verify-") as tmp:
        def check(b3: str) -> None:
            info = blobs[b3]
            why = team.check_blob(b3, info["size"], Path(tmp), info["digest"])
            if why is not None:
                with lock:
                    corrupt.append(b3)
                    users = ", ".join(k[:12] for k in info["keys"][:3])
                    problems.append(f"object {b3[:16]}: {why}"
                                    + (f" (used by {users})" if users else ""))
                    if why != "missing" or info["keys"]:
                        bad_entries.extend(info["keys"])

        team.parallel(check, sorted(blobs))
    for line in sorted(problems):
        print(line, file=out)
    print(f"checked {len(keys)} of {len(entries)} entries and {len(blobs)} objects: "
          + ("ok" if not problems else f"{len(problems)} problems"), file=out)
    if problems and args.repair:
        if team.read_only:
            raise BuildgraphError(f"remote '{team.name}' is read-only; not repairing")
        team.rfs.rm([team.entry_path(k) for k in sorted(set(bad_entries))])
        team.rfs.rm([team.blob_path(b) for b in corrupt])
        print(f"deleted {len(set(bad_entries))} entries and {len(corrupt)} objects", file=out)
        return 0
    return 1 if problems else 0


def _remote_gc(args: argparse.Namespace, out: TextIO) -> int:
    from buildgraph.engine.lockfile import read_lock

    if args.max_age is None and not args.keep_lock:
        print("note: without --max-age only objects no entry uses are deleted", file=out)
    max_age = parse_age(args.max_age) if args.max_age else None
    grace = parse_age(args.grace)
    keep: set = set()
    for lock in args.keep_lock:
        path = Path(lock)
        if not path.is_file():
            raise BuildgraphError(f"--keep-lock {lock}: no such lock file")
        for step, entry in read_lock(path, warn=_warn).items():
            if isinstance(entry, dict) and entry.get("key"):
                keep.add(entry["key"])
    team = _open(Path.cwd(), args.name)
    if team.read_only and not args.dry_run:
        raise BuildgraphError(f"remote '{team.name}' is read-only")
    now = time.time()
    entries = team.entry_paths()
    old = sorted(k for k, i in entries.items()
                 if max_age is not None and now - i.get("mtime", now) > max_age and k not in keep)
    live = sorted(set(entries) - set(old))
    found = team.read_docs(live)
    used = {ref["b3"] for f in found.values() if f.doc
            for ref in (f.doc.get("blobs") or {}).values() if isinstance(ref, dict)}
    blobs = team.blob_paths()
    unused = sorted(b for b, i in blobs.items()
                    if b not in used and now - i.get("mtime", now) > grace)
    freed = sum(blobs[b]["size"] for b in unused)
    verb = "would remove" if args.dry_run else "removed"
    if not args.dry_run:
        team.rfs.rm([entries[k]["path"] for k in old])  # entries first, then their objects
        team.rfs.rm([blobs[b]["path"] for b in unused])
    print(f"{verb} {len(old)} entries and {len(unused)} objects ({_size(freed)}); kept "
          f"{len(live)} entries ({len(keep & set(entries))} named by lock files)", file=out)
    return 0


# --- buildgraph trust ------------------------------------------------------------------------

TRUST_HELP = "signing keys for the team cache: keygen, add, ls"


def add_trust_arguments(p: argparse.ArgumentParser) -> None:
    """``buildgraph trust``'s arguments (the command is :mod:`buildgraph.cli.trust`)."""
    p.description = "Who may put artifacts in the team cache: ed25519 keys (OpenSSH format)."
    p.set_defaults(usage=p.format_help)
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    add = sub.add_parser("add", help="trust entries signed by this public key")
    add.add_argument("key", help="an OpenSSH ed25519 public key file (alice.pub)")
    add.add_argument("--name", help="file name under trusted-keys/ (default: the key's)")
    sub.add_parser("ls", help="list the trusted keys")
    keygen = sub.add_parser("keygen", help="make your signing key")
    keygen.add_argument("--out", help="private key file (default: "
                        "~/.config/buildgraph/signing_key; the public key goes beside it)")
    keygen.add_argument("--comment", help="who it is (default: user@host)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key")


def trust_main(args: argparse.Namespace) -> int:
    if args.action is None:
        sys.stderr.write(args.usage())
        return 2
    return {"add": _trust_add, "ls": _trust_ls, "keygen": _trust_keygen}[args.action](
        args, sys.stdout)


def _trust_add(args: argparse.Namespace, out: TextIO) -> int:
    import shutil

    from buildgraph.engine.team.config import add_trusted_key, writable_config
    from buildgraph.engine.team.signing import read_public_key

    key = read_public_key(Path(args.key))
    path = writable_config()
    base = path.parent
    source = Path(args.key).absolute()
    try:
        rel = source.relative_to(base).as_posix()
    except ValueError:  # outside the project: keep a copy with the project
        name = args.name or source.name
        if not name.endswith(".pub"):
            name += ".pub"
        dest = base / "trusted-keys" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        rel = dest.relative_to(base).as_posix()
    added = add_trusted_key(path, rel)
    print(f"{'trusting' if added else 'already trusted'}: {key.label} ({rel}, in {path})",
          file=out)
    print("entries and records must now be signed by a trusted key to be used", file=out)
    return 0


def _trust_ls(args: argparse.Namespace, out: TextIO) -> int:
    from buildgraph.engine.team.config import load_config, signing_key_path
    from buildgraph.engine.team.signing import read_public_key

    config = load_config()
    for path in config.trusted_keys:
        key = read_public_key(path)
        print(f"{key.key_id}  {key.comment or '-'}  {path}", file=out)
    if not config.trusted_keys:
        print("no trusted keys: entries are not required to be signed", file=out)
    own = signing_key_path()
    if own is not None:
        from buildgraph.engine.team.signing import load_signer

        print(f"your signing key: {load_signer(own).key_id} ({own})", file=out)
    return 0


def _trust_keygen(args: argparse.Namespace, out: TextIO) -> int:
    import getpass
    import socket

    from buildgraph.engine.team.config import user_config_dir
    from buildgraph.engine.team.signing import keygen

    path = Path(args.out) if args.out else user_config_dir() / "signing_key"
    comment = args.comment or f"{getpass.getuser()}@{socket.gethostname()}"
    path, signer = keygen(path, comment, force=args.force)
    print(f"wrote {path} (private: keep it to yourself) and {path}.pub", file=out)
    print(f"key id: {signer.key_id}", file=out)
    default = user_config_dir() / "signing_key"
    if path.absolute() != default.absolute():
        print(f"sign with it: export BUILDGRAPH_SIGNING_KEY={path}", file=out)
    print(f"teammates trust it with: buildgraph trust add {path}.pub", file=out)
    return 0


# --- buildgraph cache push / pull ------------------------------------------------------------

def add_transfer_args(sp: argparse.ArgumentParser) -> None:
    """``cache push``/``cache pull`` arguments (the cache parser adds them)."""
    sp.add_argument("recipe", nargs="?", help="only this recipe's steps (as its lock file "
                    "names them for push; as planned now for pull)")
    sp.add_argument("targets", nargs="*", metavar="STEP", help="only these steps")
    sp.add_argument("--remote", help="the remote: a configured name or a URL")
    sp.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="NAME=VALUE", help="override a recipe variable")
    sp.add_argument("--no-records", action="store_true",
                    help="leave TVM tuning records and TensorRT timing caches alone")


def cache_transfer(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``cache push`` / ``cache pull`` (called by the CLI's cache command)."""
    from buildgraph.engine.store.cache import Store

    store = Store(Path(args.cache_dir) if args.cache_dir else None, warn=_warn)
    recipe = args.recipe
    targets = list(args.targets)
    if recipe is not None and not recipe.endswith((".yaml", ".yml")):
        targets.insert(0, recipe)  # `cache push STEP...`: steps of every recipe
        recipe = None
    start = Path(recipe).absolute().parent if recipe else Path.cwd()
    push = args.cache_command == "push"
    team = _open(start, args.remote)
    try:
        with store.using():
            if push:
                return _push(team, store, recipe, targets, args, out)
            return _pull(team, store, recipe, targets, args, out)
    finally:
        store.close()


def _push(team: Any, store: Any, recipe: Optional[str], targets: List[str],
          args: argparse.Namespace, out: TextIO) -> int:
    from buildgraph.engine.team.remote import AREA_SYNC

    if team.read_only:
        raise BuildgraphError(f"remote '{team.name}' is read-only",
                              hint="read_only = true in buildgraph.toml, or "
                                   "BUILDGRAPH_REMOTE_READ_ONLY is set")
    keys: List[tuple] = []
    if recipe is not None:
        from buildgraph import api
        from buildgraph.engine.lockfile import lock_path, read_lock

        graph = api.load(recipe, args.overrides, args.cache_dir)
        lock = read_lock(lock_path(graph.recipe_path), warn=_warn)
        for sid in graph.select(targets):
            key = (lock.get(sid) or {}).get("key")
            if key:
                keys.append((sid, key))
            else:
                print(f"  {sid}: not built here yet (no lock entry)", file=out)
    else:
        wanted = set(targets)
        for key, entry, _ in store.iter_actions():
            if entry is None:
                continue
            step = str(entry.get("step", ""))
            if wanted and step not in wanted and step.split("@")[0] not in wanted:
                continue
            keys.append((step, key))
    counts: Dict[str, int] = {}
    for sid, key in keys:
        status = team.push(key, store)
        counts[status] = counts.get(status, 0) + 1
        if status in ("pushed", "healed"):
            print(f"↑ {sid}", file=out)
        elif status == "missing":
            print(f"  {sid}: not in the local cache (evicted?)", file=out)
    records = 0 if args.no_records else team.push_areas(store, sorted(AREA_SYNC))
    s = team.summary
    print(f"pushed {s.entries} results ({s.blobs} new objects, {_size(s.bytes)}); "
          f"{counts.get('present', 0)} were there already"
          + (f"; {records} record segments" if records else "")
          + f" -> {team.spec.url}", file=out)
    return 0


def _pull(team: Any, store: Any, recipe: Optional[str], targets: List[str],
          args: argparse.Namespace, out: TextIO) -> int:
    from buildgraph.engine.team.remote import AREA_SYNC

    areas: set = set() if recipe is not None or args.no_records else set(AREA_SYNC)
    pulled = failed = local = missing = 0
    if recipe is not None:
        from buildgraph import api
        from buildgraph.engine.lockfile import lock_path, read_lock
        from buildgraph.engine.planner import CACHED, PULL, RESTORE, Planner
        from buildgraph.engine.scheduler import default_build_dir

        graph = api.load(recipe, args.overrides, args.cache_dir)
        selected = graph.select(targets)
        done: set = set()
        while True:  # a step whose key reads a pulled upstream file is planned once it is here
            planner = Planner(graph, store, default_build_dir(graph).absolute(),
                              read_lock(lock_path(graph.recipe_path)), remote=team)
            decisions = planner.plan(selected)
            todo = [(sid, d) for sid, d in decisions.items()
                    if d.action == PULL and sid not in done]
            for sid, d in todo:
                done.add(sid)
                if team.fetch(d.key, store) is None:
                    failed += 1
                    print(f"✗ {sid}: could not be pulled", file=out)
                else:
                    pulled += 1
                    print(f"↓ {sid}", file=out)
            if not todo:
                break
        for sid, d in decisions.items():
            if d.action in (CACHED, RESTORE):
                local += 1 if sid not in done else 0
            elif d.action != PULL:
                missing += 1
                if not args.no_records:  # it will be built here: bring the team's records
                    areas.update(planner.describe(graph.steps[sid]).areas)
        print(f"pulled {pulled} results ({_size(team.pulled_bytes)}); {local} were here "
              f"already; {missing} not in the team cache", file=out)
    lines = team.pull_areas(store, sorted(a for a in areas if a in AREA_SYNC), force=True)
    for line in lines:
        print(f"↓ records {line}", file=out)
    if recipe is None and not lines:
        print("records: up to date" if areas else "nothing to pull (name a recipe)", file=out)
    return 1 if failed or team.rejected else 0
