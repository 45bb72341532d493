"""Parallelism, resource pools and topological order, observed through step timestamps."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from buildgraph.engine.graph import find_cycle, topological_order


def _intervals(project, names):
    spans = {}
    for name in names:
        start, end = (project.root / f"{name}.t").read_text().split()
        spans[name] = (float(start), float(end))
    return spans


def _timed(name, extra=""):
    return (f"  {name}: {{uses: shell{extra}, cache: false, with: {{cmd: 'date +%s.%N > "
            f"$BUILDGRAPH_RECIPE_DIR/{name}.t; sleep 0.6; date +%s.%N >> $BUILDGRAPH_RECIPE_DIR/{name}.t'}}}}")


def _overlap(a, b):
    return a[0] < b[1] and b[0] < a[1]


def test_independent_steps_run_in_parallel(project):
    project.write("r.yaml", "steps:\n" + "\n".join([_timed("a"), _timed("b")]) + "\n")
    project.run("r.yaml", "-j", "2")
    spans = _intervals(project, "ab")
    assert _overlap(spans["a"], spans["b"])


def test_j1_serialises(project):
    project.write("r.yaml", "steps:\n" + "\n".join([_timed("a"), _timed("b")]) + "\n")
    project.run("r.yaml", "-j", "1")
    spans = _intervals(project, "ab")
    assert not _overlap(spans["a"], spans["b"])


def test_gpu_pool_is_never_oversubscribed(project):
    project.write("r.yaml", "steps:\n" + "\n".join(
        [_timed(n, ", resources: {gpu: 1}") for n in "abc"] + [_timed("d")]) + "\n")
    project.run("r.yaml", "-j", "4")
    spans = _intervals(project, "abcd")
    for x, y in itertools.combinations("abc", 2):
        assert not _overlap(spans[x], spans[y]), (x, y)
    assert any(_overlap(spans["d"], spans[x]) for x in "abc")  # the cpu step ran beside them


def test_cpu_all_runs_alone_with_two_slots(project):
    project.write("r.yaml", "steps:\n" + "\n".join(
        [_timed("tune", ", resources: {cpu: all}"), _timed("b"), _timed("c")]) + "\n")
    project.run("r.yaml", "-j", "2")
    spans = _intervals(project, ["tune", "b", "c"])
    assert not _overlap(spans["tune"], spans["b"]) and not _overlap(spans["tune"], spans["c"])


def test_cpu_all_leaves_one_slot_to_short_steps(project):
    """The H200 run: a tune holding every slot starved a ready compile for minutes. With
    -j 3 or more, cpu: all holds all slots but one, so short steps keep running beside it
    (one at a time: the tune's slots stay its own)."""
    long_tune = _timed("tune", ", resources: {cpu: all}").replace("sleep 0.6", "sleep 2.5")
    project.write("r.yaml", "steps:\n" + "\n".join(
        [long_tune, _timed("b"), _timed("c")]) + "\n")
    project.run("r.yaml", "-j", "3")
    spans = _intervals(project, ["tune", "b", "c"])
    assert _overlap(spans["tune"], spans["b"]) and _overlap(spans["tune"], spans["c"])
    assert not _overlap(spans["b"], spans["c"])  # tune 2 slots + one short step = 3


def test_cpu_slots_policy():
    from buildgraph.engine.slots import cpu_slots

    assert [cpu_slots(-1, j) for j in (1, 2, 3, 8)] == [1, 2, 2, 7]
    assert cpu_slots(4, 2) == 2 and cpu_slots(1, 8) == 1 and cpu_slots(0, 8) == 0


def _most_at_once(spans):
    """The largest number of intervals that hold one instant (checked at each start)."""
    return max(sum(1 for s, e in spans.values() if s <= start < e) for start, _ in spans.values())


def test_declared_pool_capacity(project):
    """A pool of 2 runs two of its steps at once, never three, though -j 3 would allow it."""
    project.write("r.yaml", "pools: {net: 2}\nsteps:\n" + "\n".join(
        [_timed(n, ", resources: {net: 1}") for n in "abc"]) + "\n")
    project.run("r.yaml", "-j", "3")
    spans = _intervals(project, "abc")
    assert _most_at_once(spans) == 2, spans
    assert _most_at_once({"x": (0, 2), "y": (1, 3), "z": (1.5, 4)}) == 3  # the measure works


@st.composite
def dags(draw):
    n = draw(st.integers(min_value=1, max_value=30))
    names = [f"n{i}" for i in range(n)]
    edges = {name: [] for name in names}
    for i in range(n):
        for j in range(i):
            if draw(st.booleans()) and draw(st.booleans()):
                edges[names[i]].append(names[j])
    order = draw(st.permutations(names))
    return list(order), edges


@given(dags())
@settings(max_examples=200, deadline=None)
def test_topological_order_respects_every_edge(dag):
    order, edges = dag
    assert find_cycle(edges) is None
    result = topological_order(order, edges)
    position = {n: i for i, n in enumerate(result)}
    assert sorted(result) == sorted(order)
    for node, ups in edges.items():
        for up in ups:
            assert position[up] < position[node]


@given(dags(), st.data())
@settings(max_examples=100, deadline=None)
def test_find_cycle_finds_an_added_back_edge(dag, data):
    order, edges = dag
    linked = [(n, u) for n, ups in edges.items() for u in ups]
    if not linked:
        return
    node, up = data.draw(st.sampled_from(linked))
    edges[up] = edges[up] + [node]  # up now also depends on node: a cycle
    cycle = find_cycle(edges)
    assert cycle is not None and cycle[0] == cycle[-1]
    for a, b in zip(cycle, cycle[1:]):
        assert b in edges[a]
