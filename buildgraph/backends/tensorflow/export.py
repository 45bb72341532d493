"""``keras.export``: write a Keras model as a TensorFlow SavedModel directory (Keras 3's
``model.export``, the deployable form TF Serving and tf2onnx read) or as a ``.keras`` file.

The SavedModel's signature takes the model's inputs as the recipe declares them (names,
dtypes, NHWC as given; named dims dynamic unless ``dims:`` binds them) and has two names for
one function: ``serve`` (Keras's endpoint) and ``serving_default``.
"""

from __future__ import annotations

from typing import Any, Dict, Literal, Optional

from pydantic import Field

from buildgraph.backends.tensorflow.base import TfModelExecutor, TfModelParams
from buildgraph.engine.executor import Task, out_path, write_json
from buildgraph.errors import StepFailed, short_error


class KerasExportParams(TfModelParams):
    format: Literal["saved_model", "keras"] = Field(
        "saved_model", description="saved_model: a SavedModel directory (model.export); "
        "keras: a .keras file (model.save)")
    dims: Dict[str, int] = Field(default_factory=dict, description="bind named dims to "
                                 "sizes in the SavedModel's signature, e.g. {batch: 1}")


def tensor_specs(spec: Dict[str, Any], dims: Dict[str, int]) -> list:
    """``tf.TensorSpec`` per recipe input: named dims dynamic (None) unless bound."""
    import tensorflow as tf

    specs = []
    for name, tspec in (spec.get("inputs") or {}).items():
        shape = [dims.get(d) if isinstance(d, str) else int(d) for d in tspec["shape"]]
        specs.append(tf.TensorSpec(shape, tf.as_dtype(tspec.get("dtype", "float32")),
                                   name=name))
    return specs


class KerasExportExecutor(TfModelExecutor):
    """A Keras model as a SavedModel directory or a .keras file."""

    kind = "keras.export"
    version = "1"
    Params = KerasExportParams
    outputs = {"model": "saved_model", "info": "export.json"}

    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        p = KerasExportParams.model_validate(task.params)
        spec, form, model = self.keras_model(task, p.model)
        if model is None:
            raise StepFailed(f"model '{p.model}' is a SavedModel already: convert it "
                             "(tf2onnx.convert) or verify it directly")
        dest = out_path(task)
        info: Dict[str, Any] = {"format": p.format, "model": p.model}
        with self.timed("export"):
            try:
                if p.format == "keras":
                    if dest.suffix != ".keras":
                        raise StepFailed("format: keras writes a .keras file: declare "
                                         "outputs: {model: model.keras, info: export.json}")
                    model.save(str(dest))
                else:
                    specs = tensor_specs(spec, p.dims)
                    model.export(str(dest), format="tf_saved_model", verbose=False,
                                 input_signature=[specs] if len(specs) > 1 else specs)
                    info.update(signature="serving_default", endpoints=["serve",
                                                                        "serving_default"],
                                inputs={s.name: [d for d in s.shape.as_list()]
                                        for s in specs})
            except StepFailed:
                raise
            except Exception as exc:  # noqa: BLE001
                task.log(f"{type(exc).__name__}: {exc}")
                raise StepFailed(f"Keras cannot export model '{p.model}' ({p.format}): "
                                 f"{short_error(exc)[:300]}") from None
        if "info" in task.outputs:
            write_json(task.outputs["info"], info)
        task.log(f"wrote {dest.name} ({p.format})")
        return {**info, "seconds": self.seconds}
