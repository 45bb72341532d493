"""The Python API: the same operations as the CLI, returning data instead of printing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Union

from buildgraph.engine.graph import Graph
from buildgraph.engine.lockfile import lock_path, read_lock
from buildgraph.engine.planner import Decision, Planner
from buildgraph.report import Reporter
from buildgraph.engine.scheduler import RunOptions, RunResult, Scheduler, default_build_dir
from buildgraph.engine.store import Store, default_cache_dir

Overrides = Union[Mapping[str, Any], Sequence[str], None]


def load(recipe: Union[str, Path], set: Overrides = None,  # noqa: A002 - mirrors --set
         cache_dir: Optional[Union[str, Path]] = None, use_cache: bool = True) -> Graph:
    """Load and validate a recipe (raises RecipeError with file:line on problems).

    Resolved recipes are cached in the cache directory (see ``recipe.cache``)."""
    if not use_cache:
        from buildgraph.recipe.load import load_recipe

        return load_recipe(recipe, set)
    from buildgraph.recipe.cache import load_graph

    return load_graph(recipe, set, Path(cache_dir) if cache_dir else default_cache_dir())


def run(recipe: Union[str, Path, Graph], targets: Sequence[str] = (), set: Overrides = None,  # noqa: A002
        jobs: int = 0, keep_going: bool = False, force: Iterable[str] = (),
        no_cache: bool = False, cache_dir: Optional[Union[str, Path]] = None,
        build_dir: Optional[Union[str, Path]] = None, link: str = "hardlink",
        reporter: Optional[Reporter] = None) -> RunResult:
    """Build ``targets`` (default: every step) of ``recipe``; returns per-step results."""
    graph = recipe if isinstance(recipe, Graph) else load(recipe, set, cache_dir)
    reporter = reporter or Reporter()
    store = Store(Path(cache_dir) if cache_dir else None, warn=reporter.warning)
    options = RunOptions(jobs=jobs, keep_going=keep_going, force=set_of(force),
                         no_cache=no_cache, link=link,
                         build_dir=Path(build_dir) if build_dir else None)
    try:
        return Scheduler(graph, store, options, reporter).run(targets)
    finally:
        store.close()


def plan(recipe: Union[str, Path, Graph], targets: Sequence[str] = (), set: Overrides = None,  # noqa: A002
         force: Iterable[str] = (), no_cache: bool = False,
         cache_dir: Optional[Union[str, Path]] = None,
         build_dir: Optional[Union[str, Path]] = None) -> Dict[str, Decision]:
    """What ``run`` would do for each selected step, and why."""
    graph = recipe if isinstance(recipe, Graph) else load(recipe, set, cache_dir)
    store = Store(Path(cache_dir) if cache_dir else None)
    try:
        planner = Planner(graph, store, Path(build_dir) if build_dir else
                          default_build_dir(graph).absolute(),
                          read_lock(lock_path(graph.recipe_path)), force=set_of(force),
                          no_cache=no_cache)
        return planner.plan(graph.select(targets))
    finally:
        store.close()


def set_of(items: Iterable[str]) -> set:
    return {i for i in items}
