"""``buildgraph repro``: a rebuild into a scratch store, compared with the cached build.

The nondeterministic steps are real: a shell command writing the time, and a ``python`` step
writing an ONNX model with unseeded noise in its weights (compared through onnxruntime).
"""

from __future__ import annotations

import json

import pytest

from torch_helpers import write_recipe

SHELL = """
name: h
steps:
  det: {uses: shell, with: {cmd: 'echo same > ${out.t}'}, outputs: [t]}
  stamp: {uses: shell, with: {cmd: 'date +%s%N > ${out.t}'}, outputs: [t]}
  after: {uses: shell, from: stamp, with: {cmd: 'cat ${in.stamp.t} > ${out.t}'}, outputs: [t]}
  noisy: {uses: shell, from: stamp, with: {cmd: 'cat ${in.stamp.t} > ${out.t}; date +%N >> ${out.t}'},
          outputs: [t]}
"""


def test_repro_needs_a_cached_build(project):
    project.write("r.yaml", SHELL)
    proc = project.cli("repro", "r.yaml")
    assert proc.returncode == 2
    assert "4 of 4 steps are not cached: det, stamp, after, noisy" in proc.stderr
    assert "hint: build them first: buildgraph run r.yaml" in proc.stderr


def test_repro_names_a_step_that_is_not_deterministic(project):
    project.write("r.yaml", SHELL)
    project.run()
    before = {p: p.read_bytes() for p in (project.build / "h").rglob("t")}
    proc = project.cli("repro", "r.yaml")
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert "det    shell  identical\n" in out
    assert "stamp  shell  NOT REPRODUCIBLE\n" in out
    # rebuilt from the new stamp, 'after' differs; rebuilt again from the cached stamp, not
    assert "after  shell  identical from the cached inputs; from rebuilt ones: upstream " \
           "output stamp.t changed" in out
    assert "noisy  shell  NOT REPRODUCIBLE from the cached inputs" in out
    assert "  first rebuild, from the rebuilt upstream steps:\n    input: upstream output " \
           "stamp.t changed" in out
    assert "t: bytes differ from offset" in out
    assert "FAILED: h: 2 of 4 steps are not reproducible or failed: stamp, noisy" in out
    # the cached build is untouched, and the scratch store is gone
    assert {p: p.read_bytes() for p in (project.build / "h").rglob("t")} == before
    assert list((project.cache / "tmp").iterdir()) == []
    data = json.loads(project.cli("repro", "r.yaml", "det", "--json", check=0).stdout)
    assert data["ok"] and [s["verdict"] for s in data["steps"]] == ["identical"]


NOISY = '''
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def write(inputs, outputs):
    """A MatMul whose weights get unseeded noise: another model at every build."""
    weight = np.linspace(-1, 1, 40, dtype=np.float32).reshape(4, 10)
    weight += np.random.default_rng().normal(0, 1e-6, weight.shape).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"], name="matmul")], "noisy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
              outputs["model"])
'''


def test_repro_rebuilds_exports_bit_for_bit_and_measures_drift(project):
    """One worker rebuilds both TorchScript modules (-j 1) bit for bit; the benchmark differs,
    as it says it will; the noisy model differs in its numbers, and repro fails on it."""
    pytest.importorskip("onnxruntime")
    project.write("noisy.py", NOISY)
    write_recipe(project.root, """
        ts: {uses: torchscript, with: {model: tiny, mode: script}}
        trace: {uses: torchscript, with: {model: tiny, mode: trace}}
        noisy: {uses: python, with: {function: 'noisy.py:write'}, outputs: {model: model.onnx}}
        bench: {uses: benchmark, from: [ts, trace], with: {model: tiny, warmup: 1, runs: 3}}
    """)
    project.run()
    proc = project.cli("repro", "r.yaml", "-j", "1")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "ts     torchscript  identical" in out
    assert "trace  torchscript  identical" in out
    assert "bench  benchmark    differs, as expected" in out
    assert "not deterministic by design: timings" in out
    assert "report: " in out and "JSON values differ" in out
    assert "noisy  python       NOT REPRODUCIBLE (max abs" in out
    assert "model: ONNX initializer w differs: max abs" in out
    assert "model: through onnxruntime on 2 input sets [[1, 4]]" in out
    assert "within fp32 tolerance" in out
    assert "FAILED: t: 1 of 4 steps are not reproducible or failed: noisy" in out
