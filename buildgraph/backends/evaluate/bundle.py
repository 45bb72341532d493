"""The release bundle: its manifest, loader snippets, README and deterministic archive.

:mod:`buildgraph.backends.evaluate.release` decides what ships; this module writes it:

* ``manifest.json``: per artifact its IO signature (names, shapes with dynamic dims, dtypes),
  precision, the verification errors per output with the tolerance each passed, the benchmark
  figures, a SHA-256 per file and whether a rebuild gives the same bytes; the selection and its
  reasons; provenance (recipe digest, git commit and dirty flag, action keys, tool versions,
  host, the digest of the lock file's entries for these steps); the steps that are not
  deterministic (for them ``buildgraph repro`` compares numbers, not bytes);
* ``loaders/load_<runtime>.py``: a standalone script per runtime that loads the artifact and runs it
  once on inputs of its signature;
* ``README.md``: what a person reads first, generated from the manifest;
* the archive: ``tar.gz`` with sorted entries, a fixed mtime, owner and mode, and a gzip header
  without time or file name, so the same bundle gives the same bytes (given the same zlib).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from buildgraph.engine.executor import Task
from buildgraph.engine.files import write_tar_gz

COMPRESSLEVEL = 6
"""Float weights barely compress (ResNet-18's ONNX: 93% at level 6 and at level 9), and
level 9 costs a quarter more time."""

LOADERS = {"onnxruntime", "torchscript", "torch.export", "torch.save", "tvm.relax", "tensorrt",
           "tensorflow", "torch.aoti"}

CPP_KIND = "cpp.check"
"""The step kind whose C++ loaders (``sources/FORM/``) a bundle ships for the artifacts it
proved (:mod:`buildgraph.backends.cpp.check`)."""


# --------------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------------

def build_manifest(task: Task, *, name: str, mode: str, batch: Optional[int],
                   selected: List[Tuple[float, str, Dict[str, Any]]],
                   ranking: List[Tuple[float, str, Dict[str, Any]]], reasons: Dict[str, str],
                   sources: Dict[str, Path], bench_step: str, bench_report: Dict[str, Any],
                   verify_reports: Dict[str, Dict[str, Any]], model: Dict[str, Any],
                   stamp: bool) -> Dict[str, Any]:
    """The manifest: a function of the release's keyed inputs (and of the stamp, if asked)."""
    provenance = dict(task.data.get("provenance") or {})
    steps = dict(provenance.get("steps") or {})
    artifacts = []
    for latency, cand, entry in selected:
        source = sources[cand]
        runtime = entry.get("runtime") or entry.get("kind") or "unknown"
        verification = _verification(cand, verify_reports)
        files = _files(source)
        artifacts.append({
            "step": cand, "kind": entry.get("kind"), "runtime": runtime,
            "path": f"artifacts/{cand}/{source.name}", "digest": entry.get("digest"),
            "files": files, "bytes": sum(f["bytes"] for f in files.values()),
            "precision": next((v["precision"] for v in verification if v.get("precision")),
                              None),
            "io": io_signature(source, model, verify_reports, cand),
            "verification": verification,
            "benchmark": _benchmark(bench_step, bench_report, cand),
            "loader": f"loaders/{_loader_name(runtime)}.py",
            "reproducible": _reproducible(cand, steps),
        })
        cpp = cpp_proof(task, cand, artifacts[-1]["path"], source)
        if cpp:
            artifacts[-1]["cpp"] = cpp
    nondeterministic = {sid: rec["nondeterministic"] for sid, rec in sorted(steps.items())
                        if rec.get("nondeterministic")}
    manifest: Dict[str, Any] = {
        "schema": 1, "name": name,
        "model": {k: model[k] for k in ("name", "source", "kwargs") if k in model} or None,
        "selection": {"mode": mode, "batch": batch, "compared": "median latency, ms",
                      "ranking": [{"step": c, "median_ms": ms, "runtime": e.get("runtime")}
                                  for ms, c, e in ranking],
                      "not_eligible": dict(sorted(reasons.items()))},
        "artifacts": artifacts,
        "nondeterministic": nondeterministic,
        "provenance": _provenance(task, provenance, stamp),
    }
    return manifest


def cpp_proof(task: Task, cand: str, path: str, source: Path) -> Dict[str, Any]:
    """What an upstream ``cpp.check`` step proved about ``cand``: whether it runs from C++,
    the loader it built and ran (shipped under ``cpp/FORM/``) and the errors it measured; {}
    when no such step checked it."""
    for step, kind in sorted(task.upstream_kinds.items()):
        if kind != CPP_KIND or "report" not in task.upstream.get(step, {}):
            continue
        report = json.loads(Path(task.upstream[step]["report"]).read_text(encoding="utf-8"))
        entry = (report.get("candidates") or {}).get(cand)
        if not entry:
            continue
        yes = entry.get("runs_from_cpp") == "yes"
        proof: Dict[str, Any] = {"checked_by": step,
                                 "runs_from_cpp": "yes" if yes else
                                 f"no ({entry.get('why', '?')})",
                                 "api": entry.get("api"), "libraries": entry.get("libraries"),
                                 "toolchain": report.get("toolchain"),
                                 "max_abs": {n: m.get("max_abs") for n, m in
                                             (entry.get("outputs") or {}).items()}}
        if yes:
            form = entry["loader"]
            proof.update(loader=f"cpp/{form}", sources=f"{step}:sources/{form}",
                         build=f"cmake -S cpp/{form} -B build/{form} && cmake --build "
                               f"build/{form}",
                         run=f"./build/{form}/bg_loader {path}"
                             f"{'/' + _tvm_library(source) if source.is_dir() else ''} "
                             f"{entry.get('device', 'cpu')} IN.bgt OUT.bgt")
        return proof
    return {}


def _tvm_library(folder: Path) -> str:
    """The library file in a ``tvm.compile`` output folder."""
    try:
        return json.loads((folder / "model.json").read_text(encoding="utf-8"))["library"]
    except (OSError, ValueError, KeyError):
        return "model.so"


def io_signature(source: Path, model: Mapping[str, Any],
                 verify_reports: Mapping[str, Mapping[str, Any]], cand: str) -> Dict[str, Any]:
    """Input and output names, shapes (a name for a dynamic dim) and dtypes.

    An ONNX model and a TVM library say them themselves; other artifacts take the model's
    declared inputs (with the sizes verification found the artifact built for) and the output
    names and shapes verification saw."""
    dims = dict(model.get("dims") or {})
    signature: Dict[str, Any]
    if source.is_file() and source.suffix == ".onnx":
        signature = _onnx_signature(source)
        signature["from"] = "the ONNX graph"
    else:
        tvm_manifest = source / "model.json" if source.is_dir() else None
        fixed: Dict[str, int] = {}
        for report in verify_reports.values():
            fixed.update((report.get("candidates", {}).get(cand) or {}).get("inputs") or {})
        if tvm_manifest is not None and tvm_manifest.is_file():
            inputs = [{"name": i.get("name"), "shape": i.get("shape"), "dtype": i.get("dtype")}
                      for i in json.loads(tvm_manifest.read_text()).get("inputs") or []]
            origin = "the TVM library's model.json"
        else:
            inputs = [{"name": n, "dtype": spec.get("dtype", "float32"),
                       "shape": [fixed.get(d, d) if isinstance(d, str) else d
                                 for d in spec.get("shape") or []]}
                      for n, spec in model.get("inputs") or []]
            origin = "the recipe's model inputs" + (" and the sizes verification found"
                                                    if fixed else "")
        signature = {"inputs": inputs, "outputs": _observed_outputs(verify_reports, cand),
                     "from": origin}
    named = {d for io in signature["inputs"] + signature["outputs"]
             for d in io.get("shape") or [] if isinstance(d, str)}
    signature["dynamic_dims"] = {d: dims.get(d, {}) for d in sorted(named)}
    return signature


def _onnx_signature(path: Path) -> Dict[str, Any]:
    import onnx
    from onnx import helper

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}

    def describe(value: Any) -> Dict[str, Any]:
        tensor = value.type.tensor_type
        shape: List[Any] = []
        for dim in tensor.shape.dim:
            shape.append(dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None))
        try:
            dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        except (KeyError, TypeError, ValueError):
            dtype = str(tensor.elem_type)
        return {"name": value.name, "shape": shape, "dtype": dtype}

    return {"inputs": [describe(v) for v in graph.input if v.name not in weights],
            "outputs": [describe(v) for v in graph.output]}


