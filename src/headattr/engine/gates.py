"""Head gates: a multiplier per head on the input of each layer's attention output projection.

The input of the projection is the concatenation of the heads' outputs, viewed as [batch, tokens, H, head_dim];
gate `g[h]` scales head h's slice. Ones reproduce the model exactly; a zero removes the head exactly (as if its
columns of the projection were zero). Each row of a batch may carry its own gates, so interpolation points
and masked variants share one forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from headattr.models import ModelSpec


def _gate_hook(gates: torch.Tensor, num_heads: int):
    """A forward pre-hook scaling head slices by `gates` ([H] for all rows, or [B, H] per row)."""

    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        b, t, width = x.shape
        g = gates if gates.dim() == 2 else gates.expand(b, -1)
        # at least float32, so that the gate gradient is accumulated at full precision under bf16
        wide = torch.promote_types(x.dtype, torch.float32)
        scaled = x.to(wide).view(b, t, num_heads, width // num_heads) * g[:, None, :, None].to(wide)
        return (scaled.view(b, t, width).to(x.dtype), *args[1:])

    return hook


@contextmanager
def gated(spec: ModelSpec, gates: dict[int, torch.Tensor]) -> Iterator[None]:
    """Within the block, layer l's heads are scaled by `gates[l]` ([H] or [B, H]); other layers are untouched."""
    handles = []
    try:
        for layer, g in gates.items():
            if g.shape[-1] != spec.num_heads:
                raise ValueError(f"gates for layer {layer} have {g.shape[-1]} heads, the model has {spec.num_heads}")
            handles.append(spec.head_modules[layer].register_forward_pre_hook(_gate_hook(g, spec.num_heads)))
        yield
    finally:
        for h in handles:
            h.remove()


def row_gates(gates: torch.Tensor, start: int = 0) -> dict[int, torch.Tensor]:
    """Per-row gate dict {layer: [B, H]} from [B, L, H] gates: the layers >= `start` where some row removes
    something (the others need no hook)."""
    return {layer: gates[:, layer] for layer in range(start, gates.shape[1]) if bool((gates[:, layer] != 1).any())}


def batch_gates(gates: dict[int, torch.Tensor], batch: int, repeat: int = 1) -> dict[int, torch.Tensor]:
    """Gates {layer: [batch * repeat, H]} from {layer: [H] (every row) or [batch, H]}: the batch's rows,
    `repeat` times over along the batch (LLaDA's guidance runs each row twice in one pass)."""
    out = {}
    for layer, g in gates.items():
        g = g.expand(batch, -1) if g.dim() == 1 else g
        out[layer] = g.repeat(repeat, 1)
    return out


def removal_gates(
    spec: ModelSpec, removed: list[tuple[int, int]], device: torch.device | None = None
) -> dict[int, torch.Tensor]:
    """Gates [H] per touched layer that remove the listed (layer, head) pairs and keep every other head."""
    gates: dict[int, torch.Tensor] = {}
    for layer, head in removed:
        g = gates.setdefault(layer, torch.ones(spec.num_heads, device=device or spec.device))
        g[head] = 0.0
    return gates
