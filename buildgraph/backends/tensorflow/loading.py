"""Run time: TensorFlow/Keras models inside a worker (TensorFlow imported here, lazily).

A model is loaded as a :class:`TfModel`: numpy arrays in, in the recipe's input order, numpy
arrays out, with the output names. Keras models (a factory's, a ``.keras``/``.h5`` file's) are
called with ``training=False``; a SavedModel runs its signature (default ``serving_default``),
its inputs fed by name. The recipe's inputs are checked against the model's own: an input
missing or extra, another rank, another fixed size or dtype is one error naming every
difference (the recipe gives inputs in the model's layout: NHWC for Keras images).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from buildgraph.errors import RecipeError, StepFailed, short_error

DEFAULT_SIGNATURE = "serving_default"


def import_tf(seconds: Optional[Dict[str, float]] = None) -> Any:
    """TensorFlow, quietly, with Keras on its TensorFlow backend; a clear failure when it is
    not installed. The import time is recorded in ``seconds`` when it happens here."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"  # tf2onnx and SavedModels need it
    start = time.perf_counter()
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise StepFailed("this step needs TensorFlow, which is not installed here "
                         f"({short_error(exc)}): pip install 'buildgraph[tensorflow]'") from None
    if seconds is not None:
        seconds["import"] = round(time.perf_counter() - start, 4)
    return tf


def set_threads(threads: int, inter: int = 1) -> Dict[str, Any]:
    """Use the CPU slots the scheduler granted; returns the counts TensorFlow reports.
    TensorFlow fixes its thread pools when it first runs an op, so in a worker that already
    ran one the first setting stays (a benchmark runner is a fresh process: it gets its own)."""
    tf = import_tf()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, int(threads)))
        tf.config.threading.set_inter_op_parallelism_threads(max(1, int(inter)))
    except RuntimeError:
        pass
    return {"library": "tensorflow",
            "intra": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter": tf.config.threading.get_inter_op_parallelism_threads()}


def tf_dtype_name(dtype: Any) -> str:
    name = getattr(dtype, "name", str(dtype))
    return {"float": "float32", "double": "float64", "half": "float16"}.get(name, name)


class TfModel:
    """A TensorFlow model behind one call: numpy arrays in (the recipe's input order), numpy
    arrays out (``output_names`` order)."""

    def __init__(self, call: Any, input_names: List[str], output_names: List[str],
                 input_shapes: List[List[Any]], form: str, keras_model: Any = None,
                 signature: Optional[str] = None):
        self._call = call
        self.input_names = input_names
        self.output_names = output_names
        self.input_shapes = input_shapes
        self.form = form
        self.keras_model = keras_model
        self.signature = signature

    def __call__(self, arrays: Sequence[Any]) -> List[Any]:
        return self._call(list(arrays))


def _flatten(out: Any, names: Optional[List[str]]) -> Tuple[List[str], List[Any]]:
    if isinstance(out, Mapping):
        keys = list(out)
        return keys, [out[k] for k in keys]
    if isinstance(out, (list, tuple)):
        got = list(out)
        if names and len(names) == len(got):
            return list(names), got
        return [f"output_{i}" for i in range(len(got))], got
    return (list(names[:1]) if names else ["output"]), [out]


def keras_model_io(model: Any) -> Tuple[List[str], List[List[Any]], List[str]]:
    """(input names, input shapes with None for dynamic dims, input dtypes) of a built Keras
    model; empty for a subclassed model that was never called."""
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):
        inputs = []
    names = [str(getattr(t, "name", f"input_{i}")).split(":")[0] for i, t in enumerate(inputs)]
    shapes = [[d if isinstance(d, int) else None for d in tuple(t.shape)] for t in inputs]
    dtypes = [tf_dtype_name(t.dtype) for t in inputs]
    return names, shapes, dtypes