def _observed_outputs(verify_reports: Mapping[str, Mapping[str, Any]], cand: str
                      ) -> List[Dict[str, Any]]:
    for report in verify_reports.values():
        entry = (report.get("candidates") or {}).get(cand)
        if entry and entry.get("outputs"):
            first = (report.get("inputs") or [{}])[0]
            return [{"name": n, "shape_seen": m.get("shape"),
                     "with_inputs": first.get("shapes")}
                    for n, m in entry["outputs"].items()]
    return []


def _verification(cand: str, verify_reports: Mapping[str, Mapping[str, Any]]
                  ) -> List[Dict[str, Any]]:
    """What each verify step measured for ``cand``: per output the errors and the tolerance
    contract it passed."""
    found = []
    for step, report in sorted(verify_reports.items()):
        entry = (report.get("candidates") or {}).get(cand)
        if not entry:
            continue
        found.append({"step": step, "passed": bool(entry.get("passed")),
                      "precision": entry.get("precision"), "runtime": entry.get("runtime"),
                      "reference": report.get("reference"),
                      "input_sets": report.get("inputs"),
                      "adapted_inputs": entry.get("inputs"),
                      "outputs": entry.get("outputs") or {}})
    return found


def _benchmark(step: str, report: Mapping[str, Any], cand: str) -> Dict[str, Any]:
    entry = dict((report.get("candidates") or {}).get(cand) or {})
    for key in ("digest", "artifact", "kind"):
        entry.pop(key, None)
    settings = {k: v for k, v in report.items() if k not in ("candidates", "schema")}
    return {"step": step, "settings": settings, **entry}


