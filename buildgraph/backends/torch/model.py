"""PyTorch models as build inputs: where they come from, what enters the key, how they load.

A recipe's ``models:`` section names each model once (:class:`buildgraph.recipe.schema.ModelSpec`)
and steps refer to it by name (``with: {model: resnet}``). This module is the one import the
step kinds, runtimes and tests use; the work is split by seam:

* :mod:`~buildgraph.backends.torch.model_key` (**resolve time**, no torch, no numpy): the files and
  settings of a model that enter the key of every step using it (:func:`model_extra_inputs`,
  :func:`model_key_data`, :func:`model_spec`). Errors are :class:`RecipeError`.
* :mod:`~buildgraph.backends.torch.loading` (**run time**, inside a worker): importing the
  user's factory, building zoo models, loading saved model files (:func:`load_model`).
* :mod:`~buildgraph.backends.torch.hf`: Hugging Face ``transformers:CLASS`` models from a
  config (resolve-time checks and the run-time build).
* :mod:`~buildgraph.backends.torch.weights`: safetensors, state_dict and checkpoint files.
* :mod:`~buildgraph.backends.torch.inputs`: seeded example inputs, sample inputs, dynamic dims.
* :mod:`~buildgraph.backends.torch.outputs`: a model's outputs as a named list of tensors
  (``outputs:`` selection, the wrapper every exporter exports, names kept in artifacts).
* :mod:`~buildgraph.backends.torch.failures`: one-line errors from user code.

Run-time errors are one-line :class:`StepFailed` messages; details go to the step's log.

Model sources: ``path/file.py:factory`` or ``package.module:factory`` (with ``kwargs``);
``torchvision:NAME`` / ``timm:NAME`` / ``transformers:CLASS`` (with ``config:``) when that
package is installed (weights come from a local file, nothing is downloaded); or a saved
model file: a TorchScript archive, a ``.pt2`` (torch.export) archive, or a
``torch.save(model)`` pickle (``trusted: true`` required, since unpickling runs code).
"""

from __future__ import annotations

from buildgraph.backends.torch.failures import log_failure, short_error
from buildgraph.backends.torch.inputs import (describe_inputs, dim_sizes, dynamic_dims,
                                              export_sizes, input_shapes, input_specs,
                                              load_samples, make_inputs, run_eager,
                                              shaped_inputs, to_numpy, torch_dynamic_shapes)
from buildgraph.backends.torch.loading import load_model, load_saved, set_threads
from buildgraph.backends.torch.outputs import (NAMES_FILE, call_model, export_module,
                                               flatten_outputs, named_outputs, names_record,
                                               output_leaves, read_names_record,
                                               select_outputs)
from buildgraph.backends.torch.model_key import (HUBS, code_globals, model_extra_inputs,
                                            model_key_data, model_spec, package_versions,
                                            pickle_globals, saved_format, source_kind)
from buildgraph.backends.torch.weights import load_weights, read_safetensors, read_state_dict

__all__ = [
    "HUBS", "NAMES_FILE", "call_model", "code_globals", "describe_inputs", "dim_sizes",
    "dynamic_dims", "export_module", "export_sizes", "flatten_outputs", "input_shapes",
    "input_specs", "load_model", "load_samples", "load_saved", "load_weights", "log_failure",
    "make_inputs", "model_extra_inputs", "model_key_data", "model_spec", "named_outputs",
    "names_record", "output_leaves", "package_versions", "pickle_globals", "read_names_record",
    "read_safetensors", "read_state_dict", "run_eager", "saved_format", "select_outputs",
    "set_threads", "shaped_inputs", "short_error", "source_kind", "to_numpy",
    "torch_dynamic_shapes",
]
