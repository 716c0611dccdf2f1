"""Mixture-of-experts checkpoints: their per-expert tensors in the stacked layout of transformers' MoE classes.

Released MoE checkpoints store one MLP per expert (`mlp.experts.{e}.{gate,up,down}_proj.weight`); transformers 5's
expert modules hold all experts of a layer in two tensors. `fuse_experts` converts one into the other, a layer
at a time, so that the checkpoint is never held twice.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch

from headattr.errors import HeadattrError

EXPERT_WEIGHT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$")


def fuse_experts(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace, in place, each layer's per-expert tensors `<layer>.mlp.experts.{e}.gate_proj.weight` [I, d],
    `up_proj` [I, d] and `down_proj` [d, I] by transformers' `<layer>.mlp.experts.gate_up_proj` [E, 2I, d] (each
    expert's gate rows, then its up rows: the order the expert module splits them in) and
    `<layer>.mlp.experts.down_proj` [E, d, I]; returns `weights`."""
    layers: dict[str, dict[tuple[int, str], torch.Tensor]] = defaultdict(dict)
    for name in [n for n in weights if EXPERT_WEIGHT.match(n)]:
        prefix, expert, kind = EXPERT_WEIGHT.match(name).groups()
        layers[prefix][(int(expert), kind)] = weights.pop(name)
    for prefix in list(layers):
        parts = layers.pop(prefix)
        count = 1 + max(expert for expert, _ in parts)
        if len(parts) != 3 * count:
            raise HeadattrError(
                f"{prefix} has {len(parts)} expert tensors, not 3 for each of {count} experts; "
                "the checkpoint looks incomplete"
            )
        gate_up = [torch.cat([parts[e, "gate"], parts[e, "up"]]) for e in range(count)]
        weights[f"{prefix}.gate_up_proj"] = torch.stack(gate_up)
        weights[f"{prefix}.down_proj"] = torch.stack([parts[e, "down"] for e in range(count)])
    return weights


def eager_experts(config: object) -> object:
    """Run `config`'s expert modules as transformers' plain loop over the chosen experts (`eager`): each
    expert's MLP on its tokens, scaled by the routing weight, as the released modelling code computes it
    (transformers would otherwise pick a grouped-matmul kernel where one is available: another summation
    order)."""
    config._experts_implementation = "eager"
    return config
