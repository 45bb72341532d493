"""Every built-in registration in one place: step kinds, runtimes, shared record areas and
commands, each ``name -> "module[:attribute]"``, imported only when used.

Adding a backend is one line in each table it needs (docs/architecture.md, "Adding a
backend"); plugins add their kinds and runtimes through entry points instead
(``buildgraph.executors``, ``buildgraph.runtimes``). Strings, not imports: the engine reaches
backends only through these, and reading this module costs next to nothing.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

STEP_KINDS: Dict[str, str] = {
    # generic
    "shell": "buildgraph.backends.generic.shell:ShellExecutor",
    "python": "buildgraph.backends.generic.python:PythonExecutor",
    # torch
    "torch.save": "buildgraph.backends.torch.save:TorchSaveExecutor",
    "torchscript": "buildgraph.backends.torch.torchscript:TorchScriptExecutor",
    "torch.export": "buildgraph.backends.torch.export:TorchExportExecutor",
    "torch.aoti": "buildgraph.backends.torch.aoti:TorchAotiExecutor",
    "onnx.export": "buildgraph.backends.torch.onnx_export:OnnxExportExecutor",
    # onnx
    "onnx.simplify": "buildgraph.backends.onnx.simplify:OnnxSimplifyExecutor",
    "onnx.autocast": "buildgraph.backends.onnx.precision:AutocastExecutor",
    "onnx.quantize": "buildgraph.backends.onnx.precision:QuantizeExecutor",
    # tvm
    "tvm.compile": "buildgraph.backends.tvm.compile:TvmCompileExecutor",
    "tvm.tune": "buildgraph.backends.tvm.tune:TvmTuneExecutor",
    # tensorrt
    "tensorrt.build": "buildgraph.backends.tensorrt.build:TensorRTBuildExecutor",
    "tensorrt.refit": "buildgraph.backends.tensorrt.refit:TensorRTRefitExecutor",
    "trtexec": "buildgraph.backends.tensorrt.trtexec:TrtexecExecutor",
    # tensorflow
    "keras.export": "buildgraph.backends.tensorflow.export:KerasExportExecutor",
    "tf2onnx.convert": "buildgraph.backends.tensorflow.convert:Tf2OnnxExecutor",
    # cpp
    "cpp.check": "buildgraph.backends.cpp.check:CppCheckExecutor",
    # evaluate
    "verify": "buildgraph.backends.evaluate.verify:VerifyExecutor",
    "benchmark": "buildgraph.backends.evaluate.benchmark:BenchmarkExecutor",
    "release": "buildgraph.backends.evaluate.release:ReleaseExecutor",
}
"""Step kind -> its ``Executor`` class (``engine.executor.load_executor``)."""

RUNTIMES: Dict[str, str] = {
    "torch.eager": "buildgraph.backends.torch.runtime:EagerRuntime",
    "torch.save": "buildgraph.backends.torch.runtime:TorchSaveRuntime",
    "torchscript": "buildgraph.backends.torch.runtime:TorchScriptRuntime",
    "torch.export": "buildgraph.backends.torch.runtime:ExportedProgramRuntime",
    "torch.aoti": "buildgraph.backends.torch.aoti_runtime:AotiRuntime",
    "onnxruntime": "buildgraph.backends.onnx.runtime:OnnxRuntime",
    "onnxruntime.fp32": "buildgraph.backends.onnx.runtime:OnnxReferenceRuntime",
    "tensorflow": "buildgraph.backends.tensorflow.runtime:TensorFlowRuntime",
    "tvm.relax": "buildgraph.backends.tvm.runtime:TvmRuntime",
    "tensorrt": "buildgraph.backends.tensorrt.runtime:TensorRTRuntime",
}
"""Runtime name -> its ``Runtime`` class (``engine.runtime``): what loads and runs an artifact
for verify, benchmark and release."""

KIND_RUNTIMES: Dict[str, str] = {
    "torch.save": "torch.save",
    "torchscript": "torchscript",
    "torch.export": "torch.export",
    "torch.aoti": "torch.aoti",
    "onnx.export": "onnxruntime",
    "onnx.simplify": "onnxruntime",
    "onnx.autocast": "onnxruntime",
    "onnx.quantize": "onnxruntime",
    "tvm.compile": "tvm.relax",
    "tensorrt.build": "tensorrt",
    "tensorrt.refit": "tensorrt",
    "tf2onnx.convert": "onnxruntime",
    "keras.export": "tensorflow",
}
"""Step kind -> the runtime that loads its ``model`` output."""

SUFFIX_RUNTIMES: Dict[str, str] = {
    ".onnx": "onnxruntime",
    ".pt2": "torch.export",
    ".ts": "torchscript",
    ".pt": "torch.save",
    ".pth": "torch.save",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
    ".keras": "tensorflow",
    ".h5": "tensorflow",
}
"""File suffix -> runtime, for artifacts of other step kinds (``python``, ``shell``)."""

RECORD_AREAS: Dict[str, Tuple[str, str]] = {
    "tvm-tunedb": ("tunedb", "buildgraph.backends.tvm.shared:RecordSync"),
    "trt-timing": ("trt-timing", "buildgraph.backends.tensorrt.timing_cache:RecordSync"),
}
"""Shared record area -> (its folder under the cache directory, the class that syncs it with
the team cache). Steps name the areas they use in ``Description.areas``; areas not listed here
(plugins) live under ``areas/`` and stay local."""

COMMANDS = {
    "run": "buildgraph.cli.run",
    "plan": "buildgraph.cli.plan",
    "repro": "buildgraph.cli.repro",
    "graph": "buildgraph.cli.graph",
    "cache": "buildgraph.cli.cache",
    "tune-db": "buildgraph.backends.tvm.tunedb_cli",
    "remote": "buildgraph.cli.remote",
    "trust": "buildgraph.cli.trust",
    "schema": "buildgraph.cli.schema",
    "kinds": "buildgraph.cli.kinds",
    "log": "buildgraph.cli.log",
    "report": "buildgraph.cli.report",
}
"""Command -> its module (``HELP``, ``add_arguments(parser)``, ``main(args) -> int``; see
:mod:`buildgraph.cli`)."""


def import_object(target: str, what: str) -> Any:
    """Import ``"module:attr"`` (or a whole ``"module"``); a failure names what was being
    loaded (the plugin, the step kind, the command), not just the module."""
    import importlib

    from buildgraph.errors import BuildgraphError

    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr) if attr else module
    except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
        raise BuildgraphError(f"cannot load {what} from '{target}': {type(exc).__name__}: {exc}",
                              hint="is the package that provides it installed in this "
                                   "environment?") from None
