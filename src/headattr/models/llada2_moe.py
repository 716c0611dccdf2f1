"""LLaDA 2.x mini and flash (`model_type` "llada2_moe"): loaded as transformers' GLM-4-MoE, no logit shift.

The same computation as LLaDA 2's own modelling code, checked term by term:

- attention: q/k RMSNorm over head_dim (one weight shared by the heads) before RoPE; **partial RoPE**: the first
  head_dim x `partial_rotary_factor` channels of each head rotate (rotate-half inside that slice), the rest pass
  through (transformers' GLM-4-MoE rotary embedding and `apply_rotary_pos_emb` do exactly this);
- routing: router logits and sigmoid scores in float32; experts chosen on scores + `expert_bias`: a group's
  score is the sum of its two best biased scores, the `topk_group` best groups are kept (the others' experts
  masked to -inf), the top-k experts among them; weights = the chosen unbiased scores divided by their sum
  (+1e-20) when top-k > 1, times `routed_scaling_factor`; shared experts added; layers below
  `first_k_dense_replace` are dense MLPs (GLM-4-MoE's router, with `norm_topk_prob` = top-k > 1).

Written here: the split of the fused `attention.query_key_value` projection into q, k and v (its output, viewed
as heads + 2 kv_heads of head_dim, is [all query heads, all K heads, all V heads]), the renaming of the other
modules, and the attention output projection's bias when the checkpoint has one. The gates sit on the input
of `attention.dense` (here `self_attn.o_proj`); `--head-module dense` names it by the checkpoint's name.

LLaDA 2 is a block-diffusion model whose own attention is block-causal (blocks counted from position 0). The
spec declares the block-diffusion objective, so Gate-IG's J is its training loss (the [x_t | x_0] layout with
its block mask, `engine.core`, docs/gate-ig.md); a whole-model forward pass without a mask is bidirectional.
config.json carries no block size: the spec records `block_size` when it
does, else the block length of LLaDA 2's published generation example.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headattr.models import moe, native
from headattr.models.registry import Family, register
from headattr.models.spec import BLOCK_DIFFUSION, ModelSpec

LLADA2_MASK_ID = 156895  # the mask id of LLaDA 2's public inference code
LLADA2_BLOCK_SIZE = 32  # `block_length` of LLaDA 2's published generation example
RENAMES = [
    (r"^model\.word_embeddings\.", "model.embed_tokens."),
    (r"^model\.layers\.(\d+)\.attention\.dense\.", r"model.layers.\1.self_attn.o_proj."),
    (r"^model\.layers\.(\d+)\.attention\.query_layernorm\.", r"model.layers.\1.self_attn.q_norm."),
    (r"^model\.layers\.(\d+)\.attention\.key_layernorm\.", r"model.layers.\1.self_attn.k_norm."),
    (r"^model\.layers\.(\d+)\.attention\.query_key_value\.", r"model.layers.\1.self_attn.qkv."),
    (r"^model\.layers\.(\d+)\.mlp\.gate\.expert_bias$", r"model.layers.\1.mlp.gate.e_score_correction_bias"),
]
FUSED_QKV = re.compile(r"^(model\.layers\.\d+\.self_attn)\.qkv\.(weight|bias)$")


def rename(name: str) -> str:
    """A LLaDA 2 weight name as GLM-4-MoE has it (the fused projection as `self_attn.qkv`, split later)."""
    for pattern, repl in RENAMES:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    return name


def split_qkv(weights: dict[str, torch.Tensor], heads: int, kv_heads: int, head_dim: int) -> dict[str, torch.Tensor]:
    """Replace, in place, each fused `self_attn.qkv.{weight,bias}` ([(H + 2K) * head_dim, ...]) by `q_proj`
    ([H * head_dim, ...]), `k_proj` and `v_proj` ([K * head_dim, ...] each): its rows in that order."""
    sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    for name in [n for n in weights if FUSED_QKV.match(n)]:
        prefix, kind = FUSED_QKV.match(name).groups()
        for proj, part in zip(("q_proj", "k_proj", "v_proj"), weights.pop(name).split(sizes), strict=True):
            weights[f"{prefix}.{proj}.{kind}"] = part.contiguous()
    return weights


def glm4_moe_config(cfg: dict[str, Any], qkv_bias: bool) -> Any:
    """transformers `Glm4MoeConfig` equivalent to a LLaDA 2 config.json."""
    from transformers import Glm4MoeConfig

    need = partial(native.require, cfg, family="LLaDA 2")
    heads, hidden = need("num_attention_heads"), need("hidden_size")
    rope = native.rope_parameters(cfg.get("rope_theta", 10000.0), cfg.get("rope_scaling"))
    rope["partial_rotary_factor"] = float(cfg.get("partial_rotary_factor", 0.5))  # LLaDA 2's own default
    top_k = need("num_experts_per_tok")
    config = Glm4MoeConfig(
        vocab_size=need("vocab_size"),
        hidden_size=hidden,
        intermediate_size=cfg.get("intermediate_size") or 0,
        moe_intermediate_size=need("moe_intermediate_size"),
        num_hidden_layers=need("num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=cfg.get("num_key_value_heads") or heads,
        hidden_act=cfg.get("hidden_act", "silu"),
        max_position_embeddings=cfg.get("max_position_embeddings", 16384),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=qkv_bias,
        rope_parameters=rope,
        use_qk_norm=True,  # LLaDA 2 always normalises q and k
        n_routed_experts=need("num_experts"),
        num_experts_per_tok=top_k,
        n_shared_experts=cfg.get("num_shared_experts") or 0,
        routed_scaling_factor=float(cfg.get("routed_scaling_factor", 2.5)),
        n_group=cfg.get("n_group", 8),
        topk_group=cfg.get("topk_group", 4),
        first_k_dense_replace=cfg.get("first_k_dense_replace", 0),
        norm_topk_prob=top_k > 1,  # LLaDA 2 divides by the chosen scores' sum only when it chooses several
        pad_token_id=cfg.get("pad_token_id"),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
    )
    config.head_dim = cfg.get("head_dim") or hidden // heads
    return moe.eager_experts(config)


def _biased_output_projection(model: nn.Module) -> None:
    """The `prepare` step of `native.build` for checkpoints whose `attention.dense` has a bias (`use_bias`):
    GLM-4-MoE's o_proj has none."""
    for layer in model.model.layers:
        o_proj = layer.self_attn.o_proj
        layer.self_attn.o_proj = nn.Linear(o_proj.in_features, o_proj.out_features, bias=True)


