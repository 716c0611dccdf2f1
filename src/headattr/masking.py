"""Masked variants of a sample (spec: Masked variants).

Each mask's random stream is keyed by (mask seed, sample identity, probability index, draw index), never by
processing order, batch size, layer or process: every run and scope sees the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Variant:
    """One masked copy of a sample: the ids with mask tokens, and where the loss is taken."""

    prob_index: int
    prob: float
    draw: int
    input_ids: torch.Tensor  # [T] long, masked
    positions: torch.Tensor  # [M] long, masked answer positions (labels live here)
    labels: torch.Tensor  # [M] long, the original tokens at `positions`


def mask_rng(mask_seed: int, uid: str, prob_index: int, draw: int) -> np.random.Generator:
    """The random stream of one mask, derived from its key only."""
    return np.random.default_rng(np.random.SeedSequence([mask_seed, int(uid, 16), prob_index, draw]))


def draw_mask(rng: np.random.Generator, n: int, prob: float) -> np.ndarray:
    """Boolean mask over `n` answer tokens: each chosen with probability `prob`, at least one."""
    chosen = rng.random(n) < prob
    if not chosen.any():
        chosen[rng.integers(n)] = True
    return chosen


def make_variants(
    input_ids: torch.Tensor | list[int] | tuple[int, ...],
    answer_start: int,
    answer_end: int,
    uid: str,
    mask_probs: list[float],
    draws: int,
    mask_seed: int,
    mask_token_id: int,
) -> list[Variant]:
    """All variants of one sample, ordered by (probability, draw)."""
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    span = torch.arange(answer_start, answer_end)
    variants = []
    for pi, prob in enumerate(mask_probs):
        for r in range(draws):
            chosen = torch.from_numpy(draw_mask(mask_rng(mask_seed, uid, pi, r), len(span), prob))
            positions = span[chosen]
            masked = ids.clone()
            masked[positions] = mask_token_id
            variants.append(Variant(pi, float(prob), r, masked, positions, ids[positions]))
    return variants
