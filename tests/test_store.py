"""The content-addressed store: atomic writes, verification, corruption, eviction."""

from __future__ import annotations

import pytest

import json
import os

from buildgraph.engine.hashing import StatCache, file_digest, hash_file, path_digest
from buildgraph.engine.sizes import parse_size
from buildgraph.engine.store.cache import Store

RECIPE = """
steps:
  a: {uses: shell, with: {cmd: 'head -c 3000 /dev/zero > ${out.o}'}, outputs: [o]}
  b: {uses: shell, from: a, with: {cmd: 'cat ${in.a.o} ${in.a.o} > ${out.o}'}, outputs: [o]}
"""


def test_put_and_materialize_roundtrip(tmp_path):
    store = Store(tmp_path / "cache")
    src = tmp_path / "f"
    src.write_bytes(b"hello")
    entry = store.put_output(src)
    assert not src.exists()  # moved, not copied
    assert entry["digest"] == hash_file(store.blob_path(entry["digest"]))[0]
    assert oct(store.blob_path(entry["digest"]).stat().st_mode & 0o777) == "0o444"
    dest = tmp_path / "build" / "f"
    store.materialize(entry, dest)
    assert dest.read_bytes() == b"hello"
    assert store.is_materialized(entry, dest)


def test_corrupt_blob_is_a_cache_miss_with_a_warning_never_a_wrong_artifact(project):
    project.write("r.yaml", RECIPE)
    project.run()
    blobs = [p for p in (project.cache / "objects").rglob("*") if p.is_file()]
    a_out = project.build / "r" / "a" / "o"
    # corrupt the object behind a's output (it is hard-linked into the build directory)
    target = next(p for p in blobs if p.stat().st_ino == a_out.stat().st_ino)
    os.chmod(target, 0o644)
    target.write_bytes(b"x" * 3000)  # same size, different content
    verify = project.cli("cache", "verify")
    assert verify.returncode == 1
    assert "corrupt object" in verify.stdout
    proc = project.cli("run", "r.yaml", "--json")
    assert proc.returncode == 0
    assert "is corrupt" in proc.stdout  # the warning event
    statuses = project.statuses([json.loads(line) for line in proc.stdout.splitlines()])
    assert statuses["a"] == "built"
    assert a_out.read_bytes() == b"\0" * 3000
    assert project.cli("cache", "verify").returncode == 0


def test_unreadable_action_entry_is_ignored(project):
    project.write("r.yaml", RECIPE)
    project.run()
    for f in (project.cache / "actions").rglob("*.json"):
        f.write_text("{not json")
    statuses = project.statuses(project.run())
    assert set(statuses.values()) == {"built"}


def test_verify_repair_removes_broken_entries(project):
    project.write("r.yaml", RECIPE)
    project.run()
    for blob in (project.cache / "objects").rglob("*"):
        if blob.is_file() and blob.stat().st_size == 6000:
            os.chmod(blob, 0o644)
            blob.write_bytes(b"y" * 6000)
    out = project.cli("cache", "verify", "--repair")
    assert "(deleted)" in out.stdout
    assert project.cli("cache", "verify").returncode == 0


def test_gc_max_size_evicts_least_recently_used(project):
    project.write("r.yaml", """
        vars: {n: 1}
        steps:
          a: {uses: shell, with: {cmd: 'head -c 100000 /dev/urandom > ${out.o}; echo ${vars.n}'},
              outputs: [o]}
    """)
    for n in range(1, 5):
        project.run("r.yaml", "--set", f"n={n}")
    assert "in 8 objects, 4 actions" in project.cli("cache", "du").stdout  # outputs + logs
    # use n=1 again (its output is restored into the build directory): from oldest to most
    # recently used, the actions are now n=2, n=3, n=4, n=1
    assert project.statuses(project.run("r.yaml", "--set", "n=1")) == {"a": "restored"}
    out = project.cli("cache", "gc", "--max-size", "250KB", check=0).stdout
    assert "removed 2 actions" in out  # 4 x 100 kB down to 250 kB: the two oldest go
    assert "in 4 objects, 2 actions" in project.cli("cache", "du").stdout
    # one run per step setting, each checked once: n=1 and n=4 were kept, n=2 and n=3 not
    assert project.statuses(project.run("r.yaml", "--set", "n=4")) == {"a": "restored"}
    assert project.statuses(project.run("r.yaml", "--set", "n=1")) == {"a": "restored"}
    assert project.statuses(project.run("r.yaml", "--set", "n=3")) == {"a": "built"}
    assert project.statuses(project.run("r.yaml", "--set", "n=2")) == {"a": "built"}


def test_cache_ls_du_clear(project):
    project.write("r.yaml", RECIPE)
    project.run()
    ls = project.cli("cache", "ls", check=0).stdout
    assert "r/a (shell)" in ls and "2 cached actions" in ls
    rows = json.loads(project.cli("cache", "ls", "--json", check=0).stdout)
    assert {r["step"] for r in rows} == {"a", "b"}
    assert "in 4 objects, 2 actions" in project.cli("cache", "du", check=0).stdout
    project.cli("cache", "clear", check=0)
    assert set(project.statuses(project.run()).values()) == {"built"}


def test_stat_cache_skips_rehashing_and_notices_changes(tmp_path):
    f = tmp_path / "data"
    f.write_bytes(b"a" * 10000)
    old = f.stat().st_mtime - 100
    os.utime(f, (old, old))
    cache = StatCache(tmp_path / "stat.db")
    digest, _ = file_digest(f, cache)
    cache.flush()
    fresh = StatCache(tmp_path / "stat.db")
    assert fresh.get(str(f), f.stat()) == digest
    f.write_bytes(b"b" * 10000)
    os.utime(f, (old, old))  # same size and mtime, but the inode change time moved
    assert fresh.get(str(f), f.stat()) is None
    assert file_digest(f, fresh)[0] != digest


def test_directory_digest_covers_names_contents_and_exec_bits(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x").write_text("1")
    first = path_digest(d)
    (d / "sub" / "x").chmod(0o755)
    second = path_digest(d)
    (d / "sub" / "x").rename(d / "sub" / "y")
    third = path_digest(d)
    assert len({first.digest, second.digest, third.digest}) == 3
    assert first.type == "dir" and first.size == 1


def test_parse_size():
    assert parse_size("5GiB") == 5 * 1024 ** 3
    assert parse_size("2GB") == 2 * 1000 ** 3
    assert parse_size("100") == 100
    assert parse_size("1.5 MiB") == int(1.5 * 1024 ** 2)
    assert parse_size("5G") == parse_size("5GB") == 5 * 1000 ** 3  # one reader everywhere
    assert parse_size("4gib") == 4 * 1024 ** 3 and parse_size(512) == 512
    for bad in ("5X", "", "-1", "GiB", True):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_gc_max_size_and_tensorrt_pools_read_sizes_alike():
    from buildgraph.backends.tensorrt.build_params import TensorRTBuildParams

    params = TensorRTBuildParams.model_validate({"workspace": "5G"})
    assert params.workspace == "5G"  # validated by the same reader as `cache gc --max-size`
