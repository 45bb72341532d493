"""The TensorRT runtime for ``verify`` and benchmarks: deserialize an engine and run it.

Device memory goes through torch (``torch.empty(..., device="cuda")``, :class:`TorchCudaBuffers`):
torch is already a dependency of the verify step, and its CUDA caching allocator and streams are
all this needs, so cuda-python is not required. The buffers sit behind a small interface
(:class:`DeviceBuffers`, chosen by :attr:`TensorRTRuntime.buffers`) so that tests run this
module against the fake TensorRT on host memory. Inputs are numpy arrays in the engine's input
order; shapes are set per call (``set_input_shape``) and must lie in one of the engine's
optimization profiles (profile 0 unless ``ctx.meta['profile']`` says otherwise).

A version-compatible engine embeds TensorRT's lean runtime, host code that deserializing runs,
so TensorRT loads it only with ``engine_host_code_allowed``: this runtime allows it for engines
that this recipe's ``tensorrt.build``/``tensorrt.refit`` steps made (their build chose to embed
it) and for artifacts the caller trusts (``ctx.trusted``), not for an ``.engine`` of unknown
origin. Before deserializing, TensorRT's own plugins are registered (``init_libnvinfer_plugins``)
and the plugin libraries the producing step's ``info`` records (``ctx.meta['plugins']``) are
loaded, checked by sha256, into this Runtime's registry. TensorRT's messages reach this runtime
through the worker's one logger (:func:`~buildgraph.backends.tensorrt.builder.capture`).

An engine the ``info`` marks ``timing_only`` (trtexec ``--int8`` without calibration:
placeholder dynamic ranges) says so in ``details``: its numbers mean nothing.

Like every runtime, nothing imports TensorRT or torch before :meth:`Runtime.load`. The class
registers as ``tensorrt`` for the ``tensorrt.build``/``tensorrt.refit`` kinds and the
``.engine``/``.plan`` suffixes through :func:`register`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

from buildgraph.errors import StepFailed
from buildgraph.engine.runtime import Runtime, RuntimeContext

NAME = "tensorrt"
TARGET = "buildgraph.backends.tensorrt.runtime:TensorRTRuntime"
KINDS = ("tensorrt.build", "tensorrt.refit")
SUFFIXES = (".engine", ".plan")
BUFFERS_ENV = "BUILDGRAPH_TENSORRT_BUFFERS"
"""``"module:Class"`` of the :class:`DeviceBuffers` to use instead of :attr:`TensorRTRuntime.buffers`,
for processes a test cannot patch (benchmark runners); set with ``BUILDGRAPH_TENSORRT_MODULE``
by the tests that run the fake TensorRT."""

# trt.DataType member -> (numpy dtype name, torch dtype name)
DTYPES: Dict[str, Tuple[str, str]] = {
    "FLOAT": ("float32", "float32"), "HALF": ("float16", "float16"),
    "BF16": ("float32", "bfloat16"), "INT8": ("int8", "int8"), "INT32": ("int32", "int32"),
    "INT64": ("int64", "int64"), "BOOL": ("bool", "bool"), "UINT8": ("uint8", "uint8"),
}


def register() -> None:
    """Make ``verify`` find this runtime for TensorRT engines."""
    from buildgraph.engine.runtime import register_runtime

    register_runtime(NAME, TARGET, kinds=KINDS, suffixes=SUFFIXES)


class DeviceBuffers:
    """Tensor memory that TensorRT reads and writes, and the stream it runs on."""

    stream: int
    """The stream handle ``execute_async_v3`` gets."""

    def upload(self, array: Any, dtype: str) -> Tuple[int, Any]:  # pragma: no cover
        """Copy a numpy array in as ``dtype`` (as torch names it: float32, float16, bfloat16,
        int8...); (address, handle to keep while TensorRT uses it)."""
        raise NotImplementedError

    def empty(self, shape: Sequence[int], dtype: str) -> Tuple[int, Any]:  # pragma: no cover
        """Room for an output; (address, handle)."""
        raise NotImplementedError

    def download(self, handle: Any) -> Any:  # pragma: no cover
        """A handle's contents as a numpy array (float32 for bfloat16)."""
        raise NotImplementedError

    def synchronize(self) -> None:  # pragma: no cover
        """Wait for the stream."""
        raise NotImplementedError


