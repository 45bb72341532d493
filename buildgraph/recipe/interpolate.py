"""``${...}`` interpolation in recipe values.

Namespaces:

* ``${vars.NAME}`` and ``${matrix.AXIS}`` are resolved when the recipe is loaded: they change
  the parameters, so they are part of the action key as their values;
* ``${in.NAME}`` (a declared file input), ``${in.STEP.OUTPUT}`` (an upstream output) and
  ``${out.NAME}`` (this step's output) are paths known only when the step runs. They stay in the
  parameters as written, so keys do not depend on where the build or cache directory lives;
  the files' contents enter the key separately, as input digests.

A string that is exactly one ``${vars.x}`` takes the variable's type (``shape: [${vars.batch}]``
gives an int); elsewhere values are formatted into the string. ``$${`` writes a literal ``${``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

from buildgraph.engine.references import (REF, RUNTIME_NAMESPACES, InterpolationError,  # noqa: F401
                                          Lookup, expand_runtime, references, substitute,
                                          walk_strings)


def scope_lookup(scopes: Mapping[str, Mapping[str, Any]]) -> Lookup:
    """A lookup over ``{namespace: {name: value}}`` with helpful errors."""
    from buildgraph.errors import did_you_mean

    def lookup(parts: Tuple[str, ...], path: Tuple[Any, ...]) -> Any:
        ref = "${" + ".".join(parts) + "}"
        namespace = parts[0]
        if namespace not in scopes and namespace not in RUNTIME_NAMESPACES:
            known = sorted(list(scopes) + list(RUNTIME_NAMESPACES))
            raise InterpolationError(
                f"unknown namespace in {ref}{did_you_mean(namespace, known)}", path,
                hint="use one of: " + ", ".join("${%s.NAME}" % k for k in known))
        if len(parts) < 2:
            raise InterpolationError(f"{ref} names no variable", path)
        scope = scopes.get(namespace, {})
        current: Any = scope
        for i, part in enumerate(parts[1:], start=1):
            if isinstance(current, Mapping) and part in current:
                current = current[part]
            elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
                current = current[int(part)]
            else:
                choices = list(current) if isinstance(current, Mapping) else []
                what = "variable" if namespace == "vars" else f"{namespace} key"
                hint = ("define it under 'vars:' or pass --set " + part + "=VALUE"
                        if namespace == "vars" and i == 1 else "")
                raise InterpolationError(
                    f"undefined {what} {ref}{did_you_mean(part, choices)}", path, hint=hint)
        return current

    return lookup


def resolve_vars(raw: Dict[str, Any]) -> Dict[str, Any]:
    """Resolve references between variables (``b: "${vars.a}-x"``), rejecting cycles."""
    resolved: Dict[str, Any] = {}
    visiting: List[str] = []

    def lookup(parts: Tuple[str, ...], path: Tuple[Any, ...]) -> Any:
        if parts[0] == "vars" and len(parts) >= 2 and parts[1] in raw:
            value = get(parts[1])
            return scope_lookup({"vars": {parts[1]: value}})(parts, path)
        return scope_lookup({"vars": raw})(parts, path)

    def get(name: str) -> Any:
        if name in resolved:
            return resolved[name]
        if name in visiting:
            cycle = " -> ".join(visiting[visiting.index(name):] + [name])
            raise InterpolationError(f"variables refer to each other in a cycle: {cycle}",
                                     ("vars", name))
        visiting.append(name)
        value = substitute(raw[name], lookup, ("vars", name), keep=RUNTIME_NAMESPACES)
        visiting.pop()
        resolved[name] = value
        return value

    for name in raw:
        get(name)
    return resolved


def find_runtime_refs(value: Any) -> List[Tuple[Tuple[Any, ...], Tuple[str, ...]]]:
    """All ``${in.*}``/``${out.*}`` references in ``value`` with the path where each occurs."""
    found = []
    for path, text in walk_strings(value):
        if "${" in text:
            for parts in references(text):
                if parts and parts[0] in RUNTIME_NAMESPACES:
                    found.append((path, parts))
    return found




def parse_overrides(items: Union[Mapping[str, Any], Sequence[str], None]) -> Dict[str, Any]:
    """``["batch=8", "name=x"]`` → ``{"batch": 8, "name": "x"}`` (values parsed as YAML)."""
    if not items:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    result: Dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            from buildgraph.errors import RecipeError

            raise RecipeError(f"--set expects NAME=VALUE; got '{item}'")
        import yaml

        try:
            result[name.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            result[name.strip()] = text
    return result
