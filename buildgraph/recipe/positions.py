"""Key paths of a (matrix-expanded) recipe mapped back to ``file:line:col``, for errors that
point at the text (ninja and DVC's way)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Sequence, Tuple

from buildgraph.errors import Location, RecipeError
from buildgraph.recipe.yamlpos import Positions


class Source:
    """Maps key paths of the (expanded) recipe back to positions in the file."""

    def __init__(self, path: Path, positions: Positions, origin: Dict[str, str]):
        self.path = path
        self.positions = positions
        self.origin = origin  # expanded step id -> id in the file

    def _file_path(self, path: Sequence[Any]) -> Tuple[Any, ...]:
        path = tuple(path)
        if len(path) >= 2 and path[0] == "steps" and path[1] in self.origin:
            path = ("steps", self.origin[path[1]]) + path[2:]
        return path

    def location(self, path: Sequence[Any], value: bool = False) -> Location:
        path = self._file_path(path)
        if value and path + ("<value>",) in self.positions:
            line, col = self.positions[path + ("<value>",)]
            return Location(str(self.path), line, col)
        while path:
            if path in self.positions:
                line, col = self.positions[path]
                return Location(str(self.path), line, col)
            path = path[:-1]
        line, col = self.positions.get((), (1, 1))
        return Location(str(self.path), line, col)

    def error(self, path: Sequence[Any], message: str, hint: str = "",
              value: bool = False) -> RecipeError:
        return RecipeError(message, hint=hint, location=self.location(path, value=value),
                           key=dotted(self._file_path(path)))


def dotted(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path if p != "<value>")
