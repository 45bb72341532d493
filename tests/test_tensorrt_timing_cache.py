"""The shared timing-cache store on byte blobs: scopes, merge under a lock, corrupt and foreign
caches reported and replaced, hit-rate bookkeeping. TensorRT's ``ITimingCache.combine`` is
replaced by a combiner on JSON blobs with the same rules (another device's cache is refused)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from buildgraph.backends.tensorrt.timing_cache import SCHEMA, CacheRejected, CacheScope, TimingCacheStore, default_root, hit_stats, learned_needed

L4 = CacheScope("NVIDIA L4", "8.9", "12.9", "11.4.0.106")
L4_FP16 = CacheScope("NVIDIA L4", "8.9", "12.9", "10.16.1.11", ("FP16", "weakly-typed"))
H100 = CacheScope("NVIDIA H100 80GB HBM3", "9.0", "12.9", "11.4.0.106")


def blob(device: str, **entries: str) -> bytes:
    return json.dumps({"device": device, "entries": entries}, sort_keys=True).encode()


def combine(base: bytes, new: bytes) -> bytes:
    """TensorRT's rules: same device only; the base's entries win conflicts."""
    a, b = json.loads(base), json.loads(new)
    if a["device"] != b["device"]:
        raise CacheRejected("another device")
    merged = dict(b["entries"])
    merged.update(a["entries"])
    return json.dumps({"device": a["device"], "entries": merged}, sort_keys=True).encode()


def entries(data: bytes) -> int:
    return len(json.loads(data)["entries"])


@pytest.fixture
def store(tmp_path: Path) -> TimingCacheStore:
    return TimingCacheStore(default_root(tmp_path / "cache"))


def test_layout_and_scope_names(store, tmp_path):
    assert store.root == tmp_path / "cache" / "trt-timing"
    assert L4.dirname().startswith("nvidia-l4-sm89-cuda12.9-trt11.4.0.106-")
    assert len({L4.dirname(), L4_FP16.dirname(), H100.dirname()}) == 3


def test_default_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BUILDGRAPH_CACHE_DIR", str(tmp_path / "c"))
    assert default_root() == tmp_path / "c" / "trt-timing"
    monkeypatch.delenv("BUILDGRAPH_CACHE_DIR")
    assert default_root() == Path(".cache") / "trt-timing"


def test_first_merge_creates_then_combines(store):
    assert store.load(L4).status == "empty"
    first = store.merge(L4, blob("L4", a="1", b="2"), combine, count_entries=entries)
    assert first.status == "created"
    loaded = store.load(L4)
    assert loaded.usable and loaded.entries == 2 and loaded.blob == blob("L4", a="1", b="2")
    second = store.merge(L4, blob("L4", b="9", c="3"), combine, count_entries=entries)
    assert second.status == "combined"
    merged = json.loads(store.load(L4).blob)
    assert merged["entries"] == {"a": "1", "b": "2", "c": "3"}
    meta = json.loads((store.scope_dir(L4) / "meta.json").read_text())
    assert meta["schema"] == SCHEMA and meta["builds"] == 2 and meta["entries"] == 3
    assert meta["scope"]["gpu"] == "NVIDIA L4"


def test_scopes_never_mix(store):
    store.merge(L4, blob("L4", a="1"), combine)
    store.merge(H100, blob("H100", z="1"), combine)
    store.merge(L4_FP16, blob("L4", f="1"), combine)
    assert json.loads(store.load(L4).blob)["entries"] == {"a": "1"}
    assert json.loads(store.load(H100).blob)["entries"] == {"z": "1"}
    assert len(store.scopes()) == 3


def test_corrupt_cache_is_reported_moved_aside_and_replaced(store):
    store.merge(L4, blob("L4", a="1"), combine)
    path = store.scope_dir(L4) / "cache.bin"
    path.write_bytes(path.read_bytes()[:10])  # truncated
    loaded = store.load(L4)
    assert loaded.status == "corrupt" and not loaded.usable
    assert "does not match the checksum" in loaded.message and "rejected" in loaded.message
    rejected = list((store.scope_dir(L4) / "rejected").iterdir())
    assert len(rejected) == 1 and (rejected[0] / "reason.txt").read_text().startswith("its content")
    assert store.merge(L4, blob("L4", b="2"), combine).status == "created"
    assert store.load(L4).usable


def test_unreadable_meta_and_unknown_schema_are_discarded(store):
    store.merge(L4, blob("L4", a="1"), combine)
    meta = store.scope_dir(L4) / "meta.json"
    data = json.loads(meta.read_text())
    data["schema"] = 99
    meta.write_text(json.dumps(data))
    assert store.load(L4).status == "corrupt"
    store.merge(L4, blob("L4", a="1"), combine)
    meta.write_text("{not json")
    assert "unreadable" in store.load(L4).message


def test_a_cache_from_another_scope_is_never_used(store):
    store.merge(H100, blob("H100", z="1"), combine)
    # someone copied the H100 cache into the L4 directory
    (store.scope_dir(L4)).mkdir(parents=True)
    for name in ("cache.bin", "meta.json"):
        (store.scope_dir(L4) / name).write_bytes((store.scope_dir(H100) / name).read_bytes())
    loaded = store.load(L4)
    assert loaded.status == "foreign" and loaded.blob is None
    assert "NVIDIA H100 80GB HBM3 sm9.0" in loaded.message
    assert store.merge(L4, blob("L4", a="1"), combine).status == "created"
    assert json.loads(store.load(L4).blob)["entries"] == {"a": "1"}


def test_cache_that_tensorrt_refuses_to_combine_is_replaced(store):
    store.merge(L4, blob("other-device", a="1"), combine)  # passes the checksum, wrong inside
    merged = store.merge(L4, blob("L4", b="2"), combine)
    assert merged.status == "replaced" and "another device" in merged.message
    assert json.loads(store.load(L4).blob) == {"device": "L4", "entries": {"b": "2"}}
    assert (store.scope_dir(L4) / "rejected").is_dir()


def test_concurrent_merges_lose_nothing(store):
    def worker(i: int) -> None:
        store.merge(L4, blob("L4", **{f"k{i}": str(i)}), combine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(json.loads(store.load(L4).blob)["entries"]) == {f"k{i}" for i in range(8)}


def test_hit_rate_bookkeeping(store):
    # first build, empty cache: everything measured, hit rate 0, needed keys learned exactly
    first = hit_stats(set(), {"a", "b", "c"}, None)
    assert (first.hits, first.timed, first.hit_rate) == (0, 3, 0.0)
    assert learned_needed(set(), {"a", "b", "c"}, None) == {"a", "b", "c"}
    store.record_needed(L4, "net1", {"a", "b", "c"})
    assert store.needed_keys(L4, "net1") == {"a", "b", "c"}
    # the same network again from a cache holding a and b (from another model): 2 of 3 reused
    again = hit_stats({"a", "b", "x"}, {"a", "b", "c", "x"}, store.needed_keys(L4, "net1"))
    assert (again.hits, again.timed) == (2, 1) and again.hit_rate == pytest.approx(2 / 3)
    assert "hit rate 67%" in again.line()
    # a network never seen, from a non-empty cache: hits unknown, said so
    unknown = hit_stats({"a"}, {"a", "q"}, None)
    assert unknown.hit_rate is None and unknown.timed == 1
    assert "hit rate unknown" in unknown.line()
    assert learned_needed({"a"}, {"a", "q"}, None) is None
    assert store.needed_keys(L4, "never") is None
