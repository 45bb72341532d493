"""``matrix:`` expansion: one step per combination of axis values (``include``/``exclude``
as in GitHub Actions), each named ``step@value-value``."""

from __future__ import annotations

import itertools
import re
from typing import Any, Dict, List, Tuple

from buildgraph.errors import did_you_mean
from buildgraph.recipe.interpolate import RUNTIME_NAMESPACES, InterpolationError, scope_lookup, substitute
from buildgraph.recipe.positions import Source

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def expand_matrix(src: Source, base_id: str, matrix: Any,
                  variables: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """``[(expanded step id, {axis: value})]`` for a step's ``matrix:`` (``[(id, {})]`` without
    one). Every problem is a RecipeError located at the matrix key at fault."""
    if matrix is None:
        return [(base_id, {})]
    where = ("steps", base_id, "matrix")
    if not isinstance(matrix, dict) or not matrix:
        raise src.error(where, "expected a mapping of axis: [values]", value=True)
    try:
        matrix = substitute(matrix, scope_lookup({"vars": variables}), where,
                            keep=RUNTIME_NAMESPACES)
    except InterpolationError as exc:
        raise src.error(exc.path, str(exc), hint=exc.hint, value=True) from None
    exclude = matrix.get("exclude", []) or []
    include = matrix.get("include", []) or []
    axes = {k: v for k, v in matrix.items() if k not in ("exclude", "include")}
    for axis, values in axes.items():
        if not NAME_RE.match(str(axis)):
            raise src.error(where + (axis,), f"invalid matrix axis name '{axis}'")
        if not isinstance(values, list):
            raise src.error(where + (axis,), "expected a list of values; got "
                                 f"{type(values).__name__}", value=True)
        for i, v in enumerate(values):
            if not isinstance(v, (str, int, float, bool)):
                raise src.error(where + (axis, i), "matrix values must be scalars "
                                     f"(strings, numbers, booleans); got {type(v).__name__}")
    for kind, entries in (("exclude", exclude), ("include", include)):
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise src.error(where + (kind,), "expected a list of {axis: value} "
                                 "mappings", value=True)
        for i, entry in enumerate(entries):
            for key in entry:
                if key not in axes:
                    raise src.error(where + (kind, i, key),
                                         f"'{key}' is not a matrix axis"
                                         f"{did_you_mean(str(key), axes)}")
    names = list(axes)
    result: List[Dict[str, Any]] = []
    for values in itertools.product(*(axes[n] for n in names)):
        combo = dict(zip(names, values))
        if any(all(combo.get(k) == v for k, v in ex.items()) for ex in exclude):
            continue
        result.append(combo)
    for i, entry in enumerate(include):
        if set(entry) != set(names):
            raise src.error(where + ("include", i), "an include entry must give every"
                                 " axis: " + ", ".join(names))
        if entry not in result:
            result.append(dict(entry))
    if not result:
        raise src.error(where, "the matrix expands to no steps",
                             hint="an axis has an empty list, or 'exclude' removes every "
                                  "combination")
    return [(base_id + "@" + "-".join(_slug(c[n]) for n in names), c) for c in result]


def _slug(value: Any) -> str:
    text = "true" if value is True else "false" if value is False else str(value)
    text = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    return text or "_"
