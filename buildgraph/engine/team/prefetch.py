"""The run's side of the team cache: pull a hit into the local store (verified), prefetch
every hit known before anything runs, and say what the background pushes sent.

Apart from the scheduler, which only sees the decisions this turns PULL into (RESTORE, or RUN
when the team's copy cannot be used); the team cache itself is ``engine.team.remote.TeamCache``.
"""

from __future__ import annotations

from typing import Dict, List

from buildgraph.engine.planner import PULL, RESTORE, RUN, Decision, Planner
from buildgraph.engine.execution.runner import RunContext
from buildgraph.errors import BuildgraphError


def pull(run: RunContext, step, decision: Decision) -> Decision:
    """Download a team-cache hit into the local store (verified): a RESTORE decision, or
    RUN when its copy cannot be used (the team cache said why, once)."""
    run.reporter.step_started(step.id, decision.reasons)
    entry = None
    try:
        entry = run.remote.fetch(decision.key or "", run.store,
                                 lambda done, total: run.reporter.transfer(step.id, done, total))
    except Exception as exc:  # noqa: BLE001 - a team cache never fails a build
        run.reporter.warning(f"{run.remote.label()}: could not pull {step.id}: "
                             f"{type(exc).__name__}: {exc}")
    if entry is None or not all(n in entry["outputs"] and
                                run.store.check_output(entry["outputs"][n])
                                for n in step.outputs):
        return Decision(step.id, RUN, ("not in the local cache, and the team cache's copy "
                                       "could not be used",), decision.key, decision.parts,
                        description=decision.description)
    size = sum(int(o.get("size", 0)) for o in entry["outputs"].values())
    from buildgraph.engine.sizes import format_size

    return Decision(step.id, RESTORE, decision.reasons, decision.key, decision.parts, entry,
                    decision.description,
                    note=f"pulled from the {run.remote.label()} ({format_size(size)})")


def prefetch(run: RunContext, planner: Planner, selected: List[str]) -> Dict[str, str]:
    """Pull, in parallel, every step the team cache has and whose key is known before
    anything runs (a fully remote-cached run: all of them); the loop then restores them
    from the local store. Steps downstream of one that must run are pulled when decided.
    Returns step id -> what the pull said, for the steps pulled."""
    pulled: Dict[str, str] = {}
    try:
        decisions = planner.plan(selected)
    except BuildgraphError:
        return pulled  # the loop decides again and reports it at the step
    pulls = [d for d in decisions.values() if d.action == PULL]
    if not pulls:
        return pulled
    from concurrent.futures import ThreadPoolExecutor

    def one(decision: Decision) -> None:
        done = pull(run, run.graph.steps[decision.step_id], decision)
        if done.action == RESTORE:
            pulled[decision.step_id] = done.note

    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="buildgraph-pull") as pool:
        list(pool.map(one, pulls))
    return pulled


def report_pushes(run: RunContext) -> None:
    """Wait for the background pushes (a run leaves nothing half-pushed behind it) and say
    what went where."""
    summary = run.remote.wait()
    if summary.entries or summary.records:
        from buildgraph.engine.sizes import format_size

        run.reporter.info(f"pushed {summary.entries} results ({summary.blobs} new objects, "
                          f"{format_size(summary.bytes)})"
                          + (f" and {summary.records} record segments"
                             if summary.records else "")
                          + f" to the {run.remote.label()}")
