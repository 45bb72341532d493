"""``keras.export``: write a Keras model as a TensorFlow SavedModel directory (Keras 3's
``model.export``, the deployable form TF Serving and tf2onnx read) or as a ``.keras`` file.

The SavedModel's signature takes the model's inputs as the recipe declares them (names,
dtypes, NHWC as given; named dims dynamic unless ``dims:`` binds them) and has two names for
one function: ``serve`` (Keras's endpoint) and ``serving_default``.

A SavedModel is rebuilt bit for bit (measured with Keras 3 / TensorFlow 2.21: two processes
exporting the same seeded model gave different bytes in all four files). Three sources, fixed:

- Keras lists the variables its functions capture in the order TensorFlow holds them, which
  follows object addresses: the same weights came out in another order. They are sorted by
  name while exporting (:func:`variables_in_name_order`).
- ``fingerprint.pb`` holds a random UUID beside the content hashes; it is replaced by one
  derived from those hashes (:func:`content_uuid`), so it still names this content.
- TensorFlow names traced functions from a process-wide counter, so a second export in one
  process differs: the step runs in a fresh worker (``fresh_worker``).

The ``.keras`` format writes the save date into its metadata and is declared
nondeterministic (``repro`` compares its numbers).
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any, Dict, Iterator, Literal, Optional

from pydantic import Field

from buildgraph.backends.tensorflow.base import TfModelExecutor, TfModelParams
from buildgraph.engine.executor import Description, Task, out_path, write_json
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


@contextlib.contextmanager
def variables_in_name_order() -> Iterator[None]:
    """While exporting, Keras lists a SavedModel's variables in name order (see the module's
    doc). A Keras without the private function this wraps exports as it does."""
    try:
        from keras.src.export import saved_model_export_archive as archive
    except ImportError:  # pragma: no cover - another Keras layout
        yield
        return
    original = getattr(archive, "_list_variables_used_by_fns", None)
    if original is None:  # pragma: no cover
        yield
        return

    def ordered(fns: Any) -> Any:
        trainable, other = original(fns)
        return (sorted(trainable, key=lambda v: str(v.name)),
                sorted(other, key=lambda v: str(v.name)))

    archive._list_variables_used_by_fns = ordered
    try:
        yield
    finally:
        archive._list_variables_used_by_fns = original


def content_uuid(saved_model: Path) -> bool:
    """Replace the random UUID in ``fingerprint.pb`` by one derived from the content hashes
    beside it (same decimal form); True if the file was rewritten."""
    from tensorflow.core.protobuf import fingerprint_pb2

    path = saved_model / "fingerprint.pb"
    if not path.is_file():
        return False
    fingerprint = fingerprint_pb2.FingerprintDef()
    fingerprint.ParseFromString(path.read_bytes())
    if not fingerprint.uuid:
        return False
    fingerprint.uuid = ""
    digest = hashlib.sha256(fingerprint.SerializeToString(deterministic=True)).digest()
    fingerprint.uuid = str(int.from_bytes(digest[:16], "big"))
    path.write_bytes(fingerprint.SerializeToString(deterministic=True))
    return True


class KerasExportExecutor(TfModelExecutor):
    """A Keras model as a SavedModel directory or a .keras file."""

    kind = "keras.export"
    version = "2"  # 2: deterministic SavedModel bytes
    Params = KerasExportParams
    outputs = {"model": "saved_model", "info": "export.json"}
    fresh_worker = True

    def describe(self, params: Any, ctx: Any) -> Description:
        from dataclasses import replace

        description = super().describe(params, ctx)
        if params.format == "keras":
            description = replace(description, nondeterministic="Keras writes the save date "
                                  "into a .keras file's metadata.json")
        return description

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
                    with variables_in_name_order():
                        model.export(str(dest), format="tf_saved_model", verbose=False,
                                     input_signature=[specs] if len(specs) > 1 else specs)
                    content_uuid(dest)
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
