"""Agreement of two runs' head scores: per-layer and global correlations, top-K overlaps, bands, trend, verdict.

- Per layer: Pearson, Spearman and Kendall (tau-b) correlation of the H head scores (`headattr.stats`).
  A layer whose scores are constant in either run has no correlation: N/A (None), never NaN.
- Top-K overlap: |topK(a) & topK(b)| / K. Ranking is by score, highest first; ties are broken by index,
  lower first (per layer: head index; globally: (layer, head) in row-major order), exactly as `heads.csv`
  ranks heads. Defined for 0 < K < N (N = H per layer, L*H globally) when neither run's scores are
  constant (a constant layer has no ranking, only tie-breaking); otherwise N/A.
- Chance level: two independent uniformly random K-sets out of N share K*K/N members on average, an overlap
  fraction of K/N. The Kuncheva index (r*N - K^2) / (K*(N - K)), r = |intersection|, rescales the overlap so
  that chance is 0 and identity is 1.
- Summary over layers: mean, median, min, max and population std (ddof=0) of the defined values; the number
  of N/A layers is counted. "Good" layers: Pearson strictly above `good_threshold`; N/A counts as not good;
  the share is over all layers.
- Bands: contiguous layer ranges (default: thirds, `numpy.array_split`, named shallow/middle/deep).
  Trend: Spearman correlation of layer index vs per-layer Pearson (defined layers), with its p-value;
  "rises"/"falls" when p < 0.05, else "none". Band means are also labelled increasing/decreasing/mixed.
- Predicted Pearson: two runs with split-half reliabilities r_a and r_b of the same underlying scores are
  expected to correlate at sqrt(r_a r_b).
- Verdict: very high when the mean per-layer Pearson and the mean per-layer Spearman both exceed 0.9, high
  when both exceed 0.8, moderate when both exceed 0.7, low otherwise; undetermined when either is N/A.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from headattr.analysis.inputs import shared_samples
from headattr.analysis.options import TREND_ALPHA, VERDICT_LEVELS, Applied
from headattr.analysis.results import (
    BandMetrics,
    GlobalMetrics,
    LayerMetrics,
    Number,
    PairMetrics,
    Reliability,
    RunSummary,
    Summary,
    Trend,
    Verdict,
)
from headattr.runs.rundir import Run
from headattr.stats.correlations import correlate, is_constant, kendall, pearson, spearman
from headattr.stats.reliability import expected_correlation

EXTREME_LAYERS = 3


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` highest scores; ties broken by lower index first (stable sort of -score)."""
    flat = np.asarray(scores, dtype=np.float64).ravel()
    return np.argsort(-flat, kind="stable")[:k]


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> Number:
    """|topK(a) & topK(b)| / K over flattened arrays.

    None unless 0 < K < number of elements, and None when either array is constant: its ranking is then
    pure tie-breaking, and an overlap of 100% from two constant layers would be meaningless.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = a.size
    if not 0 < k < n or is_constant(a) or is_constant(b):
        return None
    shared = np.intersect1d(top_k_indices(a, k), top_k_indices(b, k)).size
    return shared / k


def chance_overlap(k: int, n: int) -> Number:
    """Expected overlap fraction of two independent uniformly random K-subsets of N items: K/N."""
    return k / n if 0 < k < n else None


def kuncheva(overlap: Number, k: int, n: int) -> Number:
    """Kuncheva consistency index of an overlap fraction: 0 at chance, 1 for identical sets."""
    if overlap is None or not 0 < k < n:
        return None
    r = overlap * k
    return (r * n - k * k) / (k * (n - k))


def summarize(values: Sequence[Number]) -> Summary:
    """Mean, median, min, max, population std of the defined values; N/A values are counted, not used."""
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    missing = len(values) - defined.size
    if defined.size == 0:
        return Summary(None, None, None, None, None, 0, missing)
    return Summary(
        mean=float(defined.mean()),
        median=float(np.median(defined)),
        min=float(defined.min()),
        max=float(defined.max()),
        std=float(defined.std()),
        n=int(defined.size),
        n_missing=missing,
    )


def verdict_level(pearson_mean: Number, spearman_mean: Number) -> str:
    """very_high / high / moderate / low from VERDICT_LEVELS (both means must exceed); undetermined if N/A."""
    if pearson_mean is None or spearman_mean is None:
        return "undetermined"
    for level, threshold in VERDICT_LEVELS:
        if pearson_mean > threshold and spearman_mean > threshold:
            return level
    return "low"


def layer_metrics(a: np.ndarray, b: np.ndarray, ks: Sequence[int]) -> list[LayerMetrics]:
    """Per-layer correlations and top-K overlaps of two [L, H] score arrays."""
    num_heads = a.shape[1]
    out = []
    for layer in range(a.shape[0]):
        overlap = {k: top_k_overlap(a[layer], b[layer], k) for k in ks}
        out.append(
            LayerMetrics(
                layer=layer,
                pearson=pearson(a[layer], b[layer]),
                spearman=spearman(a[layer], b[layer]),
                kendall=kendall(a[layer], b[layer]),
                overlap=overlap,
                kuncheva={k: kuncheva(overlap[k], k, num_heads) for k in ks},
            )
        )
    return out


def global_metrics(a: np.ndarray, b: np.ndarray, ks: Sequence[int]) -> GlobalMetrics:
    """Correlations and top-K overlaps of all heads together (flattened row-major: (layer, head))."""
    n = a.size
    overlap = {k: top_k_overlap(a, b, k) for k in ks}
    return GlobalMetrics(
        pearson=pearson(a, b),
        spearman=spearman(a, b),
        kendall=kendall(a, b),
        overlap=overlap,
        chance={k: chance_overlap(k, n) for k in ks},
        kuncheva={k: kuncheva(overlap[k], k, n) for k in ks},
    )


def mean_of(values: Sequence[Number]) -> Number:
    """Mean of the defined values, None when there is none."""
    return summarize(values).mean


def band_metrics(layers: list[LayerMetrics], settings: Applied, needed: Sequence[int | None]) -> list[BandMetrics]:
    """Per-band means of the per-layer metrics; `needed` is the projected sample count per layer."""
    out = []
    for (lo, hi), name in zip(settings.bands, settings.band_names, strict=True):
        sel = layers[lo : hi + 1]
        band_needed = [n for n in needed[lo : hi + 1] if n is not None]
        out.append(
            BandMetrics(
                name=name,
                first=lo,
                last=hi,
                pearson_mean=mean_of([m.pearson for m in sel]),
                spearman_mean=mean_of([m.spearman for m in sel]),
                kendall_mean=mean_of([m.kendall for m in sel]),
                overlap_mean=mean_of([m.overlap[settings.focus_k] for m in sel]) if settings.focus_k else None,
                good_count=sum(m.pearson is not None and m.pearson > settings.good_threshold for m in sel),
                num_layers=len(sel),
                samples_needed=max(band_needed) if band_needed else None,
            )
        )
    return out


def depth_trend(layers: list[LayerMetrics], bands: list[BandMetrics]) -> Trend:
    """Spearman of layer index vs per-layer Pearson, and the direction of the band means."""
    defined = [(m.layer, m.pearson) for m in layers if m.pearson is not None]
    rho, p = (None, None)
    if len(defined) >= 3:
        rho, p = correlate("spearman", [d[0] for d in defined], [d[1] for d in defined])
    if rho is None or p is None:
        direction = "undetermined"
    elif p < TREND_ALPHA:
        direction = "rises" if rho > 0 else "falls"
    else:
        direction = "none"
    means = [b.pearson_mean for b in bands if b.pearson_mean is not None]
    band_dir = None
    if len(means) >= 2:
        steps = np.diff(means)
        band_dir = "increasing" if np.all(steps > 0) else "decreasing" if np.all(steps < 0) else "mixed"
    return Trend(rho, p, direction, band_dir)


def _extremes(layers: list[LayerMetrics]) -> tuple[list[int], list[int], list[int]]:
    """(most consistent, least consistent (lowest first), undefined) layers by Pearson, then Spearman."""
    defined = [m for m in layers if m.pearson is not None]
    order = sorted(defined, key=lambda m: (-m.pearson, -(m.spearman if m.spearman is not None else -2.0), m.layer))
    n = min(EXTREME_LAYERS, len(order))
    best = [m.layer for m in order[:n]]
    worst = [m.layer for m in reversed(order[len(order) - n :])]
    undefined = [m.layer for m in layers if m.pearson is None]
    return best, worst, undefined


def _predicted(ra: Reliability, rb: Reliability) -> tuple[list[Number], Number]:
    """Per-layer predicted Pearson of two runs (`expected_correlation` of their reliabilities) and its mean."""
    per_layer = [expected_correlation(x, y) for x, y in zip(ra.full_layer, rb.full_layer, strict=True)]
    return per_layer, mean_of(per_layer)


def pair_metrics(
    runs: Sequence[Run], summaries: Sequence[RunSummary], a: int, b: int, settings: Applied
) -> PairMetrics:
    """All point metrics of runs `a` and `b` (intervals added by `compare`)."""
    sa, sb = summaries[a].scores, summaries[b].scores
    ks = settings.top_k
    num_heads = sa.shape[1]
    layers = layer_metrics(sa, sb, ks)
    needed = [
        max((n for n in (x, y) if n is not None), default=None)
        for x, y in zip(summaries[a].reliability.needed_layer, summaries[b].reliability.needed_layer, strict=True)
    ]
    bands = band_metrics(layers, settings, needed)
    best, worst, undefined = _extremes(layers)
    summary = {key: summarize([getattr(m, key) for m in layers]) for key in ("pearson", "spearman", "kendall")}
    good = sum(m.pearson is not None and m.pearson > settings.good_threshold for m in layers)
    predicted, predicted_mean = _predicted(summaries[a].reliability, summaries[b].reliability)
    return PairMetrics(
        a=a,
        b=b,
        shared_samples=shared_samples(runs[a], runs[b]),
        layers=layers,
        summary=summary,
        overlap_summary={k: summarize([m.overlap[k] for m in layers]) for k in ks},
        kuncheva_summary={k: summarize([m.kuncheva[k] for m in layers]) for k in ks},
        chance_layer={k: chance_overlap(k, num_heads) for k in ks},
        good_count=int(good),
        good_share=good / len(layers),
        global_metrics=global_metrics(sa, sb, ks),
        best_layers=best,
        worst_layers=worst,
        undefined_layers=undefined,
        bands=bands,
        trend=depth_trend(layers, bands),
        intervals=None,
        predicted_pearson=predicted,
        predicted_pearson_mean=predicted_mean,
        predicted_global=expected_correlation(
            summaries[a].reliability.full_global, summaries[b].reliability.full_global
        ),
        verdict=Verdict(
            verdict_level(summary["pearson"].mean, summary["spearman"].mean),
            summary["pearson"].mean,
            summary["spearman"].mean,
        ),
    )
