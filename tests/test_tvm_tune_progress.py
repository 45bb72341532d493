"""A tuning run is visibly alive and stops on time: progress lines at a steady pace (the
heartbeat, also while MetaSchedule's first round measures nothing), and ``max_s`` really
ends the search, whose records so far compile into a tuned library. Real MetaSchedule on the
CPU with a tiny model; the GPU check (tools/gpu_check.sh) does the same on CUDA."""

from __future__ import annotations

import json
import re

import pytest

from tvm_helpers import TUNE, log_of, needs_tvm, run, write_project

needs_tvm()
pytest.importorskip("torch")
pytest.importorskip("xgboost")


def test_max_s_stops_a_big_budget_and_progress_lines_keep_coming(tmp_path, monkeypatch):
    monkeypatch.setenv("BUILDGRAPH_PROGRESS_S", "1")
    tune = dict(TUNE, trials=2000, max_s=4, heaviest=2)
    recipe = write_project(tmp_path, f"""
onnx: {{uses: onnx.export, with: {{model: net_a, exporter: legacy, opset: 18}}}}
tune: {{uses: tvm.tune, from: onnx, with: {json.dumps(tune)}}}
lib: {{uses: tvm.compile, from: [onnx, tune], with: {{target: native, dims: {{batch: 1}}}}}}
""")
    result = run(recipe, tmp_path)
    for sid in ("onnx", "tune", "lib"):
        assert result[sid].ok, (sid, result[sid].message, result[sid].log_tail)
    meta = result["tune"].meta
    assert meta["stopped_by_max_s"] is True
    assert 0 < meta["trials"] < 2000
    # the cut comes after the batch in flight (here the first: the builder processes start
    # with it, which takes long on a loaded 2-core machine)
    assert meta["tune_s"] < 4 + 40, meta
    log = log_of(result, "tune")
    assert "heaviest 2:" in log and "one task at a time, heaviest first" in log
    assert "stopped: max_s 4 s spent" in log
    # a line at least every interval: the stamps of the tuning lines never jump far
    stamps = [float(m) for m in re.findall(r"^\S*\s*\[\s*([\d.]+) s\]", log, re.M)]
    assert len(stamps) >= 3, log
    assert max(b - a for a, b in zip(stamps, stamps[1:])) < 1 + 12, stamps
    assert "still tuning: trials measured 0/2000" in log  # the heartbeat, before any batch
    assert "stopping after the batch in flight" in log
    # only the heaviest tasks were tuned (the matmul of net_a is the lightest); the library
    # applied the records measured before the cut
    assert "fused_matmul_add1                not selected" in log
    assert meta["tasks"] - meta["untuned"] <= 2
    assert result["lib"].meta["with_record"] >= 1


def test_records_slower_than_the_default_schedule_are_dropped():
    """The GPU guard's decision (the measuring itself needs a GPU: tests/test_tvm_gpu.py)."""
    from types import SimpleNamespace

    from buildgraph.backends.tvm.tune import TaskPlan, Tasks, slower_than_default

    lines = []
    task = SimpleNamespace(log=lines.append)
    tasks = Tasks(extracted=[None] * 4, names=["conv_a", "conv_b", "mean", "dense"],
                  hashes=["ha", "hb", "hm", "hd"], workloads={}, work=[4.0, 3.0, 1.0, 2.0])
    plan = TaskPlan(status={0: "tune", 1: "tune", 2: "not selected", 3: "tune"}, spent={},
                    to_tune=[0, 1, 3], reused=[], trials=24, per_task=8)
    # per tuned task in plan order: best record; default schedule measured by task index
    progress = SimpleNamespace(best=[20e-6, 50e-6, None], default={0: 30e-6, 1: 40e-6, 3: 9e-6})
    assert slower_than_default(task, tasks, progress, plan) == ["hb"]
    assert "  conv_a: tuned 20 us, default schedule 30 us - kept" in lines
    assert "  conv_b: tuned 50 us, default schedule 40 us - dropped: the default schedule " \
           "stays" in lines
    assert not any("dense" in ln for ln in lines)  # no record: nothing to compare
    assert slower_than_default(task, tasks, SimpleNamespace(best=[1.0], default={}), plan) == []


def test_a_batch_takes_what_a_task_may_measure_up_to_trials_per_iter():
    """One evolutionary search costs the same for 8 candidates as for 64
    (benchmarks/bench_tune_search.py), so the batch is as big as the budget allows."""
    from types import SimpleNamespace

    from buildgraph.backends.tvm.tune import TvmTuneParams, _trials_per_iter

    lines = []
    task = SimpleNamespace(log=lines.append)
    assert TvmTuneParams().trials_per_iter == 64
    # max_s or trials_per_task: one task at a time, each batch capped at the task's budget
    assert _trials_per_iter(task, 64, 384, 3, per_task=128) == 64
    assert _trials_per_iter(task, 64, 48, 6, per_task=8) == 8
    # the gradient scheduler's first round gives every task a batch: the budget is shared
    assert _trials_per_iter(task, 64, 2000, 28, per_task=2000) == 64
    assert _trials_per_iter(task, 64, 64, 19, per_task=64) == 3  # the default recipe
    assert lines == ["trials_per_iter 64 -> 3 so that all 19 tasks get trials out of 64"]
    assert _trials_per_iter(task, 2, 6, 3) == 2  # what was asked, when it fits


def test_by_default_one_batch_holds_a_tasks_whole_budget(tmp_path):
    """Also: tuned one task at a time, one cost model learns from every task; and a tune the
    cost model cannot rank (xgb scores at random for its first 100 measurements) samples twice
    a batch (at least 32), not 512, since the pick is blind anyway."""
    tune = {k: v for k, v in TUNE.items() if k not in ("trials_per_iter", "population")}
    tune.update(trials=8, trials_per_task=4, heaviest=2)
    recipe = write_project(tmp_path, f"""
onnx: {{uses: onnx.export, with: {{model: net_a, exporter: legacy, opset: 18}}}}
tune: {{uses: tvm.tune, from: onnx, with: {json.dumps(tune)}}}
""")
    result = run(recipe, tmp_path)
    assert result["tune"].ok, (result["tune"].message, result["tune"].log_tail)
    log = log_of(result, "tune")
    assert "up to 4 per task, 4 per batch" in log, log[-2000:]
    assert result["tune"].meta["trials"] == 8
    # the step's one cost model learned from both tasks' measurements, not the last one's
    assert result["tune"].meta["cost_model_measurements"] == 8
    assert "population 32: all 8 trials are picked before the cost model has learned " \
           "(xgb ranks from 100 measurements on), so a population of 512 would buy nothing" \
           in log, log[-2000:]


def test_the_population_follows_what_the_cost_model_can_rank():
    from types import SimpleNamespace

    from buildgraph.backends.tvm.tune import TvmTuneParams, _population

    task = SimpleNamespace(log=lambda line: None)
    assert TvmTuneParams().population is None
    assert _population(task, TvmTuneParams(), 400, 21) == 512  # xgb learns after 100
    assert _population(task, TvmTuneParams(), 64, 3) == 32  # the default recipe: blind picks
    assert _population(task, TvmTuneParams(), 100, 64) == 128
    assert _population(task, TvmTuneParams(cost_model="random"), 5000, 64) == 128
    assert _population(task, TvmTuneParams(population=128), 64, 3) == 128  # what was asked
    assert _population(task, TvmTuneParams(strategy="replay-trace"), 64, 3) == 512
