"""Shared records through the team cache: TVM tuning records (real MetaSchedule, the tiny
budget of tests/tvm_helpers.py) and TensorRT timing caches (the fake TensorRT), merged across
machines without losing concurrent pushes; and the tuning skip policy that keeps a skip from
freezing quality."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Dict, List

import pytest

from remote_helpers import Machine, config, open_remote

pytest.importorskip("fsspec", reason="the team cache needs fsspec (pip install buildgraph[remote])")
pytest.importorskip("blake3", reason="the team cache needs blake3 (pip install buildgraph[remote])")


# --- the skip policy (pure) ---------------------------------------------------------------------

def test_skip_budget_is_the_per_task_share():
    from buildgraph.backends.tvm.tune import remaining_budget, skip_budget

    assert skip_budget(64, None, 19) == 3  # the default recipe
    assert skip_budget(400, None, 19) == 21  # a later, bigger recipe does not skip those
    assert skip_budget(400, 10, 19) == 10 and skip_budget(5, 10, 3) == 5
    assert skip_budget(0, None, 19) == 0  # trials: 0 only collects what is there
    # nothing known: the whole budget; the team spent 3 on each of 19 tasks: the difference
    assert remaining_budget(64, None, 3, [], 0) == (64, 64)
    assert remaining_budget(400, None, 21, [3] * 19, 0) == (400 - 57, 400 - 57)
    # two tasks skipped (their shares are covered), one task with a cap per task
    assert remaining_budget(400, None, 21, [3] * 17, 2) == (400 - 51 - 42, 400 - 51 - 42)
    assert remaining_budget(100, 10, 10, [4, 9], 0) == (7, 6)
    assert remaining_budget(2, None, 1, [0, 0, 0], 0) == (2, 2)  # never more than asked


# --- record segments: concurrency, compaction, integrity ------------------------------------------

def _records(target: Dict[str, Any], n: int, base: float) -> List[Any]:
    return [[["trace", base, i], [base + i * 1e-6], target, []] for i in range(n)]


def _publish(cache: Path, shash: str, n: int, base: float, trials: int) -> None:
    from buildgraph.backends.tvm.records import TuneDatabase
    from buildgraph.backends.tvm.shared import SharedTuneDB

    target = {"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu", "mcpu": "skylake"}
    db = TuneDatabase({shash: f"module-{shash}"}, [(shash, r) for r in _records(target, n, base)])
    SharedTuneDB(cache / "tunedb").publish("0.27.0", db, tasks={shash: f"task_{shash}"},
                                           trials={shash: trials})


def _store(root: Path) -> Any:
    from buildgraph.engine.store.cache import Store

    return Store(root)


def test_concurrent_record_pushes_lose_nothing_and_compaction_keeps_the_union(tmp_path, remote):
    from buildgraph.backends.tvm.shared import SharedTuneDB
    from buildgraph.engine.team import remote as remote_mod

    caches = [tmp_path / f"m{i}" for i in range(6)]
    for i, cache in enumerate(caches):
        _publish(cache, "w%d" % i, 3, 1e-3 * (i + 1), trials=5)
        _publish(cache, "shared", 2, 2e-3 + i * 1e-4, trials=1 + i)
    errors: List[BaseException] = []

    def push(cache: Path) -> None:
        try:
            team = open_remote(remote)
            team.push_areas(_store(cache), ["tvm-tunedb"])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    reader = tmp_path / "reader"
    team = open_remote(remote)
    lines = team.pull_areas(_store(reader), ["tvm-tunedb"])
    assert lines and "new records" in lines[0]
    db = SharedTuneDB(reader / "tunedb")
    entries = {e.shash: e for _, _, e in db.entries()}
    assert set(entries) == {"shared"} | {f"w{i}" for i in range(6)}
    assert all(entries[f"w{i}"].trials == 5 for i in range(6))
    assert entries["shared"].trials == sum(1 + i for i in range(6))  # per contributor
    assert len(entries["shared"].records) == 12
    # pulling again changes nothing
    assert team.pull_areas(_store(reader), ["tvm-tunedb"], force=True) == []
    # more segments than COMPACT_AT: the next push leaves one segment holding everything
    count = len(open_remote(remote).records.listing("tvm-tunedb")[scope_of(entries["shared"])])
    for i in range(remote_mod.COMPACT_AT + 2):
        _publish(caches[i % 2], "shared", 1, 5e-3 + i * 1e-4, trials=1)
        open_remote(remote).push_areas(_store(caches[i % 2]), ["tvm-tunedb"])
        before, count = count, len(open_remote(remote).records.listing("tvm-tunedb")
                                   [scope_of(entries["shared"])])
        if count < before:
            break
    else:
        pytest.fail("no push compacted the scope")
    assert count == 1
    fresh = tmp_path / "fresh"
    open_remote(remote).pull_areas(_store(fresh), ["tvm-tunedb"])
    got = {e.shash: e for _, _, e in SharedTuneDB(fresh / "tunedb").entries()}
    assert set(got) == set(entries)
    assert got["shared"].trials == sum(1 + i for i in range(6)) + i + 1
    assert len(got["shared"].records) == 12 + i + 1


def scope_of(entry: Any) -> str:
    return "/".join(entry.path.parent.parts[-3:])


def test_a_corrupt_or_unsigned_record_segment_is_ignored(tmp_path, remote):
    from buildgraph.backends.tvm.shared import SharedTuneDB

    _publish(tmp_path / "a", "w", 3, 1e-3, trials=4)
    team = open_remote(remote)
    team.push_areas(_store(tmp_path / "a"), ["tvm-tunedb"])
    (scope, segments), = team.records.listing("tvm-tunedb").items()
    (name, info), = segments.items()
    doc = json.loads(team.rfs.cat(info["path"]))
    doc["payload"]["workloads"]["w"]["trials_by"] = {"x": 10 ** 6}  # claims budget it never spent
    team.rfs.put_bytes(info["path"], json.dumps(doc).encode())
    warned: List[str] = []
    reader = open_remote(remote, warn=warned.append)
    reader.strict = False
    reader.pull_areas(_store(tmp_path / "b"), ["tvm-tunedb"])
    assert list(SharedTuneDB(tmp_path / "b" / "tunedb").entries()) == []
    assert "unauthenticated (no [trust] keys)" in warned[0]  # said once, before the merge
    assert len(warned) == 2 and "does not match its name" in warned[1]


def test_tvm_record_merge_is_a_union_independent_of_order_and_repetition(tmp_path):
    from buildgraph.backends.tvm.shared import RecordSync

    for i in range(3):
        _publish(tmp_path / f"m{i}", "w", 2, 1e-3 * (i + 1), trials=i + 1)
    payloads = []
    for i in range(3):
        sync = RecordSync(tmp_path / f"m{i}" / "tunedb")
        (scope,) = sync.scopes()
        payloads.append(sync.export(scope))
    results = []
    for order in ([0, 1, 2], [2, 0, 1, 1, 2]):
        sync = RecordSync(tmp_path / f"r{len(results)}" / "tunedb")
        sync.merge(scope, [payloads[k] for k in order])
        sync.merge(scope, [payloads[0]])  # again: changes nothing
        results.append(sync.export(scope))
    assert results[0] == results[1]
    (w,) = results[0]["workloads"].values()
    assert len(w["records"]) == 6 and sum(w["trials_by"].values()) == 1 + 2 + 3


def test_timing_cache_merge_combines_and_never_replaces_what_is_here(tmp_path, monkeypatch):
    import base64

    import trt_fake
    from buildgraph.backends.tensorrt import env as trt_env
    from buildgraph.backends.tensorrt.timing_cache import CacheScope, RecordSync

    monkeypatch.setenv(trt_env.MODULE_ENV, "trt_fake")
    trt_env.probe(refresh=True)
    header = trt_fake._device_header()
    gpu = trt_fake.FAKE_GPUS[0]
    scope = CacheScope(gpu["name"], gpu["compute_capability"], trt_fake.FAKE_CUDA,
                       trt_fake.__version__)

    def payload(entries: Dict[str, str], sc: CacheScope = scope) -> Dict[str, Any]:
        import hashlib

        blob = json.dumps({"trt_fake_timing_cache": 1, "header": header, "entries": entries},
                          sort_keys=True).encode()
        return {"scope": sc.as_dict(), "sha256": hashlib.sha256(blob).hexdigest(),
                "cache": base64.b64encode(blob).decode()}

    sync = RecordSync(tmp_path / "trt-timing")
    try:
        assert sync.merge(scope.dirname(), [payload({"a": "1"}), payload({"b": "2"})]) \
            .startswith("timing cache created")
        sync.merge(scope.dirname(), [payload({"c": "3"})])
        other = CacheScope("another GPU", "9.0", "12", "11")
        assert sync.merge(scope.dirname(), [payload({"x": "9"}, other)]) == "nothing usable"
        bad = dict(payload({"y": "9"}), sha256="0" * 64)
        assert sync.merge(scope.dirname(), [bad]) == "nothing usable"
        loaded = sync.store.load(scope)
        assert json.loads(loaded.blob)["entries"] == {"a": "1", "b": "2", "c": "3"}
    finally:
        monkeypatch.delenv(trt_env.MODULE_ENV)
        trt_env.probe(refresh=True)


# --- TVM: two machines tune, a third skips everything --------------------------------------------

def _tvm_machine(root: Path, url_config: str, steps: str) -> Path:
    from tvm_helpers import write_project

    recipe = write_project(root, steps)
    (root / "buildgraph.toml").write_text(url_config, encoding="utf-8")
    return recipe


def test_two_machines_tune_disjoint_models_a_third_skips_every_task(tmp_path, s3_server,
                                                                    monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("xgboost")
    from tvm_helpers import TUNE, log_of, needs_tvm, run

    needs_tvm()
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    cfg = config(s3_server.url(), s3_server.options())

    def steps(*nets: str, **tune: Any) -> str:
        return "".join(
            f"onnx_{n}: {{uses: onnx.export, with: {{model: {n}, exporter: legacy, opset: 18}}}}\n"
            f"tune_{n}: {{uses: tvm.tune, from: onnx_{n}, with: {json.dumps(dict(TUNE, **tune))}}}\n"
            for n in nets)

    a = run(_tvm_machine(tmp_path / "a", cfg, steps("net_a")), tmp_path / "a")
    assert a.ok, a["tune_net_a"].log_tail
    b = run(_tvm_machine(tmp_path / "b", cfg, steps("net_b")), tmp_path / "b")
    assert b.ok, b["tune_net_b"].log_tail
    tuned = {"net_a": a["tune_net_a"].meta, "net_b": b["tune_net_b"].meta}
    assert tuned["net_a"]["trials"] == TUNE["trials"] and tuned["net_b"]["trials"] > 0
    # the third machine: tuning both models again (forced past the action cache) measures
    # nothing: every task is covered by the team's records
    c_recipe = _tvm_machine(tmp_path / "c", cfg, steps("net_a", "net_b"))
    c = run(c_recipe, tmp_path / "c", force=["tune_net_a", "tune_net_b"])
    assert c.ok, (c["tune_net_a"].log_tail, c["tune_net_b"].log_tail)
    assert c["onnx_net_a"].status == "restored" and c["onnx_net_b"].status == "restored"
    for net in ("net_a", "net_b"):
        meta = c[f"tune_{net}"].meta
        assert meta["reused"] == meta["tasks"] == tuned[net]["tasks"], (net, meta)
        assert meta["trials"] == 0 and meta["untuned"] == 0
        log = log_of(c, f"tune_{net}")
        assert f"{meta['tasks']} of {meta['tasks']} tasks already tuned" in log
    logs = log_of(c, "tune_net_a") + log_of(c, "tune_net_b")
    assert "# team records: tvm-tunedb v1/" in logs  # pulled before the first tuning step
    # a bigger budget does not freeze quality: every task is tuned for the difference,
    # starting from the team's records, and the step spends only what is left
    from buildgraph.backends.tvm.shared import SharedTuneDB

    manifest = json.loads((c["tune_net_a"].outputs["database"] / "tunedb.json").read_text())
    hashes = {t["workload"] for t in manifest["tasks"]}
    team_trials = [e.trials for _, _, e in SharedTuneDB(tmp_path / "c" / ".cache" / "tunedb")
                   .entries() if e.shash in hashes]
    budget = 12 // len(hashes)
    assert len(team_trials) == len(hashes) and all(t < budget for t in team_trials)
    bigger = run(_tvm_machine(tmp_path / "c", cfg, steps("net_a", trials=12)), tmp_path / "c")
    assert bigger.ok, bigger["tune_net_a"].log_tail
    meta = bigger["tune_net_a"].meta
    log = log_of(bigger, "tune_net_a")
    assert meta["reused"] == 0 and meta["tuned"] == meta["tasks"], meta
    assert "for the difference" in log and "warm start:" in log
    assert meta["trials"] == 12 - sum(team_trials), (meta, log[-2000:])


# --- TensorRT timing caches with the fake -------------------------------------------------------

TRT_RECIPE = """\
models:
  tiny:
    source: net.py:make
    inputs: {x: {shape: [batch, 3, 16, 16]}}
    dims: {batch: {min: 1, opt: 4, max: 8}}
