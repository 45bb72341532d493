"""Exports that do not record where the checkout or the Python environment lies.

A release is rebuilt in another clone (CI's, a teammate's) and compared byte for byte, so an
export must not carry absolute paths. Three exporters write source locations:

- ``torch.jit.save`` writes ``*.debug_pkl`` records beside each code file: the source ranges of
  every TorchScript node, as absolute paths of the model's source *and* of the tracer's own
  frames in site-packages. They serve only the text of TorchScript runtime errors. They are
  dropped: the archive is rewritten record by record with torch's own zip writer (which keeps
  the 64-byte alignment ``torch.jit.load`` relies on to map tensors).
- ``torch.export`` keeps a ``stack_trace`` per graph node (written into the ``.pt2``), and the
  dynamo ONNX exporter copies it into each node's ``pkg.torch.onnx.stack_trace`` property. These
  are useful when reading a graph, so they are kept, with each ``File "..."`` made relative: to
  the recipe directory for the model's own code, to its ``sys.path`` entry for a library
  (``torch/nn/modules/conv.py``).

Measured on a 2-layer net built in two directories: before, the ``.ts`` (trace and script),
``.pt2`` and dynamo ``.onnx`` differed; after, all are identical (tests/test_torch_determinism).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, List

_FRAME = re.compile(r'File "([^"]+)"')


def _roots(recipe_dir: Path) -> List[str]:
    """Directories a path is made relative to, most specific first: the recipe directory and
    the import path (site-packages, the standard library). Import-path entries inside the
    recipe directory (a model's own folder, put there to import its helpers) are left out, so
    the model's code reads ``models/net.py`` whatever the import path held."""
    recipe = os.path.realpath(recipe_dir).rstrip(os.sep)
    roots = {recipe}
    for entry in sys.path:
        real = os.path.realpath(entry).rstrip(os.sep) if entry and os.path.isabs(entry) else ""
        if real and not real.startswith(recipe + os.sep):
            roots.add(real)
    return sorted(roots, key=len, reverse=True)


def portable_path(path: str, roots: Iterable[str]) -> str:
    """``path`` relative to the first root that holds it; else its file name."""
    real = os.path.realpath(path) if os.path.isabs(path) else path
    for root in roots:
        if real.startswith(root + os.sep):
            return real[len(root) + 1:]
    return os.path.basename(path) if os.path.isabs(path) else path


def portable_trace(text: str, roots: List[str]) -> str:
    """A Python stack trace with every ``File "..."`` made location-free."""
    return _FRAME.sub(lambda m: f'File "{portable_path(m.group(1), roots)}"', text)


def portable_program(program: Any, recipe_dir: Path) -> Any:
    """Make the stack traces in an ExportedProgram's graphs (its submodules' too) location-free,
    in place, before ``torch.export.save`` or the ONNX exporter reads them."""
    roots = _roots(recipe_dir)
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in getattr(graph, "nodes", ()):
            trace = node.meta.get("stack_trace")
            if trace:
                node.meta["stack_trace"] = portable_trace(trace, roots)
    return program


def portable_onnx_program(program: Any, recipe_dir: Path) -> Any:
    """The same for an ONNXProgram's node properties (graph, subgraphs and functions)."""
    import onnx_ir as ir

    roots = _roots(recipe_dir)
    graphs: List[Any] = [program.model.graph, *program.model.functions.values()]
    for graph in graphs:
        for node in ir.traversal.RecursiveGraphIterator(graph):
            for key, value in list(node.metadata_props.items()):
                if "stack_trace" in key and value:
                    node.metadata_props[key] = portable_trace(value, roots)
    return program


def drop_torchscript_debug(path: Path) -> int:
    """Rewrite a ``torch.jit.save`` archive without its ``*.debug_pkl`` records; returns how many
    were dropped. The writer names the archive's top folder after the file's stem, so the copy is
    written under the same name in a private folder and then replaces the original."""
    import torch

    reader = torch._C.PyTorchFileReader(str(path))
    names = reader.get_all_records()
    dropped = [n for n in names if n.endswith(".debug_pkl")]
    if not dropped:
        return 0
    work = path.parent / f".portable-{os.getpid()}"
    work.mkdir(exist_ok=True)
    copy = work / path.name
    try:
        writer = torch._C.PyTorchFileWriter(str(copy))
        for name in names:
            # the writer computes its own serialization id from what it writes
            if name in dropped or name == ".data/serialization_id":
                continue
            data = reader.get_record(name)
            writer.write_record(name, data, len(data))
        writer.write_end_of_file()
        del writer, reader
        os.replace(copy, path)
    finally:
        if copy.exists():
            copy.unlink()
        work.rmdir()
    return len(dropped)
