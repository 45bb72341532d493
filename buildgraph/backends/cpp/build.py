"""Build a C++ loader with CMake against the installed wheel, once per toolchain.

A built loader is cached in the store's ``cpp-loaders`` area under the digest of everything it
is made from: its sources and CMakeLists, the compiler and its version, CMake's version, the
library it builds against (torch, or apache-tvm + apache-tvm-ffi: the headers' version) and
that library's folder (the loader's rpath points there). Steps that check artifacts of the same
form share one build; a new torch or compiler builds it again. The area is outside action keys
on purpose: a cached loader makes a check faster, not different (the step's own key covers the
same toolchain).

What cannot build is one line naming what is missing: the compiler, CMake, or the wheel's
headers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from importlib.util import find_spec
from pathlib import Path
from typing import Dict, List, Tuple

from buildgraph.backends.cpp.sources import LIBRARY, PROGRAM, loader_files
from buildgraph.backends.generic.toolchain import cmake, cxx_compiler, cxx_name
from buildgraph.engine.environment import package_version
from buildgraph.errors import StepFailed

AREA = "cpp-loaders"

HEADERS = {
    "torch": ("torch", "include/torch/script.h", "lib/libtorch.so"),
    "tvm": ("apache-tvm", "include/tvm/runtime/c_backend_api.h", "lib/libtvm_runtime.so"),
    "tvm_ffi": ("apache-tvm-ffi", "include/tvm/ffi/extra/module.h", "lib/libtvm_ffi.so"),
}
"""Package -> (distribution, a header it must ship, a library it must ship)."""


def package_dir(module: str) -> Path:
    """The installed package's folder, found without importing it."""
    dist, header, library = HEADERS[module]
    spec = find_spec(module)
    if spec is None or not spec.origin:
        raise StepFailed(f"cannot build the C++ loader: {dist} is not installed",
                         hint=f"pip install {dist}")
    folder = Path(spec.origin).parent
    for part, what in ((header, "header"), (library, "library")):
        if not (folder / part).is_file():
            raise StepFailed(f"cannot build the C++ loader: the installed {dist} "
                             f"{package_version(dist)} has no C++ {what} {part} "
                             f"(under {folder})",
                             hint="install a wheel that ships its C++ headers and libraries")
    return folder


def cmake_defines(form: str) -> Dict[str, str]:
    """``-D`` settings pointing the CMakeLists at the installed wheel(s)."""
    if LIBRARY[form] == "torch":
        return {"TORCH_DIR": str(package_dir("torch"))}
    tvm = package_dir("tvm")
    defines = {"TVM_DIR": str(tvm), "TVM_FFI_DIR": str(package_dir("tvm_ffi"))}
    if (tvm / "lib" / "libtvm_runtime_cuda.so").is_file() and shutil.which("nvidia-smi"):
        defines["BG_CUDA"] = "ON"  # a CUDA library's kernels need TVM's CUDA device API
    return defines


def library_versions(form: str) -> Dict[str, str]:
    """The versions of the headers a loader of ``form`` builds against."""
    if LIBRARY[form] == "torch":
        return {"torch": package_version("torch")}
    return {"apache-tvm": package_version("apache-tvm"),
            "apache-tvm-ffi": package_version("apache-tvm-ffi")}


def check_toolchain() -> Tuple[str, str]:
    """(compiler path, cmake path); one line naming what is missing otherwise."""
    cxx, _ = cxx_compiler()
    if cxx is None:
        raise StepFailed(f"cannot build the C++ loader: no C++ compiler ({cxx_name()} is not "
                         "on PATH)", hint="install one (Debian: apt-get install g++) or set "
                                          "CXX to a compiler's path")
    tool, _ = cmake()
    if tool is None:
        raise StepFailed("cannot build the C++ loader: cmake is not on PATH",
                         hint="install it (Debian: apt-get install cmake; or pip install cmake)")
    return cxx, tool


def loader_key(form: str, defines: Dict[str, str]) -> str:
    """The digest a built loader is cached under (see the module's doc)."""
    from buildgraph.engine.hashing import digest_bytes

    record = {"form": form, "files": loader_files(form), "cxx": cxx_compiler()[1],
              "cmake": cmake()[1], "libraries": library_versions(form), "defines": defines}
    return digest_bytes(json.dumps(record, sort_keys=True).encode())


def build_loader(form: str, area: Path, log: "LogFn", timeout: float = 900) -> Path:
    """The built loader for ``form`` (from the area when it holds one): its executable."""
    from filelock import FileLock

    cxx, tool = check_toolchain()
    defines = cmake_defines(form)
    key = loader_key(form, defines)
    area.mkdir(parents=True, exist_ok=True)
    final = area / f"{form}-{key[:24]}"
    exe = final / PROGRAM
    with FileLock(str(area / f".{form}-{key[:24]}.lock")):
        if exe.is_file():
            log(f"C++ loader '{form}': cached ({final.name})")
            return exe
        work = Path(tempfile.mkdtemp(prefix=f".{form}-", dir=area))
        try:
            for name, text in loader_files(form).items():
                (work / name).write_text(text, encoding="utf-8")
            env = {**os.environ, "CXX": cxx}
            configure = [tool, "-S", str(work), "-B", str(work / "build"),
                         *(f"-D{k}={v}" for k, v in sorted(defines.items()))]
            build = [tool, "--build", str(work / "build")]
            for what, cmd in (("configuring", configure), ("building", build)):
                log(f"C++ loader '{form}': {' '.join(cmd)}")
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                          timeout=timeout)
                except subprocess.TimeoutExpired:
                    raise StepFailed(f"{what} the C++ loader '{form}' took over {timeout:.0f} s"
                                     ) from None
                log(proc.stdout[-20000:] + proc.stderr[-20000:])
                if proc.returncode != 0:
                    raise StepFailed(f"{what} the C++ loader '{form}' failed: "
                                     f"{first_error(proc.stdout + proc.stderr)}",
                                     hint="the compiler's output is in this step's log")
            (work / "bin").mkdir()
            shutil.copy2(work / "build" / PROGRAM, work / "bin" / PROGRAM)
            shutil.rmtree(work / "build")
            os.replace(work / "bin", final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return exe


def first_error(output: str) -> str:
    """The first line of a compiler's or CMake's output that says what failed."""
    lines: List[str] = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for line in lines:
        if "error" in line.lower():
            return line[:300]
    return (lines[-1] if lines else "no output")[:300]


class LogFn:  # pragma: no cover - a type for the annotation only
    def __call__(self, message: str) -> None: ...
