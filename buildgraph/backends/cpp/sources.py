"""The C++ loaders ``cpp.check`` builds: per artifact form one ``main.cpp`` and one
``CMakeLists.txt``, both plain text a user can build as they are (the release bundle ships them).

Each program is ``bg_loader ARTIFACT DEVICE IN.bgt OUT.bgt [IN OUT]...``: it loads the artifact
once with the library's own C++ API, then for each pair reads the inputs (BGT1,
:mod:`buildgraph.backends.cpp.tensorfile`), runs the model and writes its outputs. An error is
one line on stderr (``error: ...``) and exit status 1.

* ``torchscript``: ``torch::jit::load`` (``torch/script.h``);
* ``aoti``: ``torch::inductor::AOTIModelPackageLoader``
  (``torch/csrc/inductor/aoti_package/model_package_loader.h``);
* ``tvm``: ``tvm::ffi::Module::LoadFromFile`` then the Relax VM the library holds
  (``vm_load_executable``, ``vm_initialization``, ``main``), built on the TVM FFI headers that
  ``apache-tvm-ffi`` ships and ``libtvm_runtime`` from the ``apache-tvm`` wheel (whose own
  ``tvm/runtime`` headers need sources the wheel lacks: the program uses only the FFI and the
  runtime's registered functions).

The CMakeLists take the library's folder as a cache variable (``TORCH_DIR``, ``TVM_DIR`` +
``TVM_FFI_DIR``); left unset, they ask ``python3`` where the installed wheel is. No separate
libtorch download: the wheel's ``include/`` and ``lib/`` are what they build against.
"""

from __future__ import annotations

from importlib import resources
from typing import Dict, Tuple

LOADER_KINDS: Dict[str, str] = {
    "torchscript": "torchscript",
    "torch.aoti": "aoti",
    "tvm.compile": "tvm",
}
"""Step kind -> the form of C++ loader that loads its artifact."""

DESCRIPTIONS: Dict[str, str] = {
    "torchscript": "TorchScript with torch::jit::load",
    "aoti": "an AOTInductor package with torch::inductor::AOTIModelPackageLoader",
    "tvm": "a TVM library with the TVM runtime's Relax VM (tvm::ffi::Module)",
}

LIBRARY: Dict[str, str] = {"torchscript": "torch", "aoti": "torch", "tvm": "tvm"}
"""Loader form -> the wheel it builds against (``torch`` or ``tvm``)."""

PROGRAM = "bg_loader"

_TORCH_CMAKE = r"""# A C++ loader built by buildgraph's cpp.check: {what}.
#   cmake -S . -B build [-DTORCH_DIR=.../site-packages/torch] && cmake --build build
#   ./build/bg_loader ARTIFACT cpu IN.bgt OUT.bgt
cmake_minimum_required(VERSION 3.18)
project(bg_loader_{form} CXX)
set(CMAKE_CXX_STANDARD 20)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(TORCH_DIR "" CACHE PATH "the installed torch wheel's folder (site-packages/torch)")
if(NOT TORCH_DIR)
  execute_process(COMMAND python3 -c "import os, torch; print(os.path.dirname(torch.__file__))"
                  OUTPUT_VARIABLE TORCH_DIR OUTPUT_STRIP_TRAILING_WHITESPACE
                  COMMAND_ERROR_IS_FATAL ANY)
endif()
add_executable(bg_loader main.cpp)
target_include_directories(bg_loader PRIVATE ${{TORCH_DIR}}/include
                           ${{TORCH_DIR}}/include/torch/csrc/api/include)
target_link_directories(bg_loader PRIVATE ${{TORCH_DIR}}/lib)
# --no-as-needed: the CUDA parts register themselves when loaded; nothing calls them by name
target_link_options(bg_loader PRIVATE -Wl,--no-as-needed)
target_link_libraries(bg_loader PRIVATE torch torch_cpu c10)
if(EXISTS ${{TORCH_DIR}}/lib/libtorch_cuda.so)
  target_link_libraries(bg_loader PRIVATE torch_cuda c10_cuda)
endif()
set_target_properties(bg_loader PROPERTIES BUILD_RPATH ${{TORCH_DIR}}/lib)
"""

