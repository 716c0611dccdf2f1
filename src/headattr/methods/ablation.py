"""Ablation: leave-one-out, A[l, h] = J(all heads) - J(head (l, h) removed), exact (docs/methods.md).

One row per (removed head, variant); the rows removing a head of layer l start at layer l from the cached
input (earlier layers are unchanged by the removal), so a layer costs (L - l) / L of a full pass per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from headattr.engine.core import Rows
from headattr.methods.base import MethodConfig, SampleAttribution, register
from headattr.methods.common import all_variants, evaluate_j
from headattr.models import ModelSpec


@register
@dataclass(frozen=True)
class AblationConfig(MethodConfig):
    """No settings: a removed head has gate 0 (exactly as if its output-projection columns were zero)."""

    name = "ablation"
    label = "ablation"
    cache_layers = True
    TEXT = {
        "en": {
            "describe": "ablation (leave one out): each head removed on its own, exactly (its gate set to 0, as if its "
            "output-projection columns were zero), all other heads kept; no settings",
            "sign": "A = J(all heads) - J(head removed), J = -loss of the masked answer tokens: positive = removing "
            "the head lowers J (raises the loss), i.e. the head helps; negative = the model does better without it",
        },
        "zh": {
            "describe": "消融（逐个移除）：每次只精确移除一个头（其门控设为 0，等同于把它在输出投影中的列置零），"
            "其余头保留；无额外设置",
            "sign": "A = J(全部头) - J(移除该头)，J = -loss（被 mask 的答案 token 的损失取负）：为正表示移除该头会"
            "降低 J（损失升高），即该头有用；为负表示去掉它模型反而更好",
        },
    }

    def attribute(self, spec: ModelSpec, rows: Rows, batch_size: int, where: str) -> SampleAttribution:
        """Attributions [V, L, H] = J(1) - J(head removed); diagnostics j_full [V]."""
        n_var, n_heads = rows.num_variants, spec.num_heads
        all_v = all_variants(spec, rows)
        # rows ordered (removed head, variant): head h's block has gate 0 at h, 1 elsewhere
        v_idx = all_v.repeat(n_heads)
        removal = (1.0 - torch.eye(n_heads, device=spec.device)).repeat_interleave(n_var, dim=0)
        attributions = np.zeros((n_var, spec.num_layers, n_heads))
        with torch.no_grad():
            j_full = evaluate_j(spec, rows, all_v, {}, rows.deepest_cached, batch_size)
            for layer in range(spec.num_layers):
                start = spec.backbone.entry_layer(layer)
                j_removed = evaluate_j(spec, rows, v_idx, {layer: removal}, start, batch_size)
                attributions[:, layer] = j_full[:, None] - j_removed.reshape(n_heads, n_var).T
        return SampleAttribution(attributions, {"j_full": j_full})
