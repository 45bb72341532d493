"""What TensorRT, CUDA and GPU this machine has, found cheaply (no ``import tensorrt``).

The TensorRT steps' action keys include TensorRT's version, the CUDA version, the GPU's name and
compute capability (and the hardware-compatibility level where set), so an engine built for one
GPU is never served to another. :func:`probe` finds them from package metadata and one
``nvidia-smi`` query, once per process; :func:`load_tensorrt` imports the module only when a
step runs and turns every way of not having it into one line::

    needs an NVIDIA GPU and TensorRT; found: TensorRT not installed, no NVIDIA GPU (nvidia-smi not found)

``BUILDGRAPH_TENSORRT_MODULE`` names a module to use instead of ``tensorrt`` (tests use
:mod:`trt_fake`, which records calls; it builds nothing real).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from buildgraph.errors import StepFailed

MODULE_ENV = "BUILDGRAPH_TENSORRT_MODULE"
NEEDS = "needs an NVIDIA GPU and TensorRT"

# Distributions that install the ``tensorrt`` module, most specific first.
TRT_DISTS = ("tensorrt-cu13-bindings", "tensorrt-cu12-bindings", "tensorrt-cu11-bindings",
             "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11", "tensorrt", "nvidia-tensorrt")
CUDART_DISTS = ("nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime-cu12",
                "nvidia-cuda-runtime-cu11", "nvidia-cuda-runtime")


@dataclass(frozen=True)
class GPU:
    name: str
    compute_capability: str
    driver: str = ""
    memory_mib: int = 0
    uuid: str = ""


@dataclass(frozen=True)
class TrtEnvironment:
    tensorrt: Optional[str]
    """TensorRT's version, None when no ``tensorrt`` module is installed."""
    cuda: Optional[str]
    """CUDA runtime version TensorRT uses (major.minor where known, else the wheel's cuXX)."""
    cuda_driver: Optional[str]
    """Highest CUDA version the driver supports (nvidia-smi)."""
    gpus: Tuple[GPU, ...] = ()
    gpu_problem: str = ""
    """Why no GPU was found ("nvidia-smi not found", its error...)."""
    source: str = ""
    """Where the TensorRT version came from (distribution or module)."""
    module: str = "tensorrt"

    @property
    def gpu(self) -> Optional[GPU]:
        """The GPU TensorRT builds on: the first visible one."""
        return self.gpus[0] if self.gpus else None

    def found(self) -> str:
        parts = [f"TensorRT {self.tensorrt}" if self.tensorrt else "TensorRT not installed"]
        if self.gpu is not None:
            parts.append(f"{self.gpu.name} (compute capability {self.gpu.compute_capability})")
        else:
            parts.append("no NVIDIA GPU" + (f" ({self.gpu_problem})" if self.gpu_problem
                                            else ""))
        if self.cuda:
            parts.append(f"CUDA {self.cuda}")
        return ", ".join(parts)

    def fingerprint(self, hardware_compatibility: str = "none") -> Dict[str, str]:
        gpu = self.gpu
        fp = {"tensorrt": self.tensorrt or "(none)", "cuda": self.cuda or "(none)",
              "gpu": gpu.name if gpu else "(none)",
              "compute_capability": gpu.compute_capability if gpu else "(none)"}
        if hardware_compatibility and hardware_compatibility != "none":
            fp["hardware_compatibility"] = hardware_compatibility
        return fp


_cached: Optional[TrtEnvironment] = None


def probe(refresh: bool = False) -> TrtEnvironment:
    """The environment, found once per process (``refresh`` to look again)."""
    global _cached
    if _cached is None or refresh:
        _cached = _probe()
    return _cached


def _probe() -> TrtEnvironment:
    override = os.environ.get(MODULE_ENV)
    if override:
        fake = importlib.import_module(override)
        gpus = tuple(GPU(**g) for g in getattr(fake, "FAKE_GPUS", ()))
        return TrtEnvironment(getattr(fake, "__version__", None), getattr(fake, "FAKE_CUDA",
                                                                          None),
                              getattr(fake, "FAKE_CUDA", None), gpus,
                              "" if gpus else "the fake TensorRT module has no GPU",
                              source=override, module=override)
    version, source = trt_version()
    gpus, driver_cuda, problem = query_gpus()
    return TrtEnvironment(version, cuda_version(source) or driver_cuda, driver_cuda, gpus,
                          problem, source=source)


