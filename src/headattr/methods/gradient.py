"""Gradient: dJ/dg at g = 1, signed; first-order Taylor importance of each head (docs/methods.md).

With `--postprocess abs` it is the head importance of Michel et al. (2019). One forward and one backward
pass per masked variant, from layer 0 (no layer inputs to cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headattr.engine.core import Rows
from headattr.methods.base import MethodConfig, SampleAttribution, register
from headattr.methods.common import all_variants, gate_gradients
from headattr.models import ModelSpec


@register
@dataclass(frozen=True)
class GradientConfig(MethodConfig):
    """No settings: the gradient is taken at the model itself (every gate 1)."""

    name = "gradient"
    label = "gradient"
    cache_layers = False
    TEXT = {
        "en": {
            "describe": "gradient: dJ/dg of each head's gate at g = 1 (the model with every head present), "
            "J = -loss of the masked answer tokens; no settings",
            "sign": "A = dJ/dg at g = 1: positive = to first order the head raises J = -loss (lowers the loss); "
            "it estimates J(all heads) - J(head removed) to first order, not exactly",
        },
        "zh": {
            "describe": "梯度：每个头的门控在 g = 1（所有头都在的原模型）处的 dJ/dg，J = -loss（被 mask 的答案 token "
            "的损失取负）；无额外设置",
            "sign": "A = g = 1 处的 dJ/dg：为正表示在一阶近似下该头提高 J = -loss（降低损失）；它是 J(全部头) - "
            "J(移除该头) 的一阶估计，并非精确值",
        },
    }

    def attribute(self, spec: ModelSpec, rows: Rows, batch_size: int, where: str) -> SampleAttribution:
        """Attributions [V, L, H] = dJ/dg at g = 1; diagnostics j_full [V]."""
        layers = list(range(spec.num_layers))
        ones = torch.ones(rows.num_variants, spec.num_layers, spec.num_heads, device=spec.device)
        start = spec.backbone.entry_layer(0)
        j, grads = gate_gradients(spec, rows, all_variants(spec, rows), ones, layers, start, batch_size, where)
        return SampleAttribution(grads, {"j_full": j})
