"""The forward pass of block-diffusion samplers: block-causal attention on the native layer stack, with a KV cache.

A block-diffusion model (SDAR, LLaDA 2) attends block-causally: query i sees key j iff j // B <= i // B, blocks
counted from position 0 of the row's own sequence. The samplers lay every row out so that its padding is whole
blocks (`generation.blockdiff.aligned_canvas`): then the rule holds on the padded positions too, and padding only
has to be hidden (a padded key is seen by no query but itself, so no row of the softmax is empty).

The mask is additive float (0 or the dtype's minimum), for every attention kernel: a boolean 4D mask is added as
0/1 by transformers 5's eager attention, silently wrong. A pass may continue a `KVCache`: its positions follow the
cached ones, its queries see the cached keys (earlier blocks) and its own block; with `store` the pass's keys and
values are appended to the cache (SDAR's prefill and finished blocks), without it they are not (denoising steps).

`block_logits` is reached through `generation.sampling._predictions(..., attention=BlockAttention(...))`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from headattr.engine.core import autocast_for
from headattr.engine.gates import gated
from headattr.models import ModelSpec
from headattr.models.block_masks import additive


@dataclass
class KVCache:
    """Keys and values of the positions already run, per layer ([B, H_kv, C, head_dim] each), and their
    validity `valid` [B, C]. Passed to transformers' attention modules as their `cache`: `update` returns the
    cached keys and values followed by the new ones, and appends the new ones only while `store` is set."""

    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    valid: torch.Tensor | None = None
    store: bool = False

    @property
    def length(self) -> int:
        """C, the number of cached positions."""
        return 0 if self.valid is None else self.valid.shape[1]

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        """transformers' `Cache.update`: (cached + new keys, cached + new values) along the position axis."""
        if layer_idx in self.keys:
            key = torch.cat([self.keys[layer_idx], key], dim=-2)
            value = torch.cat([self.values[layer_idx], value], dim=-2)
        if self.store:
            self.keys[layer_idx], self.values[layer_idx] = key, value
        return key, value


@dataclass
class BlockAttention:
    """How a block-diffusion pass attends: blocks of `block_size` positions, block-causal; `cache` (None: no
    cache) holds the positions before the pass's, and `store` appends the pass's to it."""

    block_size: int
    cache: KVCache | None = None
    store: bool = False


def block_mask(valid: torch.Tensor, queries: int, block_size: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive mask [B, 1, Q, K] of the last `queries` of K positions whose validity is `valid` [B, K]:
    0 where query i may see key j (j // block_size <= i // block_size, and key j real or j == i), else the
    dtype's minimum."""
    k = valid.shape[1]
    key = torch.arange(k, device=valid.device)
    query = key[k - queries :]
    allowed = (key[None, :] // block_size) <= (query[:, None] // block_size)  # [Q, K]
    allowed = allowed[None] & (valid[:, None, :] | (key[None, None, :] == query[None, :, None]))
    return additive(allowed, dtype)[0, 0, :, None]  # [1, 1, B, Q, K] -> [B, 1, Q, K]


@torch.no_grad()
def block_logits(
    spec: ModelSpec,
    x: torch.Tensor,
    valid: torch.Tensor,
    gates: dict[int, torch.Tensor],
    lo: int,
    attention: BlockAttention,
) -> torch.Tensor:
    """Logits [B, T - lo, V] at positions lo..T-1 of `x` [B, T] (validity `valid` [B, T]), which follow the
    cache's positions, under `gates` and block-causal attention.

    RoPE positions count real tokens over cache and pass (a left-padded row keeps the positions it has alone).
    The decoder layers are called one by one, as `LayerStack.run` calls them, with the mask and the cache.
    """
    backbone, cache = spec.backbone, attention.cache
    every = valid if cache is None or cache.valid is None else torch.cat([cache.valid, valid], dim=1)
    positions = (every.long().cumsum(-1) - 1).clamp(min=0)[:, every.shape[1] - x.shape[1] :]
    if cache is not None:
        cache.store = attention.store
    with gated(spec, gates), autocast_for(spec):
        h = backbone.embed(x)
        rope = backbone.rotary_emb(h, positions)
        mask = block_mask(every, x.shape[1], attention.block_size, h.dtype)
        for layer in backbone.layers:
            kwargs = {_cache_name(layer): cache} if cache is not None else {}
            h = layer(h, is_causal=False, attention_mask=mask, position_embeddings=rope, **kwargs)
        logits = backbone.logits(h[:, lo:])
    if cache is not None and attention.store:
        cache.valid = every
        cache.store = False
    return logits


def _cache_name(layer: torch.nn.Module) -> str:
    """The name a decoder layer takes its KV cache by: `cache` in recent transformers 5 releases, `past_key_values`
    in earlier ones (an unknown keyword would be swallowed by `**kwargs`: a pass silently without the cache)."""
    return "cache" if "cache" in inspect.signature(layer.forward).parameters else "past_key_values"
