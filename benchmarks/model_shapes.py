"""Randomly initialised models in the released shapes of the families headattr reads, for `gpu_bench.py --family`.

Each family is a config.json-like dict (the released shape, and a tiny one with the same keys) turned into a model
by the family's own adapter (`models.<family>`: the same config translation and transformers class as loading a
checkpoint), with random weights made directly on the device (`models.native.random_model`: meta device,
`to_empty`, normal init; no download, no disk). Random weights cost exactly what trained ones do, with one caveat
for mixtures of experts: routing by random weights spreads tokens over the experts differently from a trained
router, which changes the per-expert batch sizes (not the FLOPs: each token meets k experts either way).

Released shapes (where config.json was not public, the fields chosen reproduce the published parameter counts):

- dream: Dream 7B (Qwen2): 28 layers, hidden 3584, 28 query / 4 KV heads, MLP 18944, vocab 152064.
- llada: LLaDA 8B (Llama): 32 layers, hidden 4096, 32 heads (no GQA), MLP 12288, vocab 126464.
- sdar: SDAR-8B (Qwen3-8B's shape, with q/k norms): 36 layers, hidden 4096, 32 query / 8 KV heads of 128, MLP
  12288, vocab 151936, block size 4.
- lladamoe: LLaDA-MoE-7B-A1B: 16 layers, hidden 2048, 16 heads, 64 experts of width 1024, 8 active, vocab 157184:
  7.4 B parameters, 1.1 B of them met per token besides the embeddings.
- llada2_moe: LLaDA 2.0 mini (Ling-mini-2.0's shape): 20 layers, hidden 2048, 16 query / 4 KV heads of 128 with
  64 rotary channels, layer 0 dense (MLP 5120), then 256 experts of width 512 in 8 groups (4 kept), 8 active, one
  shared expert, vocab 157184: 16.3 B parameters, 1.43 B met per token (0.79 B besides the embeddings), the
  published 16 B / 1.4 B (non-embedding 789 M).

The tiny shapes keep what makes each family different (SDAR's head_dim above hidden / heads, GQA, LLaDA 2's
partial RoPE, groups and shared expert, a dense first layer) at 2-3 layers and hidden 64, for the CPU rehearsal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FAMILIES = ("dream", "llada", "sdar", "lladamoe", "llada2_moe")

RELEASED: dict[str, dict[str, Any]] = {
    "llada": {"d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "mlp_hidden_size": 12288}
    | {"vocab_size": 126464, "rope_theta": 500000.0, "max_sequence_length": 4096},
    "sdar": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32}
    | {"num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "rope_theta": 1e6, "block_size": 4},
    "lladamoe": {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16}
    | {"num_experts": 64, "num_experts_per_tok": 8, "expert_intermediate_size": 1024, "dense_intermediate_size": 8192}
    | {"vocab_size": 157184, "rope_theta": 50000.0},
    "llada2_moe": {"hidden_size": 2048, "num_hidden_layers": 20, "num_attention_heads": 16, "num_key_value_heads": 4}
    | {"head_dim": 128, "partial_rotary_factor": 0.5, "intermediate_size": 5120, "first_k_dense_replace": 1}
    | {"num_experts": 256, "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8, "moe_intermediate_size": 512}
    | {"num_shared_experts": 1, "routed_scaling_factor": 2.5, "vocab_size": 157184, "rope_theta": 600000.0}
    | {"block_size": 32},
}
TINY: dict[str, dict[str, Any]] = {
    "llada": RELEASED["llada"]
    | {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4, "mlp_hidden_size": 128, "vocab_size": 256},
    "sdar": RELEASED["sdar"]
    | {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    | {"num_key_value_heads": 2, "head_dim": 32, "vocab_size": 256},
    "lladamoe": RELEASED["lladamoe"]
    | {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4}
    | {"num_experts": 8, "num_experts_per_tok": 2, "expert_intermediate_size": 32, "dense_intermediate_size": 128}
    | {"vocab_size": 256},
    "llada2_moe": RELEASED["llada2_moe"]
    | {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2}
    | {"head_dim": 32, "intermediate_size": 128, "num_experts": 16, "n_group": 4, "topk_group": 2}
    | {"num_experts_per_tok": 4, "moe_intermediate_size": 16, "vocab_size": 256},
}


def transformers_model(family: str, cfg: dict[str, Any]) -> tuple[type, Any, dict[str, int | None]]:
    """(transformers class, its config, the spec's architecture fields) for `cfg` of `family`, by the family's
    adapter, as loading a checkpoint of that config.json would build them."""
    import transformers

    from headattr.models import llada, llada2_moe, lladamoe, sdar

    if family == "llada":
        return transformers.LlamaForCausalLM, llada.llada_llama_config(cfg), {}
    if family == "sdar":
        return transformers.Qwen3ForCausalLM, sdar.qwen3_config(cfg), {"block_size": cfg["block_size"]}
    if family == "lladamoe":  # no shared expert in the released model: no `prepare` step to add one
        config = lladamoe.qwen3_moe_config(cfg)
        arch = {"num_experts": config.num_experts, "active_experts": config.num_experts_per_tok}
        return transformers.Qwen3MoeForCausalLM, config, arch
    if family == "llada2_moe":
        config = llada2_moe.glm4_moe_config(cfg, qkv_bias=False)
        arch = {"num_experts": config.n_routed_experts, "active_experts": config.num_experts_per_tok}
        return transformers.Glm4MoeForCausalLM, config, arch | {"block_size": cfg["block_size"]}
    raise ValueError(f"no family {family!r}; one of {', '.join(FAMILIES[1:])}")


def family_spec(family: str, tiny: bool, device: str, dtype: torch.dtype):
    """A `ModelSpec` of a random model of `family` in its released shape (`tiny`: its tiny shape) on `device`.
    The mask id is the vocabulary's last id, which the synthetic samples never use."""
    from headattr.models import native

    cfg = (TINY if tiny else RELEASED)[family]
    cls, config, arch = transformers_model(family, cfg)
    model = native.random_model(cls, config, dtype, device)
    vocab = model.get_input_embeddings().num_embeddings
    root, identity = Path(f"random-{family}-shape"), f"random-{family}-shaped-{sorted(cfg.items())}"
    logit_shift = False  # none of these families shifts its logits
    return native.native_spec(model, root, family, vocab - 1, logit_shift, identity=identity, **arch)


def shape_of(family: str, tiny: bool) -> dict[str, Any]:
    """The config fields `family`'s model is built from (for the benchmark's JSON)."""
    return dict((TINY if tiny else RELEASED)[family])
