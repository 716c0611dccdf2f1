"""Split-half reliability within a run: how reproducible its scores are, and how many samples would make them so.

The samples are split at random into two halves of floor(N/2) (`splits` random splits, seeded); per layer
(and globally) the Pearson correlation of the two half-means is averaged over splits (r). Spearman-Brown
gives the reliability of the full run, r_full = k r / (1 + (k - 1) r) with k = N / floor(N/2)
(= 2r / (1 + r) for even N). The projected number of samples to reach a target reliability R is
n = N * R (1 - r_full) / (r_full (1 - R)) (the Spearman-Brown prophecy), rounded up; N/A when r_full <= 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from headattr.analysis.results import Number, Reliability
from headattr.stats.correlations import rowwise_pearson
from headattr.stats.reliability import samples_needed, spearman_brown

# why a reliability is N/A (Reliability.reason_layer / reason_global)
NA_NO_SAMPLES = "no per-sample attributions (scores-only run)"
NA_ONE_SAMPLE = "fewer than two samples"
NA_CONSTANT = "constant scores in the halves"
NA_NON_POSITIVE = "half correlation r <= 0: Spearman-Brown is undefined"


def _reliability_reason(split_r: Number, full_r: Number) -> str | None:
    """Why r_full is N/A (None where it is defined)."""
    if full_r is not None:
        return None
    return NA_CONSTANT if split_r is None else NA_NON_POSITIVE


def unavailable_reliability(n: int, num_layers: int, splits: int, reason: str) -> Reliability:
    """A Reliability with every value N/A for `reason` (scores-only runs, a single sample)."""
    none: list[Any] = [None] * num_layers
    return Reliability(
        n, n // 2, splits, none, list(none), list(none), None, None, None, num_layers, [reason] * num_layers, reason
    )


def split_half(
    per_sample: np.ndarray | None, splits: int, rng: np.random.Generator, target: float, num_layers: int | None = None
) -> Reliability:
    """Split-half reliability of per-sample scores [N, L, H] (see module docstring).

    `per_sample` None (a scores-only run; then `num_layers` is required) or N < 2 gives N/A with its reason.
    A layer whose mean half correlation r is <= 0 gets `full_layer` None (never a value below -1) and
    keeps r in `split_layer`.
    """
    if per_sample is None:
        return unavailable_reliability(0, int(num_layers or 0), splits, NA_NO_SAMPLES)
    n, num_layers, num_heads = per_sample.shape
    half = n // 2
    if half < 1:
        return unavailable_reliability(n, num_layers, splits, NA_ONE_SAMPLE)
    weights = np.zeros((2, splits, n))
    for s in range(splits):
        perm = rng.permutation(n)
        weights[0, s, perm[:half]] = 1.0 / half
        weights[1, s, perm[half : 2 * half]] = 1.0 / half
    flat = per_sample.reshape(n, -1)
    first, second = weights[0] @ flat, weights[1] @ flat  # [splits, L*H]
    shape = (splits, num_layers, num_heads)
    per_layer = rowwise_pearson(first.reshape(shape), second.reshape(shape))  # [splits, L]
    split_layer = [_nanmean(per_layer[:, layer]) for layer in range(num_layers)]
    split_global = _nanmean(rowwise_pearson(first, second))
    factor = n / half
    full_layer = [spearman_brown(r, factor) for r in split_layer]
    full_global = spearman_brown(split_global, factor)
    return Reliability(
        n_samples=n,
        half=half,
        splits=splits,
        split_layer=split_layer,
        full_layer=full_layer,
        needed_layer=[samples_needed(r, n, target) for r in full_layer],
        split_global=split_global,
        full_global=full_global,
        needed_global=samples_needed(full_global, n, target),
        below_target=sum(r is None or r < target for r in full_layer),
        reason_layer=[_reliability_reason(r, f) for r, f in zip(split_layer, full_layer, strict=True)],
        reason_global=_reliability_reason(split_global, full_global),
    )


def _nanmean(x: np.ndarray) -> Number:
    """Mean of the finite values, None when there is none."""
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if finite.size else None