steps:
  onnx:
    uses: shell
    inputs: {m: NET}
    with: {cmd: "cp ${in.m} ${out.model}"}
    outputs: {model: model.onnx}
  engine:
    uses: tensorrt.build
    from: onnx
    with: {model: tiny, optimization_level: LEVEL}
"""


def _other_network(path: Path) -> None:
    """Rename the layers: the fake times (layer name, op type), like TensorRT's per-layer
    timing keys, so this network shares no timing key with the first."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        node.name = "two_" + node.name
    onnx.save(model, str(path))


def test_timing_caches_merge_across_machines_with_the_fake_tensorrt(tmp_path, s3_server):
    pytest.importorskip("onnx")
    from trt_fake import make_test_onnx

    # a and b sign with their own keys and trust only their own, so b never merges a's cache
    # into its push: the remote holds two disjoint timing caches, and c, trusting both, has to
    # combine them (merge on read)
    keys = tmp_path / "keys"
    url = s3_server.url()
    env = dict(s3_server.env(), BUILDGRAPH_TENSORRT_MODULE="trt_fake")
    machines = {}
    for name in ("a", "b", "c"):
        m = Machine(tmp_path / name, env)
        m.write("net.py", "def make():\n    raise RuntimeError('not used')\n")
        make_test_onnx(m.root / "one.onnx", channels=(32, 64))
        make_test_onnx(m.root / "two.onnx", channels=(16, 48))
        _other_network(m.root / "two.onnx")
        if name != "c":
            m.cli("trust", "keygen", "--out", str(keys / name))
            m.env = dict(env, BUILDGRAPH_SIGNING_KEY=str(keys / name))
        trusted = [str(keys / f"{k}.pub") for k in (("a", "b") if name == "c" else (name,))]
        m.write("buildgraph.toml", config(url, s3_server.options(),
                                          f"[trust]\nkeys = {json.dumps(trusted)}\n"))
        machines[name] = m
    a, b, c = machines["a"], machines["b"], machines["c"]
    a.write("r.yaml", TRT_RECIPE.replace("NET", "one.onnx").replace("LEVEL", "3"))
    b.write("r.yaml", TRT_RECIPE.replace("NET", "two.onnx").replace("LEVEL", "3"))
    for m in (a, b):
        meta = m.run()["engine"]
        assert meta["status"] == "built", meta
        assert meta["meta"]["timing_cache"]["timed"] > 0 and \
            meta["meta"]["timing_cache"]["entries_before"] == 0
    team = open_remote((url, s3_server.options(), {}))
    (scope, segments), = team.records.listing("trt-timing").items()
    assert len(segments) == 2
    pulled = c.cli("cache", "pull").stdout
    assert pulled.count("↓ records trt-timing") == 1 and "timing cache created" in pulled, pulled
    # both networks, at another optimization level (other keys, same tactics): nothing timed
    for net in ("one.onnx", "two.onnx"):
        c.write("r.yaml", TRT_RECIPE.replace("NET", net).replace("LEVEL", "5"))
        engine = c.run()["engine"]
        assert engine["status"] == "built", engine
        timing = engine["meta"]["timing_cache"]
        assert timing["timed"] == 0 and timing["entries_before"] > 0, timing
    scopes = list((c.cache / "trt-timing").glob("*/meta.json"))
    assert len(scopes) == 1