def _files(source: Path) -> Dict[str, Dict[str, Any]]:
    paths = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    out = {}
    for path in paths:
        rel = path.name if source.is_file() else f"{source.name}/{path.relative_to(source).as_posix()}"
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        out[rel] = {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}
    return out


def _reproducible(cand: str, steps: Mapping[str, Mapping[str, Any]]) -> str:
    """Whether rebuilding gives the same bytes: not when this step or one it depends on is
    not deterministic."""
    seen, stack, causes = set(), [cand], []
    while stack:
        sid = stack.pop()
        if sid in seen or sid not in steps:
            continue
        seen.add(sid)
        if steps[sid].get("nondeterministic"):
            causes.append(f"{sid}: {steps[sid]['nondeterministic']}")
        stack.extend(steps[sid].get("upstream") or [])
    if not causes:
        return "bit-identical: every step it comes from is deterministic"
    return "same numbers, not the same bytes: " + "; ".join(sorted(causes))


def _provenance(task: Task, provenance: Mapping[str, Any], stamp: bool) -> Dict[str, Any]:
    from buildgraph.engine.lockfile import entries_digest

    import re

    steps = dict(provenance.get("steps") or {})
    tools: Dict[str, List[str]] = {}
    environment: Dict[str, List[str]] = {}
    gpu = []
    for rec in steps.values():
        for k, v in (rec.get("env") or {}).items():
            value = str(v)
            if "gpu" in k.lower():
                gpu.append(value)
            elif k == "host" or value == "not installed":
                continue
            else:  # a version is a tool's; the rest (targets, compilers) is environment
                into = tools if re.match(r"^\d+(\.\d+)+", value) else environment
                into.setdefault(k, [])
                if value not in into[k]:
                    into[k].append(value)
    recipe = dict(provenance.get("recipe") or {})
    lock_name = (recipe.get("file") or "recipe.yaml").rsplit(".", 1)[0] + ".lock.json"
    return {
        "recipe": recipe,
        "steps": {sid: {k: rec.get(k) for k in ("kind", "key", "upstream", "outputs")}
                  for sid, rec in sorted(steps.items())},
        "tools": {k: " | ".join(sorted(v)) for k, v in sorted(tools.items())},
        "environment": {k: sorted(v) for k, v in sorted(environment.items())},
        "host": {"cpu": task.env.get("host"), "gpu": sorted(set(gpu)) or None},
        "buildgraph": task.env.get("buildgraph"),
        "lock": {"file": lock_name, "digest": entries_digest(
            {sid: {"key": rec.get("key"), "outputs": rec.get("outputs") or {}}
             for sid, rec in steps.items()}),
                 "covers": "the key and output digests of each step under 'steps', as the "
                           "lock file records them (buildgraph.engine.lockfile.entries_digest)"},
        "stamp": _stamp(task.recipe_dir) if stamp else {"off": "stamp: false"},
    }


