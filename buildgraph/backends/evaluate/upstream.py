"""Candidates whose step failed, for ``verify``, ``benchmark`` and ``release`` under
``--keep-going``.

These kinds declare ``tolerates_failed_upstream``: the scheduler then runs them when some of
their upstream steps failed (instead of skipping them), with those steps left out of
``task.upstream`` but still in ``task.upstream_kinds`` (and keyed as failed: the same step
with every candidate built has another key). One failed export must not hide the three that
built; a step fails only when none is left, or when its ``required:`` list names a failed
one.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

from buildgraph.errors import StepFailed


def failed_upstream(task: Any, candidates: Optional[Sequence[str]] = None) -> List[str]:
    """Upstream steps that failed (or were skipped) in this run, sorted; with
    ``candidates``, only those it names (by step id or base id)."""
    failed = sorted(u for u in task.upstream_kinds if u not in task.upstream)
    if candidates is None:
        return failed
    return [u for u in failed if u in candidates or u.split("@")[0] in candidates]


def check_required(required: Sequence[str], present: Sequence[str],
                   failed: Sequence[str]) -> None:
    """Fail when a ``required:`` candidate is not among the upstream steps that built."""
    have = set(present) | {u.split("@")[0] for u in present}
    missing = [r for r in required if r not in have]
    if missing:
        why = [f"'{r}' failed upstream" if any(f == r or f.split("@")[0] == r for f in failed)
               else f"'{r}' is not an upstream step" for r in missing]
        raise StepFailed("required candidate missing: " + "; ".join(why))
