"""Gradient: dJ/dg at g = 1, signed; first-order Taylor importance of each head (docs/methods.md).

With `--postprocess abs` it is the head importance of Michel et al. (2019). One forward and one backward
pass per masked variant, from layer 0 (no layer inputs to cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import Rows
from ..models import ModelSpec
from .base import MethodConfig, SampleAttribution, register
from .common import all_variants, gate_gradients


@register
@dataclass(frozen=True)
class GradientConfig(MethodConfig):
    """No settings: the gradient is taken at the model itself (every gate 1)."""

    name = "gradient"
    cache_layers = False

    def attribute(self, spec: ModelSpec, rows: Rows, batch_size: int, where: str) -> SampleAttribution:
        """Attributions [V, L, H] = dJ/dg at g = 1; diagnostics j_full [V]."""
        layers = list(range(spec.num_layers))
        ones = torch.ones(rows.num_variants, spec.num_layers, spec.num_heads, device=spec.device)
        start = spec.backbone.entry_layer(0)
        j, grads = gate_gradients(spec, rows, all_variants(spec, rows), ones, layers, start, batch_size, where)
        return SampleAttribution(grads, {"j_full": j})
