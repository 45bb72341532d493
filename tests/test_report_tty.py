"""The live view on a real terminal: styled, never raw rich markup.

Run under a pseudo-terminal, ``buildgraph run`` takes the TTY path (rich ``Live``); what reaches
the screen must hold the styles as escape sequences, not ``[dim]...[/]`` as text.
"""

from __future__ import annotations

import os
import re
import select
import signal
import sys
import time

import pytest

from conftest import REPO

pty = pytest.importorskip("pty")

CSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
MARKUP = re.compile(r"\[/?(?:dim|cyan|bold|red|green|yellow)?\]")

RECIPE = """
name: hello
steps:
  write: {uses: shell, with: {cmd: 'sleep 0.3; echo hi > ${out.txt}'}, outputs: [txt]}
  upper:
    uses: shell
    from: write
    with: {cmd: 'sleep 0.3; tr a-z A-Z < ${in.write.txt} > ${out.txt}'}
    outputs: [txt]
  shout:
    uses: shell
    matrix: {times: [1, 3]}
    with: {cmd: 'sleep 0.5; for i in $(seq ${matrix.times}); do cat ${in.upper.txt}; done > ${out.txt}'}
    outputs: [txt]
"""


def _run_on_pty(argv, cwd, env, timeout=60.0) -> bytes:
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session whose controlling terminal is the pty
        try:
            os.chdir(cwd)
            os.execve(sys.executable, [sys.executable, *argv], env)
        finally:
            os._exit(127)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        else:
            pytest.fail("buildgraph run on a pty did not finish in time")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, b"".join(chunks))
    return b"".join(chunks)


def test_live_view_on_a_terminal_shows_no_markup(project):
    project.write("hello.yaml", RECIPE)
    env = dict(os.environ, BUILDGRAPH_CACHE_DIR=str(project.cache), TERM="xterm-256color",
               COLUMNS="100", LINES="30",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NO_COLOR", None)
    raw = _run_on_pty(["-m", "buildgraph", "run", "hello.yaml", "-j", "1"], project.root, env)
    screen = CSI.sub(b"", raw).decode("utf-8", errors="replace")
    # the TTY path was taken: the live panel was drawn, with its styles as escape codes
    assert "done, 0 from the cache" in screen, screen
    assert b"\x1b[2m" in raw and b"\x1b[36m" in raw, raw
    assert "4 built" in screen, screen
    assert not MARKUP.findall(screen), screen
