"""The team cache against a hostile writer (issue 19): whoever can write the bucket must not
reach outside a teammate's cache and build directories, run code, or stop their builds.

Hypothesis builds action entries, directory manifests and record segments with absolute and
``..`` paths, NUL bytes, backslashes, symlink-looking names, non-hex and overlong digests,
sizes that lie, NaN/Infinity, wrong types, deep nesting and unknown versions, puts them on a
``file://`` remote and on a real S3 server (SeaweedFS, one per session), and has a fresh cache
pull them as a run does. Afterwards no file outside the cache and build directories was
created, changed or deleted (a canary directory with mode and content snapshots), nothing
raised, and every refusal named its reason. Examples are few and bounded: the default tier
pays a few seconds per remote.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildgraph.engine.hashing import digest_bytes, tree_digest
from buildgraph.engine.keys import action_key
from buildgraph.engine.team.remote import TeamCache, b3_bytes
from buildgraph.engine.team.config import RemoteSpec
from buildgraph.engine.store.cache import Store
from buildgraph.errors import BuildgraphError

EXAMPLES = {"file": 40, "s3": 6}
"""Hypothesis examples per remote: each S3 example pays a fresh client (~2 s on 2 cores)."""


@pytest.fixture(scope="module", params=["file", "s3"])
def arena(request, tmp_path_factory):
    """A remote of either kind, and a root that holds the canary directory beside the
    places a pull may write (one S3 server for the session, see conftest)."""
    root = tmp_path_factory.mktemp(f"hostile-{request.param}")
    canary = root / "canary"
    canary.mkdir()
    (canary / "secret.txt").write_text("do not touch\n")
    os.chmod(canary / "secret.txt", 0o600)
    (canary / ".bashrc").write_text("echo hi\n")
    (canary / "sub").mkdir()
    (canary / "sub" / "model.pt").write_bytes(b"weights")
    if request.param == "file":
        (root / "shared").mkdir()
        remote = (f"file://{root / 'shared'}", {}, {})
    else:
        server = request.getfixturevalue("s3_server")
        remote = (server.url(), server.options(), server.env())
    return request.param, root, canary, remote


def snapshot(root: Path, skip: Tuple[str, ...]) -> Dict[str, Tuple[int, bytes]]:
    """path -> (mode, content) of every file and directory under ``root`` outside ``skip``."""
    out: Dict[str, Tuple[int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir.split(os.sep)[0] in skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if str(p.relative_to(root)).split(os.sep)[0] in skip:
                continue
            st_ = p.lstat()
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
            out[str(p.relative_to(root))] = (st_.st_mode, data)
    return out


# --- building entries the way an attacker with write access would ---------------------------

class Forger:
    """Writes blobs and entries straight onto the remote (no checks: that is the point)."""

    def __init__(self, remote: Tuple[str, dict, dict], prefix: str):
        url, options, _ = remote
        self.spec = RemoteSpec("team", f"{url.rstrip('/')}/{prefix}", False, options)
        self.team = TeamCache(self.spec, strict=True)
        self.team.rfs.create_root()

    def blob(self, data: bytes) -> Tuple[str, str]:
        b3 = b3_bytes(data)
        self.team.rfs.put_bytes(self.team.blob_path(b3), data)
        return digest_bytes(data), b3

    def entry(self, key: str, text: str) -> None:
        self.team.rfs.put_bytes(self.team.rfs.path("v1", "ac", key[:2], f"{key}.json"),
                                text.encode("utf-8", "surrogatepass"))


def template(forger: Forger, manifest_names: List[str]) -> Tuple[Dict[str, Any], str]:
    """A well-formed entry with one file output and one directory output whose manifest
    names ``manifest_names``; returns (doc, key)."""
    xx, b3 = forger.blob(b"hello\n")
    manifest = {name: {"digest": xx, "exec": False, "size": 6} for name in manifest_names}
    mbytes = json.dumps(manifest, sort_keys=True).encode()
    mxx, mb3 = forger.blob(mbytes)
    parts = {"salt": uuid.uuid4().hex}
    key = action_key(parts)
    entry = {"step": "s", "recipe": "r", "kind": "shell", "parts": parts, "meta": {},
             "wall_s": 0.1,
             "outputs": {"f": {"type": "file", "digest": xx, "size": 6, "exec": False},
                         "d": {"type": "dir", "digest": tree_digest(manifest), "size": 6,
                               "manifest": mxx, "files": len(manifest)}},
             "log": xx}
    doc = {"format": "buildgraph-action", "schema": 1, "key": key, "entry": entry,
           "blobs": {xx: {"b3": b3, "size": 6}, mxx: {"b3": mb3, "size": len(mbytes)}},
           "producer": {"user": "mallory", "host": "evil", "time": 1.0}}
    return doc, key


def escape_paths(canary: Path) -> List[str]:
    """Manifest paths that would land in the canary directory (or elsewhere) if joined."""
    paths = [str(canary / "PWNED"), str(canary / "secret.txt"), "/tmp/../" + str(canary)[1:]
             + "/x", "a/../../x", "./a", "a//b", "", "a/", "..", ".", "a\\..\\..\\x",
             "a\x00b", "link -> /etc/passwd", "sub/../../../../../etc/passwd", "C:\\x"]
    paths += ["../" * n + "canary/PWNED" for n in range(1, 9)]
    paths += ["../" * n + "canary/secret.txt" for n in range(1, 9)]
    return paths


def bad_digests(canary: Path) -> List[Any]:
    return ["ab" + str(canary / "secret.txt"), "../" * 6 + "canary/secret.txt",
            "ab/../../../../canary/secret.txt", "A" * 32, "g" * 32, "a" * 31, "a" * 33,
            "a" * 64, "f" * 2000, "", None, 7, ["a" * 32], {"x": 1}, "a" * 31 + "\n",
            "a" * 32 + "\x00"]


def junk() -> st.SearchStrategy:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 80, 2 ** 80),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
    return st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                     st.dictionaries(st.text(max_size=4), c,
                                                                     max_size=3)),
                        max_leaves=6)


def mutate(doc: Dict[str, Any], data: Any, canary: Path) -> str:
    """One hostile change to ``doc``; the entry's JSON text (NaN and deep nesting are made
    in the text, where json.dumps cannot)."""
    how = data.draw(st.sampled_from([
        "digest", "b3", "size", "nan", "type", "deep", "version", "junk-field", "none"]))
    entry, blobs = doc["entry"], doc["blobs"]
    xx = entry["outputs"]["f"]["digest"]
    if how == "digest":
        bad = data.draw(st.sampled_from(bad_digests(canary)))
        where = data.draw(st.sampled_from(["file", "log", "manifest", "blobs-key"]))
        if where == "file":
            entry["outputs"]["f"]["digest"] = bad
            if isinstance(bad, str):
                blobs[bad] = blobs[xx]
        elif where == "log":
            entry["log"] = bad
        elif where == "manifest":
            entry["outputs"]["d"]["manifest"] = bad
        elif isinstance(bad, str):
            blobs[bad] = blobs.pop(xx)
    elif how == "b3":
        blobs[xx]["b3"] = data.draw(st.sampled_from(bad_digests(canary)))
    elif how == "size":
        blobs[xx]["size"] = data.draw(st.sampled_from([0, 1, 5, 7, -1, 2 ** 70, 1.5, "6",
                                                       True, None]))
    elif how == "nan":
        target = data.draw(st.sampled_from(["producer", "wall", "meta", "size"]))
        value = data.draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e400]))
        if target == "producer":
            doc["producer"]["time"] = value
        elif target == "wall":
            entry["wall_s"] = value
        elif target == "meta":
            entry["meta"] = {"x": [value]}
        else:
            blobs[xx]["size"] = value
    elif how == "type":
        path = data.draw(st.sampled_from([("entry",), ("blobs",), ("entry", "outputs"),
                                          ("entry", "parts"), ("producer",),
                                          ("entry", "outputs", "f"),
                                          ("entry", "outputs", "f", "size"),
                                          ("entry", "outputs", "d", "files"),
                                          ("entry", "outputs", "f", "type")]))
        target = doc
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = data.draw(junk())
    elif how == "version":
        field, value = data.draw(st.sampled_from([("schema", 2), ("schema", "1"),
                                                  ("format", "other"), ("schema", None)]))
        doc[field] = value
    elif how == "junk-field":
        doc[data.draw(st.sampled_from(["extra", "entry"]))] = data.draw(junk())
    text = json.dumps(doc, allow_nan=True, sort_keys=True)
    if how == "deep":
        depth = data.draw(st.sampled_from([40, 500, 100_000]))
        text = text.replace('"meta": {}', '"meta": {"x": ' + "[" * depth + "]" * depth + "}")
    return text


def pull_like_a_run(forger: Forger, key: str, work: Path) -> Tuple[List[str], str]:
    """A fresh cache plans and pulls ``key`` and restores it into a build directory, as a
    run does (BuildgraphError is how a run reports a refusal; anything else escapes).
    Returns (warnings, the lookup's reason)."""
    warnings: List[str] = []
    store = Store(work / "cache", warn=warnings.append)
    team = TeamCache(forger.spec, warn=warnings.append)
    try:
        found = team.lookup(key)
        if found.entry is None:
            return warnings, found.reason
        entry = team.fetch(key, store, found=found)
        if entry is None:
            return warnings, team._found[key].reason
        for name, out in entry["outputs"].items():
            try:
                store.materialize(out, work / "build" / "s" / name)
            except BuildgraphError as exc:
                warnings.append(f"cannot restore: {exc}")
        return warnings, found.reason
    finally:
        team.close()
        store.close()


def test_hostile_entries_and_manifests_touch_nothing_outside(arena):
    kind, root, canary, remote = arena
    before = snapshot(root, ("work", "shared"))

    @settings(max_examples=EXAMPLES[kind], deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data: Any) -> None:
        forger = Forger(remote, f"ex-{uuid.uuid4().hex[:12]}")
        names = data.draw(st.lists(st.one_of(st.sampled_from(escape_paths(canary)),
                                             st.text(max_size=12)), min_size=1, max_size=3))
        doc, key = template(forger, names)
        text = mutate(doc, data, canary) if data.draw(st.booleans()) else \
            json.dumps(doc, sort_keys=True)
        forger.entry(key, text)
        work = root / "work" / uuid.uuid4().hex[:8]
        warnings, reason = pull_like_a_run(forger, key, work)
        for line in warnings + ([reason] if reason else []):
            assert "Traceback" not in line
            if "ignored" in line or "rejected" in line or "refused" in line:
                why = line.split("ignored:", 1)[-1].split("rejected:", 1)[-1]
                assert why.strip(), line  # every refusal names its reason
        built = work / "build" / "s"
        if built.exists():  # whatever was restored lies inside the build directory
            for p in built.rglob("*"):
                assert os.path.realpath(p).startswith(str(built.resolve()) + os.sep)
        shutil.rmtree(work, ignore_errors=True)

    check()
    assert snapshot(root, ("work", "shared")) == before


def test_a_manifest_escaping_its_output_is_refused_with_its_reason(arena):
    """Defect 1 of the issue: ``../../x/PWNED`` and absolute paths were materialised there."""
    kind, root, canary, remote = arena
    before = snapshot(root, ("work", "shared"))
    depths = range(1, 8) if kind == "file" else (4,)  # S3: each remote costs a client
    for name in ["../" * n + "canary/PWNED" for n in depths] + [str(canary / "PWNED")]:
        forger = Forger(remote, f"m-{uuid.uuid4().hex[:12]}")
        doc, key = template(forger, [name])
        forger.entry(key, json.dumps(doc, sort_keys=True))
        work = root / "work" / uuid.uuid4().hex[:8]
        warnings, reason = pull_like_a_run(forger, key, work)
        assert any("manifest path" in w and ("leaves its directory" in w or "absolute" in w)
                   for w in warnings), warnings
        shutil.rmtree(work, ignore_errors=True)
    assert not (canary / "PWNED").exists()
    assert snapshot(root, ("work", "shared")) == before


def test_a_digest_naming_a_file_elsewhere_deletes_and_writes_nothing(arena):
    """Defects 2 and 3: ``ab/<absolute path>`` made check_blob hash and unlink that file; a
    digest with ``../`` made a download land at ``<elsewhere>.part``."""
    kind, root, canary, remote = arena
    before = snapshot(root, ("work", "shared"))
    bads = ["ab" + str(canary / "secret.txt"), "../../../../canary/x",
            "ab/../../../../../canary/secret.txt"]
    for bad in bads if kind == "file" else bads[:1]:
        forger = Forger(remote, f"d-{uuid.uuid4().hex[:12]}")
        doc, key = template(forger, ["a.txt"])
        xx = doc["entry"]["outputs"]["f"]["digest"]
        doc["entry"]["outputs"]["f"]["digest"] = bad
        doc["blobs"][bad] = doc["blobs"][xx]
        forger.entry(key, json.dumps(doc, sort_keys=True))
        work = root / "work" / uuid.uuid4().hex[:8]
        _, reason = pull_like_a_run(forger, key, work)
        assert "ignored" in reason and "digest" in reason, reason
        # the store itself refuses the name too, whoever asks
        store = Store(work / "cache2")
        assert store.check_blob(bad) is False
        with pytest.raises(BuildgraphError, match="not a xxh3 digest"):
            store.blob_path(bad)
        store.close()
        shutil.rmtree(work, ignore_errors=True)
    assert (canary / "secret.txt").read_text() == "do not touch\n"
    assert snapshot(root, ("work", "shared")) == before


def test_a_download_stops_at_the_declared_size(arena):
    """Defect 6: a 13-byte entry pulled 200 MB before it was rejected."""
    kind, root, canary, remote = arena
    forger = Forger(remote, f"z-{uuid.uuid4().hex[:12]}")
    doc, key = template(forger, ["a.txt"])
    big = os.urandom(3 << 20)
    xx, b3 = forger.blob(big)
    doc["entry"]["outputs"]["f"] = {"type": "file", "digest": xx, "size": 13, "exec": False}
    doc["blobs"][xx] = {"b3": b3, "size": 13}
    forger.entry(key, json.dumps(doc, sort_keys=True))
    work = root / "work" / "cap"
    store = Store(work / "cache")
    team = TeamCache(forger.spec)
    try:
        assert team.fetch(key, store) is None
        assert "longer than the 13 bytes" in team._found[key].reason, team._found[key].reason
        assert team.rfs.bytes_down < 4096, team.rfs.bytes_down  # entry, manifest, 14 of 3 MiB
    finally:
        team.close()
        store.close()
        shutil.rmtree(work, ignore_errors=True)


SCOPES_FILE = ["v1/x", "v1/a b", "-", "v1/" + "a" * 200, "v1/.hidden"]


def test_hostile_record_segments_are_ignored_with_reasons(arena):
    kind, root, canary, remote = arena
    before = snapshot(root, ("work", "shared"))

    @settings(max_examples=EXAMPLES[kind] // 2, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data: Any) -> None:
        forger = Forger(remote, f"r-{uuid.uuid4().hex[:12]}")
        scope = data.draw(st.sampled_from(SCOPES_FILE))
        payload = data.draw(st.one_of(junk(), st.just({"tvm": "0.27", "identity": {},
                                                       "workloads": {"w": {"records": [1]}}})))
        doc = {"format": "buildgraph-records", "schema": data.draw(st.sampled_from([1, 2])),
               "area": "tvm-tunedb", "scope": scope, "payload": payload,
               "producer": {"time": data.draw(st.sampled_from([1.0, math.nan]))}}
        text = json.dumps(doc, allow_nan=True, sort_keys=True)
        try:
            name = b3_bytes(json.dumps(payload, sort_keys=True, separators=(",", ":"),
                                       ensure_ascii=False, allow_nan=False).encode())
        except ValueError:
            name = "0" * 64
        name = data.draw(st.sampled_from([name, "x" * 64, name.upper(), name + "0"]))
        path = f"{forger.team.records_prefix('tvm-tunedb')}/{scope}/{name}.json"
        forger.team.rfs.put_bytes(path, text.encode())
        work = root / "work" / uuid.uuid4().hex[:8]
        warnings: List[str] = []
        store = Store(work / "cache", warn=warnings.append)
        team = TeamCache(forger.spec, warn=warnings.append)
        try:
            team.pull_areas(store, ["tvm-tunedb"], force=True)
        finally:
            team.close()
            store.close()
        for line in team.rejected:
            assert line.split("ignored", 1)[1].split(":", 2)[-1].strip(), line
        shutil.rmtree(work, ignore_errors=True)

    check()
    assert snapshot(root, ("work", "shared")) == before
