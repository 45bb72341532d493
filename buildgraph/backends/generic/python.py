"""``python``: call ``module:function`` with the step's inputs, outputs and parameters.

The function is called as ``fn(inputs, outputs, **args)`` where ``inputs`` maps declared file
inputs by name and upstream outputs as ``"STEP.OUTPUT"`` to paths, and ``outputs`` maps each
declared output to the path to write. A returned dict is stored as the step's metadata. The
function's source file and the local modules it imports are part of the key, so editing them
re-runs the step. It runs in a persistent worker process: a crash fails the step, not the run.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from pydantic import Field

from buildgraph.errors import StepFailed
from buildgraph.backends.generic.sources import local_sources, resolve_callable
from buildgraph.engine.environment import python_version
from buildgraph.engine.executor import DescribeContext, Description, Executor, Task
from buildgraph.engine.params import StrictParams


class PythonParams(StrictParams):
    function: str = Field(description="'path/file.py:function' or 'package.module:function'")
    args: Dict[str, Any] = Field(default_factory=dict, description="keyword arguments")


def load_callable(ref: str, recipe_dir: Path) -> Any:
    """Import the callable named by ``ref`` (used by workers; may import anything)."""
    path, module_name, attr = resolve_callable(ref, recipe_dir)
    if path is not None and path.name != "__init__.py" and ref.rpartition(":")[0].endswith(".py"):
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        name = f"_buildgraph_src_{path.stem}_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        if str(recipe_dir) not in sys.path:
            sys.path.insert(0, str(recipe_dir))
        module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise StepFailed(f"{module_name} has no attribute '{attr}'") from None


class PythonExecutor(Executor):
    kind = "python"
    version = "1"
    Params = PythonParams
    isolation = "worker"

    def describe(self, params: PythonParams, ctx: DescribeContext) -> Description:
        """The function's source file and the local modules it imports, and the Python
        version."""
        path, _, _ = resolve_callable(params.function, ctx.recipe_dir)
        sources = {} if path is None else {
            f"source:{p.relative_to(ctx.recipe_dir) if p.is_relative_to(ctx.recipe_dir) else p}": p
            for p in local_sources(path, [ctx.recipe_dir])}
        return Description(inputs=sources, env={"python": python_version()})

    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        fn = load_callable(task.params["function"], task.recipe_dir)
        inputs: Dict[str, Path] = {n: p for n, p in task.inputs.items()
                                   if not n.startswith("source:")}
        for up, outs in task.upstream.items():
            for name, p in outs.items():
                inputs[f"{up}.{name}"] = p
        result = fn(inputs=inputs, outputs=dict(task.outputs), **task.params.get("args", {}))
        return result if isinstance(result, dict) else None
