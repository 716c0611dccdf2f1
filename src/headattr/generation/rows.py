"""The row bookkeeping the samplers share: each row filled on its own unpadded view of a padded batch.

A batch of left-padded prompts [B, P] is extended by N mask tokens; each row keeps its padding width (its view
starts there) and its own random generator, so a prompt gives the same tokens in any batch as alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def start(
    ids: torch.Tensor, valid: torch.Tensor, new_tokens: int, mask_id: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, list[int], list[torch.Generator]]:
    """What every sampler starts from: `ids` [B, P] extended by `new_tokens` mask tokens ([B, P + N]), its
    validity (the appended positions are real), each row's left padding, and each row's random generator."""
    x = F.pad(ids, (0, new_tokens), value=mask_id)
    valid = F.pad(valid, (0, new_tokens), value=True)
    return x, valid, (~valid).sum(dim=1).tolist(), generators(x.device, x.shape[0], seed)


def generators(device: torch.device, batch: int, seed: int) -> list[torch.Generator]:
    """One generator per row, each seeded with `seed`: a prompt draws the same numbers in any batch."""
    return [torch.Generator(device=device).manual_seed(seed) for _ in range(batch)]


def first_masked(x: torch.Tensor, valid: torch.Tensor, mask_id: int) -> int:
    """The first position of [B, T] `x` holding a real mask token in any row (T when none does): the samplers
    read predictions from there on (the generated span, or earlier where a prompt holds the mask token)."""
    anywhere = ((x == mask_id) & valid).any(dim=0).nonzero()
    return int(anywhere[0]) if len(anywhere) else x.shape[1]


def row_span(logits: torch.Tensor, b: int, off: int, lo: int) -> tuple[torch.Tensor, int]:
    """Row b's predictions [B, T - lo, V] of positions lo..T-1 for its unpadded view (positions off..T-1):
    ([T - max(lo, off), V], the view's index of their first position)."""
    return logits[b, max(off - lo, 0) :], max(lo - off, 0)
