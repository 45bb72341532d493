"""``tvm.tune`` with real MetaSchedule runs at a tiny trial budget: records are shared through
the cache so that a second model sharing a layer with a tuned one tunes only its new
workloads; compiled libraries prove they applied records; an interrupted tuning keeps what it
measured."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import pytest

from proc_helpers import cmdline, describe, descendants, kill, needs_proc, sigint_reaches_children, wait_gone
from tvm_helpers import TUNE, eager, log_of, needs_tvm, run, write_project

needs_tvm()
pytest.importorskip("torch")
pytest.importorskip("xgboost")

REPO = Path(__file__).resolve().parent.parent
SHARED_CONV = "fused_conv2d_add_relu"  # conv 3->8 + bias + relu on 16x16: in both models


def steps(net: str, extra: str = "") -> str:
    return f"""
onnx: {{uses: onnx.export, with: {{model: {net}, exporter: legacy, opset: 18}}}}
tune: {{uses: tvm.tune, from: onnx, with: {json.dumps(TUNE)}}}
lib: {{uses: tvm.compile, from: [onnx, tune], with: {{target: native, dims: {{batch: 1}}, require_records: all}}}}
{extra}"""


def test_a_second_model_tunes_only_its_new_workloads(tmp_path: Path):
    # --- model A: everything is tuned --------------------------------------------------------
    recipe_a = write_project(tmp_path, steps("net_a", """
tune_dynamic: {uses: tvm.tune, from: onnx, with: {target: native, trials: 4}}
tune_cross: {uses: tvm.tune, from: onnx, with: {target: "llvm -mtriple=aarch64-linux-gnu", dims: {batch: 1}, trials: 4}}
"""), name="a", filename="a.yaml")
    a = run(recipe_a, tmp_path, keep_going=True)
    for sid in ("onnx", "tune", "lib"):
        assert a[sid].ok, (sid, a[sid].message, a[sid].log_tail)
    tune_a = a["tune"].meta
    assert tune_a["reused"] == 0 and tune_a["tuned"] == tune_a["tasks"] >= 3
    assert tune_a["trials"] == TUNE["trials"]
    assert a["lib"].meta["with_record"] == a["lib"].meta["functions"]  # require_records: all
    # tuning needs static shapes and a CPU it can measure on; both say so in one line
    assert a["tune_dynamic"].status == "failed"
    assert "tuning needs static shapes" in a["tune_dynamic"].message
    assert "dims: {batch: 1}" in a["tune_dynamic"].message
    assert a["tune_cross"].status == "failed"
    assert "does not run here" in a["tune_cross"].message

    # --- model B shares the first conv: only its other workloads are tuned -------------------
    recipe_b = write_project(tmp_path, steps("net_b", """
