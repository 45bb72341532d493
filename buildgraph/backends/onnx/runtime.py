"""The onnxruntime runtimes for ``verify`` and ``benchmark``: ONNX artifacts on onnxruntime's
CPU (or CUDA) execution provider, and an ONNX model source's reference (``onnxruntime.fp32``:
CPU, every graph optimization off, so that what is compared is the file as written)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from buildgraph.errors import StepFailed
from buildgraph.engine.runtime import (Runtime, RuntimeContext, cuda_index,  # noqa: F401
                                       is_cuda, not_runnable)

NO_CUDA_PROVIDER = "onnxruntime has no CUDA provider (onnxruntime-gpu)"
NO_TENSORRT_PROVIDER = "onnxruntime has no TensorRT provider (onnxruntime-gpu built with TensorRT)"


def providers_for(device: str, available: List[str], tensorrt: bool = False,
                  math: str = "default") -> List[Any]:
    """The execution providers for ``device``, or a refusal: ``cuda`` needs
    CUDAExecutionProvider (and TensorrtExecutionProvider when ``tensorrt``) among
    ``available``; the CPU provider is never listed for a GPU device, so that onnxruntime
    cannot quietly run the graph on the CPU instead."""
    if not is_cuda(device):
        if device != "cpu":
            raise not_runnable(device, "onnxruntime runs on cpu or cuda[:N]")
        return ["CPUExecutionProvider"]
    options: Dict[str, Any] = {"device_id": cuda_index(device)}
    if math in ("fp32", "tf32"):  # the CUDA provider's cuDNN/cuBLAS may use TF32
        options["use_tf32"] = "1" if math == "tf32" else "0"
    if tensorrt:
        if "TensorrtExecutionProvider" not in available:
            raise not_runnable(device, NO_TENSORRT_PROVIDER)
        return [("TensorrtExecutionProvider", {"device_id": options["device_id"]}),
                ("CUDAExecutionProvider", options)]
    if "CUDAExecutionProvider" not in available:
        raise not_runnable(device, NO_CUDA_PROVIDER)
    return [("CUDAExecutionProvider", options)]


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16",
              "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


class OnnxRuntime(Runtime):
    """onnxruntime ``InferenceSession`` on the CPU execution provider, or on ``device: cuda``
    on the CUDA (or TensorRT) provider only: without it the artifact is not run
    (:func:`providers_for`), never run on the CPU under the GPU's name."""

    name = "onnxruntime"
    suffixes = (".onnx",)
    reference: bool = False
    """Run the file as written: CPU only, all graph optimizations off (a reference)."""

    def _load(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, self.ctx.threads)
        options.inter_op_num_threads = max(1, self.ctx.interop_threads)
        # operators run one at a time unless inter-op parallelism is asked for
        options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if self.ctx.interop_threads > 1
                                  else ort.ExecutionMode.ORT_SEQUENTIAL)
        options.log_severity_level = 3
        device = "cpu" if self.reference else self.ctx.device
        providers = providers_for(device, list(ort.get_available_providers()),
                                  tensorrt=self.ctx.ort_provider == "tensorrt",
                                  math=self.ctx.math)
        self._fp8 = self._has_fp8()
        if self.reference:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            self.details["graph_optimization"] = "off"
        elif self._fp8:
            # onnxruntime's extended CPU fusions compute float8 Q/DQ graphs wrongly (measured
            # with onnxruntime 1.32: top-1 agreement 62 % instead of 100 %); basic ones do not
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            self.details["graph_optimization"] = "basic (float8 Q/DQ)"
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001
            raise StepFailed(f"onnxruntime cannot load {self.path.name}: "
                             f"{str(exc).strip().splitlines()[0][:300]}") from None
        self.inputs = self.session.get_inputs()
        self.output_names = [o.name for o in self.session.get_outputs()]
        """The graph's output names: verify matches outputs by name when they are the
        reference's."""
        self.details["providers"] = self.session.get_providers()
        self._check_providers(device)
        used = self.session.get_session_options()
        self.details["threads"] = {"library": "onnxruntime", "intra": used.intra_op_num_threads,
                                   "inter": used.inter_op_num_threads}
        self.precision = self._precision()

    def _check_providers(self, device: str) -> None:
        """Record the provider the session runs on; on a GPU, refuse a session that dropped
        the GPU provider (onnxruntime falls back with only a warning when it cannot start
        CUDA: missing cuDNN, a driver too old)."""
        used = list(self.session.get_providers())
        self.details["provider"] = used[0] if used else "?"
        if is_cuda(device):
            if not used or used[0] not in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
                self.session = None
                raise not_runnable(device, "onnxruntime could not start its CUDA provider "
                                           f"(the session has {', '.join(used) or 'none'})")
            self.details["device"] = f"cuda:{cuda_index(device)}"
            self.details["math"] = {"fp32": "use_tf32=0", "tf32": "use_tf32=1"}.get(
                self.ctx.math, "provider default")
            self.timing = "device"
        else:
            self.details["device"] = "cpu"

    def input_shapes(self) -> List[List[Any]]:
        return [[d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else None)
                 for d in (i.shape or [])] for i in self.inputs]

    def _has_fp8(self) -> bool:
        """Does the model hold float8 Q/DQ (its zero points are float8 initializers)?"""
        if self.ctx.meta.get("precision") == "fp8":
            return True
        ops = self.ctx.meta.get("ops")
        if isinstance(ops, Mapping) and "QuantizeLinear" not in ops:
            return False
        import onnx

        fp8 = {getattr(onnx.TensorProto, n) for n in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ",
                                                      "FLOAT8E5M2", "FLOAT8E5M2FNUZ")
               if hasattr(onnx.TensorProto, n)}
        model = onnx.load(str(self.path), load_external_data=False)
        return any(i.data_type in fp8 for i in model.graph.initializer)

    def _precision(self) -> str:
        import onnx

        if self._fp8:
            return "fp8"

        quantized = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"}
        if self.ctx.meta.get("precision") in ("fp32", "fp16", "bf16", "int8", "fp8"):
            return str(self.ctx.meta["precision"])
        known_ops = self.ctx.meta.get("ops")
        floats = {i.type for i in self.inputs}
        if isinstance(known_ops, Mapping) and not set(known_ops) & quantized:
            # the producing step listed its ops (no parse of a large file needed)
            return "fp16" if floats == {"tensor(float16)"} else "fp32"
        model = onnx.load(str(self.path), load_external_data=False)
        ops = {n.op_type for n in model.graph.node}
        if ops & quantized:
            return "int8"
        types = {i.data_type for i in model.graph.initializer}
        # mixed precision (AutoCast keeps some fp32) counts as the lower one
        if onnx.TensorProto.FLOAT16 in types:
            return "fp16"
        if onnx.TensorProto.BFLOAT16 in types:
            return "bf16"
        return "fp32"

    def _feed(self, inputs: Sequence[Any]) -> Dict[str, Any]:
        import numpy as np

        if len(inputs) != len(self.inputs):
            raise StepFailed(f"{self.path.name} takes {len(self.inputs)} inputs; got "
                             f"{len(inputs)}")
        feed = {}
        for meta, value in zip(self.inputs, inputs):
            arr = np.asarray(value)
            want = _ORT_TYPES.get(meta.type)
            if want and arr.dtype != np.dtype(want):
                arr = arr.astype(want)
            feed[meta.name] = arr
        return feed

    def run(self, inputs: Sequence[Any]) -> List[Any]:
        return list(self.session.run(None, self._feed(inputs)))

    def stage(self, inputs: Sequence[Any]) -> Any:
        """On a GPU: the inputs as OrtValues in device memory, copied once."""
        feed = self._feed(inputs)
        if self.timing != "device":
            return feed
        import onnxruntime as ort

        index = cuda_index(self.ctx.device)
        return {name: ort.OrtValue.ortvalue_from_numpy(arr, "cuda", index)
                for name, arr in feed.items()}

    def run_staged(self, staged: Any) -> Any:
        if self.timing != "device":
            return self.session.run(None, staged)
        # outputs stay where the provider put them; run_with_ort_values returns once the
        # provider's stream is synchronised (onnxruntime waits by default)
        return self.session.run_with_ort_values(self.output_names, staged)

    def close(self) -> None:
        self.session = None


class OnnxReferenceRuntime(OnnxRuntime):
    """An ONNX model source as its own reference: onnxruntime on the CPU in fp32 with every
    graph optimization off, so that fusions and constant folding cannot hide in both sides of
    a comparison."""

    name = "onnxruntime.fp32"
    suffixes = ()
    reference = True
