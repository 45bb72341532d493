"""``torch.aoti``: compile a model ahead of time with AOTInductor into a ``.pt2`` package that
Python (``torch._inductor.aoti_load_package``) and C++
(``torch::inductor::AOTIModelPackageLoader``) load without the model's code and without
compiling anything at load time.

The model is the recipe's (``with: {model: m}``: exported with ``torch.export`` here, its named
dims dynamic as in the ``torch.export`` kind, example sizes raised to 2) or an upstream
``torch.export`` step's ``.pt2`` (``from: exported``: its dynamic dims stay dynamic).
``torch._inductor.aoti_compile_and_package`` then generates C++ (and CUDA for ``device: cuda``)
kernels and compiles them with the system's C++ compiler for this CPU.

The key covers what changes the generated code beside the model and the parameters: the torch
version, the C++ compiler and its version, this CPU's instruction-set features, the GPU's
architecture for ``cuda`` (:mod:`buildgraph.backends.generic.toolchain`). The ``info`` output
(JSON) records the device, the inputs (a name for a dynamic dim), the output names and the
Inductor settings: the ``torch.aoti`` runtime and ``cpp.check`` read it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

from pydantic import Field, field_validator

from buildgraph.backends.generic.toolchain import toolchain_env, toolchain_watch
from buildgraph.backends.torch import model as torchmodel
from buildgraph.backends.torch.base import (ModelExecutor, describe_model, check_torch_model,
                                            out_path)
from buildgraph.engine.environment import package_versions
from buildgraph.engine.executor import DescribeContext, Description, Task, find_artifact
from buildgraph.engine.params import StrictParams
from buildgraph.errors import StepFailed, did_you_mean

DEFAULT_OPTIONS: Dict[str, Any] = {"compile_threads": 1}
"""Inductor settings applied unless the recipe sets them: one compile thread, so Inductor
starts no pool of compile processes inside the worker (AOTInductor's time goes to compiling
one wrapper file, which a pool does not speed up)."""


class TorchAotiParams(StrictParams):
    model: Optional[str] = Field(None, description="a model of the recipe (default: the "
                                 "upstream torch.export step's .pt2)")
    device: Literal["cpu", "cuda"] = Field("cpu", description="the device the package's "
                                           "kernels are generated for")
    dynamic: Optional[Dict[str, Dict[int, str]]] = Field(
        None, description="with model: {input: {axis: dim name}} (default: the model's "
                          "named dims); {} compiles static shapes")
    max_autotune: bool = Field(False, description="Inductor's max-autotune: benchmark kernel "
                               "choices while compiling (slower build, faster package)")
    options: Dict[str, Any] = Field(default_factory=dict, description="more Inductor settings "
                                    "(torch._inductor.config names), e.g. "
                                    "{'cpp.simdlen': 8}")

    @field_validator("options")
    @classmethod
    def _options(cls, value: Dict[str, Any]) -> Dict[str, Any]:
        for key, item in value.items():
            if not isinstance(item, (bool, int, float, str, type(None))):
                raise ValueError(f"options.{key}: Inductor settings here are plain values "
                                 f"(bool, number, string); got {type(item).__name__}")
        return dict(sorted(value.items()))


def inductor_options(params: TorchAotiParams) -> Dict[str, Any]:
    """The settings handed to ``aoti_compile_and_package`` (recorded in ``info``)."""
    options = {**DEFAULT_OPTIONS, **params.options}
    if params.max_autotune:
        options["max_autotune"] = True
    return dict(sorted(options.items()))


def check_options(options: Dict[str, Any]) -> None:
    """Every key names an Inductor setting (a typo would otherwise be ignored)."""
    from torch._inductor import config

    known = sorted(config.get_config_copy())
    for key in options:
        if key not in known:
            raise StepFailed(f"options: '{key}' is not an Inductor setting"
                             f"{did_you_mean(key, known)}",
                             hint="names are torch._inductor.config's, e.g. 'cpp.simdlen'")


class TorchAotiExecutor(ModelExecutor):
    """AOTInductor: a recipe model or an upstream ``.pt2`` compiled into a package."""

    kind = "torch.aoti"
    version = "1"
    Params = TorchAotiParams
    outputs = {"model": "model.pt2", "info": "info.json"}
    nondeterministic = ("AOTInductor's generated files depend on the state of Inductor's own "
                        "caches (two builds of the same program gave other wrapper code): "
                        "same numbers, not the same bytes")

    def describe(self, params: TorchAotiParams, ctx: DescribeContext) -> Description:
        """The model's description (or the torch version, for an upstream ``.pt2``), and the
        toolchain: compiler and version, CPU instruction-set features, GPU architecture for
        ``cuda``. The compiler can change without the Python environment changing, so the
        description is volatile and watches ``$CXX``, ``$PATH`` and the compiler's file; a
        ``cuda`` description reads the GPU present, which no file names."""
        if params.model is not None:
            check_torch_model(params.model, ctx, self.kind)
            base = describe_model(params.model, ctx, self.dists)
            env = dict(base.env)
        else:
            base = Description()
            env = package_versions("torch")
        env.update(toolchain_env(params.device))
        watch = () if params.device == "cuda" else toolchain_watch()
        return Description(inputs=base.inputs, data=base.data, env=env, volatile=True,
                           watch=watch)

    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        torch = self.import_torch()
        p: TorchAotiParams = self.params(task)
        options = inductor_options(p)
        check_options(options)
        if p.device == "cuda" and not torch.cuda.is_available():
            raise StepFailed(f"device: cuda needs a GPU and a CUDA build of torch; this is "
                             f"torch {torch.__version__} "
                             + ("without CUDA" if torch.version.cuda is None else
                                "and no GPU is visible"),
                             hint="use device: cpu here, or build on the GPU machine")
        program, names, source = self._program(task, p, torch)
        if p.device == "cuda":  # weights and example to the GPU: Inductor generates for it
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, "cuda")
        dest = out_path(task)
        task.log(f"torch {torch.__version__}: AOTInductor compiling {source} for {p.device}; "
                 f"Inductor settings {json.dumps(options)}; "
                 f"{toolchain_env(p.device)['cxx']}")
        with self.timed("compile"):
            try:
                torch._inductor.aoti_compile_and_package(program, package_path=str(dest),
                                                         inductor_configs=dict(options))
            except Exception as exc:  # noqa: BLE001 - Inductor raises many error types
                task.log(str(exc))
                raise StepFailed("AOTInductor failed: "
                                 f"{torchmodel.short_error(exc, lines=2)}") from None
        info = {"schema": 1, "format": "aotinductor", "device": p.device,
                "torch": torch.__version__, "inputs": _inputs(program),
                "outputs": names, "inductor_configs": options, "source": source}
        (out_path(task, "info")).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n",
                                            encoding="utf-8")
        return {"bytes": dest.stat().st_size, "device": p.device, "inputs": info["inputs"],
                "outputs": names, "seconds": self.seconds}

    def _program(self, task: Task, p: TorchAotiParams, torch: Any) -> Any:
        """(ExportedProgram, output names, what it came from)."""
        if p.model is not None:
            from buildgraph.backends.torch.export import export_program

            spec, model = self.model(task, p.model)  # exported on the CPU, then moved
            with self.timed("export"):
                program, _, _, names = export_program(task, p.model, spec, model, p.dynamic,
                                                      strict=False, what="torch.aoti")
            return program, list(names), f"model '{p.model}'"
        if p.dynamic is not None:
            raise StepFailed("dynamic: applies to with: {model: ...}; an upstream .pt2 keeps "
                             "the dims it was exported with")
        path = find_artifact(task, task.kind, (".pt2",))
        extra = {torchmodel.NAMES_FILE: ""}
        with self.timed("load"):
            try:
                program = torch.export.load(str(path), extra_files=extra)
            except Exception as exc:  # noqa: BLE001
                raise StepFailed(f"torch.export.load cannot load {path.name}: "
                                 f"{torchmodel.short_error(exc)}") from None
        names = torchmodel.read_names_record(extra[torchmodel.NAMES_FILE]) or \
            [f"output{i}" for i in range(len(program.graph_signature.user_outputs))]
        return program, list(names), path.name


def _inputs(program: Any) -> List[Dict[str, Any]]:
    """The program's user inputs: name, shape (a symbol's name for a dynamic dim), dtype."""
    user = set(program.graph_signature.user_inputs)
    out = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user:
            continue
        val = node.meta.get("val")
        shape = [int(d) if isinstance(d, int) or str(d).isdigit() else str(d)
                 for d in getattr(val, "shape", [])]
        dtype = str(getattr(val, "dtype", "torch.float32")).replace("torch.", "")
        out.append({"name": node.name, "shape": shape, "dtype": dtype})
    return out


def read_info(path: Path) -> Dict[str, Any]:
    """A package's ``info.json`` (beside it, or given), or {}."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