class NoDeviceMemory(StepFailed):
    """No CUDA memory to run an engine with (no torch, or a torch without CUDA)."""


class TorchCudaBuffers(DeviceBuffers):
    """CUDA memory and a stream through torch."""

    def __init__(self) -> None:
        try:
            import torch
        except ImportError as exc:
            raise NoDeviceMemory(f"the TensorRT runtime needs CUDA through torch, which is not "
                                 f"installed ({exc})") from None
        if not torch.cuda.is_available():
            raise NoDeviceMemory("the TensorRT runtime needs CUDA through torch; this torch "
                                 "has no CUDA (torch.cuda.is_available() is False)")
        self.torch = torch
        self._stream = torch.cuda.Stream()
        self.stream = self._stream.cuda_stream
        index = torch.cuda.current_device()
        self.label = f"cuda:{index} {torch.cuda.get_device_name(index)}"
        """Where the engine runs, for the report."""

    def _dtype(self, dtype: str) -> Any:
        return getattr(self.torch, dtype)

    def upload(self, array: Any, dtype: str) -> Tuple[int, Any]:
        import numpy as np

        tensor = self.torch.as_tensor(np.ascontiguousarray(array)).to(
            device="cuda", dtype=self._dtype(dtype)).contiguous()
        return tensor.data_ptr(), tensor

    def empty(self, shape: Sequence[int], dtype: str) -> Tuple[int, Any]:
        tensor = self.torch.empty(tuple(shape), dtype=self._dtype(dtype), device="cuda")
        return tensor.data_ptr(), tensor

    def download(self, handle: Any) -> Any:
        if handle.dtype == self.torch.bfloat16:
            handle = handle.float()
        return handle.cpu().numpy()

    def synchronize(self) -> None:
        self._stream.synchronize()


def host_code_allowed(ctx: RuntimeContext) -> bool:
    """May deserializing run host code (a version-compatible engine's lean runtime)? For engines
    this recipe's TensorRT steps made, and for artifacts the caller trusts."""
    return ctx.kind in KINDS or bool(ctx.trusted)


