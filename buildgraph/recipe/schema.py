"""The recipe's schema: pydantic models that are the single source of truth.

``buildgraph schema`` generates the JSON Schema from these models, and
:mod:`buildgraph.recipe.load` validates against them; nothing else describes the format.
Models are frozen and forbid unknown keys so that a typo is an error, not a silently ignored
setting.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import ConfigDict, Field, field_validator

from buildgraph.engine.params import StrictParams

Scalar = Union[str, int, float, bool]

ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
"""Step, model and output ids: a letter or underscore, then letters, digits, '_', '.', '-'."""


class Strict(StrictParams):
    """The recipe's own models: strict like step params, and fields with an alias (``with``)
    may also be given by name."""

    model_config = ConfigDict(**StrictParams.model_config, populate_by_name=True)


class TensorSpec(Strict):
    """One example input of a model: its shape (ints, or names for dynamic dims) and dtype."""

    shape: List[Union[int, str]] = Field(description="dims; a string names a dynamic dim")
    dtype: Literal["float32", "float16", "bfloat16", "float64", "int64", "int32", "int8",
                   "uint8", "bool"] = "float32"
    min: Optional[float] = Field(None, description="low end of random values (default 0 for"
                                 " ints, a standard normal for floats)")
    max: Optional[float] = Field(None, description="high end of random integer values")


class ModelSpec(Strict):
    """A model the recipe builds from: PyTorch, an ONNX file or TensorFlow/Keras (see README,
    'Models and PyTorch exports' and 'Starting from ONNX or TensorFlow')."""

    source: str = Field(description="'path/file.py:factory', 'package.module:factory', "
                        "'torchvision:resnet50', 'transformers:BertModel', a saved PyTorch "
                        "model file (.pt/.pth, .pt2, TorchScript), an ONNX file (.onnx), a "
                        "Keras file (.keras, .h5) or a TensorFlow SavedModel directory")
    framework: Optional[Literal["torch", "onnx", "tensorflow"]] = Field(
        None, description="what the source is; default: onnx for .onnx files, tensorflow for "
        ".keras/.h5 files and SavedModel directories, torch otherwise (a factory returning "
        "a tf.keras.Model says framework: tensorflow)")
    signature: Optional[str] = Field(
        None, description="TensorFlow SavedModel: the signature to run and convert (default "
        "serving_default)")
    config: Optional[Union[Dict[str, Any], str]] = Field(
        None, description="transformers: the model config, a dict with model_type "
        "({model_type: bert, hidden_size: 32, ...}) or a config.json file (or its directory)")
    kwargs: Dict[str, Any] = Field(default_factory=dict,
                                   description="keyword arguments of the factory")
    weights: Optional[str] = Field(None, description="a .safetensors, state_dict or "
                                   "checkpoint file; for transformers also a directory "
                                   "written by save_pretrained")
    weights_key: Optional[str] = Field(None, description="key of the state_dict inside a "
                                       "checkpoint dict, e.g. 'state_dict' or 'model'")
    strict: bool = Field(True, description="load_state_dict(strict=...)")
    trusted: bool = Field(False, description="allow unpickling a whole-model file (runs code)")
    seed: int = Field(0, description="seed for deterministic initialisation without weights "
                      "and for random example inputs")
    inputs: Dict[str, TensorSpec] = Field(default_factory=dict,
                                          description="example inputs, in forward() order")
    sample_inputs: Optional[str] = Field(None, description=".npy/.npz/.pt file of real inputs")
    dims: Dict[str, Dict[str, int]] = Field(
        default_factory=dict,
        description="ranges of named dynamic dims, e.g. {batch: {min: 1, opt: 8, max: 32}}")
    outputs: Optional[List[str]] = Field(
        None, min_length=1,
        description="the outputs every export keeps, in order: names (logits, "
        "last_hidden_state) or dotted paths into the output structure (hidden_states.1); "
        "default: every tensor the model returns")

    @field_validator("outputs")
    @classmethod
    def _distinct_outputs(cls, value: Optional[List[str]]) -> Optional[List[str]]:
        if value is not None:
            for entry in value:
                if not entry or entry.strip() != entry:
                    raise ValueError(f"outputs: '{entry}' is not an output name or path")
            dup = next((e for e in value if value.count(e) > 1), None)
            if dup:
                raise ValueError(f"outputs: '{dup}' is listed twice")
        return value


class MatrixSpec(Strict):
    """How one step expands into several. Keys other than ``exclude``/``include`` are axes."""

    model_config = ConfigDict(extra="allow", frozen=True)

    exclude: List[Dict[str, Scalar]] = Field(default_factory=list)
    include: List[Dict[str, Scalar]] = Field(default_factory=list)


class StepSpec(Strict):
    """One step of the recipe's DAG."""

    uses: str = Field(description="the step kind (see `buildgraph kinds`)")
    from_: Union[List[str], str] = Field(default_factory=list, alias="from",
                                         description="upstream step(s) whose outputs this "
                                                     "step consumes")
    inputs: Union[Dict[str, str], List[str]] = Field(
        default_factory=dict,
        description="files or directories this step reads, relative to the recipe; "
                    "a mapping gives them names for ${in.NAME}")
    with_: Dict[str, Any] = Field(default_factory=dict, alias="with",
                                  description="parameters of the step kind")
    outputs: Optional[Union[List[str], Dict[str, str]]] = Field(
        None, description="named outputs (a list of names, or name: file name); "
                          "default: what the step kind declares")
    matrix: Optional[Dict[str, Any]] = Field(
        None, description="axis: [values] to expand this step into one step per combination;"
                          " 'exclude'/'include' take lists of combinations")
    resources: Dict[str, Union[int, Literal["all"]]] = Field(
        default_factory=dict,
        description="pools this step holds while it runs, e.g. {gpu: 1} or {cpu: all}")
    timeout: Optional[float] = Field(None, gt=0, description="seconds before the step is killed")
    description: str = ""
    cache: bool = Field(True, description="false: always run this step")

    @field_validator("from_", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Recipe(Strict):
    """A whole recipe file."""

    name: Optional[str] = Field(None, pattern=ID_PATTERN,
                                description="defaults to the file name without extension")
    description: str = ""
    vars: Dict[str, Any] = Field(default_factory=dict,
                                 description="variables for ${vars.NAME}; --set NAME=VALUE")
    pools: Dict[str, int] = Field(default_factory=dict,
                                  description="extra resource pools and their capacity")
    models: Dict[str, ModelSpec] = Field(default_factory=dict)
    cache_salt: str = Field("", description="change to invalidate every cached result")
    steps: Dict[str, StepSpec] = Field(min_length=1)