def trt_version() -> Tuple[Optional[str], str]:
    """(version, where from) of the installed ``tensorrt`` module, without importing it."""
    for dist in TRT_DISTS:
        try:
            return metadata.version(dist), dist
        except metadata.PackageNotFoundError:
            continue
    try:
        spec = importlib.util.find_spec("tensorrt")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return None, ""
    try:
        text = Path(spec.origin).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown", "tensorrt module"
    m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", text)
    return (m.group(1) if m else "unknown"), "tensorrt module"


def cuda_version(trt_dist: str) -> Optional[str]:
    """The CUDA runtime TensorRT links: the pip CUDA runtime's version, else the TensorRT
    wheel's cuXX flavour."""
    for dist in CUDART_DISTS:
        try:
            v = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        m = re.match(r"^(\d+\.\d+)", v)
        return m.group(1) if m else v
    m = re.search(r"cu(\d+)", trt_dist or "")
    return f"{m.group(1)}.x" if m else None


def query_gpus(timeout: float = 10.0) -> Tuple[Tuple[GPU, ...], Optional[str], str]:
    """(visible GPUs, driver's CUDA version, problem) from ``nvidia-smi``."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return (), None, "nvidia-smi not found"
    fields = "name,compute_cap,driver_version,memory.total,uuid"
    try:
        proc = subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return (), None, f"nvidia-smi failed: {exc}"
    if proc.returncode != 0:
        first = (proc.stdout + proc.stderr).strip().splitlines()
        return (), None, "nvidia-smi: " + (first[0] if first else f"exit {proc.returncode}")
    gpus = parse_gpu_query(proc.stdout)
    gpus = visible(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    driver_cuda = None
    try:
        head = subprocess.run([smi], capture_output=True, text=True, timeout=timeout).stdout
        m = re.search(r"CUDA Version:\s*([\d.]+)", head)
        driver_cuda = m.group(1) if m else None
    except (OSError, subprocess.SubprocessError):
        pass
    return gpus, driver_cuda, "" if gpus else "nvidia-smi lists no visible GPU"


def parse_gpu_query(text: str) -> Tuple[GPU, ...]:
    """Rows of ``nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,uuid``."""
    gpus: List[GPU] = []
    for line in text.strip().splitlines():
        cols = [c.strip() for c in line.split(",")]
        if not cols or not cols[0]:
            continue
        cols += [""] * (5 - len(cols))
        try:
            mem = int(float(cols[3]))
        except ValueError:
            mem = 0
        cc = cols[1] if re.match(r"^\d+\.\d+$", cols[1]) else "unknown"
        gpus.append(GPU(cols[0], cc, cols[2], mem, cols[4]))
    return tuple(gpus)


def visible(gpus: Tuple[GPU, ...], cuda_visible: Optional[str]) -> Tuple[GPU, ...]:
    """The GPUs CUDA sees, in CUDA's order (``CUDA_VISIBLE_DEVICES`` by index or UUID)."""
    if cuda_visible is None:
        return gpus
    out: List[GPU] = []
    for item in (s.strip() for s in cuda_visible.split(",")):
        if not item:
            continue
        if item.isdigit():
            i = int(item)
            if i >= len(gpus):
                break  # CUDA stops at the first invalid entry
            out.append(gpus[i])
        else:
            match = [g for g in gpus if g.uuid and (g.uuid == item or g.uuid.startswith(item))]
            if not match:
                break
            out.append(match[0])
    return tuple(out)


def load_tensorrt(env: Optional[TrtEnvironment] = None) -> Any:
    """Import TensorRT for a step that needs it, or fail the step with one line."""
    env = env or probe()
    missing: List[str] = []
    if env.tensorrt is None:
        missing.append("TensorRT not installed (pip install 'buildgraph[tensorrt]' where "
                       "NVIDIA's package index is reachable)")
    if env.gpu is None:
        missing.append("no NVIDIA GPU" + (f" ({env.gpu_problem})" if env.gpu_problem else ""))
    if missing:
        raise StepFailed(f"{NEEDS}; found: " + ", ".join(
            missing + ([f"TensorRT {env.tensorrt}"] if env.tensorrt else [])))
    try:
        return importlib.import_module(env.module)
    except Exception as exc:  # noqa: BLE001 - bindings without libraries raise ImportError/OSError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StepFailed(f"{NEEDS}; found: TensorRT {env.tensorrt} whose 'import "
                         f"{env.module}' fails ({first}), {env.gpu.name if env.gpu else ''}"
                         .rstrip(", ")) from None
