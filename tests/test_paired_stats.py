"""Paired comparisons of binary outcomes (`headattr.stats.paired`) against SciPy, brute-force enumeration and
simulation written out here."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from headattr.errors import HeadattrError
from headattr.stats.paired import (
    A_BETTER,
    B_BETTER,
    NOT_DISTINGUISHABLE,
    compare_paired,
    discordant,
    mcnemar_exact,
    minimal_detectable_difference,
    paired_bootstrap_interval,
)


def paired(n10: int, n01: int, n11: int, n00: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Outcome vectors with the given cell counts, in a shuffled item order."""
    a = np.array([1] * n10 + [0] * n01 + [1] * n11 + [0] * n00, dtype=bool)
    b = np.array([0] * n10 + [1] * n01 + [1] * n11 + [0] * n00, dtype=bool)
    order = np.random.default_rng(seed).permutation(a.size)
    return a[order], b[order]


def brute_force_mcnemar(n10: int, n01: int) -> float:
    """Two-sided exact p: the probability under Binomial(n10 + n01, 1/2) of every count no likelier than n10."""
    m = n10 + n01
    if m == 0:
        return 1.0
    observed = math.comb(m, n10)
    return min(1.0, sum(math.comb(m, k) for k in range(m + 1) if math.comb(m, k) <= observed) / 2**m)


def test_discordant_counts_a_plain_loop():
    a, b = paired(7, 3, 20, 10, seed=4)
    n10 = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    n01 = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    assert discordant(a, b) == (n10, n01) == (7, 3)


@pytest.mark.parametrize("n10,n01", [(0, 0), (1, 0), (0, 5), (3, 3), (7, 2), (2, 11), (15, 4), (40, 25)])
def test_mcnemar_exact_against_enumeration_and_scipy(n10: int, n01: int):
    p = mcnemar_exact(n10, n01)
    assert p == pytest.approx(brute_force_mcnemar(n10, n01), rel=1e-12, abs=1e-15)
    if n10 + n01:
        assert p == pytest.approx(stats.binomtest(n10, n10 + n01, 0.5).pvalue, rel=1e-12)
    else:
        assert p == 1.0


def test_bootstrap_against_the_enumerated_bootstrap_distribution():
    # n = 5 items: all 5^5 resamples are equally likely; their means' 2.5% and 97.5% percentiles are what a
    # large seeded bootstrap converges to (the quantiles sit away from the distribution's jumps, checked below)
    a = np.array([1, 1, 0, 1, 0], dtype=bool)
    b = np.array([0, 0, 0, 1, 1], dtype=bool)
    diff = a.astype(float) - b.astype(float)
    means = np.array([diff[list(idx)].mean() for idx in itertools.product(range(5), repeat=5)])
    exact = np.percentile(means, [2.5, 97.5])
    for q, value in zip((0.025, 0.975), exact, strict=True):  # the quantile is not at a jump of the CDF
        below, at_most = (means < value - 1e-9).mean(), (means <= value + 1e-9).mean()
        assert below + 0.003 < q < at_most - 0.003
    low, high = paired_bootstrap_interval(a, b, seed=3, resamples=200_000)
    assert (low, high) == pytest.approx(tuple(exact), abs=1e-12)


def test_bootstrap_is_seeded_and_degenerate_cases_are_exact():
    a, b = paired(12, 5, 30, 13)
    assert paired_bootstrap_interval(a, b, seed=1) == paired_bootstrap_interval(a, b, seed=1)
    draws = {paired_bootstrap_interval(a, b, seed=s, resamples=100) for s in range(5)}
    assert len(draws) > 1  # the seed is used (few resamples: the percentiles move)
    assert paired_bootstrap_interval(a, a, seed=0) == (0.0, 0.0)
    ones, zeros = np.ones(9, dtype=bool), np.zeros(9, dtype=bool)
    assert paired_bootstrap_interval(ones, zeros) == (1.0, 1.0)


