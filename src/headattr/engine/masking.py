"""Masked variants of a sample (spec: Masked variants).

Each mask's random stream is keyed by (mask seed, sample identity, probability index, draw index), never by
processing order, batch size, layer or process: every run and scope sees the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from headattr.errors import HeadattrError
from headattr.settings import Settings, at_least, choice

LOSS_NORMALIZE = ("mean-masked", "sum")


@dataclass(frozen=True)
class MaskConfig(Settings):
    """The masked-reconstruction objective J: which answer tokens are masked, and how their loss is pooled.

    `mask_probs` x `mask_samples_per_prob` masked variants per sample (V of them), each drawn from the
    stream keyed by (`mask_seed`, sample, rate, draw); J = -cross-entropy of the masked tokens, averaged
    (`mean-masked`) or summed (`sum`). Defaults: the seed report's.
    """

    mask_probs: tuple[float, ...] = (0.15, 0.3, 0.5, 0.7, 0.9)
    mask_samples_per_prob: int = 2
    mask_seed: int = 47
    loss_normalize: str = "mean-masked"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask_probs", tuple(float(p) for p in self.mask_probs))
        super().__post_init__()

    def validate(self) -> None:
        if not self.mask_probs:
            raise HeadattrError("--mask-probs is empty; give at least one probability, e.g. 0.5")
        for p in self.mask_probs:
            if not 0.0 < p <= 1.0:
                raise HeadattrError(f"mask probability {p} is outside (0, 1]; fix --mask-probs")
        at_least("--mask-samples-per-prob", self.mask_samples_per_prob, 1)
        choice("--loss-normalize", self.loss_normalize, LOSS_NORMALIZE)

    @property
    def num_variants(self) -> int:
        return len(self.mask_probs) * self.mask_samples_per_prob

    def variant_keys(self) -> list[dict[str, float | int]]:
        """run.json's `variants`: the (probability, draw) of each variant, in order."""
        return [{"prob": p, "draw": r} for p in self.mask_probs for r in range(self.mask_samples_per_prob)]


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
    masking: MaskConfig,
    mask_token_id: int,
) -> list[Variant]:
    """All variants of one sample, ordered by (probability, draw)."""
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    span = torch.arange(answer_start, answer_end)
    variants = []
    for pi, prob in enumerate(masking.mask_probs):
        for r in range(masking.mask_samples_per_prob):
            chosen = torch.from_numpy(draw_mask(mask_rng(masking.mask_seed, uid, pi, r), len(span), prob))
            positions = span[chosen]
            masked = ids.clone()
            masked[positions] = mask_token_id
            variants.append(Variant(pi, float(prob), r, masked, positions, ids[positions]))
    return variants
