"""The base of every step kind's ``Params``: strict (unknown keys are errors, so a typo in a
recipe is caught with its location) and frozen (validated params are data, never edited)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictParams(BaseModel):
    """Base for ``Executor.Params`` and their nested models."""

    model_config = ConfigDict(extra="forbid", frozen=True)
