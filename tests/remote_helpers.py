"""Machines sharing a team cache, for the team-cache tests (not a test module)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional

from conftest import REPO

RECIPE = """\
name: team
steps:
  write:
    uses: shell
    with: {cmd: "echo hello from ${vars.who} > ${out.txt}"}
    outputs: [txt]
  upper:
    uses: shell
    from: write
    with: {cmd: "tr a-z A-Z < ${in.write.txt} > ${out.txt}"}
    outputs: {txt: upper.txt}
  tree:
    uses: shell
    from: upper
    with: {cmd: "mkdir -p ${out.d}/sub && cp ${in.upper.txt} ${out.d}/a.txt && echo b > ${out.d}/sub/b.txt"}
    outputs: {d: d}
vars: {who: alice}
"""


class Machine:
    """One teammate's checkout: its own cache and build directory, the project's config."""

    def __init__(self, root: Path, env: Dict[str, str]):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache = root / ".cache"
        self.env = env

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    def cli(self, *args: str, check: Optional[int] = 0, env: Optional[Dict[str, str]] = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        full = {**os.environ, **self.env, **(env or {})}
        full["BUILDGRAPH_CACHE_DIR"] = str(self.cache)
        full["PYTHONPATH"] = str(REPO) + os.pathsep + full.get("PYTHONPATH", "")
        proc = subprocess.run([sys.executable, "-m", "buildgraph", *args], cwd=self.root,
                              capture_output=True, text=True, env=full, timeout=timeout)
        if check is not None:
            assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
        return proc

    def run(self, *args: str, check: Optional[int] = 0, **kw) -> Dict[str, dict]:
        proc = self.cli("run", "r.yaml", "--json", *args, check=check, **kw)
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        self.last = proc
        return {e["step"]: e for e in events if e["event"] == "step_finished"}

    def plan(self, *args: str) -> Dict[str, dict]:
        proc = self.cli("plan", "r.yaml", "--json", *args)
        return {s["step"]: s for s in json.loads(proc.stdout)["steps"]}

    def warnings(self) -> List[str]:
        return [json.loads(line)["message"] for line in self.last.stdout.splitlines()
                if line.startswith('{"event": "warning"')]


def config(url: str, options: Optional[Dict[str, str]] = None, extra: str = "") -> str:
    opts = ""
    if options:
        opts = "options = {" + ", ".join(f'{k} = "{v}"' for k, v in options.items()) + "}\n"
    return f'default_remote = "team"\n[remotes.team]\nurl = "{url}"\n{opts}{extra}'


def team(tmp_path: Path, remote, names=("a", "b"), extra: str = "") -> List[Machine]:
    url, options, env = remote
    machines = []
    for name in names:
        m = Machine(tmp_path / name, env)
        m.write("r.yaml", RECIPE)
        m.write("buildgraph.toml", config(url, options, extra))
        machines.append(m)
    return machines


def open_remote(remote, **kw):
    from buildgraph.engine.team.remote import TeamCache
    from buildgraph.engine.team.config import RemoteSpec

    url, options, env = remote  # credentials: in the environment (the s3_server fixture)
    return TeamCache(RemoteSpec("team", url, False, options), strict=True, **kw)


