"""Tuning databases as files: read/write MetaSchedule's JSON format, deterministic merges,
target filtering, top-k pruning, the shared area under the cache, and ``tune-db``
(pure Python: synthetic records, no TVM)."""

from __future__ import annotations

import io
import json
import multiprocessing
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buildgraph.backends.tvm import tunedb_cli as tunedb
from buildgraph.backends.tvm.records import RECORD_FILE, WORKLOAD_FILE, TuneDatabase, TuneDbError, merge, read_db, record_seconds, write_db
from buildgraph.backends.tvm.shared import SharedTuneDB

ZEN = {"keys": ["cpu"], "kind": "llvm", "mcpu": "znver4", "num-cores": 2, "tag": ""}
SKYLAKE = {"keys": ["cpu"], "kind": "llvm", "mcpu": "skylake", "num-cores": 2, "tag": ""}
ARGS = [["TENSOR", "float32", [1, 8]], ["TENSOR", "float32", [1, 8]]]


def rec(step: int, secs: Optional[float], target=ZEN) -> list:
    trace = [[["Split", [f"l{step}"], [step], ["l1", "l2"]]], [[0, [step, 1]]]]
    return [trace, [secs] if secs is not None else None, dict(target), ARGS]


def db_of(entries) -> TuneDatabase:
    """entries: (hash, step, seconds[, target])"""
    db = TuneDatabase()
    for e in entries:
        shash, step, secs = e[:3]
        db.workloads[shash] = f"module-{shash}"
        db.records.append((shash, rec(step, secs, *(e[3:]))))
    return db


def test_round_trip_in_metaschedule_format(tmp_path: Path):
    db = db_of([("22", 1, 3e-5), ("11", 2, 1e-5), ("22", 3, 2e-5), ("11", 4, None)])
    write_db(db, tmp_path / "db")
    lines = (tmp_path / "db" / WORKLOAD_FILE).read_text().splitlines()
    assert [json.loads(l)[0] for l in lines] == ["11", "22"]  # sorted by hash
    recs = [json.loads(l) for l in (tmp_path / "db" / RECORD_FILE).read_text().splitlines()]
    # records point at workloads by line; fastest first per workload, failures last
    assert [(r[0], r[1][1]) for r in recs] == [(0, [1e-5]), (0, None), (1, [2e-5]), (1, [3e-5])]
    again = read_db(tmp_path / "db")
    assert sorted(again.records, key=str) == sorted(db.records, key=str)
    assert again.workloads == db.workloads


def test_failed_measurements_are_not_valid():
    assert record_seconds(rec(1, 2e-5)) == 2e-5
    assert record_seconds(rec(1, None)) is None
    assert record_seconds(rec(1, 1e10)) is None  # MetaSchedule's marker for a failed run
    assert record_seconds([[], [1e-5, 3e-5], ZEN, ARGS]) == pytest.approx(2e-5)


def test_merge_dedups_keeps_faster_and_filters_by_target():
    a = db_of([("1", 1, 5e-5), ("1", 2, 4e-5), ("2", 1, 1e-5, SKYLAKE)])
    b = db_of([("1", 1, 3e-5), ("1", 3, None)])
    merged = merge([a, b])
    by = merged.by_workload()
    assert len(by["1"]) == 3  # step 1 once (the 3e-5 measurement), step 2, failed step 3
    assert [record_seconds(r) for r in by["1"]] == [3e-5, 4e-5, None]
    only_zen = merge([a, b], target={"kind": "llvm", "mcpu": "znver4", "num-cores": 2},
                     valid_only=True)
    assert set(only_zen.workloads) == {"1"}
    assert all(r[2]["mcpu"] == "znver4" for _, r in only_zen.records)
    assert len(merge([a, b], top_k=1).by_workload()["1"]) == 1


def test_merge_keeps_top_k_per_target():
    db = db_of([("1", i, (i + 1) * 1e-5) for i in range(5)]
               + [("1", i, (i + 1) * 1e-5, SKYLAKE) for i in range(5)])
    pruned = merge([db], top_k=2)
    assert len(pruned.records) == 4  # 2 per (workload, target)


record_st = st.tuples(st.sampled_from(["1", "2", "3"]), st.integers(0, 6),
                      st.one_of(st.none(), st.floats(1e-6, 1e-3)),
                      st.sampled_from([ZEN, SKYLAKE]))


@settings(max_examples=60, deadline=None)
@given(st.lists(record_st, max_size=12), st.lists(record_st, max_size=12),
       st.lists(record_st, max_size=12), st.sampled_from([None, 1, 2]))
def test_merging_is_deterministic_whatever_the_order(a, b, c, top_k):
    dbs = [db_of(a), db_of(b), db_of(c)]
    outs = set()
    for order in ((0, 1, 2), (2, 1, 0), (1, 2, 0)):
        m = merge([dbs[i] for i in order], top_k=top_k)
        outs.add(json.dumps([m.workloads, sorted(m.records, key=json.dumps)], sort_keys=True))
    assert len(outs) == 1


def test_merge_dirs_gives_identical_bytes(tmp_path: Path):
    write_db(db_of([("5", 1, 2e-5), ("7", 2, 1e-5)]), tmp_path / "a")
    write_db(db_of([("5", 3, 1e-5), ("7", 2, 3e-5)]), tmp_path / "b")
    tunedb.merge_dirs([tmp_path / "a", tmp_path / "b"], tmp_path / "ab")
    tunedb.merge_dirs([tmp_path / "b", tmp_path / "a"], tmp_path / "ba")
    for name in (WORKLOAD_FILE, RECORD_FILE):
        assert (tmp_path / "ab" / name).read_bytes() == (tmp_path / "ba" / name).read_bytes()


