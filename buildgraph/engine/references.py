"""``${...}`` references: the syntax, and their substitution.

The recipe loader resolves ``${vars.*}`` and ``${matrix.*}`` with these functions when a recipe
loads (``recipe.interpolate``); the scheduler expands ``${in.*}`` and ``${out.*}`` to paths when
a step runs (:func:`expand_runtime`). ``$${`` writes a literal ``${``.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterator, Mapping, Optional, Tuple

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
