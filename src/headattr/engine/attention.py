"""Attention weights as the model computes them, for measures that need them (the dispersion method).

The core never materialises attention (sdpa fuses it). Here forward hooks on each layer's query and key
projections capture q and k during an ordinary core pass; `probabilities` then applies what the layer's own
attention does: its per-head q/k norms when it has them (Qwen3, SDAR, LLaDA-MoE, LLaDA 2: before RoPE), the
rotary embedding of the pass (with the layer's own `apply_rotary_pos_emb`), key/value
head sharing (GQA: query head h reads key head h // (H / H_kv)), the layer's `scaling`, the attention mask,
and a softmax in at least float32 (as transformers' eager attention does).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from headattr.errors import HeadattrError
from headattr.models import LayerContext, ModelSpec
from headattr.models.backbone import LayerStack


def attention_modules(spec: ModelSpec) -> list[torch.nn.Module]:
    """Each layer's attention module (native families only: a whole-model checkpoint hides them)."""
    if not isinstance(spec.backbone, LayerStack):
        raise HeadattrError(
            f"attention weights need a native family (Dream, LLaDA); {spec.name} runs only as a whole model"
        )
    return [layer.self_attn for layer in spec.backbone.layers]


@contextmanager
def capture_qk(spec: ModelSpec) -> Iterator[dict[int, dict[str, torch.Tensor]]]:
    """Within the block, every pass stores layer l's q_proj and k_proj outputs ([B, T, H*d], [B, T, H_kv*d])
    in `captured[l]["q"]`, `captured[l]["k"]` (the last pass's)."""
    captured: dict[int, dict[str, torch.Tensor]] = {}
    handles = []

    def keep(layer: int, key: str):
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            captured.setdefault(layer, {})[key] = output.detach()

        return hook

    try:
        for layer, attn in enumerate(attention_modules(spec)):
            handles.append(attn.q_proj.register_forward_hook(keep(layer, "q")))
            handles.append(attn.k_proj.register_forward_hook(keep(layer, "k")))
        yield captured
    finally:
        for h in handles:
            h.remove()


def probabilities(
    spec: ModelSpec, layer: int, q: torch.Tensor, k: torch.Tensor, ctx: LayerContext, queries: torch.Tensor
) -> torch.Tensor:
    """Attention weights [B, H, Q, T] of layer `layer` for the query positions `queries` [Q].

    `q`, `k`: the layer's projection outputs [B, T, H*d] and [B, T, H_kv*d]; `ctx`: the pass's context
    (rotary embeddings, attention mask) for the same rows.
    """
    attn = attention_modules(spec)[layer]
    b, t, _ = q.shape
    d = spec.head_dim
    q = q.view(b, t, -1, d)
    k = k.view(b, t, -1, d)
    if getattr(attn, "q_norm", None) is not None:  # the families with per-head q/k norms apply them before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    if ctx.position_embeddings is not None:
        rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb  # the layer's own RoPE
        cos, sin = ctx.position_embeddings
        q, k = rotate(q, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA: query head h reads key head h // groups
    wide = torch.promote_types(q.dtype, torch.float32)
    scores = (q[:, :, queries].to(wide) @ k.to(wide).transpose(2, 3)) * attn.scaling
    mask = query_mask(ctx, queries)
    if mask is not None:  # boolean "may attend" (sdpa) or additive (eager, block diffusion)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.to(wide)
    return torch.softmax(scores, dim=-1)


def query_mask(ctx: LayerContext, queries: torch.Tensor) -> torch.Tensor | None:
    """The pass's attention mask at the query positions `queries` [Q]: [B, 1, 1, T] (a key-padding mask, the
    same for every query) or [B, 1, Q, T] (a mask per query, e.g. block diffusion's [1, 1, T, T]); None."""
    mask = ctx.attention_mask
    if mask is None or mask.shape[-2] == 1:
        return mask
    return mask[:, :, queries.to(mask.device)]


def visible_keys(ctx: LayerContext, queries: torch.Tensor, keys: int) -> torch.Tensor:
    """[B or 1, Q] how many of the `keys` keys each query may attend to under the pass's mask."""
    mask = query_mask(ctx, queries)
    if mask is None:
        return torch.full((1, len(queries)), keys)
    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    return allowed.expand(-1, -1, len(queries), keys)[:, 0].sum(dim=-1)
