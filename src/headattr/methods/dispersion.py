"""Dispersion: how spread out each head's attention is; a descriptive measure, not a causal score.

    D[l, h] = mean over answer query positions i of  H(p_i) / log(T),   H(p) = -sum_j p_j log p_j,

where p_i is head h's attention over the T keys of query i, computed from q and k exactly as the model's
attention does (`headattr.attention`). 0: every query attends to one key; 1: uniform attention. Per variant
(the masked input changes the attention); the run's mean over variants and samples is the score. The query
positions are the sample's predictable answer tokens (`core.answer_span`), the span whose reconstruction J
measures; keys are every position (attention is bidirectional, unpadded). See docs/methods.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import attention
from ..core import Rows, chunks, objective
from ..models import ModelSpec
from .base import MethodConfig, SampleAttribution, register
from .common import all_variants


@register
@dataclass(frozen=True)
class DispersionConfig(MethodConfig):
    """No settings: token-level normalised entropy over the answer queries."""

    name = "dispersion"
    cache_layers = False

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
                for layer in range(spec.num_layers):
                    p = attention.probabilities(spec, layer, qk[layer]["q"], qk[layer]["k"], ctx, queries)
                    out[sl, layer] = normalised_entropy(p).mean(dim=-1).double().cpu().numpy()
        return SampleAttribution(out, {"j_full": j_full})


def normalised_entropy(p: torch.Tensor) -> torch.Tensor:
    """[..., T] distributions -> [...] entropy / log(T) (0 log 0 = 0; T = 1 gives 0)."""
    n = p.shape[-1]
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)
    return entropy / math.log(n) if n > 1 else torch.zeros_like(entropy)
