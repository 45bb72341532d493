"""The Python API: the same operations as the CLI, returning data instead of printing.

The engine is imported inside each function, not here: ``import buildgraph.api`` (and so
``buildgraph --help`` or ``buildgraph cache du``) must not pay for the planner, scheduler and
store, and a fully cached ``run`` imports only what deciding it needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Mapping, Optional, Sequence, Union

if TYPE_CHECKING:  # pragma: no cover
    from buildgraph.engine.graph import Graph
    from buildgraph.engine.planner import Decision
    from buildgraph.engine.scheduler import RunResult
    from buildgraph.reporters import Reporter

Overrides = Union[Mapping[str, Any], Sequence[str], None]


def _overrides(overrides: Overrides, legacy: Mapping[str, Any], function: str) -> Overrides:
    """``overrides``, or what the older spelling ``set=`` (the README's until the rename: a
    parameter named ``set`` hid the builtin in these functions) gave."""
    unknown = [k for k in legacy if k != "set"]
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument '{unknown[0]}'")
    if "set" in legacy:
        if overrides is not None:
            raise TypeError(f"{function}(): give overrides= or set=, not both")
        return legacy["set"]
    return overrides


def load(recipe: Union[str, Path], overrides: Overrides = None,
         cache_dir: Optional[Union[str, Path]] = None, use_cache: bool = True,
         **legacy: Any) -> Graph:
    """Load and validate a recipe (raises RecipeError with file:line on problems).
    ``overrides``: recipe variables, as ``--set`` gives them (a mapping or ``NAME=VALUE``
    strings; ``set=`` is the older spelling).

    Resolved recipes are cached in the cache directory (see ``recipe.cache``)."""
    overrides = _overrides(overrides, legacy, "load")
    if not use_cache:
        from buildgraph.recipe.load import load_recipe

        return load_recipe(recipe, overrides)
    from buildgraph.engine.store.cache import default_cache_dir
    from buildgraph.recipe.cache import load_graph

    return load_graph(recipe, overrides, Path(cache_dir) if cache_dir else default_cache_dir())


def _graph(recipe: Union[str, Path, Graph], overrides: Overrides,
           cache_dir: Optional[Union[str, Path]]) -> Graph:
    from buildgraph.engine.graph import Graph

    return recipe if isinstance(recipe, Graph) else load(recipe, overrides, cache_dir)


def run(recipe: Union[str, Path, Graph], targets: Sequence[str] = (), overrides: Overrides = None,
        jobs: int = 0, keep_going: bool = False, force: Iterable[str] = (),
        no_cache: bool = False, cache_dir: Optional[Union[str, Path]] = None,
        build_dir: Optional[Union[str, Path]] = None, link: str = "hardlink",
        reporter: Optional[Reporter] = None, remote: Optional[str] = None,
        remote_read_only: bool = False, rebench: bool = False, frozen: bool = False,
        locked: bool = False, cluster: Optional[str] = None, **legacy: Any) -> RunResult:
    """Build ``targets`` (default: every step) of ``recipe``; returns per-step results.

    ``remote`` names the team cache (a configured name or a URL; default: the project's, see
    ``engine.team.config``); ``remote_read_only`` reads it without writing. ``rebench``:
    measure again (every selected ``benchmark`` step runs) without building anything else;
    raises :class:`BuildgraphError` naming the steps that would have to be built first. Steps
    that consume the measurements (``release``) follow as usual. ``frozen``: refuse to build
    what differs from the lock file (raises LockMismatch with the plan's diff before anything
    runs); ``locked``: build, but do not write the lock file and report in
    ``RunResult.lock_changes`` how it would have changed (the run is then not ok).
    ``cluster``: run the steps that must be built on this Ray cluster (an address, or "" for
    ``$RAY_ADDRESS`` / the project's ``cluster =``; see ``engine.cluster``); needs a writable
    team cache."""
    from buildgraph.engine.scheduler import RunOptions, Scheduler
    from buildgraph.engine.store.cache import Store
    from buildgraph.reporters import Reporter

    graph = _graph(recipe, _overrides(overrides, legacy, "run"), cache_dir)
    if rebench:
        force = set(force) | rebench_steps(graph, targets, cache_dir, build_dir)
    reporter = reporter or Reporter()
    store = Store(Path(cache_dir) if cache_dir else None, warn=reporter.warning)
    if cluster is not None:
        from buildgraph.engine.cluster.driver import resolve_address

        cluster = resolve_address(cluster, graph.recipe_dir)
    options = RunOptions(jobs=jobs, keep_going=keep_going, force=set(force),
                         no_cache=no_cache, link=link,
                         build_dir=Path(build_dir) if build_dir else None,
                         frozen=frozen, locked=locked, cluster=cluster)
    team = team_cache(graph.recipe_dir, remote, remote_read_only, reporter.warning)
    try:
        return Scheduler(graph, store, options, reporter, remote=team).run(targets)
    finally:
        store.close()


def team_cache(start: Path, remote: Optional[str] = None, read_only: bool = False,
               warn: Any = None, strict: bool = False) -> Any:
    """The team cache (``engine.team.remote.TeamCache``) the project configures, or None. Only
    ``engine.team.config`` is imported to find out (a few ``stat`` calls when there is no
    config file); the remote itself is opened on first use."""
    import os

    from buildgraph.engine.team.config import ENV_REMOTE, find_config

    if remote is None and not os.environ.get(ENV_REMOTE) and find_config(start) is None:
        return None
    from buildgraph.engine.team.remote import open_team_cache

    return open_team_cache(Path(start), remote, read_only, warn=warn, strict=strict)


def plan(recipe: Union[str, Path, Graph], targets: Sequence[str] = (), overrides: Overrides = None,
         force: Iterable[str] = (), no_cache: bool = False,
         cache_dir: Optional[Union[str, Path]] = None,
         build_dir: Optional[Union[str, Path]] = None, remote: Optional[str] = None,
         warn: Any = None, **legacy: Any) -> Dict[str, Decision]:
    """What ``run`` would do for each selected step, and why (asking the team cache, when
    one is configured, about what is not in the local one)."""
    from buildgraph.engine.lockfile import lock_path, read_lock
    from buildgraph.engine.planner import Planner
    from buildgraph.engine.scheduler import default_build_dir
    from buildgraph.engine.store.cache import Store

    graph = _graph(recipe, _overrides(overrides, legacy, "plan"), cache_dir)
    store = Store(Path(cache_dir) if cache_dir else None)
    team = team_cache(graph.recipe_dir, remote, True, warn)
    try:
        planner = Planner(graph, store, Path(build_dir) if build_dir else
                          default_build_dir(graph).absolute(),
                          read_lock(lock_path(graph.recipe_path)), force=set(force),
                          no_cache=no_cache, remote=team)
        return planner.plan(graph.select(targets))
    finally:
        store.close()


def rebench_steps(graph: Graph, targets: Sequence[str] = (),
                  cache_dir: Optional[Union[str, Path]] = None,
                  build_dir: Optional[Union[str, Path]] = None) -> set:
    """The selected ``benchmark`` steps, after checking that nothing else would be built:
    every selected step that is not a benchmark nor downstream of one must be cached."""
    from buildgraph.engine.planner import CACHED, RESTORE
    from buildgraph.errors import BuildgraphError

    selected = graph.select(targets)
    bench = [s for s in selected if graph.steps[s].kind == "benchmark"]
    if not bench:
        raise BuildgraphError("--rebench: no benchmark step among the selected steps",
                              hint="select a recipe or steps that include a 'uses: "
                                   "benchmark' step")
    after = set(bench)
    for sid in selected:  # in topological order, so consumers of consumers are found too
        if any(u in after for u in graph.steps[sid].upstream):
            after.add(sid)
    others = [s for s in selected if s not in after]
    decisions = plan(graph, others, cache_dir=cache_dir, build_dir=build_dir) if others else {}
    stale = [d for d in decisions.values() if d.action not in (CACHED, RESTORE)]
    if stale:
        shown = "; ".join(f"{d.step_id} ({', '.join(d.reasons[:1]) or d.action})"
                          for d in stale[:5]) + (f"; +{len(stale) - 5} more" if len(stale) > 5
                                                  else "")
        raise BuildgraphError(f"--rebench measures what is built, and {len(stale)} step(s) "
                              f"would have to be built first: {shown}",
                              hint="run without --rebench first (buildgraph plan shows why)")
    return set(bench)


def repro(recipe: Union[str, Path, Graph], targets: Sequence[str] = (),
          overrides: Overrides = None, cache_dir: Optional[Union[str, Path]] = None,
          build_dir: Optional[Union[str, Path]] = None, jobs: int = 0,
          reporter: Optional[Reporter] = None, keep: bool = False, **legacy: Any) -> Any:
    """Rebuild ``targets`` (default: what the release depends on) with the cache bypassed, into
    a scratch store, and compare every output with the cached build's (a ``ReproResult``)."""
    from buildgraph.repro import repro as run_repro

    graph = _graph(recipe, _overrides(overrides, legacy, "repro"), cache_dir)
    return run_repro(graph, targets, Path(cache_dir) if cache_dir else None,
                     Path(build_dir) if build_dir else None, jobs, reporter, keep)
