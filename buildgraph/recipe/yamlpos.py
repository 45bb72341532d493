"""YAML → plain Python data plus a map from key path to (line, column).

Validation errors are reported against *paths* (``steps.upper.with.cmd``); to print
``recipe.yaml:12:7`` we need to know where each path came from. PyYAML's composer keeps marks
on nodes, so we compose, then construct values ourselves while recording positions. Duplicate
mapping keys (which PyYAML silently lets win) are an error here: in a recipe they are almost
always a copy-paste mistake such as two steps with the same id.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import yaml

from buildgraph.errors import Location, RecipeError

try:  # libyaml is 10x faster; fall back to the pure-Python loader where it is missing
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader

Path = Tuple[Any, ...]
Positions = Dict[Path, Tuple[int, int]]

_constructor = yaml.constructor.SafeConstructor()


def load_with_positions(text: str, filename: str) -> Tuple[Any, Positions]:
    """Parse YAML ``text``; return the data and ``{path: (line, column)}`` (1-based)."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(filename, mark.line + 1, mark.column + 1) if mark else Location(filename)
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        raise RecipeError(f"YAML syntax error: {problem}{context}", location=loc) from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"YAML error: {exc}", location=Location(filename)) from None
    positions: Positions = {}
    if node is None:
        return None, positions
    return _build(node, (), positions, filename), positions


def _build(node: yaml.Node, path: Path, positions: Positions, filename: str) -> Any:
    positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        result: Dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise RecipeError(
                    "YAML merge keys ('<<') are not supported in recipes",
                    hint="use vars and ${vars.name} to share values",
                    location=Location(filename, key_node.start_mark.line + 1,
                                      key_node.start_mark.column + 1))
            key = _constructor.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise RecipeError("mapping keys must be plain scalars",
                                  location=Location(filename, key_node.start_mark.line + 1,
                                                    key_node.start_mark.column + 1))
            if key in result:
                first = positions.get(path + (key,), (0, 0))
                raise RecipeError(
                    f"duplicate key '{key}' (first defined on line {first[0]})",
                    location=Location(filename, key_node.start_mark.line + 1,
                                      key_node.start_mark.column + 1),
                    key=".".join(str(p) for p in path + (key,)))
            result[key] = _build(value_node, path + (key,), positions, filename)
            # the key's own position is more useful than the value's for "unknown key" errors
            positions[path + (key,)] = (key_node.start_mark.line + 1,
                                        key_node.start_mark.column + 1)
            positions[path + (key, "<value>")] = (value_node.start_mark.line + 1,
                                                  value_node.start_mark.column + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), positions, filename) for i, item in enumerate(node.value)]
    return _constructor.construct_object(node, deep=True)
