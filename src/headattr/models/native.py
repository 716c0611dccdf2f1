"""Native families: a transformers decoder architecture filled with a checkpoint's own tensors.

No checkpoint code runs: the family module maps config and weight names onto a transformers class (Qwen2 for
Dream, Llama for LLaDA, Qwen3 for SDAR, Qwen3-MoE for LLaDA-MoE, GLM-4-MoE for LLaDA 2), `build` instantiates it
on the meta device and adopts the tensors, and `native_spec` describes it with a `LayerStack`, so the core can
start a pass at any layer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headattr.errors import HeadattrError
from headattr.models.backbone import LayerStack, float32_attention
from headattr.models.files import config_hash, iter_checkpoint_tensors
from headattr.models.spec import MASKED_DIFFUSION, ModelSpec


def rope_parameters(theta: float, scaling: dict[str, Any] | None) -> dict[str, Any]:
    """transformers 5's `rope_parameters` from a checkpoint's `rope_theta` and (old-style) `rope_scaling`.

    Passing them explicitly is what transformers 5 asks for; the old keys print a FutureWarning on every load.
    """
    params: dict[str, Any] = {"rope_type": "default"}
    if scaling:
        params.update({("rope_type" if k == "type" else k): v for k, v in scaling.items()})
    params["rope_theta"] = float(theta)
    return params


def require(cfg: dict[str, Any], key: str, family: str) -> Any:
    """`cfg[key]`, or a one-line error naming the family's config.json when it lacks the key."""
    if cfg.get(key) is None:
        raise HeadattrError(f"{family} config.json lacks {key!r}; the checkpoint directory looks incomplete")
    return cfg[key]


def mask_token_id(cfg: dict[str, Any], released: int) -> int | None:
    """The config's `mask_token_id`; else the family's `released` id when the vocabulary holds it; else None
    (the loader then takes the tokenizer's mask token)."""
    if cfg.get("mask_token_id") is not None:
        return int(cfg["mask_token_id"])
    return released if released < int(cfg.get("vocab_size", 0)) else None


def read_weights(
    root: Path, dtype: torch.dtype, device: str, rename: Callable[[str], str] = str
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors on `device` in `dtype`, each converted as it is read (names through `rename`).

    Converting one tensor at a time keeps one copy of the weights: a bf16 checkpoint loaded in float32
    holds the float32 tensors and one bf16 tensor at a time (a 7B model: 28 GB, not 28 + 14 GB as when all
    bf16 tensors are read first and converted afterwards).
    """
    return {rename(name): tensor.to(dtype) for name, tensor in iter_checkpoint_tensors(root, device)}


def build(
    cls: type,
    config: Any,
    weights: dict[str, torch.Tensor],
    dtype: torch.dtype,
    device: str,
    attn: str,
    prepare: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """Instantiate `cls` without allocating random weights, then adopt the checkpoint's tensors.

    `prepare(model)` may change the (meta-device) model before the tensors are matched to it: a family whose
    checkpoint has a piece the transformers class lacks puts its own module there.
    """
    config.is_causal = False  # transformers 5.x: bidirectional masks for the whole-model forward
    config._attn_implementation = attn
    with torch.device("meta"):
        model = cls(config)
        if prepare is not None:
            prepare(model)
    if config.tie_word_embeddings and "lm_head.weight" not in weights:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    expected = set(model.state_dict())
    missing, unexpected = expected - set(weights), set(weights) - expected
    if missing or unexpected:
        detail = f"missing {sorted(missing)[:3]}" if missing else f"unexpected {sorted(unexpected)[:3]}"
        raise HeadattrError(
            f"checkpoint weights do not match the {config.model_type} layout ({detail}); "
            "is config.json from the same checkpoint?"
        )
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in weights.items()}, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    with torch.device(device):  # non-persistent RoPE buffers are not in the checkpoint: rebuild them
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    for layer in model.model.layers:
        layer.self_attn.is_causal = False  # sdpa reads the module flag when no mask is given
    return model


def random_model(
    cls: type, config: Any, dtype: torch.dtype, device: str, attn: str = "sdpa", seed: int = 0
) -> nn.Module:
    """`cls(config)` with random weights (normal, std `initializer_range`; norms 1; biases and buffers 0) made
    directly on `device` in `dtype`, set up as `build` sets up a checkpoint (bidirectional): no checkpoint, no
    disk, no CPU copy. For benchmarks of a model's shape (benchmarks/gpu_bench.py)."""
    config.is_causal = False
    config._attn_implementation = attn
    with torch.device("meta"):
        model = cls(config).to(dtype)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    std = getattr(config, "initializer_range", 0.02)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, std, generator=gen)
        for b in model.buffers():  # `to_empty` leaves them unset: e.g. LLaDA 2's expert bias, zero (RoPE's rebuilt)
            b.zero_()
    with torch.device(device):
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    for layer in model.model.layers:
        layer.self_attn.is_causal = False
    return model.eval().requires_grad_(False)


def native_spec(
    model: nn.Module,
    root: Path,
    family: str,
    mask_id: int | None,
    logit_shift: bool,
    head_module_label: str = "",
    identity: str | None = None,
    objective: str = MASKED_DIFFUSION,
    **architecture: int | None,
) -> ModelSpec:
    """Describe a model built by `build` (or `random_model`: then `identity` stands in for the hash of a
    config.json it does not have); the gates sit on every layer's `self_attn.o_proj`. `architecture` sets the
    spec's `num_experts`, `active_experts` and `block_size` for the families that have them; `objective` the
    kind of J the family is trained on (`spec.OBJECTIVES`)."""
    c, base = model.config, model.model
    if base.embed_tokens.weight.dtype == torch.bfloat16:  # run under autocast: its attention in float32
        float32_attention(base.layers)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    stack = LayerStack(
        base.embed_tokens, base.layers, base.norm, model.lm_head, base.rotary_emb, c._attn_implementation
    )
    return ModelSpec(
        model=model,
        tokenizer=None,
        family=family,
        name=root.name,
        path=str(root),
        num_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads,
        num_kv_heads=c.num_key_value_heads,
        head_dim=head_dim,
        head_modules=[layer.self_attn.o_proj for layer in base.layers],
        head_module="self_attn.o_proj",
        head_module_label=head_module_label,
        mask_token_id=mask_id,
        logit_shift=logit_shift,
        config_hash=identity or config_hash(root),
        num_parameters=sum(p.numel() for p in model.parameters()),
        backbone=stack,
        objective=objective,
        **architecture,
    )