class TensorRTRuntime(Runtime):
    """A serialized TensorRT engine on the first visible CUDA device."""

    name = NAME
    kinds = KINDS
    suffixes = SUFFIXES
    buffers: ClassVar[Callable[[], DeviceBuffers]] = TorchCudaBuffers
    """Makes the tensor memory (tests put host memory here for the fake TensorRT)."""

    def _load(self) -> None:
        import os

        from buildgraph.backends.tensorrt import env as trt_env
        from buildgraph.backends.tensorrt.plugins import from_info

        trt = trt_env.load_tensorrt()
        libs = from_info(self.ctx.meta, self.ctx.recipe_dir)
        factory = type(self).buffers
        override = os.environ.get(BUFFERS_ENV)
        if override:  # a process of its own (a benchmark runner) with the fake TensorRT
            from buildgraph.engine.executor import import_object

            factory = import_object(override, what=f"{BUFFERS_ENV}")
        self.memory = factory()
        self.trt = trt
        self.messages: List[Tuple[str, str]] = []
        with self._capture() as logger:
            self._open(trt, logger, libs)

    def _capture(self) -> Any:
        from buildgraph.backends.tensorrt.builder import capture

        return capture(self.trt, "WARNING", self.messages)

    def _open(self, trt: Any, logger: Any, libs: Any) -> None:
        from buildgraph.backends.tensorrt.builder import open_runtime

        allowed = host_code_allowed(self.ctx)
        self.runtime = open_runtime(trt, logger, libs, allowed, self.messages)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            errors = "; ".join(m for _, m in self.messages[-2:])
            why = "built by another TensorRT version or for another GPU?" if allowed else \
                "a version-compatible engine runs host code when it loads, which buildgraph " \
                "allows only for engines this recipe's TensorRT steps built or a model marked " \
                "trusted: true"
            raise StepFailed(f"TensorRT cannot deserialize {self.path.name} ({why})"
                             f"{': ' + errors if errors else ''}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise StepFailed(f"TensorRT cannot create an execution context for "
                             f"{self.path.name}: " + "; ".join(m for _, m in self.messages[-2:]))
        self.profile = int(self.ctx.meta.get("profile", 0))
        if self.profile and not self.context.set_optimization_profile_async(
                self.profile, self.memory.stream):
            raise StepFailed(f"{self.path.name} has no optimization profile {self.profile}")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self.precision = str(self.ctx.meta.get("precision") or self._precision())
        self.details["inputs"] = self.inputs
        self.details["outputs"] = self.outputs
        if self.ctx.meta.get("timing_only"):
            self.details["timing_only"] = ("trtexec --int8 without calibration: placeholder "
                                           "dynamic ranges, an engine for timing only")
        # kernels run on the GPU; no CPU thread pool to pin
        self.details["threads"] = {"library": "tensorrt", "intra": None, "inter": None}
        self.details["device"] = str(getattr(self.memory, "label", "cuda"))
        self.details["provider"] = "tensorrt"

    def _precision(self) -> str:
        """From the inspector JSON the build step wrote beside the engine (``layers``)."""
        from buildgraph.backends.tensorrt.builder import engine_precision, layer_summary

        layers = self.path.parent / "layers.json"
        try:
            return engine_precision(layer_summary(layers.read_text(encoding="utf-8")))
        except OSError:
            return "tf32"

    def tensor_dtype(self, name: str) -> Tuple[str, str]:
        """(numpy dtype, torch dtype) names of engine tensor ``name``."""
        dtype = self.engine.get_tensor_dtype(name)
        key = getattr(dtype, "name", str(dtype)).split(".")[-1]
        if key not in DTYPES:
            raise StepFailed(f"tensor '{name}' has TensorRT type {key}, which this runtime "
                             "does not handle")
        return DTYPES[key]

    def shape_range(self, name: str) -> Tuple[Tuple[int, ...], ...]:
        """(min, opt, max) of input ``name`` in the runtime's profile."""
        shapes = self.engine.get_tensor_profile_shape(name, self.profile)
        return tuple(tuple(int(d) for d in s) for s in shapes)

    def run(self, inputs: Sequence[Any]) -> List[Any]:
        with self._capture():
            return self._run(inputs)

    def _run(self, inputs: Sequence[Any]) -> List[Any]:
        if len(inputs) != len(self.inputs):
            raise StepFailed(f"the engine takes {len(self.inputs)} inputs "
                             f"({', '.join(self.inputs)}); got {len(inputs)}")
        keep = []
        for name, value in zip(self.inputs, inputs):
            np_dtype, tdtype = self.tensor_dtype(name)
            address, handle = self.memory.upload(value, tdtype)
            keep.append(handle)
            shape = tuple(int(d) for d in getattr(value, "shape", ()))
            if not self.context.set_input_shape(name, shape):
                lo, _, hi = self.shape_range(name)
                raise StepFailed(f"input '{name}' shape {shape} is outside "
                                 f"the engine's profile {self.profile} ({lo} .. {hi})")
            self._address(name, address)
        outs = []
        for name in self.outputs:
            _, tdtype = self.tensor_dtype(name)
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            address, handle = self.memory.empty(shape, tdtype)
            self._address(name, address)
            outs.append(handle)
        if not self.context.execute_async_v3(self.memory.stream):
            raise StepFailed("TensorRT failed to execute the engine: "
                             + "; ".join(m for _, m in self.messages[-2:]))
        self.memory.synchronize()
        return [self.memory.download(h) for h in outs]

    def _address(self, name: str, address: int) -> None:
        if not self.context.set_tensor_address(name, address):
            raise StepFailed(f"TensorRT refused the address of tensor '{name}': "
                             + "; ".join(m for _, m in self.messages[-2:]))

    def benchmark(self, inputs: Sequence[Any], warmup: int = 10, iterations: int = 100
                  ) -> Dict[str, float]:
        """Latency of ``run`` (host to host) in milliseconds: median, p90, mean."""
        for _ in range(warmup):
            self.run(inputs)
        times = []
        for _ in range(iterations):
            start = time.perf_counter()
            self.run(inputs)
            times.append((time.perf_counter() - start) * 1000)
        times.sort()
        return {"median_ms": times[len(times) // 2], "p90_ms": times[int(len(times) * 0.9)],
                "mean_ms": sum(times) / len(times)}

    def close(self) -> None:
        self.context = None
        self.engine = None
        self.runtime = None
        self.memory = None


def load(path: Path, meta: Optional[Dict[str, Any]] = None,
         recipe_dir: Optional[Path] = None) -> TensorRTRuntime:
    """Load an engine outside ``verify`` (tests, notebooks); ``meta`` is the build step's
    ``info`` (default: the ``engine.json`` beside the engine), ``recipe_dir`` where its plugin
    libraries' paths start (default: the current directory)."""
    from buildgraph.engine.runtime import artifact_info

    if meta is None:
        meta = artifact_info({"info": Path(path).parent / "engine.json"})
    loaded = TensorRTRuntime(Path(path), RuntimeContext(kind="tensorrt.build", meta=meta,
                                                        recipe_dir=recipe_dir, device="cuda"))
    loaded._load()
    return loaded


def benchmark_step(inputs: Dict[str, Path], outputs: Dict[str, Path],
                   batch_sizes: Sequence[int] = (1, 8, 32), warmup: int = 20,
                   iterations: int = 200, seed: int = 0) -> Dict[str, Any]:
    """A ``python`` step: latency and throughput of every upstream engine per batch size.

    ``inputs`` holds the upstream outputs as ``STEP.OUTPUT``; every ``.engine``/``.plan`` among
    them is loaded with :class:`TensorRTRuntime` and run on seeded random inputs whose first
    axis is each batch size (other dims from the profile's opt shape). Writes a JSON report to
    ``outputs['report']`` and returns it as the step's metadata."""
    import json

    import numpy as np

    rng = np.random.default_rng(seed)
    report: Dict[str, Any] = {"batch_sizes": list(batch_sizes), "iterations": iterations,
                              "engines": {}}
    engines = {k: Path(v) for k, v in sorted(inputs.items()) if str(v).endswith(SUFFIXES)}
    if not engines:
        raise StepFailed("benchmark: no .engine/.plan among the upstream outputs")
    for label, path in engines.items():
        rt = load(path)
        try:
            rows = {}
            for batch in batch_sizes:
                arrays = []
                for name in rt.inputs:
                    _, opt, _ = rt.shape_range(name)
                    shape = (batch,) + tuple(opt[1:])
                    np_dtype, _ = rt.tensor_dtype(name)
                    arrays.append(rng.standard_normal(shape).astype(np_dtype))
                stats = rt.benchmark(arrays, warmup, iterations)
                stats["images_per_s"] = batch * 1000.0 / stats["median_ms"]
                rows[str(batch)] = {k: round(v, 4) for k, v in stats.items()}
            report["engines"][label] = {"precision": rt.precision, "latency": rows}
        finally:
            rt.close()
    if "report" in outputs:
        outputs["report"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
