#!/usr/bin/env python3
"""Regenerate the TensorRT API tables under tests/data: what the real bindings and trtexec accept.

No machine here can import TensorRT (its libraries download from NVIDIA's own index only), so
the conformance tests check buildgraph's TensorRT code against tables made from two public
sources, for each version we target:

* the ``tensorrt-cu12-bindings`` wheel (about 1.3 MB): its ``tensorrt_bindings/tensorrt.so``
  is a pybind11 module whose read-only data holds every name it registers, as NUL-terminated
  strings; its ``__init__.py`` adds a few Python-level names;
* NVIDIA's TensorRT repository (github.com/NVIDIA/TensorRT, a git checkout given with
  ``--sources``) at the matching release: ``python/src/**.cpp`` says which class or enum owns
  each name (``py::class_<IBuilderConfig>(m, "IBuilderConfig").def("set_flag", ...)``,
  ``py::enum_<BuilderFlag>(m, "BuilderFlag").value("REFIT", ...)``, ``m.def(...)``), and
  ``samples/common/sampleOptions.cpp`` lists trtexec's options.

Tables written, one entry a line under a header naming their sources:

``tensorrt_api_names[_10].txt``
    Identifiers the ``.so`` holds as whole strings. The linker stores a string that is the tail
    of a longer one only once ("serialize" inside "get_fields_to_serialize"), so a name that
    the sources bind and that the ``.so`` holds only as such a tail is added too; nothing else
    is: a test matches whole entries, and "INT8" is an entry only because ``DataType.INT8``
    binds it, not because "UINT8" ends with it.
``tensorrt_api_members[_10].txt``
    ``Owner.member`` for every binding in the sources (``tensorrt.X`` for module-level names,
    ``ILogger.Severity.ERROR`` for nested enums; ``export_values()`` also puts an enum's
    members on its scope), kept only when the wheel holds the member's name (whole or as a
    tail): a binding the sources have but the wheel's version dropped is left out.
``trtexec_options[_10].txt``
    The options trtexec's ``AllOptions::parse`` reads (``--onnx``, ``--minShapes``...), with
    the values of the enumerated ones (``--hardwareCompatibilityLevel=ampere+``).
``tensorrt_api_since.txt`` (``--since``)
    The version boundaries inside the range buildgraph supports: for every binding and trtexec
    option (or enumerated value) that is not in all of the releases from 8.6 to the newest,
    the first and last release (major.minor) whose sources have it. Read from the sources
    alone, one release tag after another (:data:`RELEASE_TAGS`: 8.6 to 11.1): a test checks
    the version table of ``buildgraph/backends/tensorrt/build_params.py`` and the fake's against it.

The sources' release may trail the wheel's (11.1 sources for the 11.4 wheel: the newest
published): a member added since then is missing (a test fails: the safe side), and one removed
since then survives only if its name is still in the ``.so`` for another owner.

Usage::

    git clone --filter=blob:none https://github.com/NVIDIA/TensorRT /tmp/TensorRT
    python tools/trt_api_names.py --sources /tmp/TensorRT              # every table
    python tools/trt_api_names.py --sources /tmp/TensorRT --version 11.4.0.106
    python tools/trt_api_names.py --sources /tmp/TensorRT --wheel path/to/tensorrt_cu12_bindings-*.whl
    python tools/trt_api_names.py --sources /tmp/TensorRT --since       # version boundaries
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
PACKAGE = "tensorrt-cu12-bindings"


@dataclass(frozen=True)
class Target:
    """One TensorRT version: its wheel, the sources' commit, and the tables' suffix."""

    wheel_version: str
    source_rev: str
    source_label: str
    suffix: str

    def table(self, stem: str) -> Path:
        return DATA / f"{stem}{self.suffix}.txt"


TARGETS = {
    # the API the executors target; 11.1 is the newest release whose sources are published
    "11.4.0.106": Target("11.4.0.106", "82d1dca801c8318a5605399d5240780d0679e4e1",
                         "TensorRT 11.1 OSS release", ""),
    # the builder-flag precision path for TensorRT <= 10 is checked against the newest 10.x
    "10.16.1.11": Target("10.16.1.11", "5302b288c5603895508711bdf2df11dc29c8ad92",
                         "TensorRT 10.16.1 update", "_10"),
}
# One tag per release from 8.6 on, oldest first, as NVIDIA's repository tags them: the first of
# each release, except 8.6, whose first tag (v8.6.0, the early-access sources) lacks bindings
# that 8.6.1 has (OnnxParserFlag.NATIVE_INSTANCENORM)
RELEASE_TAGS = ("v8.6.1", "v9.1.0", "v9.2.0", "v9.3.0", "v10.0.0", "v10.1.0", "v10.2.0",
                "v10.3.0", "v10.4.0", "v10.5.0", "v10.6.0", "v10.7.0", "v10.8.0", "v10.9.0",
                "v10.10.0", "v10.11", "v10.12.0", "v10.13.0", "v10.14", "v10.15", "v10.16",
                "v11.0", "v11.1")
BINDING_SOURCES = "python/src"
TRTEXEC_OPTIONS = "samples/common/sampleOptions.cpp"

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{1,80}$")
# Itanium-mangled C++ symbols and types (_ZN8tensorrt..., FvRN8nvinfer..., St6vector...) are not
# Python names: a length prefix (digits) followed by a lower-case name gives them away.
MANGLED = re.compile(r"^(?=_Z|[PK]*F|St\d|P?K?N\d).*?\d[a-z]")


# --------------------------------------------------------------------------------------------
# the wheel
# --------------------------------------------------------------------------------------------

@dataclass
class WheelStrings:
    """What a bindings wheel holds: whole identifier strings, and every NUL-terminated string
    (for tails)."""

    name: str
    identifiers: Set[str]
    strings: Set[str]

    def __post_init__(self) -> None:
        self._tails = {s[i:] for s in self.strings for i in range(len(s))}

    def holds(self, name: str) -> bool:
        """The ``.so`` has ``name`` as a whole string or as the tail of one."""
        return name in self._tails


def nul_strings(data: bytes, min_len: int = 2) -> Iterable[str]:
    """Printable ASCII runs that end at a NUL byte (C strings), like ``strings -n MIN_LEN``."""
    for match in re.finditer(rb"([\x20-\x7e]{%d,})\x00" % min_len, data):
        yield match.group(1).decode("ascii")


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


def read_wheel(wheel: Path) -> Tuple[WheelStrings, Set[str]]:
    """The ``.so``'s strings, and the names ``__init__.py`` defines at module level."""
    strings: Set[str] = set()
    module: Set[str] = set()
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.filename.endswith("tensorrt_bindings/tensorrt.so"):
                strings.update(nul_strings(zf.read(info)))
            elif info.filename.endswith("tensorrt_bindings/__init__.py"):
                module.update(init_names(zf.read(info).decode("utf-8")))
    if not strings:
        raise SystemExit(f"{wheel}: no tensorrt_bindings/tensorrt.so inside")
    idents = {s for s in strings if IDENT.match(s) and not MANGLED.match(s)}
    return WheelStrings(wheel.name, idents, strings), module


