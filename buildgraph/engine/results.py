"""What a run is asked to do and what it gives back: run options, step and run results.

Their own module because the scheduler, both step runners (:mod:`buildgraph.engine.execution.runner`,
:mod:`buildgraph.engine.cluster.driver`), the run record and the front ends all read them, and none of
those should have to import another to get them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from buildgraph.engine.graph import StepNode
from buildgraph.engine.planner import CACHED

BUILT, RESTORED, FAILED, SKIPPED, CANCELLED = "built", "restored", "failed", "skipped", "cancelled"


@dataclass
class RunOptions:
    jobs: int = 0  # 0: number of CPU cores
    keep_going: bool = False
    force: Set[str] = field(default_factory=set)
    no_cache: bool = False
    link: str = "hardlink"
    build_dir: Optional[Path] = None
    write_lock: bool = True
    frozen: bool = False
    """Release CI: refuse to build when any step's key differs from the lock file (nothing
    runs; the error is the plan's diff), fail a step whose key turns out different once its
    upstream ran, and fail at the end, without writing, if the lock would change."""
    locked: bool = False
    """Build, but fail at the end, without writing, if the lock file would change."""
    cluster: Optional[str] = None
    """A Ray cluster's address (``engine.cluster.driver.resolve_address``): the steps that must be
    built run there instead of here."""

    def resolved_jobs(self) -> int:
        return self.jobs if self.jobs and self.jobs > 0 else (os.cpu_count() or 1)

    def forces(self, step: StepNode) -> bool:
        """Whether ``step`` is built even if cached (``--force``, ``--no-cache``, ``cache:
        false``): it ignores what was there when it was planned."""
        return step.id in self.force or step.base_id in self.force or self.no_cache \
            or not step.cache


@dataclass
class StepResult:
    step_id: str
    status: str  # built | cached | restored | failed | skipped | cancelled
    key: Optional[str] = None
    wall_s: float = 0.0
    message: str = ""
    reasons: Tuple[str, ...] = ()
    log_path: Optional[Path] = None
    log_tail: str = ""
    outputs: Dict[str, Path] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)
    origin: Optional[str] = None
    """Where a cache hit came from when not this machine's cache (``remote``); see
    :mod:`buildgraph.engine.runrecord`."""

    @property
    def ok(self) -> bool:
        return self.status in (BUILT, CACHED, RESTORED)


@dataclass
class RunResult:
    recipe: str
    steps: Dict[str, StepResult]
    wall_s: float
    build_dir: Path
    interrupted: bool = False
    lock_changes: List[str] = field(default_factory=list)
    """With ``--locked``/``--frozen``: how the lock file would have changed (it was not
    written); a non-empty list fails the run."""
    noop_watch: Optional[Tuple[List[str], List[str], List[str], List[str]]] = None
    """When every step was cached and every volatile description named what it read: (inputs,
    products, cache entries, environment variables) the decision read, for a no-op stamp
    (:mod:`buildgraph.engine.noop`)."""

    @property
    def ok(self) -> bool:
        return not self.interrupted and not self.lock_changes and \
            all(r.ok for r in self.steps.values())

    def count(self, status: str) -> int:
        return sum(1 for r in self.steps.values() if r.status == status)

    def __getitem__(self, step_id: str) -> StepResult:
        return self.steps[step_id]
