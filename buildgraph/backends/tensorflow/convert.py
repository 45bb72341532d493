"""``tf2onnx.convert``: a TensorFlow/Keras model to ONNX with tf2onnx.

What it converts: the upstream step's SavedModel directory or ``.keras`` file (``from:`` a
``keras.export`` step), else the model itself (a Keras factory or file: ``tf2onnx.convert.
from_keras``; a SavedModel source: its signature through ``tf2onnx.convert.from_function``).
The input signature is the model's ``inputs`` as the recipe declares them: the same names, the
same layout (NHWC stays NHWC: ONNX, TVM and TensorRT then take NHWC too), named dims dynamic
unless ``dims:`` binds them to sizes (a static graph, which TVM imports most readily). The
ONNX graph's dynamic dims are renamed after the recipe's (tf2onnx calls them ``unk__N``), so
that ``tvm.compile`` ``dims: {batch: 1}`` and TensorRT profiles find them.

tf2onnx leaves an op it cannot convert in the graph and carries on; the step fails instead,
naming the op, its node and the opset. The result passes strict shape inference and
``onnx.checker``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from pydantic import Field

from buildgraph.backends.onnx.modelspec import KERAS_SUFFIXES, SAVED_MODEL_FILE
from buildgraph.backends.tensorflow.base import TfModelExecutor, TfModelParams, tf_model_data
from buildgraph.engine.executor import Task, out_path
from buildgraph.errors import BuildgraphError, StepFailed, short_error


class Tf2OnnxParams(TfModelParams):
    opset: int = Field(17, ge=9, le=18, description="ONNX opset to convert to")
    dims: Dict[str, int] = Field(default_factory=dict, description="bind named dims to "
                                 "sizes, e.g. {batch: 1}: a static graph")
    signature: Optional[str] = Field(None, description="SavedModel: the signature to convert "
                                     "(default: the model's signature:, else serving_default)")


def unsupported_ops(graph: Any) -> List[Any]:
    """Nodes (in every subgraph) whose op is in no ONNX domain: what tf2onnx could not
    convert and left as TensorFlow ops."""
    import onnx

    found = []
    for node in graph.node:
        if not onnx.defs.has(node.op_type, node.domain or ""):
            found.append(node)
        for attr in node.attribute:
            if attr.HasField("g"):
                found.extend(unsupported_ops(attr.g))
            for sub in attr.graphs:
                found.extend(unsupported_ops(sub))
    return found


def rename_dims(model: Any, spec: Dict[str, Any], bound: Dict[str, int]) -> Dict[str, str]:
    """Rename the graph's dynamic dims after the recipe's (``unk__6`` -> ``batch``)
    everywhere they appear; returns the renaming."""
    declared = spec.get("inputs") or {}
    mapping: Dict[str, str] = {}
    for value in model.graph.input:
        tspec = declared.get(value.name)
        if not tspec:
            continue
        dims = value.type.tensor_type.shape.dim
        for dim, want in zip(dims, tspec["shape"]):
            if isinstance(want, str) and want not in bound and dim.HasField("dim_param"):
                mapping.setdefault(dim.dim_param, want)
    if not mapping:
        return {}
    values = list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
    for value in values:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]
    return mapping


class Tf2OnnxExecutor(TfModelExecutor):
    """A TensorFlow/Keras model (or an upstream SavedModel/.keras file) to ONNX."""

    kind = "tf2onnx.convert"
    version = "1"
    Params = Tf2OnnxParams
    outputs = {"model": "model.onnx"}
    dists = ("tf2onnx", "onnx")

    def run(self, task: Task) -> Optional[Dict[str, Any]]:
        p = Tf2OnnxParams.model_validate(task.params)
        from buildgraph.backends.tensorflow import loading
        from buildgraph.backends.tensorflow.export import tensor_specs

        source = self._upstream(task)
        if source is None:
            spec, form, keras_model = self.keras_model(task, p.model)
        else:
            loading.import_tf(self.seconds)
            loading.set_threads(task.threads)
            spec, form = tf_model_data(task, p.model)
            keras_model = None
        unknown = [d for d in p.dims if not any(d in t["shape"] for t in
                                                (spec.get("inputs") or {}).values())]
        if unknown:
            raise StepFailed(f"dims: model '{p.model}' has no dim named '{unknown[0]}'")
        # the model's signature: names one of its own SavedModel; an upstream's is Keras's
        signature = p.signature or (None if source is not None else spec.get("signature")) \
            or loading.DEFAULT_SIGNATURE
        if source is not None:
            if source.is_dir():
                form, label = "savedmodel", f"the SavedModel {source.parent.name}/{source.name}"
                keras_model = None
            else:
                form, label = "keras", source.name
                keras_model = loading.load_keras_file(source, bool(spec.get("trusted")),
                                                      f"model '{p.model}'")
        elif form == "savedmodel":
            source = Path(task.inputs[f"model:{p.model}:savedmodel"])
            label = f"the SavedModel {source.name}"
        else:
            label = "the Keras model"
        import tensorflow as tf
        import tf2onnx

        with self.timed("import"):
            import onnx  # noqa: F401
        specs = tensor_specs(spec, p.dims)
        task.log(f"tf2onnx {tf2onnx.__version__}, tensorflow {tf.__version__}: converting "
                 f"{label} at opset {p.opset}; inputs "
                 + ", ".join(f"{s.name}{s.shape.as_list()} {s.dtype.name}" for s in specs))
        with self.timed("convert"):
            try:
                if keras_model is not None:
                    loading.wrap_keras(keras_model, spec, p.model, label)  # checks the inputs
                    proto, _ = tf2onnx.convert.from_keras(keras_model, input_signature=specs,
                                                          opset=p.opset)
                else:
                    assert source is not None
                    saved = loading.load_saved_model(source, signature, spec, p.model, label)
                    fn = saved.function  # type: ignore[attr-defined]
                    names = list(saved.input_names)
                    feed_names = list(fn.structured_input_signature[1])
                    if len(feed_names) == 1:
                        names = feed_names

                    @tf.function(input_signature=specs)
                    def call(*args: Any) -> Any:
                        return fn(**dict(zip(names, args)))

                    proto, _ = tf2onnx.convert.from_function(call, input_signature=specs,
                                                             opset=p.opset)
            except (BuildgraphError, KeyboardInterrupt):
                raise
            except Exception as exc:  # noqa: BLE001 - tf2onnx's own failures
                task.log(f"{type(exc).__name__}: {exc}")
                raise StepFailed(f"tf2onnx cannot convert {label} at opset {p.opset}: "
                                 f"{short_error(exc)[:300]}") from None
        bad = unsupported_ops(proto.graph)
        if bad:
            ops = sorted({n.op_type for n in bad})
            raise StepFailed(
                f"tf2onnx cannot convert TensorFlow op{'s' if len(ops) > 1 else ''} "
                + ", ".join(f"'{o}'" for o in ops) + f" at opset {p.opset} (node "
                f"{bad[0].name}): no ONNX equivalent; a higher opset (opset: up to 18) may "
                "have one, else replace the layer with ops ONNX has")
        renamed = rename_dims(proto, spec, p.dims)
        if renamed:
            task.log("dynamic dims: " + ", ".join(f"{k} -> {v}" for k, v in renamed.items()))
        from buildgraph.backends.onnx.graph import check_onnx, graph_summary, save_onnx

        dest = out_path(task)
        with self.timed("save"):
            save_onnx(proto, dest, task.outputs.get("data"))
        with self.timed("check"):
            check_onnx(dest, task.log)
        summary = graph_summary(onnx.load(str(dest), load_external_data=False))
        task.log(f"wrote {dest.name}: {summary['nodes']} nodes, opset {summary['opset']}")
        return {"opset": summary["opset"], "nodes": summary["nodes"], "ops": summary["ops"],
                "inputs": summary["inputs"], "outputs": summary["outputs"],
                "renamed_dims": renamed, "source": label, "bytes": dest.stat().st_size,
                "seconds": self.seconds}

    @staticmethod
    def _upstream(task: Task) -> Optional[Path]:
        """The upstream SavedModel directory or Keras file, when the step has an upstream."""
        if not task.upstream:
            return None
        found = []
        for step, outs in task.upstream.items():
            for name, path in outs.items():
                path = Path(path)
                if (path.is_dir() and (path / SAVED_MODEL_FILE).is_file()) or \
                        path.name.lower().endswith(KERAS_SUFFIXES):
                    found.append((f"{step}.{name}", path))
        if len(found) == 1:
            return found[0][1]
        have = ", ".join(f"{s}.{n}" for s, outs in task.upstream.items() for n in outs)
        if not found:
            raise StepFailed("tf2onnx.convert converts an upstream SavedModel directory or "
                             f".keras file, and found none (upstream outputs: {have})",
                             hint="leave 'from:' out to convert the model itself")
        raise StepFailed("tf2onnx.convert needs one upstream SavedModel or .keras file; "
                         "found " + ", ".join(label for label, _ in found))
