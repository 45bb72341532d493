"""The ``tensorflow`` runtime: a SavedModel directory (``keras.export``'s output, or any
SavedModel) or a ``.keras``/``.h5`` file run by TensorFlow, and a TensorFlow model source
as its own reference (``verify``, ``benchmark``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Sequence

from buildgraph.backends.tensorflow import loading
from buildgraph.engine.runtime import Runtime, RuntimeContext, not_runnable


def _cpu_only(ctx: RuntimeContext) -> None:
    """The TensorFlow runtime runs on the CPU: a GPU device is refused, not served by a CPU
    run."""
    if ctx.device != "cpu":
        raise not_runnable(ctx.device, "buildgraph's TensorFlow runtime runs on the CPU only "
                                       "(convert the model to ONNX for a GPU)")


class TensorFlowRuntime(Runtime):
    """TensorFlow on the CPU: SavedModel signatures fed by name, Keras models called with
    ``training=False``."""

    name = "tensorflow"
    kinds = ("keras.export",)
    suffixes = (".keras", ".h5")

    def _load(self) -> None:
        _cpu_only(self.ctx)
        loading.import_tf()
        self.details["threads"] = loading.set_threads(self.ctx.threads,
                                                      getattr(self.ctx, "interop_threads", 1))
        spec = dict(self.ctx.model_spec or {})
        name = self.ctx.model or "model"
        if self.path.is_dir():
            signature = self.ctx.meta.get("signature") or loading.DEFAULT_SIGNATURE
            self.model = loading.load_saved_model(self.path, str(signature), spec, name,
                                                  f"the SavedModel {self.path.name}")
        else:
            keras_model = loading.load_keras_file(self.path, self.ctx.trusted,
                                                  f"model '{name}'")
            self.model = loading.wrap_keras(keras_model, spec, name, self.path.name)
        self._describe()

    @classmethod
    def for_model(cls, name: str, spec: Mapping[str, Any], form: str,
                  inputs: Mapping[str, Path], ctx: RuntimeContext) -> "TensorFlowRuntime":
        """Model ``name`` itself (its source: a factory, a Keras file, a SavedModel), loaded
        from the step's keyed input files: the reference of a TensorFlow model."""
        _cpu_only(ctx)
        loading.import_tf()
        threads = loading.set_threads(ctx.threads, getattr(ctx, "interop_threads", 1))
        runtime = cls(Path(spec.get("source") or name), ctx)
        runtime.details["threads"] = threads
        runtime.model = loading.load_model(name, spec, form, inputs,
                                           Path(ctx.recipe_dir or "."))
        runtime._describe()
        return runtime

    def _describe(self) -> None:
        self.output_names: List[str] = list(self.model.output_names)
        """Output names, matched by name by verify when they are the reference's."""
        self.details["form"] = self.model.form
        if self.model.signature:
            self.details["signature"] = self.model.signature
        import tensorflow as tf

        self.details["tensorflow"] = tf.__version__
        self.details["device"] = "cpu"
        self.details["provider"] = "tensorflow"

    def input_shapes(self) -> List[List[Any]]:
        return [list(s) for s in self.model.input_shapes]

    def run(self, inputs: Sequence[Any]) -> List[Any]:
        return self.model(inputs)

    def close(self) -> None:
        self.model = None
