"""The recipe JSON Schema, generated from the pydantic models (``buildgraph schema``).

Each step kind's ``with:`` block is described by its executor's ``Params`` model, so editors
complete and validate parameters per ``uses:`` value.
"""

from __future__ import annotations

from typing import Any, Dict

from buildgraph.engine.executor import known_kinds, load_executor
from buildgraph.recipe.schema import Recipe, StepSpec


def recipe_json_schema() -> Dict[str, Any]:
    schema = Recipe.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "buildgraph recipe"
    defs = schema.setdefault("$defs", {})
    variants = []
    for kind in known_kinds():
        try:
            cls = load_executor(kind)
        except Exception:  # noqa: BLE001 - a broken plugin must not break the schema
            continue
        params = cls.Params.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
        for name, sub in params.pop("$defs", {}).items():
            defs.setdefault(name, sub)
        def_name = f"params_{kind.replace('.', '_')}"
        defs[def_name] = params
        variants.append({"if": {"properties": {"uses": {"const": kind}}, "required": ["uses"]},
                         "then": {"properties": {"with": {"$ref": f"#/$defs/{def_name}"}}}})
    step = defs.get(StepSpec.__name__)
    if step is not None:
        step["properties"]["uses"]["enum"] = list(known_kinds())
        step["allOf"] = variants
    return schema