lib_other_cpu: {uses: tvm.compile, from: [onnx, tune], with: {target: "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76", dims: {batch: 1}}}
"""), name="b", filename="b.yaml")
    b = run(recipe_b, tmp_path, keep_going=True)
    for sid in ("onnx", "tune", "lib"):
        assert b[sid].ok, (sid, b[sid].message, b[sid].log_tail)
    tune_b = b["tune"].meta
    print(f"\nmodel B: {tune_b['tasks']} tasks, {tune_b['reused']} skipped (tuned for model A): "
          f"{tune_b['skipped_tasks']}; {tune_b['tuned']} tuned in {tune_b['tune_s']} s")
    assert tune_b["skipped_tasks"] == [SHARED_CONV]
    assert tune_b["reused"] == 1 and tune_b["tuned"] == tune_b["tasks"] - 1
    log = log_of(b, "tune")
    assert f"skip {SHARED_CONV}: " in log and "1 of 4 tasks already tuned" in log
    manifest = json.loads((b["tune"].outputs["database"] / "tunedb.json").read_text())
    assert {t["task"]: t["status"] for t in manifest["tasks"]}[SHARED_CONV] == "reused"
    assert all(t["records"] > 0 for t in manifest["tasks"])
    # the library applied a record to every function, reused ones included, and is correct
    lib = b["lib"].meta
    assert lib["tuned"] and lib["with_record"] == lib["functions"] and lib["without_record"] == 0
    assert f"tuned:   {SHARED_CONV}" in log_of(b, "lib")
    from buildgraph.backends.tvm.runtime import TvmRuntime
    from buildgraph.engine.runtime import RuntimeContext

    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype("float32")
    got = TvmRuntime.load(b["lib"].outputs["model"], RuntimeContext()).run([x])[0]
    np.testing.assert_allclose(got, eager(tmp_path, "net_b", 1, x), rtol=1e-4, atol=1e-5)
    # records tuned for this CPU are not applied to another one: a tuned build with none fails
    other = b["lib_other_cpu"]
    assert other.status == "failed"
    assert "applied to none of the" in other.message and "0 records for this target" in other.message

    # --- the shared records, as `buildgraph tune-db list` shows them ---------------------------
    from buildgraph.backends.tvm import tunedb_cli as tunedb

    rows = json.loads(_tune_db(tmp_path, "list", "--json"))
    assert len(rows) == tune_a["tasks"] + tune_b["tasks"] - 1  # the shared conv once
    conv = [r for r in rows if r["task"] == SHARED_CONV]
    assert len(conv) == 1 and conv[0]["trials"] > 0
    assert (tmp_path / ".cache" / "tunedb" / "v1").is_dir()

    # --- a rerun of B is cached; tuning again with reuse off measures everything -------------
    again = run(recipe_b, tmp_path, keep_going=True)
    assert again["tune"].status == "cached" and again["lib"].status == "cached"


def _tune_db(root: Path, *argv: str) -> str:
    import io

    from buildgraph.backends.tvm import tunedb_cli as tunedb

    out = io.StringIO()
    import argparse

    parser = argparse.ArgumentParser()
    tunedb._fill_parser(parser)
    args = parser.parse_args(["--cache-dir", str(root / ".cache"), *argv])
    assert tunedb.run_command(args, out) == 0
    return out.getvalue()


def test_mobilenet_style_network_tunes_compiles_and_verifies(tmp_path: Path):
    """Depthwise convolutions (groups = channels) in inverted-residual blocks, exported with a
    dynamic batch and simplified: importing with symbolic dims and binding them afterwards broke
    FuseTIR ("Inconsistent buffers ... mapped to the same relax var") in tune and compile."""
    recipe = write_project(tmp_path, f"""
onnx: {{uses: onnx.export, with: {{model: mobilenet}}}}
sim: {{uses: onnx.simplify, from: onnx}}
tune: {{uses: tvm.tune, from: sim, with: {json.dumps(TUNE)}}}
lib: {{uses: tvm.compile, from: [sim, tune], with: {{target: native, dims: {{batch: 1}}}}}}
check: {{uses: verify, from: [lib], with: {{model: mobilenet, random: 2, dims: {{batch: [1]}}}}}}
""", name="mbn")
    result = run(recipe, tmp_path)
    for sid in ("onnx", "sim", "tune", "lib", "check"):
        assert result[sid].ok, (sid, result[sid].message, result[sid].log_tail)
    assert result["tune"].meta["tasks"] >= 3
    assert result["lib"].meta["with_record"] >= 1
    report = json.loads((tmp_path / "build" / "check" / "report.json").read_text())
    assert report["candidates"]["lib"]["passed"] is True


def test_an_error_inside_tvm_is_one_located_line(tmp_path: Path):
    """The old import path (symbolic dims bound afterwards) still breaks FuseTIR on this
    network: the failure reads as one line that says where in TVM, the text goes to the log."""
    import onnx
    import torch

    from buildgraph.backends.tvm.relax import (bind_dims, build, make_target, tvm_failure)
    from buildgraph.backends.tvm.target import canonical_target
    from tvm import relax

    write_project(tmp_path, "x: {uses: shell, with: {cmd: 'true'}}")
    import importlib.util

    spec = importlib.util.spec_from_file_location("mbn_nets", tmp_path / "models" / "nets.py")
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    path = tmp_path / "m.onnx"
    torch.onnx.export(nets.mobilenetish().eval(), (torch.randn(2, 3, 16, 16),), str(path),
                      dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    from tvm.relax.frontend.onnx import from_onnx

    mod = bind_dims(from_onnx(onnx.load(str(path))), {"batch": 1})
    mod = relax.transform.DecomposeOpsForInference()(mod)
    target, _ = make_target(canonical_target("native"))
    logged = []
    with pytest.raises(Exception) as raised:
        build(mod, target)
    failure = tvm_failure(raised.value, "tvm.compile", logged.append)
    assert "\n" not in failure.message
    assert failure.message.startswith("tvm.compile failed inside TVM: InternalError: ")
    assert "Inconsistent buffers" in failure.message
    assert " in TVM)" in failure.message  # the C++ source line it failed at
    assert "Inconsistent buffers" in logged[0] and len(logged[0]) > len(failure.message)


LONG_TUNE = f"""
onnx: {{uses: onnx.export, with: {{model: net_b, exporter: legacy, opset: 18}}}}
tune: {{uses: tvm.tune, from: onnx, with: {json.dumps(dict(TUNE, trials=400))}}}
"""


def _start_run(tmp_path: Path, recipe: Path) -> subprocess.Popen:
    env = dict(os.environ, BUILDGRAPH_CACHE_DIR=str(tmp_path / ".cache"),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with sigint_reaches_children():
        return subprocess.Popen([sys.executable, "-m", "buildgraph", "run", str(recipe),
                                 "--build-dir", str(tmp_path / "build")], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _published(shared: Path) -> List[Path]:
    return [p for p in shared.rglob("*.json") if p.name != "target.json"] \
        if shared.is_dir() else []


def _wait_until(proc: subprocess.Popen, what: str, ready: Callable[[], bool],
                timeout: float = 300) -> None:
    """Poll for a concrete sign of progress (never a fixed sleep); fail if the run ends."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}: {proc.communicate()[0]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:g} s")
        time.sleep(0.2)


