"""The resolved build graph: steps with their edges, in topological order.

A :class:`Graph` is what :func:`buildgraph.recipe.load.load_recipe` produces and everything
downstream (planner, scheduler, ``graph`` command) reads. It is frozen: nothing after loading
edits it. It holds plain data only (no pydantic objects), so that a resolved graph can be
cached and reloaded without importing pydantic or any executor (see ``recipe.cache``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from buildgraph.errors import Location, RecipeError


@dataclass(frozen=True)
class StepNode:
    """One step after matrix expansion, interpolation and validation."""

    id: str
    base_id: str
    kind: str
    executor_version: str
    raw_params: Dict[str, Any]  # validated params as canonical JSON data (keys, display, run)
    upstream: Tuple[str, ...]
    inputs: Dict[str, Path]  # declared files: name -> absolute path
    input_labels: Dict[str, str]  # name -> path as written (relative to the recipe)
    outputs: Dict[str, str]  # output name -> file name inside the step's build directory
    resources: Dict[str, int]  # pool -> amount; cpu == -1 means "all job slots"
    matrix: Dict[str, Any] = field(default_factory=dict)
    timeout: Optional[float] = None
    cache: bool = True
    description: str = ""
    location: Optional[Location] = None
    params_location: Optional[Location] = None
    """Where the step's ``with:`` block is (for errors about its parameters)."""


@dataclass(frozen=True)
class Graph:
    """A whole recipe, resolved. ``steps`` is in topological order."""

    name: str
    recipe_path: Path
    steps: Dict[str, StepNode]
    pools: Dict[str, int]
    models: Dict[str, Dict[str, Any]]  # model name -> ModelSpec as plain data
    vars: Dict[str, Any]
    cache_salt: str = ""

    @property
    def recipe_dir(self) -> Path:
        return self.recipe_path.parent

    def downstream(self) -> Dict[str, List[str]]:
        result: Dict[str, List[str]] = {sid: [] for sid in self.steps}
        for step in self.steps.values():
            for up in step.upstream:
                result[up].append(step.id)
        return result

    def select(self, targets: Sequence[str]) -> List[str]:
        """The ids of ``targets`` and everything they need, in topological order.

        A target may name an expanded step (``engine@fp16``) or a matrix step's base id
        (``engine``: all its expansions).
        """
        if not targets:
            return list(self.steps)
        wanted: Set[str] = set()
        stack: List[str] = []
        for target in targets:
            matches = [sid for sid, s in self.steps.items() if sid == target or s.base_id == target]
            if not matches:
                from buildgraph.errors import did_you_mean

                names = sorted(set(self.steps) | {s.base_id for s in self.steps.values()})
                raise RecipeError(f"no step named '{target}'{did_you_mean(target, names)}",
                                  hint="steps: " + ", ".join(names),
                                  location=Location(str(self.recipe_path)))
            stack.extend(matches)
        while stack:
            sid = stack.pop()
            if sid not in wanted:
                wanted.add(sid)
                stack.extend(self.steps[sid].upstream)
        return [sid for sid in self.steps if sid in wanted]


def find_cycle(edges: Mapping[str, Iterable[str]]) -> Optional[List[str]]:
    """Return one cycle as ``[a, b, ..., a]`` (following ``node -> upstream``), or None."""
    white, grey, black = 0, 1, 2
    color = {node: white for node in edges}
    for root in edges:
        if color[root] != white:
            continue
        stack: List[Tuple[str, Iterable[str]]] = [(root, iter(edges[root]))]
        path = [root]
        color[root] = grey
        while stack:
            node, children = stack[-1]
            for child in children:
                if color.get(child, black) == grey:
                    return path[path.index(child):] + [child]
                if color.get(child) == white:
                    color[child] = grey
                    stack.append((child, iter(edges[child])))
                    path.append(child)
                    break
            else:
                color[node] = black
                stack.pop()
                path.pop()
    return None


def topological_order(order: Sequence[str], edges: Mapping[str, Sequence[str]]) -> List[str]:
    """Kahn's algorithm; ties broken by ``order`` (file order) so output is deterministic."""
    position = {node: i for i, node in enumerate(order)}
    remaining = {node: len(set(edges[node])) for node in order}
    downstream: Dict[str, List[str]] = {node: [] for node in order}
    for node in order:
        for up in set(edges[node]):
            downstream[up].append(node)
    import heapq

    ready = [(position[n], n) for n in order if remaining[n] == 0]
    heapq.heapify(ready)
    result = []
    while ready:
        _, node = heapq.heappop(ready)
        result.append(node)
        for down in downstream[node]:
            remaining[down] -= 1
            if remaining[down] == 0:
                heapq.heappush(ready, (position[down], down))
    if len(result) != len(order):  # pragma: no cover - callers check cycles first
        raise ValueError("graph has a cycle")
    return result
