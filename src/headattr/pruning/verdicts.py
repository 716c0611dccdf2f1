"""Pruning verdicts: is removing the top-ranked heads worse than random removal, and the bottom-ranked better?

Per metric and fraction, and for the area under the curve from fraction 0 (the unpruned model) to 0.3
(trapezoid), `most` must be worse than random removal and `least` better, beyond the 95% interval of the
random orders' mean (a bootstrap over orders, seeded); the empirical percentiles of `most` and `least` among
the random orders are given beside it. The mean, not one order's spread, is the reference: a single random
pair of heads out of 48 is a lottery whose spread says nothing about whether the scores rank heads better
than chance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from headattr.pruning.evaluation import Metrics
from headattr.stats.curves import curve_area
from headattr.stats.intervals import bootstrap_mean_interval

VERDICT_LEVEL = 0.95
VERDICT_RESAMPLES = 2000
AREA_MAX_FRACTION = 0.3
VERDICT_RULE = (
    "most is worse than random removal and least is better, where the 95% interval of the random orders' mean "
    "(bootstrap over orders) excludes both; per fraction and for the area under the curve over fractions "
    "0 to 0.3 (trapezoid, from the unpruned model at 0)"
)


def verdict_rng(seed: int, metric_index: int) -> np.random.Generator:
    """The bootstrap stream of a metric's verdicts, keyed by (seed, metric) only, so figure and JSON agree."""
    return np.random.default_rng(np.random.SeedSequence([seed, 7919, metric_index]))


def worse_sign(metric: str) -> float:
    """+1 where a larger value is worse (loss), -1 where a smaller one is (accuracy, exact match)."""
    return 1.0 if metric == "loss" else -1.0


def mean_interval(values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over the rows of [R, K] `values` and its bootstrap interval at the verdicts' level, each [K]."""
    return bootstrap_mean_interval(values, rng, VERDICT_LEVEL, VERDICT_RESAMPLES)


def empirical_percentile(x: float, values: np.ndarray) -> float:
    """Percent of `values` below `x`, ties counted half (0: below every value, 100: above every value)."""
    values = np.asarray(values, dtype=np.float64)
    return float(100 * ((values < x).sum() + 0.5 * (values == x).sum()) / values.size)


def _verdict_row(
    most: float, least: float, random: np.ndarray, mean: float, low: float, high: float, sign: float
) -> dict[str, Any]:
    """One verdict: the three numbers, the percentiles of most and least among the random orders, the test."""
    # on the "worse" scale (sign * value), the interval is [sign*low, sign*high] or, reversed, [-high, -low]
    worse_low, worse_high = sorted((sign * low, sign * high))
    most_worse = bool(sign * most > worse_high)
    least_better = bool(sign * least < worse_low)
    return {
        "most": float(most),
        "random_mean": float(mean),
        "random_low": float(low),
        "random_high": float(high),
        "least": float(least),
        "most_percentile": empirical_percentile(most, random),
        "least_percentile": empirical_percentile(least, random),
        "most_worse": most_worse,
        "least_better": least_better,
        "holds": most_worse and least_better,
    }


def pruning_verdicts(
    fractions: Sequence[float],
    metrics: Sequence[str],
    baseline: Metrics,
    curves: dict[str, dict[str, np.ndarray]],
    seed: int,
) -> dict[str, Any]:
    """The pruning verdicts (VERDICT_RULE) of `curves` (order -> metric -> [F], or [R, F] for random), per
    metric and fraction and for the area.

    Numbers are in the metric's own units; a percentile is the percent of random orders whose value is
    below that of `most` (or `least`). The bootstrap over random orders is seeded by (seed, metric), so the
    verdicts are deterministic; fractions and area share its resamples.
    """
    out: dict[str, Any] = {
        "rule": VERDICT_RULE,
        "level": VERDICT_LEVEL,
        "resamples": VERDICT_RESAMPLES,
        "area_max_fraction": AREA_MAX_FRACTION,
        "random_orders": int(curves["random"][metrics[0]].shape[0]),
        "metrics": {},
    }
    for m_index, metric in enumerate(metrics):
        values = {order: np.asarray(curves[order][metric], dtype=np.float64) for order in ("most", "least", "random")}
        rng = verdict_rng(seed, m_index)
        out["metrics"][metric] = metric_verdicts(
            fractions, float(baseline.value(metric)), values, rng, worse_sign(metric)
        )
    return out


def metric_verdicts(
    fractions: Sequence[float], base: float, values: dict[str, np.ndarray], rng: np.random.Generator, sign: float
) -> dict[str, Any]:
    """One metric's verdicts: per fraction and for the area, from `values` (most, least: [F]; random: [R, F])."""
    most, least, random = values["most"], values["least"], values["random"]
    area = curve_area(fractions, random, base, AREA_MAX_FRACTION)  # [R] or None
    table = random if area is None else np.concatenate([random, area[:, None]], axis=1)
    mean, low, high = mean_interval(table, rng)
    rows = [
        {"fraction": f, **_verdict_row(most[i], least[i], random[:, i], mean[i], low[i], high[i], sign)}
        for i, f in enumerate(fractions)
    ]
    area_row = None
    if area is not None:
        a_most = float(curve_area(fractions, most, base, AREA_MAX_FRACTION))
        a_least = float(curve_area(fractions, least, base, AREA_MAX_FRACTION))
        upto = max(f for f in fractions if 0 < f <= AREA_MAX_FRACTION + 1e-9)
        area_row = {"upto": upto, **_verdict_row(a_most, a_least, area, mean[-1], low[-1], high[-1], sign)}
    return {"fractions": rows, "area": area_row}