def test_bootstrap_covers_a_known_difference_about_95_percent():
    # synthetic paired data: p10 = 0.2, p01 = 0.1, so the true difference of accuracies is 0.1
    rng = np.random.default_rng(11)
    n, trials, covered = 200, 300, 0
    for t in range(trials):
        cells = rng.choice(4, size=n, p=[0.2, 0.1, 0.4, 0.3])  # 10, 01, 11, 00
        a, b = np.isin(cells, (0, 2)), np.isin(cells, (1, 2))
        low, high = paired_bootstrap_interval(a, b, seed=t, resamples=2000)
        covered += low <= 0.1 <= high
    assert 0.91 <= covered / trials <= 0.985


def connor_n(delta: float, psi: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Connor (1987): pairs needed to detect delta = p10 - p01 with discordance psi."""
    za, zb = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    return (za * math.sqrt(psi) + zb * math.sqrt(psi - delta**2)) ** 2 / delta**2


@pytest.mark.parametrize("n,psi", [(100, 0.3), (150, 0.5), (400, 0.1), (60, 0.6)])
def test_minimal_detectable_difference_solves_connors_formula(n: int, psi: float):
    delta = minimal_detectable_difference(n, psi)
    assert 0 < delta <= psi
    assert connor_n(delta, psi) == pytest.approx(n, rel=1e-9)


@pytest.mark.parametrize("n,psi", [(100, 0.3), (200, 0.2), (400, 0.1)])
def test_minimal_detectable_difference_has_80_percent_power_in_simulation(n: int, psi: float):
    # McNemar's (uncorrected) z test at two-sided 0.05 on data with exactly that difference and discordance
    delta = minimal_detectable_difference(n, psi)
    rng = np.random.default_rng(5)
    counts = rng.multinomial(n, [(psi + delta) / 2, (psi - delta) / 2, 1 - psi], size=20_000)
    n10, n01 = counts[:, 0], counts[:, 1]
    z = (n10 - n01) / np.sqrt(np.maximum(n10 + n01, 1))
    power = float((np.abs(z) > stats.norm.ppf(0.975)).mean())
    assert 0.76 <= power <= 0.86, power


def test_no_difference_is_detectable_with_few_discordant_pairs():
    # 5 discordant pairs of 100: even all five on one side gives exact p = 2 / 2^5 > 0.05
    assert brute_force_mcnemar(5, 0) > 0.05
    assert minimal_detectable_difference(100, 0.05) is None
    assert minimal_detectable_difference(100, 0.0) is None
    assert minimal_detectable_difference(400, 0.05) < minimal_detectable_difference(100, 0.3)


def test_verdicts_and_the_comparison_record():
    a, b = paired(30, 5, 40, 25)
    c = compare_paired(a, b, seed=2, resamples=2000)
    assert c.verdict == A_BETTER and c.difference == pytest.approx(0.25) and (c.a_only, c.b_only) == (30, 5)
    assert c.accuracy_a == pytest.approx(0.7) and c.accuracy_b == pytest.approx(0.45)
    assert c.low < 0.25 < c.high and c.p_value == pytest.approx(stats.binomtest(30, 35).pvalue)
    assert compare_paired(b, a, resamples=2000).verdict == B_BETTER
    even = compare_paired(*paired(4, 3, 53, 40), resamples=2000)
    assert even.verdict == NOT_DISTINGUISHABLE and even.detectable is None  # 7 of 100 discordant
    same = compare_paired(a, a, resamples=2000)
    assert same.verdict == NOT_DISTINGUISHABLE and same.p_value == 1.0 and same.difference == 0.0
    assert set(c.to_dict()) >= {"difference", "low", "high", "p_value", "detectable", "verdict"}


def test_a_large_known_difference_is_found():
    rng = np.random.default_rng(0)
    cells = rng.choice(4, size=2000, p=[0.2, 0.1, 0.4, 0.3])
    c = compare_paired(np.isin(cells, (0, 2)), np.isin(cells, (1, 2)), resamples=2000)
    assert c.verdict == A_BETTER and c.low <= 0.1 <= c.high and c.detectable < 0.05


def test_bad_input_is_a_one_line_error():
    with pytest.raises(HeadattrError, match="same items"):
        compare_paired(np.ones(3, dtype=bool), np.ones(4, dtype=bool))
    with pytest.raises(HeadattrError, match="0/1"):
        compare_paired(np.array([0, 2]), np.array([0, 1]))
    with pytest.raises(HeadattrError, match="same items"):
        compare_paired(np.array([], dtype=bool), np.array([], dtype=bool))