def _stamp(where: Path) -> Dict[str, Any]:
    """The git commit and whether tracked files other than lock files differ from it (lock
    files are the build's own output, written after this step). Not keyed: see release.py."""
    def git(*args: str) -> Optional[str]:
        try:
            proc = subprocess.run(["git", "-C", str(where), *args], capture_output=True,
                                  text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_dirty": None, "note": "not a git checkout"}
    status = git("status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                 ":(top,exclude,glob)**/*.lock.json")
    return {"git_commit": commit.strip(),
            "git_dirty": None if status is None else bool(status.strip())}


# --------------------------------------------------------------------------------------------
# the bundle directory
# --------------------------------------------------------------------------------------------

def write_bundle(dest: Path, manifest: Dict[str, Any], sources: Dict[str, Path],
                 task: Task) -> None:
    """``dest/``: manifest.json, README.md, artifacts/STEP/..., loaders/load_RUNTIME.py."""
    dest.mkdir()
    for art in manifest["artifacts"]:
        source = sources[art["step"]]
        target = dest / art["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, copy_function=shutil.copyfile)
        else:
            shutil.copyfile(source, target)
        data = task.upstream.get(art["step"], {}).get("data")  # ONNX external weights
        if data is not None and Path(data).is_file():
            shutil.copyfile(data, target.parent / Path(data).name)
    for art in manifest["artifacts"]:
        cpp = art.get("cpp") or {}
        if cpp.get("loader"):
            step, _, rel = cpp["sources"].partition(":")
            folder = Path(task.upstream[step]["sources"]) / rel.split("/", 1)[1]
            target = dest / cpp["loader"]
            if not target.exists():
                shutil.copytree(folder, target, copy_function=shutil.copyfile)
    (dest / "loaders").mkdir()
    for runtime in sorted({a["runtime"] for a in manifest["artifacts"]}):
        name = _loader_name(runtime)
        (dest / "loaders" / f"{name}.py").write_text(loader_script(runtime), encoding="utf-8")
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                        encoding="utf-8")
    (dest / "README.md").write_text(readme(manifest), encoding="utf-8")


def write_archive(src: Path, dest: Path, top: str) -> None:
    """``src`` as ``dest`` (.tar.gz) under the folder ``top``, its bytes a function of the
    files' names, contents and executable bits only (:func:`engine.files.write_tar_gz`)."""
    write_tar_gz(src, dest, top=top, compresslevel=COMPRESSLEVEL)


# --------------------------------------------------------------------------------------------
# loaders and README
# --------------------------------------------------------------------------------------------

def _loader_name(runtime: str) -> str:
    """``load_onnxruntime``: never the name of the module it imports (a script's folder comes
    first on ``sys.path``)."""
    return "load_" + (runtime.replace(".", "_") if runtime in LOADERS else "generic")


_HEAD = '''"""Load {what} from this bundle and run it once on random inputs of its signature.

Usage: python loaders/{file} [STEP]   (STEP: which artifact, when the bundle has several)
Needs: {needs}
"""

import json
import pathlib
import sys

import numpy as np

BUNDLE = pathlib.Path(__file__).resolve().parent.parent
MANIFEST = json.loads((BUNDLE / "manifest.json").read_text())


def artifact(step=None):
    """The manifest entry of STEP, or of the first artifact this loader handles."""
    for entry in MANIFEST["artifacts"]:
        if entry["step"] == step or (step is None and entry["runtime"] == {runtime!r}):
            return entry
    raise SystemExit(f"no artifact for this loader: {{step or {runtime!r}}}")


def inside(folder, name):
    """FOLDER/NAME, refused unless NAME is a plain relative path that stays inside FOLDER: the
    manifest is data, and a copied or downloaded bundle must not make this script open files
    elsewhere."""
    parts = pathlib.PurePosixPath(name).parts if isinstance(name, str) else ()
    if not parts or name.startswith("/") or "\\\\" in name or ".." in parts \
            or any(ord(c) < 32 for c in name):
        raise SystemExit(f"refusing manifest path {{name!r}}: not a relative path inside the "
                         "bundle")
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise SystemExit(f"refusing manifest path {{name!r}}: it leads outside the bundle")
    return path


def artifact_path(entry):
    """The artifact's file or folder inside this bundle (checked, see inside())."""
    return inside(BUNDLE, entry.get("path"))


def example_inputs(entry):
    """Random arrays of the artifact's input shapes; a dynamic dim takes its 'opt' (or min)."""
    rng = np.random.default_rng(0)
    dims = entry["io"].get("dynamic_dims") or {{}}
    arrays = []
    for spec in entry["io"]["inputs"]:
        shape = [d if isinstance(d, int) else int((dims.get(d) or {{}}).get("opt")
                                                  or (dims.get(d) or {{}}).get("min") or 1)
                 for d in spec["shape"]]
        dtype = np.dtype(spec.get("dtype") or "float32")
        if dtype.kind == "f":
            arrays.append(rng.standard_normal(shape).astype(dtype))
        else:
            arrays.append(rng.integers(0, 2, size=shape).astype(dtype))
    return arrays

'''

_BODIES = {
    "tensorflow": ("a TensorFlow SavedModel (its serving_default signature) or a Keras file",
                   "numpy, tensorflow", '''
def load(entry):
    import tensorflow as tf

    path = artifact_path(entry)
    if path.is_dir():
        return tf.saved_model.load(str(path)).signatures["serving_default"]
    import keras

    return keras.saving.load_model(str(path), compile=False)


def run(model, entry, arrays):
    import tensorflow as tf

    if hasattr(model, "structured_input_signature"):  # a SavedModel signature: inputs by name
        names = list(model.structured_input_signature[1])
        wanted = [i["name"] for i in entry["io"]["inputs"]]
        names = wanted if sorted(wanted) == sorted(names) else names
        out = model(**{n: tf.constant(a) for n, a in zip(names, arrays)})
        return [v.numpy() for v in out.values()]
    out = model(arrays[0] if len(arrays) == 1 else list(arrays), training=False)
    return [o.numpy() for o in (out if isinstance(out, (list, tuple)) else [out])]
'''),
    "onnxruntime": ("an ONNX model with onnxruntime", "numpy, onnxruntime", '''
def load(entry):
    import onnxruntime as ort

    return ort.InferenceSession(str(artifact_path(entry)), providers=["CPUExecutionProvider"])


def run(model, entry, arrays):
    names = [i.name for i in model.get_inputs()]
    return model.run(None, dict(zip(names, arrays)))
'''),
    "torchscript": ("a TorchScript module with torch.jit.load (C++: torch::jit::load)",
                    "numpy, torch", '''
def load(entry):
    import torch

    return torch.jit.load(str(artifact_path(entry)), map_location="cpu").eval()


def run(model, entry, arrays):
    import torch

    with torch.inference_mode():
        out = model(*[torch.from_numpy(a) for a in arrays])
    return [t.numpy() for t in (out if isinstance(out, (list, tuple)) else [out])]
'''),
    "torch.export": ("a torch.export program (.pt2) with torch.export.load", "numpy, torch", '''
def load(entry):
    import torch

    return torch.export.load(str(artifact_path(entry))).module()


def run(model, entry, arrays):
    import torch

    with torch.inference_mode():
        out = model(*[torch.from_numpy(a) for a in arrays])
    return [t.numpy() for t in (out if isinstance(out, (list, tuple)) else [out])]
'''),
    "torch.save": ("a torch.save file", "numpy, torch, and for a state_dict the model's code",
                   '''
def load(entry):
    import torch

    path = artifact_path(entry)
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    source = (MANIFEST.get("model") or {}).get("source")
    kwargs = (MANIFEST.get("model") or {}).get("kwargs")
    if isinstance(state, dict):
        raise SystemExit(f"{path.name} holds a state_dict ({len(state)} entries): build the "
                         f"model from its code ({source}, kwargs {kwargs}) and call "
                         "model.load_state_dict(torch.load(path, weights_only=True))")
    return state.eval()


def run(model, entry, arrays):
    import torch

    with torch.inference_mode():
        out = model(*[torch.from_numpy(a) for a in arrays])
    return [t.numpy() for t in (out if isinstance(out, (list, tuple)) else [out])]
'''),
    "torch.aoti": ("an AOTInductor package with torch._inductor.aoti_load_package (C++: "
                   "torch::inductor::AOTIModelPackageLoader)",
                   "numpy, torch (the version that compiled it), the device it was compiled for",
                   '''
def load(entry):
    import torch

    return torch._inductor.aoti_load_package(str(artifact_path(entry)))


def run(model, entry, arrays):
    import torch

    device = "cuda" if torch.cuda.is_available() and entry.get("device") == "cuda" else "cpu"
    with torch.inference_mode():
        out = model(*[torch.from_numpy(a).to(device) for a in arrays])
    return [t.cpu().numpy() for t in (out if isinstance(out, (list, tuple)) else [out])]
'''),
    "tvm.relax": ("a TVM library with the TVM runtime (relax.VirtualMachine)",
                  "numpy, apache-tvm (the runtime alone), a CPU of the library's target", '''
def load(entry):
    import tvm
    from tvm import relax

    folder = artifact_path(entry)
    library = json.loads((folder / "model.json").read_text())["library"]
    return relax.VirtualMachine(tvm.runtime.load_module(str(inside(folder, library))), tvm.cpu())


def run(model, entry, arrays):
    import tvm

    out = model["main"](*[tvm.runtime.tensor(a, tvm.cpu()) for a in arrays])
    return [o.numpy() for o in (out if isinstance(out, (list, tuple)) else [out])]
'''),
    "tensorrt": ("a TensorRT engine with the TensorRT runtime",
                 "numpy, tensorrt, torch (CUDA buffers), the GPU and TensorRT version the engine "
                 "was built for", '''
def load(entry):
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine((artifact_path(entry)).read_bytes())
    if engine is None:
        raise SystemExit("TensorRT could not load the engine (another GPU or TensorRT version?)")
    return engine


def run(engine, entry, arrays):
    import tensorrt as trt
    import torch

    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    buffers = {}
    for name, array in zip(inputs, arrays):
        context.set_input_shape(name, array.shape)
        buffers[name] = torch.from_numpy(array).cuda()
    for name in names:
        if name not in buffers:
            shape = tuple(context.get_tensor_shape(name))
            buffers[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
    for name, tensor in buffers.items():
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise SystemExit("TensorRT failed to run the engine")
    stream.synchronize()
    return [buffers[n].cpu().numpy() for n in names if n not in inputs]
'''),
}

_TAIL = '''

if __name__ == "__main__":
    entry = artifact(sys.argv[1] if len(sys.argv) > 1 else None)
    arrays = example_inputs(entry)
    outputs = run(load(entry), entry, arrays)
    print(f"{entry['step']} ({entry['runtime']}): inputs "
          + ", ".join(str(list(a.shape)) for a in arrays) + " -> outputs "
          + ", ".join(str(list(np.shape(o))) for o in outputs))
'''


def loader_script(runtime: str) -> str:
    """The loader snippet for ``runtime``: standalone Python, only the runtime's own
    libraries and numpy."""
    what, needs, body = _BODIES.get(runtime, (f"an artifact for the '{runtime}' runtime",
                                              "the runtime's library", '''
def load(entry):
    raise SystemExit("no loader snippet for this runtime; see the runtime's documentation")


def run(model, entry, arrays):
    return []
'''))
    return _HEAD.format(what=what, file=f"{_loader_name(runtime)}.py", needs=needs,
                        runtime=runtime) + body + _TAIL


def readme(manifest: Mapping[str, Any]) -> str:
    """A short README.md from the manifest: what is inside, how to load it, where it came
    from, and what a rebuild reproduces."""
    from buildgraph.engine.sizes import format_size

    lines = [f"# {manifest['name']}", ""]
    model = manifest.get("model") or {}
    if model:
        lines += [f"Model `{model.get('name')}` (`{model.get('source')}`), released by "
                  f"buildgraph {manifest['provenance'].get('buildgraph')} "
                  f"({manifest['selection']['mode'].replace('_', ' ')}).", ""]
    lines += ["| artifact | runtime | precision | max abs error | median latency | size |",
              "| --- | --- | --- | --- | --- | --- |"]
    for art in manifest["artifacts"]:
        errors = [m.get("max_abs") for v in art["verification"] for m in v["outputs"].values()
                  if isinstance(m.get("max_abs"), (int, float))]
        results = (art.get("benchmark") or {}).get("results") or []
        latency = ", ".join(f"{r.get('median_ms', r.get('p50_ms'))} ms (batch {r.get('batch')})"
                            for r in results) or "-"
        lines.append(f"| `{art['path']}` | {art['runtime']} | {art.get('precision') or '-'} | "
                     f"{max(errors):.3g} | {latency} | {format_size(art['bytes'])} |"
                     if errors else
                     f"| `{art['path']}` | {art['runtime']} | {art.get('precision') or '-'} | - | "
                     f"{latency} | {format_size(art['bytes'])} |")
    lines += ["", "## Inputs and outputs", ""]
    for art in manifest["artifacts"]:
        io = art["io"]
        ins = ", ".join(f"`{i['name']}` {i.get('dtype')} {i.get('shape')}" for i in io["inputs"])
        outs = ", ".join(f"`{o['name']}`" + (f" {o.get('dtype')} {o.get('shape')}"
                                             if "shape" in o else f" (seen {o.get('shape_seen')})")
                         for o in io["outputs"])
        dyn = ", ".join(f"{d} {r.get('min')}..{r.get('max')}" if r else d
                        for d, r in io.get("dynamic_dims", {}).items())
        lines.append(f"- `{art['step']}`: inputs {ins}; outputs {outs}"
                     + (f"; dynamic: {dyn}" if dyn else ""))
    lines += ["", "## Loading", ""]
    for art in manifest["artifacts"]:
        lines.append(f"- `{art['step']}`: `python {art['loader']} {art['step']}` loads it and "
                     "runs it once on random inputs of its signature.")
    for art in manifest["artifacts"]:
        cpp = art.get("cpp") or {}
        if cpp.get("loader"):
            lines.append(f"- `{art['step']}` from C++ ({cpp.get('api')}; `{cpp['checked_by']}` "
                         f"built and ran this loader on the verification inputs: runs from "
                         f"C++: {cpp['runs_from_cpp']}): `{cpp['build']}`, then "
                         f"`{cpp['run']}` (IN/OUT: BGT1 tensor files, format at the top of "
                         f"`{cpp['loader']}/main.cpp`).")
        elif cpp:
            lines.append(f"- `{art['step']}` from C++: {cpp['runs_from_cpp']}")
    lines += ["", "Every file's SHA-256 is in `manifest.json` (`artifacts[].files`).", "",
              "## Verification", ""]
    for art in manifest["artifacts"]:
        for v in art["verification"]:
            for out, m in v["outputs"].items():
                tol = m.get("tolerance") or {}
                lines.append(f"- `{art['step']}` output `{out}` against {v['reference']['runtime'] if v.get('reference') else 'the reference'} "
                             f"({v['step']}): max abs {m.get('max_abs', 0):.3g}, max rel "
                             f"{m.get('max_rel', 0):.3g}, cosine {m.get('cosine', 0):.6f}; "
                             f"passed {tol.get('precision')} tolerance (atol {tol.get('atol')}, "
                             f"rtol {tol.get('rtol')}, {tol.get('statistic')}, min cosine "
                             f"{tol.get('min_cosine')})")
    prov = manifest["provenance"]
    stamp = prov.get("stamp") or {}
    lines += ["", "## Provenance", "",
              f"- recipe `{prov['recipe'].get('file')}` (digest {prov['recipe'].get('digest')}); "
              f"lock file `{prov['lock']['file']}` entries digest {prov['lock']['digest']}",
              f"- git commit {stamp.get('git_commit') or '(not recorded)'}"
              + (" (working tree had changes)" if stamp.get("git_dirty") else ""),
              f"- host: {prov['host'].get('cpu')}"
              + (f"; GPU {', '.join(prov['host']['gpu'])}" if prov['host'].get('gpu') else ""),
              "- tools: " + ", ".join(f"{k} {v}" for k, v in prov["tools"].items()),
              "", "## Reproducibility", ""]
    for art in manifest["artifacts"]:
        lines.append(f"- `{art['step']}`: {art['reproducible']}")
    if manifest["nondeterministic"]:
        lines.append("- not deterministic (`buildgraph repro` compares their numbers, not "
                     "bytes): " + "; ".join(f"`{s}` ({why})"
                                           for s, why in manifest["nondeterministic"].items()))
    return "\n".join(lines) + "\n"
