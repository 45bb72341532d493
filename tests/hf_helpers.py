"""Tiny Hugging Face models and the recipe that takes each through every export form (not a
test module).

Configs are random-init and tiny (hidden 32, 2 layers, vocabulary 100): nothing is downloaded,
and a family's whole recipe builds in seconds on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

TINY_TEXT = {"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "hidden_size": 32}

BERT: Dict[str, Any] = {
    "source": "transformers:BertModel",
    "config": {"model_type": "bert", **TINY_TEXT, "vocab_size": 100,
               "max_position_embeddings": 64},
    "inputs": {"input_ids": {"shape": ["batch", "seq"], "dtype": "int64", "max": 99},
               "attention_mask": {"shape": ["batch", "seq"], "dtype": "int64", "min": 1,
                                  "max": 1}},
    "dims": {"batch": {"min": 1, "opt": 2, "max": 8}, "seq": {"min": 2, "opt": 8, "max": 32}},
}

VIT_CONFIG = {"model_type": "vit", **TINY_TEXT, "image_size": 32, "patch_size": 8}
VIT: Dict[str, Any] = {
    "source": "transformers:ViTModel",
    "config": "vit_config",  # a directory holding config.json, as save_pretrained writes it
    "inputs": {"pixel_values": {"shape": ["batch", 3, 32, 32]}},
    "dims": {"batch": {"min": 1, "opt": 2, "max": 8}},
}

GPT2_CONFIG = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2,
               "vocab_size": 100, "n_positions": 64, "bos_token_id": 0, "eos_token_id": 0}
GPT2: Dict[str, Any] = {
    "source": "transformers:GPT2LMHeadModel",
    "config": GPT2_CONFIG,
    "weights": "gpt2.safetensors",
    "outputs": ["logits"],  # its default use_cache=True also returns a DynamicCache
    # static here (BERT and ViT test the dynamic dims; tests/test_hf_archs.py takes a dynamic
    # GPT-2 into TVM with its dims bound)
    "inputs": {"input_ids": {"shape": [2, 8], "dtype": "int64", "max": 99}},
}

# Every form, for a model named m; each family adds its TVM route and verify.
COMMON = """
state: {uses: torch.save, with: {model: m}}
trace: {uses: torchscript, with: {model: m, mode: trace}}
ep: {uses: torch.export, with: {model: m}}
onnx: {uses: onnx.export, with: {model: m}}
legacy: {uses: onnx.export, with: {model: m, exporter: legacy, opset: 17}}
sim: {uses: onnx.simplify, from: onnx, with: {test_input_shapes: SHAPES}}
"""


def recipe(model: Dict[str, Any], steps: str, shapes: Dict[str, Any],
           extra_models: Optional[Dict[str, Any]] = None) -> str:
    body = (COMMON + steps).replace("SHAPES", json.dumps(shapes))
    models = {"m": model, **(extra_models or {})}
    return ("name: hf\nmodels: " + json.dumps(models) + "\nsteps:\n"
            + "".join(f"  {line}\n" for line in body.strip().splitlines()))


def write_vit_config(root: Path) -> None:
    (root / "vit_config").mkdir(parents=True, exist_ok=True)
    (root / "vit_config" / "config.json").write_text(json.dumps(VIT_CONFIG), encoding="utf-8")
