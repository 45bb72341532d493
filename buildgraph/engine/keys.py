"""Action keys: what a step's result depends on, and why two keys differ.

The key is xxh3-128 over the canonical JSON of its *parts* (Bazel's action key): step kind,
executor version, resolved parameters, declared outputs, digests of file inputs and of upstream
outputs, the executor's environment fingerprint, and the recipe's salt. The parts themselves
are kept in the action entry and the lock file, so a miss can be explained as a diff of parts
("param opset 17→18") instead of "something changed".
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from buildgraph.engine.hashing import digest_json

KEY_SCHEMA = 2
"""Bump when the parts change shape: every key changes, and ``plan`` says why."""

PART_NAMES = ("schema", "kind", "executor", "params", "outputs", "inputs", "upstream",
              "upstream_kinds", "env", "salt", "data")


def make_parts(kind: str, executor_version: str, params: Mapping[str, Any],
               outputs: Mapping[str, str], inputs: Mapping[str, str],
               upstream: Mapping[str, str], env: Mapping[str, str], salt: str,
               data: Optional[Mapping[str, Any]] = None,
               upstream_kinds: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """The canonical record a step's key is the digest of (see the module's doc).

    ``upstream`` maps ``STEP.OUTPUT`` to the digest of the view the step depends on;
    ``upstream_kinds`` maps each upstream step to its kind (a verify step picks a runtime by
    it); ``data`` and ``env`` come from the executor's description."""
    parts = {"schema": KEY_SCHEMA, "kind": kind, "executor": executor_version,
             "params": dict(params), "outputs": dict(outputs), "inputs": dict(inputs),
             "upstream": dict(upstream), "upstream_kinds": dict(upstream_kinds or {}),
             "env": dict(env), "salt": salt}
    if data:
        parts["data"] = dict(data)
    return parts


def action_key(parts: Mapping[str, Any]) -> str:
    return digest_json(parts)


def _short(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else _json(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _flatten(value: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(value, dict) and not value and not prefix:
        return {}  # no params at all: nothing to name
    if isinstance(value, dict) and value:
        out: Dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def explain_difference(old: Optional[Mapping[str, Any]], new: Mapping[str, Any],
                       labels: Optional[Mapping[str, str]] = None) -> List[str]:
    """Human reasons why ``new`` differs from ``old`` (both key parts)."""
    if not old:
        return ["never built"]
    labels = labels or {}
    reasons: List[str] = []
    if old.get("schema") != new.get("schema"):
        return ["cache key format changed (buildgraph upgrade)"]
    if old.get("kind") != new.get("kind"):
        reasons.append(f"step kind {old.get('kind')}→{new.get('kind')}")
    if old.get("executor") != new.get("executor"):
        reasons.append(f"{new.get('kind')} executor version {old.get('executor')}→"
                       f"{new.get('executor')}")
    old_p, new_p = _flatten(old.get("params", {})), _flatten(new.get("params", {}))
    for name in sorted(set(old_p) | set(new_p)):
        if name not in old_p:
            reasons.append(f"param {name} added ({_short(new_p[name])})")
        elif name not in new_p:
            reasons.append(f"param {name} removed")
        elif old_p[name] != new_p[name]:
            reasons.append(f"param {name} {_short(old_p[name])}→{_short(new_p[name])}")
    o_data, n_data = old.get("data") or {}, new.get("data") or {}
    for top in sorted(set(o_data) | set(n_data)):
        if top not in o_data:
            reasons.append(f"{top} settings now part of the key")
        elif top not in n_data:
            reasons.append(f"{top} settings no longer part of the key")
        elif top == "provenance" and o_data[top] != n_data[top]:
            reasons.extend(_provenance_difference(o_data[top], n_data[top]))
        elif o_data[top] != n_data[top]:
            old_d, new_d = _flatten(o_data[top], top), _flatten(n_data[top], top)
            for name in sorted(set(old_d) | set(new_d)):
                if old_d.get(name) != new_d.get(name):
                    reasons.append(f"{name.replace('.', ' ', 1)} "
                                   f"{_short(old_d.get(name, '(none)'))}→"
                                   f"{_short(new_d.get(name, '(none)'))}")
    if old.get("outputs") != new.get("outputs"):
        reasons.append("declared outputs changed")
    o_kinds, n_kinds = old.get("upstream_kinds") or {}, new.get("upstream_kinds") or {}
    for up in sorted(set(o_kinds) & set(n_kinds)):
        if o_kinds[up] != n_kinds[up]:
            reasons.append(f"upstream {up} kind {o_kinds[up]}→{n_kinds[up]}")
    for section, what in (("inputs", "input"), ("upstream", "upstream output")):
        o, n = old.get(section, {}), new.get(section, {})
        for name in sorted(set(o) | set(n)):
            label = labels.get(name, name)
            if name not in o:
                reasons.append(f"{what} {label} added")
            elif name not in n:
                reasons.append(f"{what} {label} removed")
            elif o[name] != n[name]:
                reasons.append(f"{what} {label} changed")
    o_env, n_env = old.get("env", {}), new.get("env", {})
    for name in sorted(set(o_env) | set(n_env)):
        if o_env.get(name) != n_env.get(name):
            reasons.append(f"{name} {o_env.get(name, '(none)')}→{n_env.get(name, '(none)')}")
    if old.get("salt") != new.get("salt"):
        reasons.append("cache_salt changed")
    return reasons or ["not in the cache (evicted, or built elsewhere)"]


def _provenance_difference(old: Any, new: Any) -> List[str]:
    """One line for a changed provenance record (``Description.provenance``): which of the
    steps it records changed, rather than a line per key and digest."""
    old, new = old if isinstance(old, dict) else {}, new if isinstance(new, dict) else {}
    reasons = []
    if old.get("recipe") != new.get("recipe"):
        reasons.append("recipe file changed")
    o_steps, n_steps = old.get("steps") or {}, new.get("steps") or {}
    changed = sorted(s for s in set(o_steps) | set(n_steps) if o_steps.get(s) != n_steps.get(s))
    if changed:
        shown = ", ".join(changed[:6]) + (f" (+{len(changed) - 6} more)" if len(changed) > 6 else "")
        reasons.append(f"provenance of {shown} changed")
    return reasons or ["provenance changed"]
