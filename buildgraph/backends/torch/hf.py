"""Hugging Face ``transformers`` models: ``source: transformers:CLASS``.

A model is built from a config, never downloaded: ``config:`` is a dict in the recipe
(``{model_type: bert, hidden_size: 32, ...}``, made with ``AutoConfig.for_model``) or a local
``config.json`` (or a directory holding one); the class is any model class transformers exports
(``BertModel``, ``GPT2LMHeadModel``, ``AutoModelForCausalLM``...), built with ``from_config``
and seeded like every model here. Weights are optional: a ``.safetensors`` or state_dict file
loaded afterwards like any model's, or a directory written by ``save_pretrained``, loaded with
``from_pretrained(dir, local_files_only=True)``.

What enters the key: the config dict (the model spec is key data), a config file and every file
of a weights directory (extra inputs), and the transformers version (a package the model comes
from). The resolve-time half of this module imports neither torch nor transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from buildgraph.errors import RecipeError, StepFailed, did_you_mean

CONFIG_HINT = ("add config: {model_type: bert, hidden_size: 32, num_hidden_layers: 2, ...} "
               "(a dict), config: path/to/config.json, or weights: a directory written by "
               "save_pretrained")


# --------------------------------------------------------------------------------------------
# resolve time (no torch, no transformers)
# --------------------------------------------------------------------------------------------

def weights_dir(spec: Mapping[str, Any], recipe_dir: Path) -> Optional[Path]:
    """The ``save_pretrained`` directory named by ``weights:``, if it is one."""
    rel = spec.get("weights")
    if not rel:
        return None
    path = Path(recipe_dir) / rel
    return path if path.is_dir() else None


def config_file(spec: Mapping[str, Any], recipe_dir: Path) -> Optional[Path]:
    """The config.json ``config:`` names (the file, or ``config.json`` in the directory)."""
    config = spec.get("config")
    if not isinstance(config, str):
        return None
    path = Path(recipe_dir) / config
    return path / "config.json" if path.is_dir() else path


def extra_inputs(name: str, spec: Mapping[str, Any], recipe_dir: Path) -> Dict[str, Path]:
    """The config file and the files of a weights directory; checks the config's shape."""
    recipe_dir = Path(recipe_dir)
    config = spec.get("config")
    wdir = weights_dir(spec, recipe_dir)
    files: Dict[str, Path] = {}
    if config is None and wdir is None:
        raise RecipeError(f"model '{name}': a transformers model is built from a config, and "
                          "this one has none", hint=CONFIG_HINT)
    if isinstance(config, Mapping):
        model_type = config.get("model_type")
        if not isinstance(model_type, str) or not model_type:
            raise RecipeError(f"model '{name}': config: needs model_type (e.g. bert, vit, gpt2:"
                              " the key of AutoConfig), beside the settings it changes",
                              hint="config: {model_type: bert, hidden_size: 32, ...}")
    elif config is not None:
        path = config_file(spec, recipe_dir)
        assert path is not None
        if not path.is_file():
            raise RecipeError(f"model '{name}': config '{config}' is neither a config.json file "
                              f"nor a directory holding one (looked in {recipe_dir})",
                              hint=CONFIG_HINT)
        files[f"model:{name}:config"] = path.resolve()
    if wdir is not None:
        found = sorted(p for p in wdir.iterdir() if p.is_file() and not p.name.startswith("."))
        if not any(p.name.endswith((".safetensors", ".bin")) for p in found):
            raise RecipeError(f"model '{name}': weights directory '{spec['weights']}' holds no "
                              ".safetensors or .bin file",
                              hint="a directory written by model.save_pretrained(), or one "
                                   "weights file (weights: model.safetensors)")
        if config is None and not (wdir / "config.json").is_file():
            raise RecipeError(f"model '{name}': weights directory '{spec['weights']}' has no "
                              "config.json and the model gives no config:", hint=CONFIG_HINT)
        for p in found:
            files[f"model:{name}:weights:{p.name}"] = p.resolve()
    return files


# --------------------------------------------------------------------------------------------
# run time (torch and transformers imported here, inside workers)
# --------------------------------------------------------------------------------------------

def _model_class(name: str, cls_name: str) -> Any:
    import transformers

    try:
        cls = getattr(transformers, cls_name)
    except Exception:  # noqa: BLE001 - the lazy module raises AttributeError or ImportError
        known = [n for n in dir(transformers) if "Model" in n and not n.startswith("TF")
                 and not n.startswith("Flax")]
        raise StepFailed(f"model '{name}': transformers {transformers.__version__} has no "
                         f"class '{cls_name}'{did_you_mean(cls_name, known)}") from None
    if not isinstance(cls, type) or not (hasattr(cls, "from_config")
                                         or hasattr(cls, "_from_config")):
        raise StepFailed(f"model '{name}': transformers.{cls_name} is not a model class "
                         "(e.g. BertModel, GPT2LMHeadModel, AutoModel)")
    return cls


