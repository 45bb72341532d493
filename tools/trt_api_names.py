#!/usr/bin/env python3
"""Regenerate tests/data/tensorrt_api_names*.txt: the names the TensorRT Python bindings define.

The ``tensorrt-cu12-bindings`` wheel (about 1.3 MB) holds ``tensorrt_bindings/tensorrt.so``, a
pybind11 module that cannot be imported without TensorRT's libraries (which only NVIDIA's own
package index serves). Its read-only data still names every class, method, property and enum
member it registers, as NUL-terminated strings. This script downloads the wheel with pip (no
dependencies, binary only), reads those strings the way ``strings(1)`` does, keeps the ones
that are whole Python identifiers, adds the names the wheel's ``__init__.py`` defines, and
writes them sorted, one a line, under a header naming the wheel.

Caveat the conformance test allows for: the linker merges a string that is the tail of a
longer one ("serialize" is stored inside "get_fields_to_serialize"), so a name counts as present
when it is an entry or the tail of one. Names only mentioned in docstrings are not entries.

Usage::

    python tools/trt_api_names.py                  # both tables (11.x and the 10.x legacy one)
    python tools/trt_api_names.py --version 11.4.0.106 --out tests/data/tensorrt_api_names.txt
    python tools/trt_api_names.py --wheel path/to/tensorrt_cu12_bindings-*.whl --out FILE
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable, List, Set

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
PACKAGE = "tensorrt-cu12-bindings"
TABLES = {
    # the API the executor targets
    "11.4.0.106": DATA / "tensorrt_api_names.txt",
    # the newest 10.x: the builder-flag precision path for TensorRT <= 10 is checked against it
    "10.16.1.11": DATA / "tensorrt_api_names_10.txt",
}
IDENT = re.compile(rb"^[A-Za-z_][A-Za-z0-9_]{1,80}$")
# Itanium-mangled C++ symbols and types (_ZN8tensorrt..., FvRN8nvinfer..., St6vector...) are not
# Python names: a length prefix (digits) followed by a lower-case name gives them away.
MANGLED = re.compile(rb"^(?=_Z|[PK]*F|St\d|P?K?N\d).*?\d[a-z]")


def binary_strings(data: bytes, min_len: int = 2) -> Iterable[bytes]:
    """Printable ASCII runs, like ``strings -n MIN_LEN``."""
    for match in re.finditer(rb"[\x20-\x7e]{%d,}" % min_len, data):
        yield match.group(0)


def init_names(source: str) -> Set[str]:
    """Top-level names the wheel's ``__init__.py`` assigns or defines."""
    names: Set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                elif isinstance(target, ast.Attribute):
                    names.add(target.attr)
    return names


def names_from_wheel(wheel: Path) -> List[str]:
    names: Set[str] = set()
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.filename.endswith("tensorrt_bindings/tensorrt.so"):
                names.update(s.decode() for s in binary_strings(zf.read(info))
                             if IDENT.match(s) and not MANGLED.match(s))
            elif info.filename.endswith("tensorrt_bindings/__init__.py"):
                names.update(init_names(zf.read(info).decode("utf-8")))
    if not names:
        raise SystemExit(f"{wheel}: no tensorrt_bindings/tensorrt.so inside")
    return sorted(names)


def download(version: str, dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
                    "-d", str(dest), f"{PACKAGE}=={version}"], check=True)
    wheels = sorted(dest.glob("tensorrt_cu12_bindings-*.whl"))
    if not wheels:
        raise SystemExit(f"pip downloaded no {PACKAGE} wheel")
    return wheels[0]


def write_table(names: List[str], wheel_name: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    header = [f"# names defined by {wheel_name} (tensorrt_bindings/tensorrt.so strings that are",
              "# identifiers, plus __init__.py); regenerate with tools/trt_api_names.py"]
    out.write_text("\n".join(header + names) + "\n", encoding="utf-8")
    print(f"{out}: {len(names)} names from {wheel_name}")


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", help=f"{PACKAGE} version (default: every table)")
    ap.add_argument("--wheel", type=Path, help="use this wheel instead of downloading")
    ap.add_argument("--out", type=Path, help="table to write")
    args = ap.parse_args(argv)
    if args.wheel:
        write_table(names_from_wheel(args.wheel), args.wheel.name,
                    args.out or TABLES[next(iter(TABLES))])
        return 0
    versions = {args.version: args.out or TABLES.get(args.version, DATA / f"tensorrt_api_names_{args.version}.txt")} \
        if args.version else TABLES
    with tempfile.TemporaryDirectory() as tmp:
        for version, out in versions.items():
            wheel = download(version, Path(tmp) / version)
            write_table(names_from_wheel(wheel), wheel.name, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