def _tuning_with_popen_workers(proc: subprocess.Popen) -> List[Tuple[int, int]]:
    """The run's process tree once MetaSchedule's builder and runner processes are up."""
    tree: List[Tuple[int, int]] = []

    def ready() -> bool:
        tree[:] = descendants(proc.pid)
        return sum("tvm.exec.popen_worker" in cmdline(pid) for pid, _ in tree) >= 2

    _wait_until(proc, "MetaSchedule builder and runner processes", ready)
    return tree


def _interrupt_tuning(tmp_path: Path) -> None:
    """Ctrl-C in the middle of tuning: the records of every batch measured so far are in the
    shared area, the next run skips the tasks they cover, and no process of the run is left."""
    needs_proc()
    recipe = write_project(tmp_path, LONG_TUNE)
    shared = tmp_path / ".cache" / "tunedb" / "v1"
    proc = _start_run(tmp_path, recipe)
    tree: List[Tuple[int, int]] = []
    try:
        # concrete signs, in order: two tasks' records published, the popen workers up
        _wait_until(proc, "two tasks' records published", lambda: len(_published(shared)) >= 2)
        tree = _tuning_with_popen_workers(proc)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
        left = wait_gone(tree, 2.0)
        assert not left, "still running 2 s after the run ended: " + describe(left)
    finally:
        proc.kill()
        proc.wait()
        kill(tree)
    assert proc.returncode == 130, output
    entries = [json.loads(p.read_text()) for p in _published(shared)]
    kept = {e["task"] for e in entries if e["records"]}
    assert kept, entries
    # the next run (any budget) skips what the interrupted one measured
    recipe = write_project(tmp_path, f"""
onnx: {{uses: onnx.export, with: {{model: net_b, exporter: legacy, opset: 18}}}}
tune: {{uses: tvm.tune, from: onnx, with: {json.dumps(dict(TUNE, trials=0))}}}
""")
    res = run(recipe, tmp_path)
    assert res.ok, (res["tune"].message, res["tune"].log_tail)
    assert set(res["tune"].meta["skipped_tasks"]) == kept


def test_interrupted_tuning_keeps_its_records(tmp_path: Path):
    _interrupt_tuning(tmp_path)


@pytest.mark.slow
def test_interrupted_tuning_five_times_in_a_row(tmp_path: Path):
    """The interrupt is timed by what the run has done, not by the clock: it must hold every
    time, however loaded the machine."""
    for attempt in range(5):
        _interrupt_tuning(tmp_path / f"attempt{attempt}")


def test_sigkill_of_a_tuning_run_leaves_no_process(tmp_path: Path):
    """kill -9 of the run while MetaSchedule builds and measures: the worker and its builder
    and runner processes end within 2 s (they would go on tuning for the whole budget)."""
    needs_proc()
    recipe = write_project(tmp_path, LONG_TUNE)
    proc = _start_run(tmp_path, recipe)
    tree: List[Tuple[int, int]] = []
    try:
        tree = _tuning_with_popen_workers(proc)
        assert any("buildgraph.engine.execution.worker_main" in cmdline(pid) for pid, _ in tree)
        proc.kill()
        proc.wait()
        left = wait_gone(tree, 2.0)
        assert not left, "still running 2 s after the run was killed: " + describe(left)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        kill(tree)
