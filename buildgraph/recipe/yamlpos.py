"""YAML → plain Python data plus a map from key path to (line, column).

Validation errors are reported against *paths* (``steps.upper.with.cmd``); to print
``recipe.yaml:12:7`` we need to know where each path came from. PyYAML's composer keeps marks
on nodes, so we compose, then construct values ourselves while recording positions. Duplicate
mapping keys (which PyYAML silently lets win) are an error here: in a recipe they are almost
always a copy-paste mistake such as two steps with the same id.
"""

from __future__ import annotations

from typing import Any, Dict, Set, Tuple

import yaml

from buildgraph.errors import Location, RecipeError

try:  # libyaml is 10x faster; fall back to the pure-Python loader where it is missing
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader

Path = Tuple[Any, ...]
Positions = Dict[Path, Tuple[int, int]]

_CORE = "tag:yaml.org,2002:"
# Recipes are plain data. Scalars the safe loader would turn into other things come back as
# the text written: a date-like `version: 2024-01-01` (YAML 1.1 timestamp) and a lone `=`
# (YAML 1.1 "value", which the safe constructor cannot even build).
_SCALARS = {_CORE + t for t in ("str", "int", "float", "bool", "null")}
_AS_TEXT = {_CORE + "timestamp", _CORE + "value"}
_MAX_NODES = 1_000_000  # aliases can make a small file expand without bound ("billion laughs")


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
    return _Builder(filename, positions).build(node, ()), positions


def tag_text(tag: str) -> str:
    """``tag:yaml.org,2002:python/object:os.system`` -> ``!!python/object:os.system``."""
    return "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag


class _Builder:
    """Turns composed nodes into dicts, lists and scalars, recording where each path is."""

    def __init__(self, filename: str, positions: Positions):
        self.filename = filename
        self.positions = positions
        self.constructor = yaml.constructor.SafeConstructor()
        self.open: Set[int] = set()  # ids of the collections being built (alias cycles)
        self.count = 0

    def error(self, node: yaml.Node, message: str, path: Path, hint: str = "") -> RecipeError:
        return RecipeError(message, hint=hint, key=".".join(str(p) for p in path),
                           location=Location(self.filename, node.start_mark.line + 1,
                                             node.start_mark.column + 1))

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise self.error(node, f"the YAML expands to more than {_MAX_NODES} values "
                             "(aliases repeating aliases)", path)
        self.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        expected = _CORE + ("map" if isinstance(node, yaml.MappingNode) else "seq")
        if node.tag != expected:
            raise self.unsupported(node, path)
        if id(node) in self.open:
            raise self.error(node, "this YAML alias refers to a collection that contains it",
                             path, hint="a recipe must be a tree: copy the values instead")
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
            return self.mapping(node, path)
        finally:
            self.open.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: Path) -> Dict[Any, Any]:
        result: Dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _CORE + "merge":
                raise self.error(key_node, "YAML merge keys ('<<') are not supported in "
                                 "recipes", (), hint="use vars and ${vars.name} to share values")
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.error(key_node, "mapping keys must be plain scalars", ())
            key = self.scalar(key_node, path)
            if key is None:
                raise self.error(key_node, "mapping keys must be plain scalars", ())
            if key in result:
                first = self.positions.get(path + (key,), (0, 0))
                raise self.error(key_node, f"duplicate key '{key}' (first defined on line "
                                 f"{first[0]})", path + (key,))
            result[key] = self.build(value_node, path + (key,))
            # the key's own position is more useful than the value's for "unknown key" errors
            self.positions[path + (key,)] = (key_node.start_mark.line + 1,
                                             key_node.start_mark.column + 1)
            self.positions[path + (key, "<value>")] = (value_node.start_mark.line + 1,
                                                       value_node.start_mark.column + 1)
        return result

    def scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        if node.tag in _AS_TEXT:
            return node.value
        if node.tag not in _SCALARS:
            raise self.unsupported(node, path)
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            detail = "" if isinstance(exc, yaml.YAMLError) else f" ({exc})"
            raise self.error(node, f"cannot read {node.value!r} as {tag_text(node.tag)}{detail}",
                             path) from None

    def unsupported(self, node: yaml.Node, path: Path) -> RecipeError:
        return self.error(node, f"unsupported YAML tag '{tag_text(node.tag)}'", path,
                          hint="recipes hold plain data: strings, numbers, booleans, null, "
                               "lists and mappings")
