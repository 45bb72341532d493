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

import re
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

REF = re.compile(r"\$(\$?)\{([^{}]*)\}")
RUNTIME_NAMESPACES = ("in", "out")


class InterpolationError(Exception):
    """A reference that cannot be resolved; ``path`` says where it was found."""

    def __init__(self, message: str, path: Tuple[Any, ...], hint: str = ""):
        super().__init__(message)
        self.path = path
        self.hint = hint


def references(text: str) -> Iterator[Tuple[str, ...]]:
    """Yield each ``${a.b.c}`` in ``text`` as a tuple of parts (escapes skipped)."""
    for match in REF.finditer(text):
        if not match.group(1):
            yield tuple(match.group(2).strip().split("."))


def walk_strings(value: Any, path: Tuple[Any, ...] = ()) -> Iterator[Tuple[Tuple[Any, ...], str]]:
    """Yield ``(path, string)`` for every string inside nested dicts and lists."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from walk_strings(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk_strings(item, path + (index,))


Lookup = Callable[[Tuple[str, ...], Tuple[Any, ...]], Any]


def substitute(value: Any, lookup: Lookup, path: Tuple[Any, ...] = (),
               keep: Tuple[str, ...] = ()) -> Any:
    """Return ``value`` with references replaced by ``lookup(parts, path)``.

    References whose namespace is in ``keep`` are left untouched (escapes too, so a later
    pass can still see them).
    """
    if isinstance(value, dict):
        return {key: substitute(item, lookup, path + (key,), keep) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, lookup, path + (i,), keep) for i, item in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = REF.fullmatch(value)
    if whole and not whole.group(1):
        parts = tuple(whole.group(2).strip().split("."))
        if parts[0] in keep:
            return value
        return lookup(parts, path)

    def one(match: "re.Match[str]") -> str:
        if match.group(1):
            return match.group(0) if keep else "${" + match.group(2) + "}"
        parts = tuple(match.group(2).strip().split("."))
        if parts[0] in keep:
            return match.group(0)
        found = lookup(parts, path)
        if isinstance(found, (dict, list)):
            raise InterpolationError(
                f"'${{{'.'.join(parts)}}}' is a {type(found).__name__} and cannot be part of a "
                "longer string", path)
        return _format(found)

    return REF.sub(one, value)


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


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


def expand_runtime(value: Any, inputs: Mapping[str, str], upstream: Mapping[str, Mapping[str, str]],
                   outputs: Mapping[str, str], quote: Optional[Callable[[str], str]] = None) -> Any:
    """Replace ``${in.*}``/``${out.*}`` with paths when a step runs; ``$${`` becomes ``${``."""

    def lookup(parts: Tuple[str, ...], path: Tuple[Any, ...]) -> Any:
        if parts[0] == "out" and len(parts) == 2 and parts[1] in outputs:
            found = outputs[parts[1]]
        elif parts[0] == "in" and len(parts) == 2 and parts[1] in inputs:
            found = inputs[parts[1]]
        elif parts[0] == "in" and len(parts) == 3 and parts[2] in upstream.get(parts[1], {}):
            found = upstream[parts[1]][parts[2]]
        else:  # load-time validation makes this unreachable for recipes that loaded
            raise InterpolationError("cannot resolve ${" + ".".join(parts) + "}", path)
        return quote(str(found)) if quote else str(found)

    return substitute(value, lookup)


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