def test_a_torn_last_line_is_dropped_but_corruption_inside_is_an_error(tmp_path: Path):
    write_db(db_of([("1", 1, 2e-5), ("1", 2, 3e-5)]), tmp_path / "db")
    path = tmp_path / "db" / RECORD_FILE
    path.write_text(path.read_text() + '[0,[[["Spl', encoding="utf-8")  # killed mid-write
    assert len(read_db(tmp_path / "db").records) == 2
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "[7, garbage", lines[1]]) + "\n")
    with pytest.raises(TuneDbError, match=f"{RECORD_FILE}:2"):
        read_db(tmp_path / "db")
    with pytest.raises(TuneDbError, match="not a directory"):
        read_db(tmp_path / "nope")


# --- the shared area ---------------------------------------------------------------------------

def test_publish_lookup_and_filter_by_target_and_version(tmp_path: Path):
    shared = SharedTuneDB(tmp_path / "cache")
    added = shared.publish("0.27", db_of([("1", 1, 2e-5), ("1", 2, None), ("2", 1, 1e-5, SKYLAKE)]),
                           tasks={"1": "conv"}, trials={"1": 2})
    assert added == {"1": 1, "2": 1}  # failed measurements are not shared
    zen = {"kind": "llvm", "mcpu": "znver4", "num-cores": 2}
    found = shared.lookup("0.27", zen, ["1", "2", "3"])
    assert set(found) == {"1"}  # workload 2 was tuned for skylake only
    assert found["1"].task == "conv" and found["1"].trials == 2 and found["1"].valid == 1
    assert shared.lookup("0.28", zen, ["1"]) == {}  # another TVM version
    # publishing again adds trials, not duplicates
    shared.publish("0.27", db_of([("1", 1, 2e-5), ("1", 3, 1e-5)]), trials={"1": 2})
    entry = shared.lookup("0.27", zen, ["1"])["1"]
    assert entry.trials == 4 and entry.valid == 2 and entry.best == 1e-5
    layout = sorted(p.relative_to(shared.root).as_posix() for p in shared.root.rglob("*.json"))
    assert layout[0].startswith("v1/0.27/llvm_skylake-") and layout[-1].endswith("target.json")
    exported = shared.export("0.27", zen)
    assert set(exported.workloads) == {"1"} and len(exported.records) == 2


def test_prune_keeps_top_k(tmp_path: Path):
    shared = SharedTuneDB(tmp_path / "cache", top_k=100)
    shared.publish("v", db_of([("1", i, (10 - i) * 1e-6) for i in range(10)]))
    assert shared.prune(3) == {"kept": 3, "removed": 7}
    entry = next(iter(shared.entries()))[2]
    assert [record_seconds(r) for r in entry.records] == [1e-6, 2e-6, 3e-6]


def _publisher(cache: str, worker: int) -> None:
    shared = SharedTuneDB(Path(cache), top_k=1000)
    for i in range(15):
        shared.publish("v", db_of([("1", worker * 100 + i, (i + 1) * 1e-6)]),
                       trials={"1": 1})


def test_concurrent_publishers_lose_nothing(tmp_path: Path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_publisher, args=(str(tmp_path / "cache"), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    entry = SharedTuneDB(tmp_path / "cache").lookup("v", ZEN, ["1"])["1"]
    assert entry.trials == 45 and len(entry.records) == 45


# --- the tune-db command -----------------------------------------------------------------------

def cli(*argv: str) -> str:
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    tunedb.add_parser(sub)
    args = parser.parse_args(["tune-db", *argv])
    out = io.StringIO()
    assert tunedb.run_command(args, out) == 0
    return out.getvalue()


def test_tune_db_command(tmp_path: Path):
    cache = str(tmp_path / "cache")
    write_db(db_of([("1", 1, 2e-5), ("1", 2, 3e-5)]), tmp_path / "a")
    write_db(db_of([("1", 3, 1e-5), ("2", 1, 4e-5, SKYLAKE)]), tmp_path / "b")
    assert "merged 2 databases" in cli("merge", str(tmp_path / "a"), str(tmp_path / "b"),
                                       "-o", str(tmp_path / "ab"), "--top-k", "2")
    assert len(read_db(tmp_path / "ab").records) == 3
    only = cli("merge", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "sk"),
               "--target", "llvm -mcpu=skylake -num-cores=2")
    assert "1 workloads, 1 records" in only
    assert "imported 4 new records" in cli("--cache-dir", cache, "import", str(tmp_path / "a"),
                                           str(tmp_path / "b"), "--tvm-version", "0.27")
    listing = cli("--cache-dir", cache, "list")
    assert "llvm -mcpu=znver4 -num-cores=2" in listing and "2 workloads" in listing
    rows = json.loads(cli("--cache-dir", cache, "list", "--json"))
    assert {(r["workload"], r["valid"]) for r in rows} == {("1", 3), ("2", 1)}
    assert "kept 2 records, removed 2" in cli("--cache-dir", cache, "prune", "--top-k", "1")
    cli("--cache-dir", cache, "export", "-o", str(tmp_path / "out"), "--tvm-version", "0.27",
        "--target", "llvm -mcpu=znver4 -num-cores=2")
    assert len(read_db(tmp_path / "out").records) == 1
    assert "kept 2 of 3" in cli("prune", str(tmp_path / "ab"), "--top-k", "1")
    assert "cleared" in cli("--cache-dir", cache, "clear")
    assert "no tuning records" in cli("--cache-dir", cache, "list")


def test_cli_main_reports_errors(tmp_path: Path, capsys):
    assert tunedb.cli_main(["list", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
