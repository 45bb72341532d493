"""The native toolchain a step compiles with, as key data: the C++ compiler and its version,
CMake, the CPU's instruction-set features, the GPU's architecture.

AOTInductor (``torch.aoti``) compiles generated C++ with the system compiler for this CPU's
instruction set, and ``cpp.check`` builds its loaders with the same compiler: a different
compiler, another CPU generation or GPU can give other code, so each is part of their keys.
Everything here reads files and runs ``--version``; nothing imports torch or TVM (a cached run
stays light), and each probe runs once per process.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

ISA_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
             "avx512vl", "avx512dq", "avx512cd", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2", "fphp",
             "asimdhp", "bf16", "i8mm")
"""The /proc/cpuinfo flags that select code paths in Inductor's CPU codegen (its vector ISA
choice) and in the kernels compilers emit for ``-march=native``; other flags (mitigations,
virtualisation) do not change generated code and stay out of keys."""


def cxx_name() -> str:
    """The C++ compiler a build uses: ``$CXX``, else ``g++`` (Inductor's default too)."""
    return os.environ.get("CXX") or "g++"


@lru_cache(maxsize=4)
def _compiler(name: str, path_env: str) -> Tuple[Optional[str], str]:
    path = shutil.which(name, path=path_env or None)
    if path is None:
        return None, "not installed"
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        first = (proc.stdout or proc.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return path, "unknown version"
    return path, first.strip()


def cxx_compiler() -> Tuple[Optional[str], str]:
    """(resolved path or None, first line of ``--version``, e.g. ``g++ (Debian 12.2.0-14)
    12.2.0``)."""
    return _compiler(cxx_name(), os.environ.get("PATH", ""))


def cmake() -> Tuple[Optional[str], str]:
    """(path or None, ``cmake version 3.25.1``)."""
    return _compiler("cmake", os.environ.get("PATH", ""))


@lru_cache(maxsize=1)
def cpu_isa() -> str:
    """The machine and its instruction-set features that change generated code, e.g.
    ``x86_64: avx avx2 avx512f fma ...`` (sorted)."""
    machine = platform.machine() or "unknown"
    flags: List[str] = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip()
                if key in ("flags", "Features"):
                    have = set(line.split(":", 1)[1].split())
                    flags = sorted(f for f in ISA_FLAGS if f in have)
                    break
    except OSError:
        pass
    return f"{machine}: " + (" ".join(flags) if flags else "(no /proc/cpuinfo flags)")


def gpu_arch() -> str:
    """``sm_90 (NVIDIA H200)`` for the first NVIDIA GPU (``nvidia-smi``), or ``none``."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "none (nvidia-smi not found)"
    try:
        out = subprocess.run([smi, "--query-gpu=compute_cap,name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "none (nvidia-smi failed)"
    line = out.strip().splitlines()[0] if out.strip() else ""
    m = re.match(r"\s*(\d+)\.(\d+)\s*,\s*(.*)", line)
    if not m:
        return "none (no GPU listed)"
    return f"sm_{m.group(1)}{m.group(2)} ({m.group(3).strip()})"


def toolchain_env(device: str = "cpu") -> Dict[str, str]:
    """Key data for a step that compiles native code for ``device``."""
    _, version = cxx_compiler()
    env = {"cxx": f"{cxx_name()}: {version}", "cpu_isa": cpu_isa()}
    if device.startswith("cuda"):
        env["gpu_arch"] = gpu_arch()
    return env


def toolchain_watch() -> Tuple[str, ...]:
    """What :func:`toolchain_env` read that can change without the Python environment
    changing: ``$CXX``, ``$PATH`` and the compiler's file (an upgrade replaces it)."""
    path, _ = cxx_compiler()
    return ("$CXX", "$PATH", *((os.path.realpath(path),) if path else ()))
