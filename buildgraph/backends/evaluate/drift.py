"""How two builds of one output differ: where the bytes first part, and how far the numbers
drift. ``buildgraph repro`` calls :func:`compare_outputs` in a worker process (it imports the
runtimes of the artifacts compared) for every output a rebuild did not reproduce.

* Where: the first differing byte, or for a zip archive (``torch.save``, ``.pt2``, TorchScript)
  the first differing member, or for an ONNX model the first differing node, graph input or
  output, or initializer; for a directory, the files that differ.
* How far: a model artifact is loaded twice through the runtime ``verify`` uses for its kind,
  both run on the same seeded inputs, and the outputs compared as ``verify`` compares them (max
  abs and rel error, cosine, and whether fp32 tolerances hold); a JSON report is compared value
  by value (how many differ, the largest relative change).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from buildgraph.errors import StepFailed

INPUT_SETS = 2


def compare_outputs(request: Dict[str, Any]) -> Dict[str, Any]:
    """``request``: ``old`` and ``new`` paths, the step's ``kind``, and for a model artifact its
    ``runtime``, the ``model`` description it was built from (``task.data["model"]`` of the step
    that names it), ``recipe_dir``, ``info_old``/``info_new`` (the steps' ``info`` outputs)."""
    old, new = Path(request["old"]), Path(request["new"])
    result: Dict[str, Any] = {"first_difference": first_difference(old, new)}
    if request.get("runtime"):
        try:
            result["numbers"] = numeric_drift(old, new, request)
        except StepFailed as exc:
            result["numbers_skipped"] = exc.message
        except Exception as exc:  # noqa: BLE001 - a runtime failing on one build is a finding
            result["numbers_skipped"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    elif old.is_file() and new.is_file() and old.suffix == ".json":
        try:
            result["json"] = json_drift(json.loads(old.read_text()), json.loads(new.read_text()))
        except ValueError as exc:
            result["json"] = {"error": f"not JSON: {exc}"}
    return result


# --------------------------------------------------------------------------------------------
# where the bytes differ
# --------------------------------------------------------------------------------------------

def first_difference(old: Path, new: Path) -> str:
    if old.is_dir() and new.is_dir():
        return _dir_difference(old, new)
    if old.suffix == ".onnx":
        try:
            return onnx_difference(old, new)
        except Exception:  # noqa: BLE001 - unreadable ONNX: fall back to the bytes
            pass
    if zipfile.is_zipfile(old) and zipfile.is_zipfile(new):
        return zip_difference(old, new)
    return byte_difference(old, new)


def byte_difference(old: Path, new: Path) -> str:
    """``bytes differ from offset N of M (old ..., new ...)``."""
    a_size, b_size = old.stat().st_size, new.stat().st_size
    offset = 0
    with open(old, "rb") as fa, open(new, "rb") as fb:
        while True:
            a, b = fa.read(1 << 20), fb.read(1 << 20)
            if a != b:
                i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]),
                         min(len(a), len(b)))
                offset += i
                return (f"bytes differ from offset {offset} (sizes {a_size} and {b_size}): "
                        f"{a[i:i + 12].hex(' ')} vs {b[i:i + 12].hex(' ')}")
            if not a:
                return "identical bytes"
            offset += len(a)


def zip_difference(old: Path, new: Path) -> str:
    """The first member of two zip archives that differs (the member list first), and where."""
    with zipfile.ZipFile(old) as za, zipfile.ZipFile(new) as zb:
        a_names = [i.filename for i in za.infolist()]
        b_names = [i.filename for i in zb.infolist()]
        if a_names != b_names:
            only_a = [n for n in a_names if n not in b_names]
            only_b = [n for n in b_names if n not in a_names]
            if only_a or only_b:
                return (f"zip members differ: only in the cached build {only_a[:3]}, only in the "
                        f"rebuild {only_b[:3]}")
            return "zip members are the same, in another order"
        for info_a in za.infolist():
            info_b = zb.getinfo(info_a.filename)
            if info_a.date_time != info_b.date_time:
                return (f"zip member {info_a.filename}: timestamps {info_a.date_time} vs "
                        f"{info_b.date_time}")
            a, b = za.read(info_a.filename), zb.read(info_b.filename)
            if a != b:
                i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]),
                         min(len(a), len(b)))
                return (f"zip member {info_a.filename} differs from byte {i}: "
                        f"{_show(a[max(0, i - 16):i + 32])} vs {_show(b[max(0, i - 16):i + 32])}")
        return "zip members and contents are the same; the archive layout differs"