def download(version: str, dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
                    "-d", str(dest), f"{PACKAGE}=={version}"], check=True)
    wheels = sorted(dest.glob(f"tensorrt_cu12_bindings-{version}-*.whl"))
    if not wheels:
        raise SystemExit(f"pip downloaded no {PACKAGE} {version} wheel")
    return wheels[0]


# --------------------------------------------------------------------------------------------
# the bindings' sources (pybind11)
# --------------------------------------------------------------------------------------------

def strip_cpp(text: str) -> str:
    """Comments and preprocessor lines blanked; string and char literals kept."""
    out: List[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            out.append(" ")
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif c == "#" and (i == 0 or text[text.rfind("\n", 0, i) + 1:i].strip() == ""):
            j = i
            while True:  # a directive continues over backslash-newlines
                k = text.find("\n", j)
                if k < 0:
                    j = n
                    break
                if text[k - 1] != "\\":
                    j = k
                    break
                j = k + 1
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _skip_literal(text: str, i: int) -> int:
    quote = text[i]
    j = i + 1
    while j < len(text) and text[j] != quote:
        j += 2 if text[j] == "\\" else 1
    return j + 1


def _close(text: str, i: int) -> int:
    """Index just past the bracket that closes the one at ``i`` (``(``, ``{``, ``[`` or ``<``
    for template arguments, where only angle brackets nest)."""
    pairs = {"(": ")", "{": "}", "[": "]", "<": ">"}
    stack = [pairs[text[i]]]
    j = i + 1
    while j < len(text) and stack:
        c = text[j]
        if c in "\"'":
            j = _skip_literal(text, j)
            continue
        if c in pairs and (c != "<" or stack[-1] == ">"):
            stack.append(pairs[c])
        elif c == stack[-1]:
            stack.pop()
        j += 1
    return j


def statements(text: str) -> List[str]:
    """Statements: split at ``;`` outside parentheses, brackets and literals (braces do not
    count: bindings sit inside namespace and function bodies, and a lambda's body inside a
    call's parentheses)."""
    out, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c in "\"'":
            i = _skip_literal(text, i)
            continue
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == ";" and depth == 0:
            out.append(text[start:i])
            start = i + 1
        i += 1
    return out + [text[start:]]


def _after_blocks(stmt: str) -> str:
    """The part of a statement after the last brace outside parentheses (drops the heads of
    the namespaces, functions and blocks the statement opens or follows)."""
    depth, cut, i = 0, 0, 0
    while i < len(stmt):
        c = stmt[i]
        if c in "\"'":
            i = _skip_literal(stmt, i)
            continue
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c in "{}" and depth == 0:
            cut = i + 1
        i += 1
    return stmt[cut:]


def _first_string(args: str) -> Optional[str]:
    m = re.match(r'\s*"([^"\\]*)"', args)
    return m.group(1) if m else None


def _split_args(text: str) -> List[str]:
    """Top-level comma-separated arguments of a bracketed argument list's inside."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c in "\"'":
            i = _skip_literal(text, i)
            continue
        if c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    return parts + [text[start:]]


CHAIN_METHODS = {"def", "def_static", "def_property", "def_property_readonly",
                 "def_property_static", "def_property_readonly_static", "def_readwrite",
                 "def_readonly", "def_readwrite_static", "def_readonly_static", "value"}
HEAD = re.compile(r"py::(class_|enum_)\s*<")


def binding_members(sources: Dict[str, str]) -> Set[str]:
    """``Owner.member`` for the pybind11 bindings in ``sources`` (file name -> text)."""
    members: Set[str] = set()
    scopes: Dict[str, str] = {"m": "tensorrt"}  # C++ variable -> the Python name it binds
    for text in sources.values():
        for stmt in statements(strip_cpp(text)):
            _statement_members(stmt, scopes, members)
    return members


def _statement_members(stmt: str, scopes: Dict[str, str], members: Set[str]) -> None:
    head = HEAD.search(stmt)
    owner: Optional[str] = None
    rest = ""
    if head:
        end = _close(stmt, head.end() - 1)
        m = re.match(r"\s*(\w+)?\s*([({])", stmt[end:])
        if not m:
            return
        var = m.group(1)
        open_at = end + m.start(2)
        close_at = _close(stmt, open_at)
        args = _split_args(stmt[open_at + 1:close_at - 1])
        name = _first_string(args[1]) if len(args) > 1 else None
        if name is None:
            return
        parent = scopes.get(args[0].strip(), args[0].strip())
        owner = name if parent == "tensorrt" else f"{parent}.{name}"
        members.add(f"{parent}.{name}")
        assigned = re.search(r"(?:auto|py::\w+<[^=]*>)\s+(\w+)\s*=\s*$", stmt[:head.start()])
        for bound in filter(None, (var, assigned.group(1) if assigned else None)):
            scopes[bound] = owner
        rest = stmt[close_at:]
        enum_parent = parent if head.group(1) == "enum_" else None
    else:
        stmt = _after_blocks(stmt)
        m = re.match(r"\s*(\w+)\s*(?=\.)", stmt)
        if not m or m.group(1) not in scopes:
            return
        owner = scopes[m.group(1)]
        rest = stmt[m.end():]
        enum_parent = None
        attr = re.match(r'\.attr\(\s*"(\w+)"\s*\)\s*=', rest)
        if attr:
            members.add(f"{owner}.{attr.group(1)}")
            return
    values: List[str] = []
    exported = False
    i = 0
    while True:
        m = re.match(r"\s*\.\s*(\w+)\s*\(", rest[i:])
        if not m:
            break
        open_at = i + m.end() - 1
        close_at = _close(rest, open_at)
        method = m.group(1)
        if method in CHAIN_METHODS:
            name = _first_string(rest[open_at + 1:close_at - 1])
            if name is not None:
                members.add(f"{owner}.{name}")
                if method == "value":
                    values.append(name)
        elif method == "export_values":
            exported = True
        i = close_at
    if exported and enum_parent:
        members.update(f"{enum_parent}.{v}" for v in values)


def trtexec_options(text: str) -> Dict[str, Set[str]]:
    """Option -> the values it accepts (empty: any) for trtexec's ``AllOptions::parse``.

    A value written ``~v`` is compared case-insensitively (trtexec lowers the argument first);
    ``pool:*`` values are items of a comma-separated list (``--memPoolSize``)."""
    body = strip_cpp(text)
    start = body.find("void BaseModelOptions::parse(")
    end = body.find("bool parseHelp(")
    if start < 0 or end < 0:
        raise SystemExit(f"{TRTEXEC_OPTIONS}: the option parsers moved; update this script")
    parsers = body[start:end]
    options: Dict[str, Set[str]] = {o: set() for o in
                                    re.findall(r'"(--[A-Za-z][A-Za-z0-9]*)"', parsers)}
    options["--help"] = set()
    # enumerated string options: the comparisons between the option's read and the next one,
    # when a value outside them throws
    for option, var in re.findall(r'getAndDelOption\(arguments, "(--\w+)", (\w+)\)', parsers):
        block = parsers.split(f'"{option}", {var})', 1)[1].split("getAndDelOption(", 1)[0]
        exact = re.findall(rf'(?<!\w){var}\s*==\s*"([^"]+)"', block)
        lowered = re.findall(rf'toLower\({var}\)\s*==\s*"([^"]+)"', block)
        if (exact or lowered) and "throw std::invalid_argument" in block:
            options[option] = set(exact) | {f"~{v}" for v in lowered}
    sparsity = re.search(r"SparsityFlag stringToValue<SparsityFlag>.*?\n}", body, re.S)
    if sparsity and "--sparsity" in options:
        options["--sparsity"] = set(re.findall(r'"(\w+)", SparsityFlag::', sparsity.group(0)))
    pools = re.findall(r'memPoolName == "(\w+)"', parsers)
    if pools and "--memPoolSize" in options:
        options["--memPoolSize"] = {f"{p}:*" for p in pools}
    return options


# --------------------------------------------------------------------------------------------
# writing the tables
# --------------------------------------------------------------------------------------------

def git_files(checkout: Path, rev: str, under: str) -> Dict[str, str]:
    listing = subprocess.run(["git", "-C", str(checkout), "ls-tree", "-r", "--name-only", rev,
                              under], check=True, capture_output=True, text=True).stdout
    out = {}
    for path in listing.split():
        if path.endswith((".cpp", ".h")):
            out[path] = subprocess.run(["git", "-C", str(checkout), "show", f"{rev}:{path}"],
                                       check=True, capture_output=True, text=True).stdout
    if not out:
        raise SystemExit(f"{checkout}: nothing under {under} at {rev}")
    return out


def write_table(lines: Iterable[str], header: List[str], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(set(lines))
    out.write_text("\n".join([f"# {h}" for h in header] + rows) + "\n", encoding="utf-8")
    print(f"{out}: {len(rows)} entries")


def make_tables(target: Target, wheel: Path, checkout: Path) -> None:
    strings, module = read_wheel(wheel)
    sources = git_files(checkout, target.source_rev, BINDING_SOURCES)
    members = binding_members(sources)
    members.update(f"tensorrt.{n}" for n in module)
    held = {m for m in members if strings.holds(m.rsplit(".", 1)[1]) or
            m.rsplit(".", 1)[1] in module}
    names = strings.identifiers | module | {m.rsplit(".", 1)[1] for m in held}
    origin = (f"{target.source_label} ({target.source_rev[:12]}) of github.com/NVIDIA/TensorRT")
    write_table(names, [f"names defined by {wheel.name}: tensorrt_bindings/tensorrt.so strings "
                        "that are identifiers, __init__.py's names, and",
                        f"names bound in {BINDING_SOURCES} of {origin} that the .so holds as "
                        "the tail of a longer string; regenerate with tools/trt_api_names.py"],
                target.table("tensorrt_api_names"))
    write_table(held, [f"Owner.member bound in {BINDING_SOURCES} of {origin},",
                       f"kept where {wheel.name} holds the member's name; regenerate with "
                       "tools/trt_api_names.py"],
                target.table("tensorrt_api_members"))
    options = trtexec_options(subprocess.run(
        ["git", "-C", str(checkout), "show", f"{target.source_rev}:{TRTEXEC_OPTIONS}"],
        check=True, capture_output=True, text=True).stdout)
    write_table([f"{o}={'|'.join(sorted(v))}" if v else o for o, v in options.items()],
                [f"trtexec options read by AllOptions::parse in {TRTEXEC_OPTIONS} of {origin};",
                 "OPTION=A|B lists the only values accepted (~a: compared in lower case; "
                 "pool:*: items of a comma-separated list);",
                 "regenerate with tools/trt_api_names.py"],
                target.table("trtexec_options"))


def release(tag: str) -> str:
    """``v10.13.0`` -> ``10.13``."""
    return ".".join(tag.lstrip("v").split(".")[:2])


def since_rows(per_release: List[Tuple[str, Set[str]]]) -> List[str]:
    """``NAME<TAB>first<TAB>last`` for each name not in every release (``last`` is empty when
    the newest release still has it)."""
    everywhere = set.intersection(*(names for _, names in per_release))
    rows = []
    for name in sorted(set.union(*(names for _, names in per_release)) - everywhere):
        having = [label for label, names in per_release if name in names]
        last = "" if having[-1] == per_release[-1][0] else having[-1]
        rows.append(f"{name}\t{having[0]}\t{last}")
    return rows


def trtexec_names(options: Dict[str, Set[str]]) -> Set[str]:
    """``--option`` and ``--option=value`` for each enumerated value, for :func:`since_rows`."""
    out = set(options)
    for option, values in options.items():
        out.update(f"{option}={v}" for v in values)
    return out


def make_since_table(checkout: Path) -> None:
    bindings: List[Tuple[str, Set[str]]] = []
    options: List[Tuple[str, Set[str]]] = []
    for tag in RELEASE_TAGS:
        bindings.append((release(tag), binding_members(git_files(checkout, tag,
                                                                 BINDING_SOURCES))))
        text = subprocess.run(["git", "-C", str(checkout), "show", f"{tag}:{TRTEXEC_OPTIONS}"],
                              check=True, capture_output=True, text=True).stdout
        options.append((release(tag), {f"trtexec{n}" if n.startswith("--") else n
                                       for n in trtexec_names(trtexec_options(text))}))
    write_table(since_rows(bindings) + since_rows(options),
                ["bindings (python/src) and trtexec options (trtexec--option[=value]) that "
                 "are not in every release",
                 f"from {RELEASE_TAGS[0]} to {RELEASE_TAGS[-1]} of github.com/NVIDIA/TensorRT: "
                 "NAME<TAB>first release<TAB>last release (empty: still there);",
                 "regenerate with tools/trt_api_names.py --since"],
                DATA / "tensorrt_api_since.txt")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", type=Path, required=True,
                    help="a git checkout of github.com/NVIDIA/TensorRT (with its history)")
    ap.add_argument("--version", choices=sorted(TARGETS), help="one wheel version (default: all)")
    ap.add_argument("--wheel", type=Path, help="use this wheel instead of downloading "
                                               "(with --version)")
    ap.add_argument("--since", action="store_true", help="write tensorrt_api_since.txt (the "
                    "version boundaries from the release tags) instead of the other tables")
    args = ap.parse_args(argv)
    if args.since:
        make_since_table(args.sources)
        return 0
    if args.wheel and not args.version:
        ap.error("--wheel needs --version")
    chosen = [TARGETS[args.version]] if args.version else list(TARGETS.values())
    with tempfile.TemporaryDirectory() as tmp:
        for target in chosen:
            wheel = args.wheel or download(target.wheel_version, Path(tmp) / target.wheel_version)
            make_tables(target, wheel, args.sources)
    return 0


if __name__ == "__main__":
    sys.exit(main())
