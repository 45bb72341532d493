"""How many ``cpu`` job slots a step holds: the scheduling policy in one place.

A step that asks for ``cpu: all`` (``tvm.tune``, which keeps a builder process per slot busy
for minutes) gets every slot but one when ``-j`` is 3 or more: one slot always stays for the
short steps that become ready meanwhile. Without it, on the H200 host with ``-j 8`` a ready
``tvm.compile`` (18 s) waited five minutes behind a tune holding all eight slots. With ``-j``
1 or 2 such a step still takes them all: leaving one would halve it.
"""

from __future__ import annotations


def cpu_slots(requested: int, jobs: int) -> int:
    """Slots a step asking for ``requested`` cpu slots holds under ``-j jobs`` (-1: all)."""
    if requested == -1:
        return jobs - 1 if jobs >= 3 else jobs
    return jobs if requested > jobs else max(requested, 0)
