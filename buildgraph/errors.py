"""Errors a user can act on.

Every error buildgraph raises on bad input is a :class:`BuildgraphError`: it carries the message,
an optional hint (what to do) and an optional location in a recipe. The CLI prints these as one
block and exits non-zero; only bugs in buildgraph itself produce a traceback.

Like doit, we separate *an error* (buildgraph could not do what was asked: a bad recipe, a
missing file) from *a failure* (a step ran and failed); the latter is :class:`StepFailed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class Location:
    """A position in a text file; line and column are 1-based."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column or 1}"
        return self.file


class BuildgraphError(Exception):
    """An error with a message a user can act on (no traceback is shown for it)."""

    exit_code = 2

    def __init__(self, message: str, hint: str = "", location: Optional[Location] = None,
                 key: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.location = location
        self.key = key

    def render(self) -> str:
        head = ""
        if self.location is not None:
            head += f"{self.location}: "
        if self.key:
            head += f"{self.key}: "
        text = head + self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def __str__(self) -> str:
        return self.render()


class RecipeError(BuildgraphError):
    """The recipe is invalid: syntax, schema, references, cycles, missing files."""


class CacheError(BuildgraphError):
    """The cache directory cannot be used (permissions, corrupt beyond repair)."""


class StepFailed(BuildgraphError):
    """A step ran and failed; ``message`` is one line, details are in the step's log."""

    exit_code = 1


class LockMismatch(BuildgraphError):
    """``run --frozen``: the build would not be the one the lock file records."""

    exit_code = 1


class Interrupted(BuildgraphError):
    """The run was interrupted (Ctrl-C, SIGTERM)."""

    exit_code = 130


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or an empty string."""
    import difflib  # only on an error path: keeps a no-op run's imports light

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def short_error(exc: BaseException, lines: int = 1) -> str:
    """The first meaningful line(s) of an exception, ANSI colours and blank lines removed."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    parts = [ln.strip() for ln in text.splitlines() if ln.strip()]
    head = "; ".join(parts[:lines]) if parts else ""
    return f"{type(exc).__name__}: {head}" if head else type(exc).__name__