_TVM_CMAKE = r"""# A C++ loader built by buildgraph's cpp.check: {what}.
#   cmake -S . -B build [-DTVM_DIR=.../site-packages/tvm -DTVM_FFI_DIR=.../site-packages/tvm_ffi]
#   cmake --build build && ./build/bg_loader path/to/model.so cpu IN.bgt OUT.bgt
cmake_minimum_required(VERSION 3.18)
project(bg_loader_{form} CXX)
set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(TVM_DIR "" CACHE PATH "the installed apache-tvm wheel's folder (site-packages/tvm)")
set(TVM_FFI_DIR "" CACHE PATH "the installed apache-tvm-ffi wheel's folder (site-packages/tvm_ffi)")
if(NOT TVM_DIR OR NOT TVM_FFI_DIR)
  execute_process(COMMAND python3 -c "import os, importlib.util as u; print(';'.join(os.path.dirname(u.find_spec(n).origin) for n in ('tvm', 'tvm_ffi')))"
                  OUTPUT_VARIABLE _dirs OUTPUT_STRIP_TRAILING_WHITESPACE COMMAND_ERROR_IS_FATAL ANY)
  list(GET _dirs 0 TVM_DIR)
  list(GET _dirs 1 TVM_FFI_DIR)
endif()
option(BG_CUDA "link TVM's CUDA runtime (libraries built for a CUDA target)" OFF)
add_executable(bg_loader main.cpp)
target_include_directories(bg_loader PRIVATE ${{TVM_FFI_DIR}}/include)
target_link_directories(bg_loader PRIVATE ${{TVM_DIR}}/lib ${{TVM_FFI_DIR}}/lib)
target_link_options(bg_loader PRIVATE -Wl,--no-as-needed)
target_link_libraries(bg_loader PRIVATE tvm_runtime tvm_ffi)
if(BG_CUDA)
  target_link_libraries(bg_loader PRIVATE tvm_runtime_cuda)
endif()
set_target_properties(bg_loader PROPERTIES BUILD_RPATH "${{TVM_DIR}}/lib;${{TVM_FFI_DIR}}/lib")
"""


def _template(name: str) -> str:
    return resources.files("buildgraph.backends.cpp").joinpath("templates", name).read_text(
        encoding="utf-8")


def _inline(text: str) -> str:
    """``main.cpp`` with the local headers pasted in: one file to ship and build."""
    out = []
    for line in text.splitlines():
        if line.startswith('#include "') and line.endswith('.h"'):
            out.append(_template(line.split('"')[1]).rstrip("\n"))
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def loader_files(form: str) -> Dict[str, str]:
    """``{"main.cpp": ..., "CMakeLists.txt": ...}`` of the loader for ``form``."""
    what = DESCRIPTIONS[form]
    head = (f"// A C++ loader built by buildgraph's cpp.check: {what}.\n"
            f"// Usage: bg_loader ARTIFACT DEVICE IN.bgt OUT.bgt [IN OUT]...  (BGT1 tensor "
            "files: see below)\n")
    main = head + _inline(_template(f"{form}.cpp"))
    cmake = (_TORCH_CMAKE if LIBRARY[form] == "torch" else _TVM_CMAKE).format(what=what,
                                                                             form=form)
    return {"main.cpp": main, "CMakeLists.txt": cmake}


def build_line(form: str, folder: str = ".") -> Tuple[str, str]:
    """(how to build, how to run) the loader in ``folder``, for a README."""
    return (f"cmake -S {folder} -B {folder}/build && cmake --build {folder}/build",
            f"{folder}/build/{PROGRAM} ARTIFACT DEVICE IN.bgt OUT.bgt")
