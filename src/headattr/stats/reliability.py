"""Reliability projections (Spearman-Brown): a longer measurement's reliability, the length to reach a target.

The split-half reliability r of a run's scores (`analysis.reliability`) is lengthened by Spearman-Brown,
k r / (1 + (k - 1) r), and inverted to the number of samples that reaches a target reliability (the
prophecy). Two measurements with reliabilities r_a and r_b of the same underlying scores are expected to
correlate at sqrt(r_a r_b).
"""

from __future__ import annotations

import math

Number = float | None


def spearman_brown(r: Number, factor: float) -> Number:
    """Reliability of a measurement `factor` times as long as one with reliability `r`.

    None for r <= 0: the formula assumes a positive true-score share, and for negative r it leaves [-1, 1]
    (r = -0.6, factor 2 gives -3), so no reliability is claimed there.
    """
    if r is None or r <= 0:
        return None
    denom = 1.0 + (factor - 1.0) * r
    return factor * r / denom if denom > 0 else None


def samples_needed(r_full: Number, n: int, target: float) -> int | None:
    """Spearman-Brown prophecy: samples to reach reliability `target` from `r_full` at `n` samples."""
    if r_full is None or r_full <= 0:
        return None
    if r_full >= 1:
        return 1
    return max(1, int(math.ceil(n * target * (1 - r_full) / (r_full * (1 - target)) - 1e-9)))


def expected_correlation(r_a: Number, r_b: Number) -> Number:
    """sqrt(r_a r_b): the correlation expected between two measurements with these reliabilities."""
    return math.sqrt(r_a * r_b) if r_a is not None and r_b is not None and r_a > 0 and r_b > 0 else None
