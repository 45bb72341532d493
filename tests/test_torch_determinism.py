"""PyTorch exports give the same bytes whatever their worker ran before, and in any process.

Two sources made them differ (measured with torch 2.13): TorchScript's process-wide compilation
unit renames a class compiled a second time (``___torch_mangle_N``, from a counter that only
grows), and TorchScript writes a module's constants in the iteration order of a set of names,
which follows the per-process string hash seed. ``torch.save``, ``torch.export`` and both ONNX
exporters were already deterministic; they are checked here too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from conftest import Project
from torch_helpers import write_recipe

STEPS = """
ts_script: {uses: torchscript, with: {model: tiny, mode: script}}
ts_trace: {uses: torchscript, with: {model: tiny, mode: trace}}
exported: {uses: torch.export, with: {model: tiny}}
onnx_legacy: {uses: onnx.export, with: {model: tiny, exporter: legacy}}
state: {uses: torch.save, with: {model: tiny}}
"""

STEPS_REVERSED = "\n".join(reversed(STEPS.strip().splitlines()))


def digests(build: Path) -> dict:
    return {p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(build.glob("t/*/model.*"))}


def test_exports_are_identical_alone_and_after_other_steps_in_one_worker(project):
    write_recipe(project.root, STEPS)
    # one worker runs them all, in file order: the trace comes after the script
    project.run("r.yaml", "-j", "1")
    together = digests(project.build)
    assert set(together) == {"ts_script", "ts_trace", "exported", "onnx_legacy", "state"}
    # each again, alone, in a new worker of a new run (another hash seed without the fix)
    for step in ("ts_trace", "ts_script"):
        project.run("r.yaml", "--force", step, step)
    again = digests(project.build)
    assert again == together
    # the reverse order in one worker (steps start in file order): trace, then script
    write_recipe(project.root, STEPS_REVERSED, filename="r2.yaml")
    statuses = project.statuses(project.run("r2.yaml", "-j", "1", "--force", "ts_trace",
                                            "--force", "ts_script", "--force", "exported"))
    assert statuses["ts_trace"] == statuses["ts_script"] == "built"
    assert digests(project.build) == together


LOCATION_STEPS = STEPS + """
onnx_dynamo: {uses: onnx.export, with: {model: tiny, exporter: dynamo}}
"""


def test_exports_are_identical_when_built_in_another_directory(project, tmp_path_factory):
    """A release rebuilt in another clone gives the same bytes: no export records where the
    checkout lies (TorchScript debug records, .pt2 and dynamo ONNX stack traces held
    absolute paths of the model's source before)."""
    import onnx
    import torch

    write_recipe(project.root, LOCATION_STEPS)
    project.run("r.yaml")
    here = digests(project.build)
    assert set(here) == {"ts_script", "ts_trace", "exported", "onnx_legacy", "onnx_dynamo",
                         "state"}
    other = Project(tmp_path_factory.mktemp("another-clone-with-a-longer-name"))
    write_recipe(other.root, LOCATION_STEPS)
    other.run("r.yaml")
    assert digests(other.build) == here
    # what was made location-free is still there, with relative paths
    dynamo = onnx.load(str(project.build / "t/onnx_dynamo/model.onnx"))
    traces = [p.value for n in dynamo.graph.node for p in n.metadata_props
              if p.key.endswith("stack_trace")]
    assert any('File "models/tiny.py"' in t for t in traces), traces[:2]
    assert all(str(project.root) not in t and "site-packages" not in t for t in traces)
    program = torch.export.load(str(project.build / "t/exported/model.pt2"))
    assert any(n.meta.get("stack_trace") for n in program.graph.nodes)
    loaded = torch.jit.load(str(project.build / "t/ts_trace/model.ts"))
    assert loaded is not None
