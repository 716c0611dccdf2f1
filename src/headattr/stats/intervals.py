"""Confidence intervals: the two-run jackknife of a correlation, Wilson for a proportion, a bootstrap of a mean.

- `jackknife_interval`: a correlation-like statistic of two runs' mean scores, from the statistic recomputed
  with each sample of either run left out (delete-one jackknife over both runs), on Fisher's z scale with a
  Welch-Satterthwaite t interval, so that it stays inside [-1, 1].
- `wilson_interval`: a binomial proportion (an accuracy); unlike the normal approximation it stays inside
  [0, 1] and is not degenerate at 0 or n successes, which small evaluation sets often give.
- `bootstrap_mean_interval`: the mean of rows of values, percentile bootstrap with the rows resampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

Number = float | None
CI_LEVEL = 0.95
_Z95 = 1.959963984540054  # the standard normal's 0.975 quantile


@dataclass
class Interval:
    """A 95% jackknife interval around a point estimate (`jackknife_interval`); se and df on Fisher's z scale."""

    estimate: Number
    low: Number
    high: Number
    se: Number
    df: Number
    leave_one_out: int  # statistics recomputed: one per left-out sample of either run
    method: str = "jackknife (delete-one over both runs' samples, Fisher z, t interval)"


def leave_one_out_means(per_sample: np.ndarray) -> np.ndarray:
    """[N, D] means of `per_sample` ([N, D]) with sample i left out, in float64: (N * mean - x_i) / (N - 1)."""
    x = np.asarray(per_sample, dtype=np.float64)
    n = x.shape[0]
    return (x.sum(axis=0, keepdims=True) - x) / (n - 1)


def fisher_z(r: np.ndarray) -> np.ndarray:
    """atanh(r), with r clipped to 1e-12 inside [-1, 1]."""
    # correlations of exactly +-1 would give infinite z; 1 - 1e-12 keeps them finite and ordered
    return np.arctanh(np.clip(r, -1 + 1e-12, 1 - 1e-12))


def interaction_variance(
    full: float, left_out_a: np.ndarray, left_out_b: np.ndarray, left_out_both: np.ndarray
) -> float:
    """The part of the two-run jackknife variance that comes from the interaction of the runs' noises.

    On z scale: D_ij = z_(ij) - z_(i) - z_(j) + z, with `left_out_both[i, j]` the statistic without sample i
    of A and sample j of B. A function of one run's mean alone gives D = 0; the cross term c(x_i, y_j) of
    the statistic gives D_ij ~ c_ij / ((n_a - 1)(n_b - 1)). Each run's delete-one variance contains that
    term's variance once (Var c / (n_a n_b)), the true variance contains it once, so one copy is removed:
    returned as ((n_a - 1)(n_b - 1) / (n_a n_b))^2 * sum D_ij^2.
    """
    n_a, n_b = left_out_both.shape
    d = fisher_z(left_out_both) - fisher_z(left_out_a)[:, None] - fisher_z(left_out_b)[None, :]
    d = d + float(fisher_z(np.asarray(full)))
    return ((n_a - 1) * (n_b - 1) / (n_a * n_b)) ** 2 * float((d**2).sum())


def jackknife_interval(
    estimate: Number,
    left_out_a: np.ndarray,
    left_out_b: np.ndarray,
    level: float = CI_LEVEL,
    interaction: float = 0.0,
) -> Interval:
    """The two-run delete-one jackknife interval of a correlation-like statistic in [-1, 1].

    `left_out_a` [n_a]: the statistic with each sample of run A left out (B whole); `left_out_b` [n_b]
    likewise. On z = atanh(r): v_r = (n_r - 1)/n_r * sum_i (z_i - mean z)^2 per run, var = v_a + v_b -
    `interaction` (`interaction_variance`, counted in both v_r; never below max(v_a, v_b), each of which
    contains it once), Welch-Satterthwaite df = (v_a + v_b)^2 / sum(v_r^2 / (n_r - 1)), interval
    tanh(z_hat -/+ t(df) * se). N/A when the estimate is undefined, a run has fewer than two samples, or a
    left-out statistic is undefined.
    """
    count = int(left_out_a.size + left_out_b.size)
    na = Interval(estimate, None, None, None, None, count)
    parts = [np.asarray(x, dtype=np.float64) for x in (left_out_a, left_out_b)]
    if estimate is None or any(x.size < 2 or not np.isfinite(x).all() for x in parts) or not math.isfinite(interaction):
        return na
    z_hat = float(fisher_z(np.asarray(estimate)))
    v = [(x.size - 1) / x.size * float(((fisher_z(x) - fisher_z(x).mean()) ** 2).sum()) for x in parts]
    var = max(v[0] + v[1] - interaction, v[0], v[1])
    if var <= 0:  # no sample moves the statistic: nothing is uncertain at this precision
        return Interval(estimate, estimate, estimate, 0.0, None, count)
    df = (v[0] + v[1]) ** 2 / sum(vr**2 / (x.size - 1) for vr, x in zip(v, parts, strict=True))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(var)
    return Interval(estimate, math.tanh(z_hat - half), math.tanh(z_hat + half), math.sqrt(var), df, count)


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at 0 (n) successes the bound is exactly 0 (1); rounding could put it a hair inside
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def bootstrap_mean_interval(
    values: np.ndarray, rng: np.random.Generator, level: float, resamples: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over the rows of [R, K] `values` and its percentile bootstrap interval (rows resampled), each [K]."""
    values = np.asarray(values, dtype=np.float64)
    idx = rng.integers(0, values.shape[0], size=(resamples, values.shape[0]))
    means = values[idx].mean(axis=1)  # [resamples, K]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail], axis=0)
    return values.mean(axis=0), low, high