def wrap_keras(model: Any, spec: Mapping[str, Any], name: str, label: str) -> TfModel:
    """A Keras model as a :class:`TfModel`, its inputs checked against the recipe's."""
    tf = import_tf()
    declared = [n for n in (spec.get("inputs") or {})]
    names, shapes, dtypes = keras_model_io(model)
    if names:
        check_inputs(name, label, dict(zip(names, zip(shapes, dtypes))), spec)
        order = [names.index(n) for n in declared]
    else:
        order = list(range(len(declared)))
    out_names = list(getattr(model, "output_names", None) or [])

    def call(arrays: List[Any]) -> List[Any]:
        feed: List[Any] = [None] * len(arrays)
        for pos, arr in zip(order, arrays):
            feed[pos] = tf.convert_to_tensor(arr)
        out = model(feed[0] if len(feed) == 1 else feed, training=False)
        _, values = _flatten(out, out_names)
        return [v.numpy() if hasattr(v, "numpy") else v for v in values]

    if not out_names:
        # a subclassed model names nothing: learn the structure from one call
        from buildgraph.backends.onnx.modelspec import make_inputs

        probe = [tf.convert_to_tensor(a) for a in make_inputs(spec, 0)]
        out_names, _ = _flatten(model(probe[0] if len(probe) == 1 else probe, training=False),
                                None)
    return TfModel(call, declared, out_names, shapes if names else [], "keras", keras_model=model)


def load_saved_model(path: Path, signature: Optional[str], spec: Mapping[str, Any],
                     name: str, label: str) -> TfModel:
    """A SavedModel directory's signature as a :class:`TfModel`; a missing signature lists
    the ones the model has."""
    tf = import_tf()
    what = f"model '{name}'"
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(f"{what}: TensorFlow cannot load {label}: "
                         f"{short_error(exc)}") from None
    sig_name = signature or DEFAULT_SIGNATURE
    sigs = dict(getattr(loaded, "signatures", {}) or {})
    if sig_name not in sigs:
        have = ", ".join(sorted(sigs)) or "none"
        raise RecipeError(f"{what}: {label} has no signature '{sig_name}' (it has: {have})",
                          hint=("set signature: " + (DEFAULT_SIGNATURE if DEFAULT_SIGNATURE in
                                                     sigs else sorted(sigs)[0])
                                + " on the model") if sigs else
                          "export it with signatures (Keras: model.export(dir))")
    fn = sigs[sig_name]
    inputs = fn.structured_input_signature[1]
    outputs = fn.structured_outputs
    out_names = list(outputs) if isinstance(outputs, Mapping) else ["output_0"]
    sig_inputs = {k: ([d if isinstance(d, int) else None for d in tuple(v.shape)],
                      tf_dtype_name(v.dtype)) for k, v in inputs.items()}
    declared = [n for n in (spec.get("inputs") or {})]
    if len(sig_inputs) == 1 and len(declared) == 1 and declared[0] not in sig_inputs:
        only = next(iter(sig_inputs))
        feed_names = [only]  # one input: its name does not matter
        check_inputs(name, label, {declared[0]: sig_inputs[only]}, spec)
    else:
        check_inputs(name, label, sig_inputs, spec)
        feed_names = declared
    shapes = [sig_inputs[n][0] for n in feed_names]
    dtypes = [sig_inputs[n][1] for n in feed_names]

    def call(arrays: List[Any]) -> List[Any]:
        feed = {n: tf.convert_to_tensor(a, dtype=d) for n, a, d in zip(feed_names, arrays,
                                                                       dtypes)}
        out = fn(**feed)
        _, values = _flatten(out, out_names)
        return [v.numpy() for v in values]

    model = TfModel(call, declared, out_names, shapes, "savedmodel", signature=sig_name)
    model.loaded = loaded  # type: ignore[attr-defined] - keeps the variables alive
    model.function = fn  # type: ignore[attr-defined]
    return model


