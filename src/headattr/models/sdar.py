"""SDAR and its TraDo fine-tunes (`model_type` "sdar"): Qwen3 checkpoints loaded as transformers' Qwen3.

The weights are Qwen3's, including the per-head q/k RMSNorm (over head_dim, before RoPE), and head_dim is read
from config.json (num_attention_heads x head_dim may differ from hidden_size). Logits are not shifted.

SDAR is a block-diffusion model (`block_size` tokens per block, recorded in the spec): its own attention is
block-causal. The spec declares the block-diffusion objective, so Gate-IG's J is SDAR's training loss (the
[x_t | x_0] layout with its block mask, `engine.core`, docs/gate-ig.md); a whole-model forward pass without a
mask is bidirectional. The config's `attn_implementation` ("flex_attention") and
`fuse_cross_entropy` concern SDAR's training code and are not read; no sliding window is applied.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch

from headattr.models import native
from headattr.models.registry import Family, register
from headattr.models.spec import BLOCK_DIFFUSION, ModelSpec

SDAR_MASK_ID = 151669  # `<|MASK|>` in SDAR's Qwen3 vocabulary


def qwen3_config(cfg: dict[str, Any]) -> Any:
    """transformers `Qwen3Config` equivalent to an SDAR config.json."""
    from transformers import Qwen3Config

    need = partial(native.require, cfg, family="SDAR")
    heads = need("num_attention_heads")
    hidden = need("hidden_size")
    return Qwen3Config(
        vocab_size=need("vocab_size"),
        hidden_size=hidden,
        intermediate_size=need("intermediate_size"),
        num_hidden_layers=need("num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or hidden // heads,
        hidden_act=cfg.get("hidden_act", "silu"),
        max_position_embeddings=cfg.get("max_position_embeddings", 32768),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=bool(cfg.get("attention_bias", False)),
        rope_parameters=native.rope_parameters(cfg.get("rope_theta", 10000.0), cfg.get("rope_scaling")),
        use_sliding_window=False,
        pad_token_id=cfg.get("pad_token_id"),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
    )


def load(root: Path, cfg: dict[str, Any], dtype: torch.dtype, device: str, options: Any) -> ModelSpec:
    from transformers import Qwen3ForCausalLM

    need = partial(native.require, cfg, family="SDAR")
    weights = native.read_weights(root, dtype, device)
    model = native.build(Qwen3ForCausalLM, qwen3_config(cfg), weights, dtype, device, options.attn_implementation)
    mask_id = native.mask_token_id(cfg, SDAR_MASK_ID)
    return native.native_spec(
        model, root, "sdar", mask_id, logit_shift=False, block_size=need("block_size"), objective=BLOCK_DIFFUSION
    )


FAMILY = register(Family("sdar", ("sdar",), load, display_name="SDAR", sampler="sdar"))
