"""``shell``: run a command with declared inputs and outputs.

``${in.NAME}``, ``${in.STEP.OUTPUT}`` and ``${out.NAME}`` are replaced by shell-quoted absolute
paths. The command runs under ``bash -e -o pipefail`` (``sh -e`` where bash is missing) in a
scratch directory, with ``$BUILDGRAPH_STEP`` and ``$BUILDGRAPH_RECIPE_DIR`` set; its output
goes to the step's log. Environment variables the command reads
are not part of the key unless given under ``env:``.
"""

from __future__ import annotations

import os
import shlex
import shutil
from typing import Any, Dict, Optional

from pydantic import Field

from buildgraph.engine.execution.procs import run_logged
from buildgraph.engine.references import expand_runtime
from buildgraph.engine.executor import Executor, Task
from buildgraph.engine.params import StrictParams


class ShellParams(StrictParams):
    cmd: str = Field(description="the command; ${in.*}/${out.*} become quoted paths")
    env: Dict[str, str] = Field(default_factory=dict, description="extra environment variables")


class ShellExecutor(Executor):
    kind = "shell"
    version = "1"
    Params = ShellParams
    expand_params = False
    isolation = "worker"
    """In a worker, which dies with the run however it ends (kill -9 included) and takes the
    command's process group with it."""

    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        upstream = {up: {n: str(p) for n, p in outs.items()} for up, outs in task.upstream.items()}
        cmd = expand_runtime(task.params["cmd"], {n: str(p) for n, p in task.inputs.items()},
                             upstream, {n: str(p) for n, p in task.outputs.items()},
                             quote=shlex.quote)
        bash = shutil.which("bash")
        argv = [bash, "-e", "-o", "pipefail", "-c", cmd] if bash else ["/bin/sh", "-e", "-c", cmd]
        env = dict(os.environ)
        env.update(task.params.get("env") or {})
        env["BUILDGRAPH_STEP"] = task.step_id
        env["BUILDGRAPH_RECIPE_DIR"] = str(task.recipe_dir)
        with open(task.log_path, "ab") as log:
            log.write(f"$ {cmd}\n".encode())
            log.flush()
            run_logged(argv, log, cwd=str(task.work_dir), env=env, timeout=task.timeout,
                       what="command")
        return None
