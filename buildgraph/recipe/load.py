"""Recipe file → :class:`buildgraph.engine.graph.Graph`.

Order of work: parse YAML keeping positions; apply ``--set`` overrides and resolve ``vars``;
expand matrices; interpolate ``${vars.*}``/``${matrix.*}``; validate with the pydantic schema
and each step kind's ``Params``; resolve references (``from``, ``${in.STEP.OUT}``), file inputs
and resources; reject cycles. Every problem becomes a :class:`RecipeError` that names
``file:line:col``, the key path and what was expected (DVC's strictyaml approach, done with
pydantic's ``loc``). Helpers by concern: :mod:`~buildgraph.recipe.positions` (where a key is),
:mod:`~buildgraph.recipe.matrix` (expansion), :mod:`~buildgraph.recipe.validation` (pydantic
errors as text), :mod:`~buildgraph.recipe.interpolate` (``${...}``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

from pydantic import ValidationError

from buildgraph.engine import executor as executors
from buildgraph.errors import Location, RecipeError, did_you_mean
from buildgraph.engine.graph import Graph, StepNode, find_cycle, topological_order
from buildgraph.recipe.interpolate import (RUNTIME_NAMESPACES, InterpolationError, find_runtime_refs,
                                           parse_overrides, references, resolve_vars, scope_lookup,
                                           substitute)
from buildgraph.recipe.matrix import NAME_RE, expand_matrix
from buildgraph.recipe.positions import Source
from buildgraph.recipe.schema import Recipe, StepSpec
from buildgraph.recipe.validation import validation_error
from buildgraph.recipe.yamlpos import load_with_positions

FILENAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
DEFAULT_POOLS = {"gpu": 1}


def load_recipe(path: Union[str, Path], overrides: Union[Mapping[str, Any], Sequence[str],
                                                           None] = None) -> Graph:
    """Load, validate and resolve a recipe. Raises :class:`RecipeError` on any problem."""
    recipe_path = Path(path)
    try:
        text = recipe_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("recipe file not found", location=Location(str(path)),
                          hint="check the path; recipes are YAML files such as "
                               "recipes/hello.yaml") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe: {exc}", location=Location(str(path))) from None
    recipe_path = recipe_path.resolve()
    data, positions = load_with_positions(text, str(path))
    src = Source(Path(str(path)), positions, {})
    if not isinstance(data, dict):
        raise src.error((), "a recipe must be a mapping with at least 'steps:'; got "
                        + ("an empty file" if data is None else type(data).__name__))
    _reject_references_in_keys(data, src)
    return _Resolver(data, src, recipe_path, parse_overrides(overrides)).resolve()


def _reject_references_in_keys(value: Any, src: Source, path: Tuple[Any, ...] = ()) -> None:
    """``${...}`` is expanded in values only. In a key it would stay as written (a matrix step
    whose every expansion has the same literal key ``${matrix.x}``), so it is an error."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "${" in key and any(True for _ in references(key)):
                raise src.error(path + (key,), "${...} is not expanded in mapping "
                                "keys, only in values",
                                hint="write the key literally; to vary it with a matrix or a "
                                     "variable, make it a value (e.g. a list of "
                                     "{name: ..., value: ...})")
            _reject_references_in_keys(item, src, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _reject_references_in_keys(item, src, path + (i,))


class _Resolver:
    def __init__(self, data: Dict[str, Any], src: Source, recipe_path: Path,
                 overrides: Dict[str, Any]):
        self.data = data
        self.src = src
        self.recipe_path = recipe_path
        self.recipe_dir = recipe_path.parent
        self.overrides = overrides

    # --- variables and matrices ------------------------------------------------------------
    def _vars(self) -> Dict[str, Any]:
        raw = self.data.get("vars") or {}
        if not isinstance(raw, dict):
            raise self.src.error(("vars",), f"expected a mapping of variables; got "
                                 f"{type(raw).__name__}", value=True)
        raw = dict(raw)
        for name, value in self.overrides.items():
            if name not in raw:
                raise RecipeError(f"--set {name}: the recipe has no variable '{name}'"
                                  f"{did_you_mean(name, raw)}",
                                  hint="variables: " + (", ".join(raw) or "(none)"),
                                  location=Location(str(self.src.path)))
            raw[name] = value
        try:
            return resolve_vars(raw)
        except InterpolationError as exc:
            raise self.src.error(exc.path, str(exc), hint=exc.hint, value=True) from None

    def _expand(self, variables: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Dict[str, Any]]]:
        steps = self.data.get("steps")
        if not isinstance(steps, dict):
            raise self.src.error(("steps",), "expected a mapping of step ids to steps; got "
                                 + ("nothing" if steps is None else type(steps).__name__),
                                 value="steps" in self.data)
        expanded: Dict[str, Any] = {}
        combos: Dict[str, Dict[str, Any]] = {}
        for base_id, body in steps.items():
            base_id = str(base_id)
            if not NAME_RE.match(base_id):
                raise self.src.error(("steps", base_id), f"invalid step id '{base_id}': use "
                                     "letters, digits, '_' and '-', starting with a letter")
            if not isinstance(body, dict):
                raise self.src.error(("steps", base_id), "expected a mapping with 'uses:'; got "
                                     + ("nothing" if body is None else type(body).__name__),
                                     value=True)
            matrix = body.get("matrix")
            for exp_id, combo in expand_matrix(self.src, base_id, matrix, variables):
                if exp_id in expanded:
                    raise self.src.error(("steps", base_id, "matrix"),
                                         f"matrix expansion gives step id '{exp_id}' twice",
                                         hint="matrix values must differ after being turned "
                                              "into ids (letters, digits, '_', '-')")
                self.src.origin[exp_id] = base_id
                scopes = {"vars": variables, "matrix": combo}
                rest = {k: v for k, v in body.items() if k != "matrix"}
                try:
                    expanded[exp_id] = substitute(rest, scope_lookup(scopes), ("steps", base_id),
                                                  keep=RUNTIME_NAMESPACES)
                except InterpolationError as exc:
                    raise self.src.error(exc.path, str(exc), hint=exc.hint, value=True) from None
                combos[exp_id] = combo
        return expanded, combos



    # --- validation --------------------------------------------------------------------------
    def resolve(self) -> Graph:
        variables = self._vars()
        steps, combos = self._expand(variables)
        data = dict(self.data)
        data["vars"] = variables
        data["steps"] = steps
        for section in ("models", "pools"):
            if isinstance(data.get(section), dict):
                try:
                    data[section] = substitute(data[section], scope_lookup({"vars": variables}),
                                               (section,), keep=RUNTIME_NAMESPACES)
                except InterpolationError as exc:
                    raise self.src.error(exc.path, str(exc), hint=exc.hint, value=True) from None
        try:
            recipe = Recipe.model_validate(data)
        except ValidationError as exc:
            raise validation_error(self.src, exc, (), Recipe) from None
        name = recipe.name or _default_name(self.recipe_path)
        pools = dict(DEFAULT_POOLS)
        pools.update(recipe.pools)
        prepared: Dict[str, Dict[str, Any]] = {}
        for sid, spec in recipe.steps.items():
            prepared[sid] = self._prepare_step(sid, spec, pools)
        edges = self._edges(recipe, prepared, combos)
        cycle = find_cycle(edges)
        if cycle:
            arrows = " -> ".join(reversed(cycle))
            raise self.src.error(("steps", cycle[0]), f"the steps form a cycle: {arrows}",
                                 hint="a step cannot depend, directly or not, on its own "
                                      "outputs; remove one of these references")
        order = topological_order(list(recipe.steps), edges)
        nodes: Dict[str, StepNode] = {}
        for sid in order:
            p = prepared[sid]
            spec = recipe.steps[sid]
            nodes[sid] = StepNode(
                id=sid, base_id=self.src.origin.get(sid, sid), kind=spec.uses,
                executor_version=p["version"], raw_params=p["raw_params"],
                upstream=tuple(edges[sid]), inputs=p["inputs"], input_labels=p["labels"], outputs=p["outputs"],
                resources=p["resources"], matrix=combos.get(sid, {}), timeout=spec.timeout,
                cache=spec.cache, description=spec.description,
                location=self.src.location(("steps", sid)),
                params_location=self.src.location(("steps", sid, "with")))
        return Graph(name=name, recipe_path=self.recipe_path, steps=nodes, pools=pools,
                     models={k: v.model_dump(mode="json") for k, v in recipe.models.items()},
                     vars=variables, cache_salt=recipe.cache_salt)

    def _prepare_step(self, sid: str, spec: StepSpec, pools: Dict[str, int]) -> Dict[str, Any]:
        where = ("steps", sid)
        if not executors.is_known(spec.uses):
            kinds = list(executors.known_kinds())
            raise self.src.error(where + ("uses",), f"unknown step kind '{spec.uses}'"
                                 f"{did_you_mean(spec.uses, kinds)}",
                                 hint="known kinds: " + ", ".join(kinds), value=True)
        try:
            cls = executors.load_executor(spec.uses)
        except Exception as exc:  # noqa: BLE001 - plugin failures become recipe errors
            raise self.src.error(where + ("uses",), str(exc), value=True) from None
        params_model = cls.Params or executors.no_params_model()
        try:
            params = params_model.model_validate(spec.with_)
        except ValidationError as exc:
            raise validation_error(self.src, exc, where + ("with",), params_model) from None
        raw_params = params.model_dump(mode="json", by_alias=True)
        # outputs
        declared = spec.outputs if spec.outputs is not None else dict(cls.outputs)
        if isinstance(declared, list):
            declared = {n: n for n in declared}
        outputs: Dict[str, str] = {}
        for out_name, filename in declared.items():
            if not NAME_RE.match(out_name):
                raise self.src.error(where + ("outputs",), f"invalid output name '{out_name}':"
                                     " use letters, digits, '_' and '-'")
            if not isinstance(filename, str) or not FILENAME_RE.match(filename) \
                    or filename in (".", ".."):
                raise self.src.error(where + ("outputs", out_name),
                                     f"invalid output file name {filename!r}: outputs live "
                                     "inside the step's build directory, so a plain file name "
                                     "(no '/', no '..', no leading '.') is required",
                                     value=True)
            outputs[out_name] = filename
        if len(set(outputs.values())) != len(outputs):
            raise self.src.error(where + ("outputs",), "two outputs share one file name")
        # file inputs
        inputs: Dict[str, Path] = {}
        labels: Dict[str, str] = {}
        items = spec.inputs.items() if isinstance(spec.inputs, dict) else \
            [(p, p) for p in spec.inputs]
        for index, (in_name, rel) in enumerate(items):
            key = where + ("inputs", in_name if isinstance(spec.inputs, dict) else index)
            if isinstance(spec.inputs, dict) and not NAME_RE.match(in_name):
                raise self.src.error(key, f"invalid input name '{in_name}'")
            target = (self.recipe_dir / rel)
            if not target.exists():
                raise self.src.error(key, f"input file '{rel}' does not exist (looked in "
                                     f"{self.recipe_dir})",
                                     hint="paths are relative to the recipe's directory",
                                     value=True)
            inputs[in_name] = target.resolve()
            labels[in_name] = rel
        # resources
        resources: Dict[str, int] = {"cpu": 1}
        for pool, amount in list(cls.resources.items()) + list(spec.resources.items()):
            if pool != "cpu" and pool not in pools:
                raise self.src.error(where + ("resources", pool), f"unknown pool '{pool}'"
                                     f"{did_you_mean(pool, list(pools) + ['cpu'])}",
                                     hint="declare it at the top level: pools: {"
                                          f"{pool}: CAPACITY}}")
            if amount == "all":
                resources[pool] = -1 if pool == "cpu" else pools[pool]
            elif isinstance(amount, int) and amount < 0:
                raise self.src.error(where + ("resources", pool), "amount must be >= 0",
                                     value=True)
            elif pool != "cpu" and amount > pools[pool]:
                raise self.src.error(where + ("resources", pool),
                                     f"asks for {amount} of pool '{pool}', whose capacity is "
                                     f"{pools[pool]}", value=True)
            else:
                resources[pool] = int(amount)
        return {"params": params, "raw_params": raw_params, "outputs": outputs,
                "version": str(cls.version), "inputs": inputs, "labels": labels, "resources": resources, "spec": spec}

    def _edges(self, recipe: Recipe, prepared: Dict[str, Dict[str, Any]],
               combos: Dict[str, Dict[str, Any]]) -> Dict[str, List[str]]:
        by_base: Dict[str, List[str]] = {}
        for sid in recipe.steps:
            by_base.setdefault(self.src.origin.get(sid, sid), []).append(sid)
        all_names = sorted(set(by_base) | set(recipe.steps))

        def bind(sid: str, ref: str, path: Tuple[Any, ...], single: bool) -> List[str]:
            if ref in recipe.steps and ref not in by_base:  # an expanded id, named exactly
                return [ref]
            if ref not in by_base:
                raise self.src.error(path, f"no step named '{ref}'{did_you_mean(ref, all_names)}",
                                     hint="steps: " + ", ".join(all_names), value=True)
            candidates = by_base[ref]
            mine = combos.get(sid, {})
            shared = [c for c in candidates
                      if all(combos[c].get(k) == v for k, v in mine.items()
                             if k in combos.get(c, {}))]
            if single and len(shared) != 1:
                raise self.src.error(path, f"'{ref}' expands to {len(shared)} steps "
                                     f"({', '.join(shared)}); name one of them",
                                     hint=f"e.g. ${{in.{shared[0]}.OUTPUT}}, or give this step "
                                          "the same matrix axis so each expansion binds to "
                                          "its own", value=True)
            if not shared:
                raise self.src.error(path, f"no expansion of '{ref}' matches this step's "
                                     f"matrix values {mine}", value=True)
            return shared

        edges: Dict[str, List[str]] = {}
        rewrites: Dict[str, Dict[Tuple[str, ...], Tuple[str, ...]]] = {}
        for sid, spec in recipe.steps.items():
            where = ("steps", sid)
            ups: List[str] = []
            for i, ref in enumerate(spec.from_):
                if ref == self.src.origin.get(sid, sid) or ref == sid:
                    raise self.src.error(where + ("from", i) if len(spec.from_) > 1 else
                                         where + ("from",),
                                         f"step '{sid}' cannot consume its own outputs",
                                         value=True)
                path = where + (("from", i) if len(spec.from_) > 1 else ("from",))
                ups.extend(u for u in bind(sid, ref, path, single=False) if u not in ups)
            p = prepared[sid]
            for path, parts in find_runtime_refs(spec.with_):
                full = where + ("with",) + path
                ref_text = "${" + ".".join(parts) + "}"
                if parts[0] == "out":
                    if len(parts) != 2 or parts[1] not in p["outputs"]:
                        name = parts[1] if len(parts) > 1 else ""
                        raise self.src.error(full, f"{ref_text}: this step declares no output "
                                             f"'{name}'{did_you_mean(name, p['outputs'])}",
                                             hint="declare it under 'outputs:' (declared: "
                                                  + (", ".join(p["outputs"]) or "none") + ")",
                                             value=True)
                    continue
                if len(parts) == 2:
                    if parts[1] not in p["inputs"]:
                        raise self.src.error(full, f"{ref_text}: no input named '{parts[1]}'"
                                             f"{did_you_mean(parts[1], p['inputs'])}",
                                             hint="declare it under 'inputs:', or write "
                                                  "${in.STEP.OUTPUT} for an upstream output",
                                             value=True)
                    continue
                if len(parts) != 3:
                    raise self.src.error(full, f"{ref_text}: expected ${{in.NAME}} or "
                                         "${in.STEP.OUTPUT}", value=True)
                targets = bind(sid, parts[1], full, single=True)
                up = targets[0]
                if up == sid:
                    raise self.src.error(full, f"step '{sid}' cannot consume its own outputs",
                                         value=True)
                if parts[2] not in prepared[up]["outputs"]:
                    outs = prepared[up]["outputs"]
                    raise self.src.error(full, f"{ref_text}: step '{up}' has no output "
                                         f"'{parts[2]}'{did_you_mean(parts[2], outs)}",
                                         hint="its outputs: " + (", ".join(outs) or "none"),
                                         value=True)
                if up not in ups:
                    ups.append(up)
                if up != parts[1]:
                    rewrites.setdefault(sid, {})[parts] = ("in", up, parts[2])
            edges[sid] = ups
        for sid, mapping in rewrites.items():  # ${in.BASE.OUT} -> the bound ${in.BASE@x.OUT}
            def lookup(parts: Tuple[str, ...], _: Tuple[Any, ...],
                       mapping: Dict[Tuple[str, ...], Tuple[str, ...]] = mapping) -> str:
                return "${" + ".".join(mapping.get(parts, parts)) + "}"

            prepared[sid]["raw_params"] = substitute(prepared[sid]["raw_params"], lookup,
                                                     keep=("out",))
        return edges








def _default_name(path: Path) -> str:
    stem = path.name
    for suffix in (".yaml", ".yml"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or "recipe"
