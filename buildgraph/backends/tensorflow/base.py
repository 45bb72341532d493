"""What the TensorFlow step kinds share: the ``model:`` parameter naming a TensorFlow model of
the recipe, its description, and loading it inside a worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Tuple

from pydantic import Field

from buildgraph.backends.onnx.modelspec import model_framework
from buildgraph.backends.onnx.source import model_spec
from buildgraph.backends.tensorflow.model_key import describe_tf_source, tf_versions
from buildgraph.engine.executor import DescribeContext, Description, Executor, Task, Timed
from buildgraph.engine.params import StrictParams
from buildgraph.errors import RecipeError, StepFailed


class TfModelParams(StrictParams):
    model: str = Field(description="name of a TensorFlow/Keras model in the recipe's "
                                   "'models:' section")


def describe_tf_model(name: str, ctx: DescribeContext, kind: str,
                      extra_dists: Tuple[str, ...] = ()) -> Description:
    """The description of a step built from TensorFlow model ``name``: its files, settings
    and inputs, and the TensorFlow and Keras versions (plus ``extra_dists``)."""
    spec = model_spec(ctx.models, name)
    framework = model_framework(spec, ctx.recipe_dir)
    if framework != "tensorflow":
        what = "a PyTorch model" if framework == "torch" else "an ONNX file"
        raise RecipeError(f"{kind} takes a TensorFlow/Keras model; model '{name}' is {what}",
                          hint="a factory returning a tf.keras.Model says framework: "
                               "tensorflow" if framework == "torch" else
                               "ONNX steps (onnx.simplify, tvm.compile...) take an ONNX model "
                               "directly: with: {model: NAME}")
    files, data = describe_tf_source(name, ctx.models, ctx.recipe_dir)
    return Description(inputs=files, data=data, env=tf_versions(*extra_dists))


def tf_model_data(task: Task, name: str) -> Tuple[Dict[str, Any], str]:
    """(spec with its inputs, source form) of the model a step was described with."""
    data = task.data.get("model")
    if not isinstance(data, Mapping) or data.get("name") != name:
        raise StepFailed(f"step '{task.step_id}' was not described with model '{name}'")
    spec = dict(data["spec"])
    spec["inputs"] = {k: v for k, v in data.get("inputs") or []}
    return spec, str(data.get("form"))


class TfModelExecutor(Timed, Executor):
    """Base of the step kinds that start from a TensorFlow model of the recipe."""

    isolation = "worker"
    dists: ClassVar[Tuple[str, ...]] = ()

    def describe(self, params: Any, ctx: DescribeContext) -> Description:
        """The model's files (SavedModel tree, Keras file, factory source), settings and
        inputs; the TensorFlow and Keras versions."""
        return describe_tf_model(params.model, ctx, self.kind, self.dists)

    def keras_model(self, task: Task, name: str) -> Tuple[Dict[str, Any], str, Any]:
        """(spec, form, the Keras model or None for a SavedModel source), TensorFlow
        imported (its time recorded) and the step's CPU slots applied."""
        from buildgraph.backends.tensorflow import loading

        loading.import_tf(self.seconds)
        loading.set_threads(task.threads)
        spec, form = tf_model_data(task, name)
        if form == "savedmodel":
            return spec, form, None
        with self.timed("load_model"):
            return spec, form, loading.load_keras_source(name, spec, form, task.inputs,
                                                         Path(task.recipe_dir))
