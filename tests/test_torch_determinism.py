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
