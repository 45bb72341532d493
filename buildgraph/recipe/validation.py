"""pydantic's validation errors as a person reads them: the first problem, located in the file,
with "did you mean" for unknown keys and the allowed keys as a hint."""

from __future__ import annotations

import re
import typing
from typing import Any, Dict, List, Tuple, Type, Union

from pydantic import BaseModel, ValidationError

from buildgraph.errors import RecipeError, did_you_mean
from buildgraph.recipe.positions import Source


def validation_error(src: Source, exc: ValidationError, prefix: Tuple[Any, ...],
                     model: Type[BaseModel]) -> RecipeError:
    """The RecipeError for ``exc``, raised validating ``model`` at key path ``prefix``."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(first["loc"])
    path = prefix + loc
    kind = first["type"]
    more = f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} after this)" \
        if len(errors) > 1 else ""
    if kind == "extra_forbidden":
        allowed = allowed_keys(model, loc[:-1])
        message = f"unknown key '{loc[-1]}'{did_you_mean(str(loc[-1]), allowed)}"
        hint = "allowed here: " + ", ".join(allowed) if allowed else ""
        return src.error(path, message + more, hint=hint)
    if kind == "missing":
        return src.error(path[:-1], f"required key '{loc[-1]}' is missing{more}")
    message = first["msg"]
    message = re.sub(r"^Input should be ", "expected ", message)
    message = re.sub(r"^Value error, ", "", message)
    message = message[0].lower() + message[1:] if message else message
    got = first.get("input")
    if kind == "literal_error" and isinstance(got, str):
        choices = re.findall(r"'([^']*)'", str(first.get("ctx", {}).get("expected", "")))
        message += f"; got '{got}'{did_you_mean(got, choices)}"
    elif not isinstance(got, (dict, list)) and got is not None:
        message += f"; got {got!r}"
    elif isinstance(got, (dict, list)) and kind not in ("too_short",):
        message += f"; got a {'mapping' if isinstance(got, dict) else 'list'}"
    return src.error(path, message + more, value=True)


def allowed_keys(model: Type[BaseModel], loc: Tuple[Any, ...]) -> List[str]:
    """Keys accepted at ``loc`` inside ``model`` (for 'did you mean' on unknown keys)."""
    current: Any = model
    i = 0
    while i < len(loc):
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = None
            for name, info in current.model_fields.items():
                if loc[i] in (name, info.alias):
                    field = info
            if field is None:
                return []
            current = field.annotation
            i += 1
            continue
        origin = typing.get_origin(current)
        args = typing.get_args(current)
        if origin in (dict, Dict) and len(args) == 2:
            current = args[1]
            i += 1
        elif origin in (list, List) and args:
            current = args[0]
            i += 1
        elif origin is Union:
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            containers = [a for a in args if typing.get_origin(a) in (dict, list, Dict, List)]
            if models:
                current = models[0]
            elif containers:
                current = containers[0]
            else:
                return []
        else:
            return []
    while typing.get_origin(current) is Union:
        models = [a for a in typing.get_args(current)
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        if not models:
            return []
        current = models[0]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [info.alias or name for name, info in current.model_fields.items()]
    return []