def onnx_difference(old: Path, new: Path) -> str:
    """The first ONNX node (or graph input/output, initializer, opset) that differs."""
    import onnx
    from onnx import numpy_helper

    a = onnx.load(str(old), load_external_data=False)
    b = onnx.load(str(new), load_external_data=False)
    ga, gb = a.graph, b.graph
    if [(o.domain, o.version) for o in a.opset_import] != \
            [(o.domain, o.version) for o in b.opset_import]:
        return "ONNX opsets differ"
    for what, xs, ys in (("graph input", ga.input, gb.input), ("graph output", ga.output, gb.output)):
        for i, (x, y) in enumerate(zip(xs, ys)):
            if x != y:
                return f"ONNX {what} {i} ({x.name}) differs"
        if len(xs) != len(ys):
            return f"ONNX {what}s: {len(xs)} vs {len(ys)}"
    for i, (x, y) in enumerate(zip(ga.node, gb.node)):
        if x != y:
            what = []
            if x.op_type != y.op_type:
                what.append(f"op {x.op_type} vs {y.op_type}")
            if x.name != y.name:
                what.append(f"name {x.name!r} vs {y.name!r}")
            if list(x.input) != list(y.input) or list(x.output) != list(y.output):
                what.append("inputs/outputs")
            if x.attribute != y.attribute:
                what.append("attributes")
            return f"ONNX node {i} ({x.op_type} {x.name!r}) differs: " + (", ".join(what) or
                                                                            "metadata")
    if len(ga.node) != len(gb.node):
        return f"ONNX nodes: {len(ga.node)} vs {len(gb.node)}"
    b_init = {t.name: t for t in gb.initializer}
    for t in ga.initializer:
        u = b_init.get(t.name)
        if u is None:
            return f"ONNX initializer {t.name} only in the cached build"
        if t != u:
            x, y = numpy_helper.to_array(t), numpy_helper.to_array(u)
            if x.shape != y.shape:
                return f"ONNX initializer {t.name}: shape {list(x.shape)} vs {list(y.shape)}"
            import numpy as np

            return (f"ONNX initializer {t.name} differs: max abs "
                    f"{float(np.max(np.abs(x.astype('float64') - y.astype('float64')))):.3g}")
    if a.SerializeToString() != b.SerializeToString():
        return "ONNX graphs are the same; model metadata differs (producer, doc strings, " \
               "value_info)"
    return byte_difference(old, new)


def _dir_difference(old: Path, new: Path) -> str:
    a = {p.relative_to(old).as_posix(): p for p in old.rglob("*") if p.is_file()}
    b = {p.relative_to(new).as_posix(): p for p in new.rglob("*") if p.is_file()}
    parts = []
    if set(a) - set(b):
        parts.append(f"only in the cached build: {sorted(set(a) - set(b))[:3]}")
    if set(b) - set(a):
        parts.append(f"only in the rebuild: {sorted(set(b) - set(a))[:3]}")
    differing = [rel for rel in sorted(set(a) & set(b)) if a[rel].read_bytes() != b[rel].read_bytes()]
    if differing:
        parts.append(f"{len(differing)} of {len(set(a) & set(b))} files differ, first "
                     f"{differing[0]}: {first_difference(a[differing[0]], b[differing[0]])}")
    return "; ".join(parts) or "same files, same bytes"


def _show(data: bytes) -> str:
    text = data.decode("latin-1")
    return repr("".join(c if 32 <= ord(c) < 127 else "." for c in text))


# --------------------------------------------------------------------------------------------
# how far the numbers drift
# --------------------------------------------------------------------------------------------

