"""LLaDA-MoE (`model_type` "lladamoe"): loaded as transformers' Qwen3-MoE, bidirectional, no logit shift.

The same computation as LLaDA-MoE's own modelling code, checked term by term:

- attention: q/k/v/o projections (biases when `attention_bias`), q/k RMSNorm over head_dim per head before RoPE
  (`qk_layernorm`), head_dim = hidden_size / num_attention_heads (a `head_dim` key is not read);
- routing: router logits in the model's dtype, softmax in float32, top-k, the chosen weights **not**
  renormalised (LLaDA-MoE fixes `norm_topk_prob` off whatever its config says), cast back to the model's dtype;
  transformers' Qwen3-MoE router with `norm_topk_prob=False` does exactly this;
- layers whose `moe_layer_freq` entry is 0 are dense MLPs (`dense_intermediate_size`), as Qwen3-MoE's
  `mlp_only_layers`; experts are `expert_intermediate_size` wide.

Written here: the shared expert (`shared_expert_intermediate_size`, a dense MLP added to the routed experts'
output; Qwen3-MoE has none) and the conversion of per-expert tensors. Config options the released code offers
but Qwen3-MoE cannot compute (expert bias, a score function other than softmax, q/k clipping, no q/k norm,
partial RoPE) are refused with a one-line error rather than computed differently.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headattr.errors import HeadattrError
from headattr.models import moe, native
from headattr.models.registry import Family, register
from headattr.models.spec import ModelSpec

LLADAMOE_MASK_ID = 156895  # the mask id LLaDA-MoE's public inference code uses
SHARED_EXPERT = re.compile(r"^model\.layers\.(\d+)\.shared_expert\.")


class SharedExpertMoE(nn.Module):
    """A routed-experts block plus a shared expert on every token: `routed(x) + shared_expert(x)`.

    The routed block's modules stay `gate` and `experts` here, so the weight names are the routed block's.
    """

    def __init__(self, routed: nn.Module, shared: nn.Module):
        super().__init__()
        self.gate, self.experts, self.shared_expert = routed.gate, routed.experts, shared
        self._routed = (routed,)  # called, not registered: its modules are registered above

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[B, T, d] -> [B, T, d]."""
        return self._routed[0](hidden_states) + self.shared_expert(hidden_states)


def _refuse_unsupported(cfg: dict[str, Any]) -> None:
    """A one-line error for the config options the Qwen3-MoE mapping would compute differently."""
    checks = [
        (cfg.get("qk_layernorm") is False, "qk_layernorm false"),
        (cfg.get("clip_qkv") is not None, "clip_qkv"),
        (bool(cfg.get("moe_router_enable_expert_bias")), "moe_router_enable_expert_bias"),
        (cfg.get("moe_router_score_function") not in (None, "softmax"), "a non-softmax moe_router_score_function"),
        (cfg.get("partial_rotary_factor") not in (None, 1, 1.0), "partial_rotary_factor below 1"),
    ]
    for bad, what in checks:
        if bad:
            raise HeadattrError(f"this LLaDA-MoE checkpoint uses {what}, which headattr's native adapter does not read")


def qwen3_moe_config(cfg: dict[str, Any]) -> Any:
    """transformers `Qwen3MoeConfig` equivalent to a LLaDA-MoE config.json."""
    from transformers import Qwen3MoeConfig

    _refuse_unsupported(cfg)
    need = partial(native.require, cfg, family="LLaDA-MoE")
    heads, hidden = need("num_attention_heads"), need("hidden_size")
    layers = need("num_hidden_layers")
    freq = cfg.get("moe_layer_freq") or [1] * layers
    config = Qwen3MoeConfig(
        vocab_size=need("vocab_size"),
        hidden_size=hidden,
        intermediate_size=cfg.get("dense_intermediate_size") or 0,
        moe_intermediate_size=need("expert_intermediate_size"),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=cfg.get("num_key_value_heads") or heads,
        num_experts=need("num_experts"),
        num_experts_per_tok=need("num_experts_per_tok"),
        norm_topk_prob=False,
        decoder_sparse_step=1,
        mlp_only_layers=[i for i, f in enumerate(freq) if f == 0],
        hidden_act=cfg.get("hidden_act", "silu"),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=bool(cfg.get("attention_bias", False)),
        rope_parameters=native.rope_parameters(cfg.get("rope_theta", 10000.0), cfg.get("rope_scaling")),
        use_sliding_window=False,
        pad_token_id=cfg.get("pad_token_id"),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
    )
    config.head_dim = hidden // heads
    return moe.eager_experts(config)


def _rename(name: str) -> str:
    """A LLaDA-MoE weight name as the built model has it (a layer's `shared_expert` lives inside its MLP)."""
    return SHARED_EXPERT.sub(r"model.layers.\1.mlp.shared_expert.", name)


def _add_shared_experts(cfg: dict[str, Any]):
    """The `prepare` step of `native.build`: wrap each MoE layer's routed block with its shared expert."""

    def prepare(model: nn.Module) -> None:
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeMLP, Qwen3MoeSparseMoeBlock

        width = cfg.get("shared_expert_intermediate_size")
        if not width:
            return
        for layer in model.model.layers:
            if isinstance(layer.mlp, Qwen3MoeSparseMoeBlock):
                layer.mlp = SharedExpertMoE(layer.mlp, Qwen3MoeMLP(model.config, intermediate_size=width))

    return prepare


def load(root: Path, cfg: dict[str, Any], dtype: torch.dtype, device: str, options: Any) -> ModelSpec:
    from transformers import Qwen3MoeForCausalLM

    config = qwen3_moe_config(cfg)
    weights = moe.fuse_experts(native.read_weights(root, dtype, device, _rename))
    model = native.build(
        Qwen3MoeForCausalLM, config, weights, dtype, device, options.attn_implementation, _add_shared_experts(cfg)
    )
    return native.native_spec(
        model,
        root,
        "lladamoe",
        native.mask_token_id(cfg, LLADAMOE_MASK_ID),
        logit_shift=False,
        num_experts=config.num_experts,
        active_experts=config.num_experts_per_tok,
    )


FAMILY = register(Family("lladamoe", ("lladamoe",), load, display_name="LLaDA-MoE", sampler="llada"))
