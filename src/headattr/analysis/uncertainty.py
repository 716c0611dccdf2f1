"""Intervals of a pair's agreement: jackknife over both runs' samples for the global and mean per-layer correlations.

The statistic is recomputed with each sample of run A left out (run B whole), then with each sample of run
B left out. On Fisher's z scale (atanh), the variance of the statistic is the sum over the two runs of
(n - 1)/n * sum (z_i - z_mean)^2, less the interaction of the runs' noises that both terms contain
(`headattr.stats.intervals.interaction_variance`), with Welch-Satterthwaite degrees of freedom; the 95%
interval is z_hat +/- t(df) * se, transformed back (so it stays inside [-1, 1]). It is centred on the
estimate because what it covers is the expected between-run statistic at these run sizes (the mean of the
statistic over repeated pairs of runs), of which the estimate is one draw; docs/compare.md gives its
coverage. Defined for the global Pearson and Spearman and the mean per-layer Pearson and Spearman; not for
top-K overlaps (a step function of the scores, whose variance the jackknife does not estimate).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from headattr.analysis.options import CI_LEVEL
from headattr.analysis.results import Number
from headattr.stats.correlations import finite_or_none, is_constant, rowwise_pearson, rowwise_spearman
from headattr.stats.intervals import Interval, interaction_variance, jackknife_interval, leave_one_out_means

INTERVAL_STATISTICS = ("global_pearson", "global_spearman", "mean_layer_pearson", "mean_layer_spearman")


def _interval_statistics(a: np.ndarray, b: np.ndarray, shape: tuple[int, int], defined: list[int]) -> dict:
    """The four interval statistics of rows of [B, L*H] scores `a` against `b` (broadcast), each [B]."""
    rows = np.broadcast_shapes(a.shape, b.shape)[0]
    a, b = np.broadcast_to(a, (rows, a.shape[1])), np.broadcast_to(b, (rows, b.shape[1]))
    la, lb = a.reshape(rows, *shape), b.reshape(rows, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        layer_p = rowwise_pearson(la, lb)[:, defined]
        layer_s = rowwise_spearman(la, lb)[:, defined]
        nan = np.full(rows, np.nan)
        return {
            "global_pearson": rowwise_pearson(a, b),
            "global_spearman": rowwise_spearman(a, b),
            # a layer undefined in some left-out replicate makes that replicate undefined (never a silent drop)
            "mean_layer_pearson": layer_p.mean(axis=1) if defined else nan,
            "mean_layer_spearman": layer_s.mean(axis=1) if defined else nan,
        }


def pair_intervals(
    per_sample_a: np.ndarray,
    per_sample_b: np.ndarray,
    estimates: dict[str, Number] | None = None,
    level: float = CI_LEVEL,
) -> dict[str, Interval]:
    """Jackknife intervals (`jackknife_interval`) of the global and mean per-layer correlations of two runs.

    `per_sample_a` [n_a, L, H] and `per_sample_b` [n_b, L, H] are the runs' per-sample scores (their means
    are the runs' scores). `estimates` are the reported point values (default: computed from the means).
    Layers constant in either run's scores are left out of the per-layer means, as in the point metrics.
    """
    shape = per_sample_a.shape[1:]
    a = np.asarray(per_sample_a, dtype=np.float64).reshape(per_sample_a.shape[0], -1)
    b = np.asarray(per_sample_b, dtype=np.float64).reshape(per_sample_b.shape[0], -1)
    ma, mb = a.mean(axis=0, keepdims=True), b.mean(axis=0, keepdims=True)
    defined = [
        i for i in range(shape[0]) if not (is_constant(ma.reshape(shape)[i]) or is_constant(mb.reshape(shape)[i]))
    ]
    point = {k: finite_or_none(v[0]) for k, v in _interval_statistics(ma, mb, shape, defined).items()}
    point.update({k: v for k, v in (estimates or {}).items() if k in point})
    nan = {k: np.full(1, np.nan) for k in INTERVAL_STATISTICS}
    if len(a) < 2 or len(b) < 2:
        return {k: jackknife_interval(point[k], nan[k], nan[k], level) for k in INTERVAL_STATISTICS}
    loo_a, loo_b = leave_one_out_means(a), leave_one_out_means(b)
    full = _interval_statistics(ma, mb, shape, defined)
    drop_a = _interval_statistics(loo_a, mb, shape, defined)
    drop_b = _interval_statistics(ma, loo_b, shape, defined)
    # both left out: [n_a * n_b] statistics, in blocks of A's rows so that memory stays near 2e6 values
    step = max(1, int(2e6 // (len(b) * a.shape[1])))
    blocks = [
        _interval_statistics(
            np.repeat(loo_a[i : i + step], len(b), axis=0),
            np.tile(loo_b, (len(loo_a[i : i + step]), 1)),
            shape,
            defined,
        )
        for i in range(0, len(a), step)
    ]
    both = {k: np.concatenate([blk[k] for blk in blocks]).reshape(len(a), len(b)) for k in INTERVAL_STATISTICS}
    out = {}
    for k in INTERVAL_STATISTICS:
        finite = np.isfinite(both[k]).all() and np.isfinite(full[k]).all()
        inter = interaction_variance(float(full[k][0]), drop_a[k], drop_b[k], both[k]) if finite else math.nan
        out[k] = jackknife_interval(point[k], drop_a[k], drop_b[k], level, inter)
    return out