def numeric_drift(old: Path, new: Path, request: Dict[str, Any]) -> Dict[str, Any]:
    """Run both builds through the runtime on the same seeded inputs; compare like verify."""
    from buildgraph.backends.evaluate.verify import PRECISION_DEFAULTS, candidate_trusted, compare
    from buildgraph.engine.runtime import RuntimeContext, load_runtime

    model = request.get("model") or {}
    spec: Optional[Dict[str, Any]] = None
    if model.get("spec"):
        spec = dict(model["spec"])
        spec["inputs"] = {k: v for k, v in model.get("inputs") or []}
    runtimes = []
    try:
        for path, info in ((old, request.get("info_old")), (new, request.get("info_new"))):
            ctx = RuntimeContext(model=model.get("name"), model_spec=spec,
                                 recipe_dir=Path(request["recipe_dir"]), kind=request.get("kind"),
                                 meta=_info(info), threads=int(request.get("threads") or 1),
                                 trusted=candidate_trusted(request.get("kind"), spec or {}))
            runtimes.append(load_runtime(path, ctx, request["runtime"]))
        sets = _inputs(runtimes[0].input_shapes(), spec)
        outs_old = [runtimes[0].run(arrays) for arrays in sets]
        outs_new = [runtimes[1].run(arrays) for arrays in sets]
    finally:
        for runtime in runtimes:
            runtime.close()
    tol = dict(PRECISION_DEFAULTS["fp32"], min_top1=None, min_topk=None)
    per_output = []
    for i in range(len(outs_old[0])):
        metrics = compare([o[i] for o in outs_old], [o[i] for o in outs_new], tol, 5, None)
        per_output.append(metrics)
    worst = max(per_output, key=lambda m: m.get("max_abs", float("inf")))
    return {"runtime": request["runtime"], "input_sets": len(sets),
            "inputs": [list(a.shape) for a in sets[0]],
            "max_abs": worst.get("max_abs"), "max_rel": worst.get("max_rel"),
            "cosine": min(m.get("cosine", 0.0) for m in per_output),
            "within_fp32_tolerance": all(m.get("passed") for m in per_output),
            "outputs": len(per_output)}


def _info(path: Optional[str]) -> Dict[str, Any]:
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _inputs(shapes: List[List[Any]], spec: Optional[Dict[str, Any]]) -> List[List[Any]]:
    """Seeded inputs: the model's own (sizes fixed where the artifact fixes them), else
    standard normal floats of the artifact's shapes (dynamic dims 1)."""
    if spec is not None:
        from buildgraph.backends.torch import model as torchmodel

        fixed: Dict[str, int] = {}
        for (_, tspec), shape in zip(torchmodel.input_specs(spec), shapes):
            for dim, actual in zip(tspec.get("shape") or [], shape):
                if isinstance(dim, str) and isinstance(actual, int) and actual > 0:
                    fixed[dim] = actual
        seed = int(spec.get("seed", 0)) + 100
        return [[torchmodel.to_numpy(t) for t in torchmodel.make_inputs(spec, seed + i, fixed)]
                for i in range(INPUT_SETS)]
    import numpy as np

    rng = np.random.default_rng(100)
    return [[rng.standard_normal([d if isinstance(d, int) and d > 0 else 1 for d in shape])
             .astype("float32") for shape in shapes] for _ in range(INPUT_SETS)]


def json_drift(old: Any, new: Any) -> Dict[str, Any]:
    """How two JSON documents differ: the number of differing values, the first one's path and
    values, and the largest relative change among numbers."""
    diffs: List[Tuple[str, Any, Any]] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}[{i}]")
        elif a != b:
            diffs.append((path, a, b))

    walk(old, new, "")
    rel = [abs(b - a) / max(abs(a), abs(b)) for _, a, b in diffs
           if isinstance(a, (int, float)) and isinstance(b, (int, float))
           and not isinstance(a, bool) and max(abs(a), abs(b)) > 0]
    result: Dict[str, Any] = {"values_differing": len(diffs),
                              "numbers_differing": len(rel),
                              "max_rel_change": max(rel) if rel else 0.0}
    if diffs:
        path, a, b = diffs[0]
        result["first"] = f"{path}: {json.dumps(a)[:60]} vs {json.dumps(b)[:60]}"
    return result