def load_keras_file(path: Path, trusted: bool, what: str) -> Any:
    """A ``.keras``/``.h5`` file as a Keras model; code in it (Lambda layers) runs only when
    the model says ``trusted: true``."""
    import_tf()
    import keras

    from buildgraph.engine.origin import untrusted

    trusted = trusted and untrusted(path) is None  # pulled unsigned: safe mode only
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=not trusted)
    except Exception as exc:  # noqa: BLE001
        text = str(exc)
        if "safe_mode" in text or "Lambda" in text:
            raise StepFailed(f"{what}: {path.name} holds Python code (a Lambda layer); "
                             "loading it runs that code, so it is refused unless the model "
                             "says trusted: true") from None
        raise StepFailed(f"{what}: Keras cannot load {path.name}: {short_error(exc)}") from None


def build_factory(name: str, spec: Mapping[str, Any], recipe_dir: Path,
                  weights: Optional[Path]) -> Any:
    """Call the model's factory with its kwargs, seeded, in a fresh Keras session (layer
    names then do not depend on what the worker built before); load its weights."""
    import_tf()
    import keras

    from buildgraph.backends.generic.python import load_callable

    keras.backend.clear_session()
    keras.utils.set_random_seed(int(spec.get("seed", 0)))
    try:
        factory = load_callable(spec["source"], recipe_dir)
        model = factory(**(spec.get("kwargs") or {}))
    except StepFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code
        raise StepFailed(f"model '{name}': the factory {spec['source']} failed: "
                         f"{short_error(exc)}") from None
    if not isinstance(model, keras.Model):
        raise StepFailed(f"model '{name}': the factory {spec['source']} returned a "
                         f"{type(model).__name__}, not a keras.Model"
                         + (" (a PyTorch module: leave framework: tensorflow out)"
                            if type(model).__module__.startswith("torch") else ""))
    if weights is not None:
        try:
            model.load_weights(str(weights))
        except Exception as exc:  # noqa: BLE001
            raise StepFailed(f"model '{name}': cannot load weights {weights.name}: "
                             f"{short_error(exc)}") from None
    return model


def load_keras_source(name: str, spec: Mapping[str, Any], form: str, inputs: Mapping[str, Path],
                      recipe_dir: Path) -> Any:
    """The Keras model of a ``factory`` or ``keras`` source (not a SavedModel)."""
    what = f"model '{name}'"
    if form == "factory":
        return build_factory(name, spec, recipe_dir, inputs.get(f"model:{name}:weights"))
    if form == "keras":
        return load_keras_file(Path(inputs[f"model:{name}:file"]), bool(spec.get("trusted")),
                               what)
    raise StepFailed(f"{what} is a SavedModel, not a Keras model")


def load_model(name: str, spec: Mapping[str, Any], form: str, inputs: Mapping[str, Path],
               recipe_dir: Path) -> TfModel:
    """Model ``name`` as a :class:`TfModel` (``inputs``: the task's keyed input files)."""
    if form == "savedmodel":
        path = Path(inputs[f"model:{name}:savedmodel"])
        return load_saved_model(path, spec.get("signature"), spec, name,
                                f"the SavedModel {path.name}")
    return wrap_keras(load_keras_source(name, spec, form, inputs, recipe_dir), spec, name,
                      "the Keras model")


def check_inputs(name: str, label: str, model_inputs: Mapping[str, Tuple[List[Any], str]],
                 spec: Mapping[str, Any]) -> None:
    """The recipe's inputs against the model's (``name -> (shape, dtype)``, None for dynamic
    dims): one RecipeError naming every difference."""
    from buildgraph.backends.onnx.graph import InputSpec
    from buildgraph.backends.onnx.source import reconcile_inputs

    graph = {n: InputSpec(n, tuple(shape), dtype) for n, (shape, dtype) in model_inputs.items()}
    reconcile_inputs(name, label, graph, spec.get("inputs") or {}, theirs="the model",
                     hint="the model's inputs: {have}; declare them in the model's own layout "
                          "(Keras images are NHWC: [batch, height, width, channels]), named "
                          "dims where the model's are dynamic")
