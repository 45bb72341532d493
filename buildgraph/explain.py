"""Render plans (``buildgraph plan``) and graphs (``buildgraph graph``) as text or data.

Status is data; rendering is separate (DVC's ``status`` vs its command).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

from buildgraph.engine.graph import Graph
from buildgraph.engine.planner import CACHED, PULL, RESTORE, RUN, WAITS, Decision

_WORDS = {CACHED: "cached", RESTORE: "restore", RUN: "run", WAITS: "run?", PULL: "pull"}


def plan_data(graph: Graph, decisions: Dict[str, Decision]) -> Dict[str, Any]:
    steps = []
    for sid, d in decisions.items():
        step = graph.steps[sid]
        steps.append({"step": sid, "uses": step.kind, "action": d.action, "key": d.key,
                      "reasons": list(d.reasons), "upstream": list(step.upstream),
                      "matrix": step.matrix})
    counts: Dict[str, int] = {}
    for d in decisions.values():
        counts[d.action] = counts.get(d.action, 0) + 1
    return {"recipe": graph.name, "steps": steps, "counts": counts}


def plan_text(graph: Graph, decisions: Dict[str, Decision], verbose: bool = False) -> str:
    lines: List[str] = []
    width = max((len(s) for s in decisions), default=0)
    for sid, d in decisions.items():
        if d.action == CACHED and not verbose:
            continue
        step = graph.steps[sid]
        head = f"{_WORDS[d.action]:<7} {sid:<{width}}  ({step.kind})"
        lines.append(head)
        for reason in d.reasons:
            lines.append(f"          - {reason}")
    counts: Dict[str, int] = {}
    for d in decisions.values():
        counts[d.action] = counts.get(d.action, 0) + 1
    todo = counts.get(RUN, 0) + counts.get(WAITS, 0)
    summary = (f"{graph.name}: {len(decisions)} steps: {counts.get(CACHED, 0)} cached, "
               f"{counts.get(RESTORE, 0)} to restore, "
               + (f"{counts[PULL]} to pull from the team cache, " if counts.get(PULL) else "")
               + f"{todo} to run")
    if counts.get(WAITS):
        summary += f" ({counts[WAITS]} of them may turn out cached once their upstream runs)"
    if not todo and not counts.get(RESTORE) and not counts.get(PULL):
        summary += " — nothing to do"
    lines.append(summary)
    return "\n".join(lines)


def plan_json(graph: Graph, decisions: Dict[str, Decision]) -> str:
    return json.dumps(plan_data(graph, decisions), indent=2)


def _label(graph: Graph, sid: str) -> str:
    step = graph.steps[sid]
    return f"{sid}\\n({step.kind})"


def mermaid(graph: Graph, decisions: Dict[str, Decision] = None) -> str:  # type: ignore[assignment]
    ids = {sid: f"s{i}" for i, sid in enumerate(graph.steps)}
    lines = ["flowchart LR"]
    for sid, step in graph.steps.items():
        text = f"{sid}<br/><small>{step.kind}</small>".replace('"', "'")
        lines.append(f'    {ids[sid]}["{text}"]')
    for sid, step in graph.steps.items():
        for up in step.upstream:
            lines.append(f"    {ids[up]} --> {ids[sid]}")
    if decisions:
        lines.append("    classDef run fill:#ffe9a8,stroke:#c90;")
        lines.append("    classDef cached fill:#d9f2d9,stroke:#393;")
        for sid, d in decisions.items():
            cls = "cached" if d.action == CACHED else "run"
            lines.append(f"    class {ids[sid]} {cls};")
    return "\n".join(lines) + "\n"


def dot(graph: Graph, decisions: Dict[str, Decision] = None) -> str:  # type: ignore[assignment]
    lines = [f'digraph "{graph.name}" {{', "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fillcolor="#eeeeee", fontname="Helvetica"];']
    for sid, step in graph.steps.items():
        color = ""
        if decisions and sid in decisions:
            color = ', fillcolor="#d9f2d9"' if decisions[sid].action == CACHED else \
                ', fillcolor="#ffe9a8"'
        lines.append(f'  "{sid}" [label="{sid}\\n({step.kind})"{color}];')
    for sid, step in graph.steps.items():
        for up in step.upstream:
            lines.append(f'  "{up}" -> "{sid}";')
    lines.append("}")
    return "\n".join(lines) + "\n"
