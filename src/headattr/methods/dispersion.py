"""Dispersion: how spread out each head's attention is; a descriptive measure, not a causal score.

    D[l, h] = mean over answer query positions i of  H(p_i) / log(T),   H(p) = -sum_j p_j log p_j,

where p_i is head h's attention over the T keys of query i, computed from q and k exactly as the model's
attention does (`headattr.attention`). 0: every query attends to one key; 1: uniform attention. Per variant
(the masked input changes the attention); the run's mean over variants and samples is the score. The query
positions are the sample's predictable answer tokens (`core.answer_span`), the span whose reconstruction J
measures; keys are every position (attention is bidirectional, unpadded). Under a mask per query (the
block-diffusion objective's [x_t | x_0] rows, whose queries here are the noisy copy's answer positions) T is
the number of keys the query may attend to, so that 1 is still uniform attention. See docs/methods.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from headattr.engine import attention
from headattr.engine.core import Rows, chunks, objective
from headattr.methods.base import MethodConfig, SampleAttribution, register
from headattr.methods.common import all_variants
from headattr.models import LayerContext, ModelSpec


@register
@dataclass(frozen=True)
class DispersionConfig(MethodConfig):
    """No settings: token-level normalised entropy over the answer queries."""

    name = "dispersion"
    label = "dispersion"
    cache_layers = False
    TEXT = {
        "en": {
            "describe": "dispersion: normalised entropy H(p) / log T of the head's attention p over the T keys, "
            "mean over the answer's query positions and the masked variants (0: every query attends to one key; "
            "1: uniform attention); no settings",
            "sign": "not an attribution of J (no loss is involved): a descriptive value in [0, 1]; larger = more "
            "spread-out attention, not a more useful head",
        },
        "zh": {
            "describe": "注意力分散度：该头在 T 个 key 上的注意力分布 p 的归一化熵 H(p) / log T，对答案的 query "
            "位置与各 mask 变体取平均（0：每个 query 只关注一个 key；1：均匀注意力）；无额外设置",
            "sign": "不是对 J 的归因（不涉及损失）：取值在 [0, 1] 的描述性指标；越大表示注意力越分散，"
            "并不表示该头越有用",
        },
    }

    def attribute(self, spec: ModelSpec, rows: Rows, batch_size: int, where: str) -> SampleAttribution:
        """Dispersion [V, L, H] of each variant; diagnostics j_full [V] (J of the same passes)."""
        attention.attention_modules(spec)  # a whole-model checkpoint: one clear error before any work
        all_v = all_variants(spec, rows)
        start, end = rows.answer if rows.answer is not None else (0, rows.ids.shape[1])
        queries = torch.arange(start, end, device=spec.device)
        out = np.zeros((rows.num_variants, spec.num_layers, spec.num_heads))
        j_full = np.zeros(rows.num_variants)
        for sl in chunks(rows.num_variants, batch_size):
            v_idx = all_v[sl]
            with torch.no_grad(), attention.capture_qk(spec) as qk:
                j_full[sl] = objective(spec, rows, v_idx, 0).j.double().cpu().numpy()
                ctx = rows.ctx.rows(v_idx)
                visible = per_query_keys(ctx, queries, rows.ids.shape[1])
                for layer in range(spec.num_layers):
                    p = attention.probabilities(spec, layer, qk[layer]["q"], qk[layer]["k"], ctx, queries)
                    out[sl, layer] = normalised_entropy(p, visible).mean(dim=-1).double().cpu().numpy()
        return SampleAttribution(out, {"j_full": j_full})


def per_query_keys(ctx: LayerContext, queries: torch.Tensor, keys: int) -> torch.Tensor | None:
    """[B or 1, 1, Q] the keys each query may attend to when the pass's mask differs per query; None when every
    query sees the same T keys (then `normalised_entropy` divides by log T, as it always did)."""
    if ctx.attention_mask is None or ctx.attention_mask.shape[-2] == 1:
        return None
    return attention.visible_keys(ctx, queries, keys)[:, None]


def normalised_entropy(p: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
    """[..., T] distributions -> [...] entropy / log(T) (0 log 0 = 0; T = 1 gives 0); with `keys` (broadcast
    to [...]) entropy / log(keys), the number of keys each distribution may cover."""
    n = p.shape[-1]
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)
    if keys is not None:
        logs = torch.log(keys.to(device=entropy.device, dtype=entropy.dtype))
        return torch.where(keys.to(entropy.device) > 1, entropy / logs, torch.zeros_like(entropy))
    return entropy / math.log(n) if n > 1 else torch.zeros_like(entropy)
