"""A recipe model as data, whatever framework it comes from: which framework that is, its
inputs and dims, and example inputs drawn with numpy.

It lives in the ONNX backend because ONNX is where every framework meets: the torch,
TensorFlow, TVM and TensorRT backends and ``evaluate`` may all import it, and it imports none
of them (nor torch, TensorFlow or onnx: ``plan`` calls it).

Frameworks: ``torch`` (factories, model zoos, saved PyTorch files), ``onnx`` (an ``.onnx``
file, :mod:`buildgraph.backends.onnx.source`) and ``tensorflow`` (a ``.keras``/``.h5`` file, a
SavedModel directory, or a factory that returns a ``tf.keras.Model``,
:mod:`buildgraph.backends.tensorflow`). A PyTorch model draws its example inputs with torch's
generator (:mod:`buildgraph.backends.torch.inputs`), the others with numpy's
(:func:`make_inputs`): the same seed gives the same arrays in every step of one model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from buildgraph.errors import StepFailed

FRAMEWORKS = ("torch", "onnx", "tensorflow")
KERAS_SUFFIXES = (".keras", ".h5")
SAVED_MODEL_FILE = "saved_model.pb"
"""A directory holding this file is a TensorFlow SavedModel."""

REFERENCES = {"torch": "torch.eager", "onnx": "onnxruntime.fp32", "tensorflow": "tensorflow"}
"""The runtime each framework's model is its own reference on (``verify``, ``benchmark``)."""


def model_framework(spec: Mapping[str, Any], recipe_dir: Optional[Path] = None) -> str:
    """``torch``, ``onnx`` or ``tensorflow``: the spec's ``framework:``, else told from the
    source (``.onnx``; ``.keras``/``.h5``; a directory with ``saved_model.pb``), else torch."""
    explicit = spec.get("framework")
    if explicit:
        return str(explicit)
    source = str(spec.get("source") or "")
    lower = source.lower()
    if lower.endswith(".onnx"):
        return "onnx"
    if lower.endswith(KERAS_SUFFIXES):
        return "tensorflow"
    if recipe_dir is not None and ":" not in source:
        path = Path(recipe_dir) / source
        if path.is_dir() and (path / SAVED_MODEL_FILE).is_file():
            return "tensorflow"
    return "torch"


def framework_of_data(data: Mapping[str, Any]) -> str:
    """The framework recorded in a step's keyed model data (PyTorch when absent: PyTorch
    model data predates the field and stays as it was)."""
    model = data.get("model") if isinstance(data, Mapping) else None
    if isinstance(model, Mapping):
        return str(model.get("framework") or "torch")
    return "torch"


# --- inputs and dims -----------------------------------------------------------------------

def input_specs(spec: Mapping[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """``[(name, TensorSpec as dict)]`` in the model's input order."""
    return [(k, dict(v)) for k, v in (spec.get("inputs") or {}).items()]


def dim_sizes(spec: Mapping[str, Any], overrides: Optional[Mapping[str, int]] = None
              ) -> Dict[str, int]:
    """Example size of each named dim: ``opt``, else ``min`` raised to 2, capped at ``max``.

    2 rather than 1 because torch.export specializes size-1 dims (0/1 specialization).
    """
    sizes: Dict[str, int] = {}
    ranges = spec.get("dims") or {}
    for _, tspec in input_specs(spec):
        for dim in tspec["shape"]:
            if isinstance(dim, str) and dim not in sizes:
                r = ranges.get(dim) or {}
                size = r.get("opt") or max(2, r.get("min") or 0)
                if r.get("max"):
                    size = min(size, r["max"])
                sizes[dim] = int(size)
    sizes.update(overrides or {})
    return sizes


def input_shapes(spec: Mapping[str, Any], sizes: Optional[Mapping[str, int]] = None
                 ) -> List[Tuple[str, List[int], str]]:
    """``[(name, concrete shape, dtype)]``."""
    sizes = dict(dim_sizes(spec, sizes))
    return [(n, [sizes[d] if isinstance(d, str) else int(d) for d in t["shape"]],
             t.get("dtype", "float32")) for n, t in input_specs(spec)]


def numpy_dtype(name: str) -> Any:
    """A numpy dtype for a recipe dtype name (bfloat16 through ml_dtypes, which TensorFlow and
    onnx install)."""
    import numpy as np

    if name == "bfloat16":
        try:
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        except ImportError:  # pragma: no cover - ml_dtypes comes with onnx
            raise StepFailed("bfloat16 inputs need the ml_dtypes package") from None
    return np.dtype("bool" if name == "bool" else name)


def make_inputs(spec: Mapping[str, Any], seed: int,
                sizes: Optional[Mapping[str, int]] = None) -> List[Any]:
    """Random example inputs as numpy arrays: floats ~ N(0, 1) (or uniform in [min, max]),
    ints in [min, max] (default [0, 9]), seeded so every step and runtime of a model that is
    not PyTorch sees the same arrays."""
    import numpy as np

    rng = np.random.default_rng(int(seed))
    arrays = []
    for (name, shape, dtype), (_, tspec) in zip(input_shapes(spec, sizes), input_specs(spec)):
        lo, hi = tspec.get("min"), tspec.get("max")
        if dtype == "bool":
            a = rng.integers(0, 2, size=shape).astype(bool)
        elif dtype in ("float32", "float16", "float64", "bfloat16"):
            if lo is not None or hi is not None:
                lo = 0.0 if lo is None else float(lo)
                hi = lo + 1.0 if hi is None else float(hi)
                a = rng.random(size=shape, dtype=np.float32) * (hi - lo) + lo
            else:
                a = rng.standard_normal(size=shape, dtype=np.float32)
            a = a.astype(numpy_dtype(dtype))
        else:
            lo = 0 if lo is None else int(lo)
            hi = 9 if hi is None else int(hi)
            a = rng.integers(lo, hi + 1, size=shape).astype(dtype)
        arrays.append(np.ascontiguousarray(a))
    return arrays


def load_samples(name: str, spec: Mapping[str, Any], recipe_dir: Path) -> List[Any]:
    """The model's real sample inputs as numpy arrays (one per input, in input order), from a
    ``.npy`` (one input) or ``.npz`` (one array per input name) file."""
    import numpy as np

    rel = spec.get("sample_inputs")
    if not rel:
        return []
    path = Path(recipe_dir) / rel
    names = [n for n, _ in input_specs(spec)]
    what = f"model '{name}': sample inputs {path.name}"
    if path.suffix not in (".npy", ".npz"):
        raise StepFailed(f"{what}: a model that is not PyTorch takes sample inputs as .npy "
                         "(one input) or .npz (one array per input name)")
    try:
        if path.suffix == ".npy":
            arrays: List[Any] = [np.load(path, allow_pickle=False)]
        else:
            with np.load(path, allow_pickle=False) as npz:
                keys = list(npz.keys())
                arrays = [npz[n] for n in names] if set(names) <= set(keys) else \
                    [npz[k] for k in keys]
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(f"{what} cannot be read: {type(exc).__name__}: {exc}") from None
    if len(arrays) != len(names):
        raise StepFailed(f"{what} holds {len(arrays)} array(s); the model has {len(names)} "
                         f"input(s) ({', '.join(names)})")
    return [np.ascontiguousarray(a) for a in arrays]
