"""LLaDA (`model_type` "llada"): an OLMo-style checkpoint mapped onto transformers' Llama, bidirectional.

Logits are not shifted (position j is predicted from j); it generates with LLaDA's sampler
(`headattr.generation.llada`). The gates sit on LLaDA's `attn_out`, which becomes
Llama's `self_attn.o_proj`; `--head-module attn_out` names it by the checkpoint's own name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from headattr.errors import HeadattrError
from headattr.models import native
from headattr.models.registry import Family, register
from headattr.models.spec import ModelSpec

LLADA_DEFAULT_MASK_ID = 126336
LLADA_RENAMES = [
    (r"^model\.transformer\.wte\.", "model.embed_tokens."),
    (r"^model\.transformer\.ln_f\.", "model.norm."),
    (r"^model\.transformer\.ff_out\.", "lm_head."),
    (r"^model\.transformer\.blocks\.(\d+)\.attn_norm\.", r"model.layers.\1.input_layernorm."),
    (r"^model\.transformer\.blocks\.(\d+)\.ff_norm\.", r"model.layers.\1.post_attention_layernorm."),
    (r"^model\.transformer\.blocks\.(\d+)\.([qkv])_proj\.", r"model.layers.\1.self_attn.\2_proj."),
    (r"^model\.transformer\.blocks\.(\d+)\.attn_out\.", r"model.layers.\1.self_attn.o_proj."),
    (r"^model\.transformer\.blocks\.(\d+)\.ff_proj\.", r"model.layers.\1.mlp.gate_proj."),
    (r"^model\.transformer\.blocks\.(\d+)\.up_proj\.", r"model.layers.\1.mlp.up_proj."),
    (r"^model\.transformer\.blocks\.(\d+)\.ff_out\.", r"model.layers.\1.mlp.down_proj."),
]


def llada_to_llama_name(name: str) -> str:
    """Map a LLaDA (OLMo-style) weight name to transformers' Llama name."""
    for pattern, repl in LLADA_RENAMES:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    raise HeadattrError(f"unexpected weight {name!r} in a LLaDA checkpoint; is model_type really 'llada'?")


def llada_llama_config(cfg: dict[str, Any]) -> Any:
    """transformers `LlamaConfig` equivalent to a LLaDA config.json."""
    from transformers import LlamaConfig

    def need(key: str) -> Any:
        if key not in cfg:
            raise HeadattrError(f"LLaDA config.json lacks {key!r}; the checkpoint directory looks incomplete")
        return cfg[key]

    n_heads = need("n_heads")
    return LlamaConfig(
        hidden_size=need("d_model"),
        intermediate_size=need("mlp_hidden_size"),
        num_hidden_layers=need("n_layers"),
        num_attention_heads=n_heads,
        num_key_value_heads=cfg.get("n_kv_heads") or n_heads,
        vocab_size=cfg.get("embedding_size") or need("vocab_size"),
        max_position_embeddings=cfg.get("max_sequence_length", 4096),
        rope_parameters=native.rope_parameters(cfg.get("rope_theta", 10000.0), cfg.get("rope_scaling")),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
        attention_bias=bool(cfg.get("include_qkv_bias") or cfg.get("include_bias")),
        mlp_bias=bool(cfg.get("include_bias")),
        tie_word_embeddings=bool(cfg.get("weight_tying", False)),
        hidden_act="silu",
        pad_token_id=cfg.get("pad_token_id"),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
    )


def load(root: Path, cfg: dict[str, Any], dtype: torch.dtype, device: str, options: Any) -> ModelSpec:
    from transformers import LlamaForCausalLM

    weights = native.read_weights(root, dtype, device, llada_to_llama_name)
    model = native.build(LlamaForCausalLM, llada_llama_config(cfg), weights, dtype, device, options.attn_implementation)
    mask_id = cfg.get("mask_token_id", LLADA_DEFAULT_MASK_ID)
    return native.native_spec(
        model, root, "llada", mask_id, logit_shift=False, head_module_label="attn_out (as self_attn.o_proj)"
    )


FAMILY = register(
    Family(
        "llada",
        ("llada",),
        load,
        head_module_aliases={"attn_out": "self_attn.o_proj"},
        display_name="LLaDA",
        sampler="llada",
    )
)
