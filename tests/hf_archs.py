"""A spread of tiny random-init Hugging Face architectures (not a test module): text encoders,
decoder-only LMs, the encoder of an encoder-decoder, vision transformers and CNNs, audio
encoders. Hidden size 32 (or smaller channel counts for CNNs), one or two layers, vocabulary
100: nothing is downloaded, and each builds in well under a second.

Each entry is a model spec in the project's own ``transformers:CLASS`` syntax plus the kind of
inputs it takes (``text``, ``image``, ``audio``), which decides the dims a TVM step binds."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

TEXT_INPUTS = {"input_ids": {"shape": ["batch", "seq"], "dtype": "int64", "max": 99},
               "attention_mask": {"shape": ["batch", "seq"], "dtype": "int64", "min": 1,
                                  "max": 1}}
TEXT_DIMS = {"batch": {"min": 1, "opt": 2, "max": 4}, "seq": {"min": 2, "opt": 8, "max": 16}}
IMAGE_INPUTS = {"pixel_values": {"shape": ["batch", 3, 32, 32]}}
AUDIO_INPUTS = {"input_values": {"shape": ["batch", 800]}}
BATCH_DIMS = {"batch": {"min": 1, "opt": 2, "max": 4}}

TEXT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 64}
VISION = {k: v for k, v in TEXT.items() if k not in ("vocab_size", "max_position_embeddings")}
AUDIO = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
         "intermediate_size": 64, "conv_dim": [16, 16], "conv_kernel": [10, 3],
         "conv_stride": [5, 2], "num_feat_extract_layers": 2, "num_conv_pos_embeddings": 16,
         "num_conv_pos_embedding_groups": 2, "vocab_size": 32}


def _spec(cls: str, config: Dict[str, Any], kind: str,
          outputs: Optional[List[str]] = None) -> Dict[str, Any]:
    inputs = {"text": TEXT_INPUTS, "image": IMAGE_INPUTS, "audio": AUDIO_INPUTS}[kind]
    spec: Dict[str, Any] = {"source": f"transformers:{cls}", "config": config,
                            "inputs": inputs, "dims": TEXT_DIMS if kind == "text" else BATCH_DIMS}
    if outputs:
        spec["outputs"] = outputs
    return spec


# name -> (kind, model spec); the default tier builds these through every form
ARCHS: Dict[str, Any] = {
    # text encoders
    "bert": ("text", _spec("BertModel", {"model_type": "bert", **TEXT}, "text",
                           ["last_hidden_state"])),
    "roberta": ("text", _spec("RobertaModel", {"model_type": "roberta", **TEXT,
                                               "max_position_embeddings": 66}, "text",
                              ["last_hidden_state"])),
    "albert": ("text", _spec("AlbertModel", {"model_type": "albert", **TEXT,
                                             "embedding_size": 16}, "text",
                             ["last_hidden_state"])),
    # the encoder of an encoder-decoder
    "t5-encoder": ("text", _spec("T5EncoderModel", {
        "model_type": "t5", "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1,
        "num_heads": 2, "vocab_size": 100, "relative_attention_num_buckets": 8}, "text",
        ["last_hidden_state"])),
    # decoder-only LMs (their default cache is left out by selecting the logits)
    "gpt2": ("text", _spec("GPT2LMHeadModel", {
        "model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "vocab_size": 100,
        "n_positions": 64, "bos_token_id": 0, "eos_token_id": 0}, "text", ["logits"])),
    "llama": ("text", _spec("LlamaForCausalLM", {
        "model_type": "llama", **TEXT, "num_key_value_heads": 1}, "text", ["logits"])),
    "qwen2": ("text", _spec("Qwen2ForCausalLM", {
        "model_type": "qwen2", **TEXT, "num_key_value_heads": 1}, "text", ["logits"])),
    "opt": ("text", _spec("OPTForCausalLM", {
        "model_type": "opt", "hidden_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "ffn_dim": 64, "vocab_size": 100,
        "max_position_embeddings": 64, "word_embed_proj_dim": 32}, "text", ["logits"])),
    # vision transformers and CNNs
    "vit": ("image", _spec("ViTModel", {"model_type": "vit", **VISION, "image_size": 32,
                                        "patch_size": 8}, "image", ["last_hidden_state"])),
    "swin": ("image", _spec("SwinModel", {
        "model_type": "swin", "image_size": 32, "patch_size": 4, "embed_dim": 16,
        "depths": [1, 1], "num_heads": [1, 2], "window_size": 4}, "image",
        ["last_hidden_state"])),
    "resnet": ("image", _spec("ResNetModel", {
        "model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16],
        "depths": [1, 1]}, "image", ["last_hidden_state"])),
    "convnext": ("image", _spec("ConvNextModel", {
        "model_type": "convnext", "num_stages": 2, "hidden_sizes": [8, 16], "depths": [1, 1],
        "patch_size": 4}, "image", ["last_hidden_state"])),
    "segformer": ("image", _spec("SegformerForSemanticSegmentation", {
        "model_type": "segformer", "num_labels": 3, "num_encoder_blocks": 2,
        "depths": [1, 1], "sr_ratios": [2, 1], "hidden_sizes": [8, 16],
        "patch_sizes": [7, 3], "strides": [4, 2], "num_attention_heads": [1, 2],
        "mlp_ratios": [2, 2], "decoder_hidden_size": 16}, "image", ["logits"])),
    # audio encoders
    "wav2vec2": ("audio", _spec("Wav2Vec2Model", {"model_type": "wav2vec2", **AUDIO}, "audio",
                                ["last_hidden_state"])),
}

# more breadth, behind @pytest.mark.slow
SLOW_ARCHS: Dict[str, Any] = {
    "distilbert": ("text", _spec("DistilBertModel", {
        "model_type": "distilbert", "dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64,
        "vocab_size": 100, "max_position_embeddings": 64}, "text", ["last_hidden_state"])),
    "electra": ("text", _spec("ElectraModel", {"model_type": "electra", **TEXT,
                                               "embedding_size": 16}, "text",
                              ["last_hidden_state"])),
    "mistral": ("text", _spec("MistralForCausalLM", {
        "model_type": "mistral", **TEXT, "num_key_value_heads": 1}, "text", ["logits"])),
    "phi": ("text", _spec("PhiForCausalLM", {"model_type": "phi", **TEXT}, "text",
                          ["logits"])),
    "gpt_neox": ("text", _spec("GPTNeoXForCausalLM", {"model_type": "gpt_neox", **TEXT},
                               "text", ["logits"])),
    "deit": ("image", _spec("DeiTModel", {"model_type": "deit", **VISION, "image_size": 32,
                                          "patch_size": 8}, "image", ["last_hidden_state"])),
    "mobilevit": ("image", _spec("MobileViTModel", {
        "model_type": "mobilevit", "image_size": 32, "patch_size": 2, "hidden_sizes": [16, 16, 16],
        "neck_hidden_sizes": [8, 8, 8, 8, 8, 8, 16], "num_attention_heads": 2}, "image",
        ["last_hidden_state"])),
    "hubert": ("audio", _spec("HubertModel", {"model_type": "hubert", **AUDIO}, "audio",
                              ["last_hidden_state"])),
}

# The default tier keeps one of each family (text encoder, encoder-decoder's encoder, decoder-only
# LM, vision transformer, audio encoder) and the models other tests here read (BERT, T5, GPT-2,
# Swin) so that CI stays within its time; these, which pass the same way, join the slow tier
# (ViT also runs in the default tier through tests/test_hf_models.py, a CNN in most tests).
MOVED_TO_SLOW = ("roberta", "albert", "qwen2", "opt", "convnext", "segformer", "llama", "vit",
                 "resnet")
SLOW_ARCHS.update({name: ARCHS.pop(name) for name in MOVED_TO_SLOW})

BOUND = {"text": {"batch": 1, "seq": 8}, "image": {"batch": 1}, "audio": {"batch": 1}}
VERIFY_DIMS = {"text": {"batch": [1], "seq": [8]}, "image": {"batch": [1]},
               "audio": {"batch": [1]}}
FORMS = ["onnx", "ep", "trace", "tvm_onnx", "tvm_ep"]


def arch_steps(name: str, kind: str) -> List[str]:
    """Every form of one architecture (model ``name``), TVM with its dims bound, verify."""
    bound = json.dumps(BOUND[kind])
    step = lambda s: f"{name}_{s}"  # noqa: E731
    return [
        f"{step('onnx')}: {{uses: onnx.export, with: {{model: {name}}}}}",
        f"{step('ep')}: {{uses: torch.export, with: {{model: {name}}}}}",
        f"{step('trace')}: {{uses: torchscript, with: {{model: {name}, mode: trace}}}}",
        f"{step('tvm_onnx')}: {{uses: tvm.compile, from: {step('onnx')}, "
        f"with: {{target: native, dims: {bound}}}}}",
        f"{step('tvm_ep')}: {{uses: tvm.compile, from: {step('ep')}, "
        f"with: {{target: native, dims: {bound}}}}}",
        f"{step('verify')}: {{uses: verify, from: [{', '.join(step(f) for f in FORMS)}], "
        f"with: {{model: {name}, random: 1, dims: {json.dumps(VERIFY_DIMS[kind])}}}}}",
    ]


def arch_recipe(archs: Dict[str, Any]) -> str:
    models = {name.replace("-", "_"): spec for name, (_, spec) in archs.items()}
    steps = [line for name, (kind, _) in archs.items()
             for line in arch_steps(name.replace("-", "_"), kind)]
    return ("name: archs\nmodels: " + json.dumps(models) + "\nsteps:\n"
            + "".join(f"  {line}\n" for line in steps))