# PretrainedConfig settings every model type takes that neither a default config's to_dict()
# nor the signatures list (properties, and names renamed in transformers 5 that it still takes)
GENERIC_SETTINGS = frozenset({"num_labels", "torch_dtype", "dtype", "id2label", "label2id",
                              "output_hidden_states", "output_attentions", "return_dict",
                              "problem_type", "tie_word_embeddings", "use_cache",
                              "pad_token_id", "bos_token_id", "eos_token_id",
                              "decoder_start_token_id", "sep_token_id", "is_decoder",
                              "add_cross_attention", "attn_implementation", "name_or_path",
                              "architectures", "chunk_size_feed_forward", "finetuning_task",
                              "tokenizer_class", "prefix", "task_specific_params",
                              "is_encoder_decoder", "pruned_heads", "torchscript"})


def config_settings(cfg_cls: type) -> set:
    """The settings a config class takes: its ``__init__`` parameters, the settable
    properties along its MRO (``num_labels``) and the generic ones of every config."""
    import inspect

    names = set(GENERIC_SETTINGS)
    for klass in cfg_cls.__mro__:
        try:
            params = inspect.signature(klass.__init__).parameters.values()
        except (TypeError, ValueError):
            params = ()
        names.update(p.name for p in params
                     if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self")
        names.update(k for k, v in vars(klass).items()
                     if isinstance(v, property) and v.fset is not None)
    return names


def make_config(name: str, spec: Mapping[str, Any], recipe_dir: Path) -> Any:
    """The ``PretrainedConfig``: from the recipe's dict, a config.json, or the weights dir."""
    import transformers

    config = spec.get("config")
    what = f"model '{name}': config"
    if isinstance(config, Mapping):
        settings = dict(config)
        model_type = settings.pop("model_type")
        try:
            cfg_cls = transformers.AutoConfig.for_model(model_type).__class__
        except ValueError:
            from transformers.models.auto.configuration_auto import CONFIG_MAPPING

            raise StepFailed(f"{what}: transformers {transformers.__version__} has no model_type "
                             f"'{model_type}'{did_you_mean(model_type, list(CONFIG_MAPPING))}"
                             ) from None
        try:
            known = set(cfg_cls().to_dict()) | set(getattr(cfg_cls, "attribute_map", {})) \
                | config_settings(cfg_cls) | config_settings(transformers.PretrainedConfig)
        except Exception:  # noqa: BLE001 - a composite config has no defaults to compare with
            known = set(settings)
        unknown = [k for k in settings if k not in known]
        if unknown:
            # a config accepts any key silently: a typo would build the default size
            raise StepFailed(f"{what}: {model_type} has no setting '{unknown[0]}'"
                             f"{did_you_mean(unknown[0], sorted(known))}")
        try:
            return cfg_cls(**settings)
        except Exception as exc:  # noqa: BLE001 - the config's own validation
            raise StepFailed(f"{what}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    source = config_file(spec, recipe_dir)
    if source is None:
        wdir = weights_dir(spec, recipe_dir)
        assert wdir is not None  # extra_inputs refuses a model with neither
        source = wdir / "config.json"
    try:
        return transformers.AutoConfig.from_pretrained(str(source.parent),
                                                       local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise StepFailed(f"{what}: cannot read {source.name}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                         ) from None


def build_model(name: str, spec: Mapping[str, Any], recipe_dir: Path,
                with_weights: bool = True) -> Any:
    """The model: ``from_config`` (seeded by the caller), or ``from_pretrained`` of a local
    weights directory when ``with_weights``; never a download."""
    from buildgraph.errors import short_error

    cls_name = str(spec["source"]).partition(":")[2]
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise StepFailed(f"model '{name}': source '{spec['source']}' needs the 'transformers' "
                         f"package, which fails to import here: {short_error(exc)}") from None
    cls = _model_class(name, cls_name)
    config = make_config(name, spec, recipe_dir)
    kwargs = dict(spec.get("kwargs") or {})
    wdir = weights_dir(spec, recipe_dir)
    try:
        if with_weights and wdir is not None:
            return cls.from_pretrained(str(wdir), config=config, local_files_only=True,
                                       **kwargs)
        if hasattr(cls, "from_config"):  # the Auto* classes
            return cls.from_config(config, **kwargs)
        return cls._from_config(config, **kwargs)
    except StepFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - config/class mismatches, bad kwargs
        how = "from_pretrained" if with_weights and wdir is not None else "from_config"
        raise StepFailed(f"model '{name}': transformers.{cls_name}.{how} failed: "
                         f"{short_error(exc)}"[:500]) from None
