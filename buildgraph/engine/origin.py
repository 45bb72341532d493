"""Which files in this process came from another machine without a trusted signature.

A cache entry pulled from the team cache records its origin in the local store
(``origin.trusted``: signed by a key the project trusts). When a step's upstream outputs came
that way, the scheduler hands their paths to the step (``Task.untrusted``) and the process
that runs it marks them here; loaders that would run code from a file (``torch.load`` with
``weights_only=False``) ask :func:`untrusted` first and refuse. The marks live in the
environment so that the child processes a step starts (benchmark runners) inherit them.
Local builds are never marked: they keep today's behaviour.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Union

ENV = "BUILDGRAPH_UNTRUSTED_PATHS"

REFUSAL_HINT = ("it came from the team cache without a signature by a key this project "
                "trusts, and unpickling it would run code from whoever wrote the remote; sign "
                "pushes (`buildgraph trust keygen`, then `buildgraph trust add KEY.pub` on "
                "every machine), or rebuild it here (`buildgraph run --force STEP`)")


def mark(paths: Iterable[Union[str, Path]]) -> None:
    """Mark ``paths`` (files or directories) as pulled without a trusted signature, in this
    process and the processes it starts."""
    known = [p for p in os.environ.get(ENV, "").split(os.pathsep) if p]
    new = [os.path.abspath(str(p)) for p in paths]
    merged = list(dict.fromkeys(known + new))
    if merged != known:
        os.environ[ENV] = os.pathsep.join(merged)


def untrusted(path: Union[str, Path]) -> Optional[str]:
    """The marked output ``path`` is (or is inside), or None when it was built here or
    signed by a trusted key."""
    marks = [p for p in os.environ.get(ENV, "").split(os.pathsep) if p]
    if not marks:
        return None
    here = os.path.abspath(str(path))
    real = os.path.realpath(here)
    for m in marks:
        for candidate in (here, real):
            if candidate == m or candidate.startswith(m.rstrip(os.sep) + os.sep):
                return m
    return None