def _no_shared_experts(weights: dict[str, torch.Tensor], config: Any) -> None:
    """GLM-4-MoE always builds a shared-experts MLP; with none in the checkpoint it is 0 wide (adds zero)."""
    d = config.hidden_size
    for i in range(config.first_k_dense_replace, config.num_hidden_layers):
        prefix = f"model.layers.{i}.mlp.shared_experts"
        empty = torch.zeros(0, d, dtype=weights["model.embed_tokens.weight"].dtype)
        weights.update({f"{prefix}.gate_proj.weight": empty, f"{prefix}.up_proj.weight": empty})
        weights[f"{prefix}.down_proj.weight"] = empty.T


def load(root: Path, cfg: dict[str, Any], dtype: torch.dtype, device: str, options: Any) -> ModelSpec:
    from transformers import Glm4MoeForCausalLM

    weights = moe.fuse_experts(native.read_weights(root, dtype, device, rename))
    config = glm4_moe_config(cfg, qkv_bias=any(n.endswith("self_attn.qkv.bias") for n in weights))
    split_qkv(weights, config.num_attention_heads, config.num_key_value_heads, config.head_dim)
    if not config.n_shared_experts:
        _no_shared_experts(weights, config)
    dense_bias = any(n.endswith("self_attn.o_proj.bias") for n in weights)
    attn = options.attn_implementation
    model = native.build(
        Glm4MoeForCausalLM, config, weights, dtype, device, attn, _biased_output_projection if dense_bias else None
    )
    return native.native_spec(
        model,
        root,
        "llada2_moe",
        native.mask_token_id(cfg, LLADA2_MASK_ID),
        logit_shift=False,
        head_module_label="attention.dense (as self_attn.o_proj)",
        num_experts=config.n_routed_experts,
        active_experts=config.num_experts_per_tok,
        block_size=int(cfg.get("block_size") or LLADA2_BLOCK_SIZE),
        objective=BLOCK_DIFFUSION,
    )


ALIASES = {"dense": "self_attn.o_proj", "attention.dense": "self_attn.o_proj"}
FAMILY = register(
    Family("llada2_moe", ("llada2_moe",), load, head_module_aliases=ALIASES, display_name="LLaDA 2", sampler="llada2")
)
