"""Paired comparisons of two binary outcome vectors on the same items (e.g. two configurations' correctness).

For outcomes a, b in {0, 1} on the same n items, with n10 items right under A only and n01 under B only (the
discordant pairs):

- `difference`: accuracy(A) - accuracy(B) = (n10 - n01) / n, with a paired percentile bootstrap interval
  (`paired_bootstrap_interval`: items resampled with replacement, the pairs kept together, seeded);
- `mcnemar_exact`: the exact two-sided McNemar p-value, the binomial test of n10 against Binomial(n10 + n01,
  1/2) (`scipy.stats.binomtest`); 1.0 when there is no discordant pair;
- `minimal_detectable_difference`: the smallest |difference| this n could detect at 80% power and two-sided
  alpha 0.05, given the observed discordance (see its docstring for the formula and its source);
- `verdict`: "A better" / "B better" when McNemar's p is below alpha, else "not distinguishable at this n".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats

from headattr.errors import HeadattrError

NOT_DISTINGUISHABLE = "not distinguishable at this n"
A_BETTER = "A better"
B_BETTER = "B better"
VERDICTS = (NOT_DISTINGUISHABLE, A_BETTER, B_BETTER)


@dataclass(frozen=True)
class PairedComparison:
    """A against B on the same `n` items (see the module docstring); `detectable` None when no difference of
    any size could reach the power at this n and discordance."""

    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float
    low: float
    high: float
    a_only: int  # n10: items A gets right and B wrong
    b_only: int  # n01
    p_value: float
    detectable: float | None
    verdict: str
    level: float = 0.95
    alpha: float = 0.05
    power: float = 0.8
    resamples: int = 10000
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _outcomes(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both vectors as bool [n], checked to be binary, of one length and not empty."""
    arrays = [np.asarray(x) for x in (a, b)]
    for x in arrays:
        if x.ndim != 1 or not np.isin(x, (0, 1)).all():
            raise HeadattrError("paired outcomes must be 1-D vectors of 0/1 (or bool), one entry per item")
    if arrays[0].shape != arrays[1].shape or arrays[0].size == 0:
        raise HeadattrError(
            f"paired outcomes need the same items: got {arrays[0].size} and {arrays[1].size} entries (and at least one)"
        )
    return arrays[0].astype(bool), arrays[1].astype(bool)


def discordant(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(n10, n01): items right under A only, under B only."""
    a, b = _outcomes(a, b)
    return int((a & ~b).sum()), int((~a & b).sum())


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value: `binomtest(a_only, a_only + b_only, 0.5)`; 1.0 with no discordant pair."""
    total = a_only + b_only
    if total == 0:
        return 1.0
    return float(stats.binomtest(a_only, total, 0.5, alternative="two-sided").pvalue)


def paired_bootstrap_interval(
    a: np.ndarray, b: np.ndarray, seed: int = 0, level: float = 0.95, resamples: int = 10000
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b): `resamples` draws of n item indices with replacement
    (`np.random.default_rng(seed).integers`), each pair (a_i, b_i) kept together."""
    a, b = _outcomes(a, b)
    diff = a.astype(np.float64) - b.astype(np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(resamples, diff.size))
    means = diff[idx].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def minimal_detectable_difference(n: int, discordance: float, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest |p10 - p01| that McNemar's test detects with `power` at two-sided `alpha` with n pairs.

    The normal approximation of McNemar's test's power (Connor 1987, "Sample size for testing differences in
    proportions for the paired-sample design", Biometrics 43:207-211; also Lachin 1992): with discordance
    psi = p10 + p01 and difference delta = p10 - p01, the statistic (n10 - n01) / n has mean delta and
    variance (psi - delta^2) / n, and is referred to its null variance psi / n, so the n needed is

        n = (z_{1-alpha/2} sqrt(psi) + z_{power} sqrt(psi - delta^2))^2 / delta^2.

    Here psi is the observed discordance and the equation is solved for delta in (0, psi] (its left side
    minus the right is increasing there). None when even delta = psi (every discordant pair on one side)
    falls short, which happens when n * psi is small (at the defaults, 7 or fewer discordant pairs out of
    many items): then no difference is detectable at this n. psi = 0 (no discordant pair) also gives None.
    """
    if n < 1 or not 0.0 <= discordance <= 1.0:
        raise HeadattrError(f"need n >= 1 and a discordance in [0, 1], got n={n}, discordance={discordance}")
    za, zb = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)

    def shortfall(delta: float) -> float:  # increasing in delta on [0, psi]
        return math.sqrt(n) * delta - za * math.sqrt(discordance) - zb * math.sqrt(max(discordance - delta**2, 0.0))

    if discordance == 0.0 or shortfall(discordance) < 0:
        return None
    return float(optimize.brentq(shortfall, 0.0, discordance, xtol=1e-12))


def verdict(difference: float, p_value: float, alpha: float = 0.05) -> str:
    """ "A better" / "B better" when p < alpha (by the sign of the difference), else "not distinguishable at
    this n"."""
    if p_value >= alpha or difference == 0:
        return NOT_DISTINGUISHABLE
    return A_BETTER if difference > 0 else B_BETTER


def compare_paired(
    a: np.ndarray,
    b: np.ndarray,
    *,
    seed: int = 0,
    level: float = 0.95,
    resamples: int = 10000,
    alpha: float = 0.05,
    power: float = 0.8,
) -> PairedComparison:
    """A against B (bool [n] each, the same items in the same order): see the module docstring."""
    a, b = _outcomes(a, b)
    n = int(a.size)
    a_only, b_only = discordant(a, b)
    difference = (a_only - b_only) / n
    low, high = paired_bootstrap_interval(a, b, seed, level, resamples)
    p = mcnemar_exact(a_only, b_only)
    return PairedComparison(
        n=n,
        accuracy_a=float(a.mean()),
        accuracy_b=float(b.mean()),
        difference=difference,
        low=low,
        high=high,
        a_only=a_only,
        b_only=b_only,
        p_value=p,
        detectable=minimal_detectable_difference(n, (a_only + b_only) / n, alpha, power),
        verdict=verdict(difference, p, alpha),
        level=level,
        alpha=alpha,
        power=power,
        resamples=resamples,
        seed=seed,
    )
