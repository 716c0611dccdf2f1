"""Consistency of head attributions across runs: the numbers behind `headattr compare`.

Two runs of `headattr attribute` on the same model differ only in their random draws (samples, masks).
This module measures how much their head scores agree, how much of the disagreement is sampling noise,
and how many samples would make each layer reproducible. Everything is computed from the run directories;
the report (`report.py`) only formats these numbers.

Definitions (see docs/compare.md for the metrics.json schema):

- Per layer, for a pair of runs: Pearson, Spearman and Kendall (tau-b) correlation of the H head scores
  (`scipy.stats`). A layer whose scores are constant in either run has no correlation: N/A (None), never NaN.
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
- Intervals (delete-one jackknife over the samples of both runs): the statistic is recomputed with each
  sample of run A left out (run B whole), then with each sample of run B left out. On Fisher's z scale
  (atanh), the variance of the statistic is the sum over the two runs of (n - 1)/n * sum (z_i - z_mean)^2,
  less the interaction of the runs' noises that both terms contain (`interaction_variance`), with
  Welch-Satterthwaite degrees of freedom; the 95% interval is z_hat +/- t(df) * se, transformed back
  (so it stays inside [-1, 1]). It is centred on the estimate because what it covers is the expected
  between-run statistic at these run sizes (the mean of the statistic over repeated pairs of runs), of
  which the estimate is one draw; docs/compare.md gives its measured coverage. Defined for the global
  Pearson and Spearman and the mean per-layer Pearson and Spearman; not for top-K overlaps (a step
  function of the scores, whose variance the jackknife does not estimate). The bootstrap it replaces
  resampled each run's samples, which adds a second dose of sample noise to both runs, so its intervals
  lay below the estimate (demo: Pearson 0.9766, interval [0.9057, 0.9780]).
- Split-half reliability within a run: the samples are split at random into two halves of floor(N/2)
  (`splits` random splits, seeded); per layer (and globally) the Pearson correlation of the two half-means
  is averaged over splits (r). Spearman-Brown gives the reliability of the full run,
  r_full = k r / (1 + (k - 1) r) with k = N / floor(N/2) (= 2r / (1 + r) for even N). The projected number
  of samples to reach a target reliability R is n = N * R (1 - r_full) / (r_full (1 - R)) (the Spearman-Brown
  prophecy), rounded up; N/A when r_full <= 0. Two runs with reliabilities r_a and r_b of the same underlying
  scores are expected to correlate at sqrt(r_a r_b): reported as the "predicted" between-run Pearson.
- Verdict: very high when the mean per-layer Pearson and the mean per-layer Spearman both exceed 0.9, high
  when both exceed 0.8, moderate when both exceed 0.7, low otherwise; undetermined when either is N/A.
  With more than two runs the verdict uses the means over all pairs.

Recommendation rules (`recommendations`; each produces a structured item, rendered by `report.py`):

1. `all_layers_consistent` (ok): in every pair, every layer has Pearson > good_threshold.
   `layers_below_threshold` (caution) otherwise: those layers, with their lowest Pearson over pairs.
2. `reliability_met` (ok): in every run, every layer's split-half reliability r_full >= target.
   `more_samples` (caution) otherwise: the layers below target, grouped by band, with the projected number
   of samples (largest over the band's layers and over runs) to reach the target.
3. `no_signal_layers` (caution): layers whose split-half r_full is <= 0 or N/A in some run: the head
   differences there are not distinguishable from sample noise, so no sample count can be projected.
4. `ensemble_helps` (ok) / `ensemble_short` (caution): when rule 2 fires and there are several runs: the
   layers of rule 2 whose projected reliability after pooling all runs' samples (Spearman-Brown from the
   lowest per-run r_full, lengthened by total samples / that run's samples) reaches / stays below target.
5. `stable_top_k` (ok) / `unstable_top_k` (caution): the K values whose global top-K overlap is at least
   OVERLAP_STABLE (0.9) in every pair / below it in some pair.
6. `config_differences` (caution): configuration keys that differ between runs, other than the seeds and
   the settings that cannot change the numbers (batch_size, grad_checkpoint, attn_implementation).
7. `shared_samples` (caution): pairs of runs that share samples (same sample hash): their agreement is
   partly agreement on identical data.
8. `completeness_ok` (ok) / `completeness_high` (caution): the relative completeness error
   (sum |error| / sum |J(1) - J(baseline)|, from run.json diagnostics) is at most / above
   COMPLETENESS_RTOL (0.05) in every / some run; above it, raise --ig-steps.
9. `scores_only_runs` (caution): runs without per-sample attributions (imported): their reliability and
   the pairs' intervals are N/A, and rules 2-4 use the other runs only.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from headattr.errors import HeadattrError
from headattr.methods.aggregate import sample_scores
from headattr.methods.diagnostics import completeness_from_diagnostics
from headattr.runs.rundir import Run, check_same_model, has_samples, read_run, run_method, run_sign

DEFAULT_TOP_K: tuple[int, ...] = (5, 10, 15, 20, 25, 30)
FOCUS_K = 10
GOOD_THRESHOLD = 0.9
VERDICT_LEVELS: tuple[tuple[str, float], ...] = (("very_high", 0.9), ("high", 0.8), ("moderate", 0.7))
SEED_KEYS = ("seed", "data_seed", "mask_seed")
# Settings that by the spec ("What must not change the numbers") cannot change the scores.
NO_EFFECT_KEYS = ("batch_size", "grad_checkpoint", "attn_implementation")
OVERLAP_STABLE = 0.9
COMPLETENESS_RTOL = 0.05
TREND_ALPHA = 0.05
CI_LEVEL = 0.95
SPLITS = 20
EXTREME_LAYERS = 3
BAND_NAMES = ("shallow", "middle", "deep")

Number = float | None


# ---------------------------------------------------------------- result objects


@dataclass
class Summary:
    """One per-layer metric summarised over layers; N/A layers are left out and counted in `n_missing`."""

    mean: Number
    median: Number
    min: Number
    max: Number
    std: Number
    n: int
    n_missing: int


@dataclass
class LayerMetrics:
    """Agreement of one layer's head scores between two runs. Overlap/Kuncheva are keyed by K."""

    layer: int
    pearson: Number
    spearman: Number
    kendall: Number
    overlap: dict[int, Number]
    kuncheva: dict[int, Number]


@dataclass
class GlobalMetrics:
    """Agreement of all L*H head scores taken together."""

    pearson: Number
    spearman: Number
    kendall: Number
    overlap: dict[int, Number]
    chance: dict[int, Number]
    kuncheva: dict[int, Number]


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


@dataclass
class BandMetrics:
    """Per-layer metrics averaged over a band of consecutive layers."""

    name: str
    first: int
    last: int
    pearson_mean: Number
    spearman_mean: Number
    kendall_mean: Number
    overlap_mean: Number
    good_count: int
    num_layers: int
    samples_needed: int | None


@dataclass
class Trend:
    """Does consistency change with depth? Spearman of layer index vs per-layer Pearson."""

    rho: Number
    p_value: Number
    direction: str
    bands: str | None


@dataclass
class Verdict:
    """The verdict level and the two means it is based on."""

    level: str
    pearson_mean: Number
    spearman_mean: Number


@dataclass
class PairMetrics:
    """Every metric for one pair of runs (indices into `Comparison.runs`)."""

    a: int
    b: int
    shared_samples: int | None
    layers: list[LayerMetrics]
    summary: dict[str, Summary]
    overlap_summary: dict[int, Summary]
    kuncheva_summary: dict[int, Summary]
    chance_layer: dict[int, Number]
    good_count: int
    good_share: float
    global_metrics: GlobalMetrics
    best_layers: list[int]
    worst_layers: list[int]
    undefined_layers: list[int]
    bands: list[BandMetrics]
    trend: Trend
    intervals: dict[str, Interval] | None
    predicted_pearson: list[Number]
    predicted_pearson_mean: Number
    predicted_global: Number
    verdict: Verdict
    intervals_note: str | None = None  # why `intervals` is None


@dataclass
class Reliability:
    """Split-half reliability of one run, per layer and global, and projected samples for the target."""

    n_samples: int
    half: int
    splits: int
    split_layer: list[Number]
    full_layer: list[Number]
    needed_layer: list[int | None]
    split_global: Number
    full_global: Number
    needed_global: int | None
    below_target: int  # layers whose full_layer is N/A or below the target
    # why full_layer[i] / full_global is N/A (None where it is defined): no per-sample attributions, fewer
    # than two samples, constant scores in the halves, or a half correlation r <= 0 (split_layer keeps r)
    reason_layer: list[str | None] = field(default_factory=list)
    reason_global: str | None = None


@dataclass
class RunSummary:
    """What the comparison needs to know about one input run."""

    label: str
    path: str
    model_name: str | None
    config: dict[str, Any]
    num_samples: int
    num_variants: int
    postprocess: str
    method: str  # rundir.run_method: the method that computed the scores, `imported` or `mixed`
    sign: str  # rundir.run_sign: which sign convention the run's scores follow
    scores_only: bool  # no per-sample attributions (an imported run): no reliability, no intervals
    imported_from: str | None  # the file an imported run came from
    distribution: dict[str, float]
    completeness: dict[str, Any] | None
    reliability: Reliability
    scores: np.ndarray = field(repr=False, metadata={"json": False})


@dataclass
class Settings:
    """The options the comparison ran with, and the fixed thresholds it applied."""

    top_k: list[int]
    focus_k: int | None
    good_threshold: float
    bands: list[tuple[int, int]]
    band_names: list[str]
    intervals: bool
    seed: int
    target: float
    splits: int
    ci_level: float = CI_LEVEL
    verdict_levels: dict[str, float] = field(default_factory=lambda: dict(VERDICT_LEVELS))
    overlap_stable: float = OVERLAP_STABLE
    completeness_rtol: float = COMPLETENESS_RTOL
    trend_alpha: float = TREND_ALPHA


@dataclass
class Comparison:
    """The result of `compare`: settings, per-run summaries, per-pair metrics, matrix, verdict, advice."""

    settings: Settings
    model: dict[str, Any]
    runs: list[RunSummary]
    common_config: dict[str, Any]
    config_differences: list[dict[str, Any]]
    pairs: list[PairMetrics]
    matrix: dict[str, list[list[Number]]]
    matrix_mean: dict[str, Number]
    verdict: Verdict
    consistent_layers: int  # layers with Pearson > good_threshold in every pair
    recommendations: list[dict[str, Any]]
    created: str

    @property
    def num_layers(self) -> int:
        return int(self.model["num_layers"])

    @property
    def num_heads(self) -> int:
        return int(self.model["num_heads"])

    def pair(self, a: int, b: int) -> PairMetrics:
        """The metrics of runs `a` and `b` (in either order)."""
        lo, hi = min(a, b), max(a, b)
        for p in self.pairs:
            if (p.a, p.b) == (lo, hi):
                return p
        raise KeyError((a, b))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (metrics.json): dict keys are strings, N/A is None, no NaN anywhere."""
        return {"format": "headattr-compare", "version": 1, **_jsonable(self)}


def _jsonable(obj: Any) -> Any:
    """Convert dataclasses, numpy values and int-keyed dicts to plain JSON values; NaN becomes None."""
    if is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in fields(obj):
            if f.metadata.get("json", True):
                key = "global" if f.name == "global_metrics" else f.name
                out[key] = _jsonable(getattr(obj, f.name))
        return out
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj


# ---------------------------------------------------------------- elementary metrics


def _finite_or_none(x: Any) -> Number:
    x = float(x)
    return x if math.isfinite(x) else None


def _is_constant(x: np.ndarray) -> bool:
    return x.size == 0 or bool(np.all(x == x.flat[0]))


def correlate(kind: str, a: np.ndarray, b: np.ndarray) -> tuple[Number, Number]:
    """(statistic, p-value) of `kind` in pearson/spearman/kendall via scipy; (None, None) when undefined.

    Undefined: fewer than two values, or either input constant (scipy would return NaN with a warning).
    """
    func: Callable[..., Any] = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}[
        kind
    ]
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size != b.size:
        raise ValueError(f"arrays differ in size: {a.size} vs {b.size}")
    if a.size < 2 or _is_constant(a) or _is_constant(b):
        return None, None
    res = func(a, b)
    stat, p = _finite_or_none(res.statistic), _finite_or_none(res.pvalue)
    return (stat, p) if stat is not None else (None, None)


def pearson(a: np.ndarray, b: np.ndarray) -> Number:
    """Pearson correlation (scipy.stats.pearsonr), None when undefined."""
    return correlate("pearson", a, b)[0]


def spearman(a: np.ndarray, b: np.ndarray) -> Number:
    """Spearman rank correlation (scipy.stats.spearmanr; ties get average ranks), None when undefined."""
    return correlate("spearman", a, b)[0]


def kendall(a: np.ndarray, b: np.ndarray) -> Number:
    """Kendall tau-b (scipy.stats.kendalltau; accounts for ties), None when undefined."""
    return correlate("kendall", a, b)[0]


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
    if not 0 < k < n or _is_constant(a) or _is_constant(b):
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


# ---------------------------------------------------------------- row-wise statistics (intervals, split-half)


def rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """scipy.stats.pearsonr along the last axis; NaN where a row is constant or shorter than 2."""
    if x.shape[-1] < 2:
        return np.full(x.shape[:-1], np.nan)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return np.asarray(stats.pearsonr(x, y, axis=-1).statistic, dtype=np.float64)


def spearman_brown(r: Number, factor: float) -> Number:
    """Reliability of a measurement `factor` times as long as one with reliability `r`.

    None for r <= 0: the formula assumes a positive true-score share, and for negative r it leaves [-1, 1]
    (r = -0.6, factor 2 gives -3), so no reliability is claimed there (`split_half` gives the reason).
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


def leave_one_out_means(per_sample: np.ndarray) -> np.ndarray:
    """[N, D] means of `per_sample` ([N, D]) with sample i left out, in float64: (N * mean - x_i) / (N - 1)."""
    x = np.asarray(per_sample, dtype=np.float64)
    n = x.shape[0]
    return (x.sum(axis=0, keepdims=True) - x) / (n - 1)


def _fisher_z(r: np.ndarray) -> np.ndarray:
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
    d = _fisher_z(left_out_both) - _fisher_z(left_out_a)[:, None] - _fisher_z(left_out_b)[None, :]
    d = d + float(_fisher_z(np.asarray(full)))
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
    z_hat = float(_fisher_z(np.asarray(estimate)))
    v = [(x.size - 1) / x.size * float(((_fisher_z(x) - _fisher_z(x).mean()) ** 2).sum()) for x in parts]
    var = max(v[0] + v[1] - interaction, v[0], v[1])
    if var <= 0:  # no sample moves the statistic: nothing is uncertain at this precision
        return Interval(estimate, estimate, estimate, 0.0, None, count)
    df = (v[0] + v[1]) ** 2 / sum(vr**2 / (x.size - 1) for vr, x in zip(v, parts, strict=True))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(var)
    return Interval(estimate, math.tanh(z_hat - half), math.tanh(z_hat + half), math.sqrt(var), df, count)


# ---------------------------------------------------------------- option parsing


def parse_top_k(value: str | Sequence[int]) -> list[int]:
    """`"5,10,15"` or a sequence of ints -> sorted distinct positive ints."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            ks = [int(p) for p in parts]
        except ValueError:
            raise HeadattrError(f"--top-k {value!r}: expected comma-separated integers, e.g. 5,10,20") from None
    else:
        ks = [int(k) for k in value]
    if not ks or any(k < 1 for k in ks):
        raise HeadattrError(f"--top-k {value!r}: give one or more positive integers, e.g. 5,10,20")
    return sorted(set(ks))


def parse_bands(value: str | Sequence[Sequence[int]] | None) -> list[tuple[int, int]] | None:
    """`"0-5,6-15,16-27"` (or `"3"` for one layer) or (first, last) pairs -> list of inclusive ranges."""
    if value is None:
        return None
    if isinstance(value, str):
        bands = []
        for part in (p.strip() for p in value.split(",")):
            lo, sep, hi = part.partition("-")
            try:
                bands.append((int(lo), int(hi) if sep else int(lo)))
            except ValueError:
                raise HeadattrError(
                    f"--bands {value!r}: expected comma-separated FIRST-LAST layer ranges, e.g. 0-5,6-15,16-27"
                ) from None
    else:
        bands = [(int(b[0]), int(b[1])) for b in value]
    if not bands:
        raise HeadattrError("--bands: give at least one FIRST-LAST layer range")
    for lo, hi in bands:
        if lo < 0 or hi < lo:
            raise HeadattrError(f"--bands: range {lo}-{hi} is empty or negative; write FIRST-LAST with FIRST <= LAST")
    ordered = sorted(bands)
    for (_, hi), (lo, _) in zip(ordered, ordered[1:], strict=False):
        if lo <= hi:
            raise HeadattrError(f"--bands: ranges overlap at layer {lo}; give disjoint ranges")
    return bands


def default_bands(num_layers: int) -> tuple[list[tuple[int, int]], list[str]]:
    """Thirds of the layers (numpy.array_split), named shallow / middle / deep."""
    parts = [p for p in np.array_split(np.arange(num_layers), min(3, num_layers)) if p.size]
    names = list(BAND_NAMES) if len(parts) == 3 else [f"band{i + 1}" for i in range(len(parts))]
    return [(int(p[0]), int(p[-1])) for p in parts], names


def _check_bands(bands: list[tuple[int, int]], num_layers: int) -> None:
    for lo, hi in bands:
        if hi >= num_layers:
            raise HeadattrError(f"--bands: range {lo}-{hi} is outside the model's layers 0-{num_layers - 1}")


def _focus_k(ks: list[int], num_heads: int) -> int | None:
    """FOCUS_K if requested and defined per layer, else the defined requested K closest to it."""
    valid = [k for k in ks if k < num_heads]
    if not valid:
        return None
    return min(valid, key=lambda k: (abs(k - FOCUS_K), k))


# ---------------------------------------------------------------- loading and validating runs


def _load(runs: Sequence[Run | str | Path]) -> list[Run]:
    if len(runs) < 2:
        raise HeadattrError(f"need at least two run directories to compare (got {len(runs)})")
    return [r if isinstance(r, Run) else read_run(r) for r in runs]


def _labels(runs: Sequence[Run]) -> list[str]:
    """`seed 47` when the seeds tell runs apart, else directory names, else `run 1`, `run 2`..."""
    seeds = [json.dumps(r.meta.get("config", {}).get("seed"), sort_keys=True) for r in runs]
    if "null" not in seeds and len(set(seeds)) == len(runs):
        return [f"seed {json.loads(s)}" for s in seeds]
    names = [Path(r.path).name for r in runs]
    if all(names) and len(set(names)) == len(runs):
        return names
    return [f"run {i + 1}" for i in range(len(runs))]


def config_differences(configs: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(keys equal in every run, [{key, values, kind}] for keys that differ).

    `kind` is `seed` for the seeds (differing seeds is the point of a comparison), `no_effect` for settings
    the spec guarantees do not change the numbers (batch size, checkpointing, attention kernel), and
    `flagged` for everything else.
    """
    keys = sorted(set().union(*configs))
    common, diffs = {}, []
    for key in keys:
        values = [c.get(key) for c in configs]
        if len({json.dumps(v, sort_keys=True) for v in values}) == 1:
            common[key] = values[0]
        else:
            kind = "seed" if key in SEED_KEYS else "no_effect" if key in NO_EFFECT_KEYS else "flagged"
            diffs.append({"key": key, "values": values, "kind": kind})
    return common, diffs


def _shared_samples(a: Run, b: Run) -> int | None:
    ha = [s.get("hash") for s in a.meta.get("samples", [])]
    hb = [s.get("hash") for s in b.meta.get("samples", [])]
    if not ha or not hb or None in ha or None in hb:
        return None
    return len(set(ha) & set(hb))


def completeness_summary(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The run's completeness summary (`diagnostics.completeness_summary`), recomputed from run.json's
    per-variant diagnostics so that every run is summarised by the same rule, whatever version wrote it;
    run.json's stored summary only when the per-variant values are absent; None when neither exists."""
    diag = meta.get("diagnostics") or {}
    summary = completeness_from_diagnostics(diag)
    if summary is None and diag.get("completeness"):
        summary = {**diag["completeness"]}
        summary.setdefault("relative_total", None)
    return None if summary is None else {k: _jsonable(v) for k, v in summary.items()}


# ---------------------------------------------------------------- per run


NA_NO_SAMPLES = "no per-sample attributions (scores-only run)"
NA_ONE_SAMPLE = "fewer than two samples"
NA_CONSTANT = "constant scores in the halves"
NA_NON_POSITIVE = "half correlation r <= 0: Spearman-Brown is undefined"


def _reliability_reason(split_r: Number, full_r: Number) -> str | None:
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
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if finite.size else None


def _distribution(scores: np.ndarray) -> dict[str, float]:
    s = scores.astype(np.float64).ravel()
    return {
        "mean": float(s.mean()),
        "median": float(np.median(s)),
        "std": float(s.std()),
        "min": float(s.min()),
        "max": float(s.max()),
    }


def _summarize_run(run: Run, label: str, per_sample: np.ndarray | None, settings: Settings, index: int) -> RunSummary:
    config = dict(run.meta.get("config", {}))
    rng = np.random.default_rng([settings.seed, 0, index])
    scores_only = per_sample is None
    return RunSummary(
        label=label,
        path=str(run.path),
        model_name=run.meta.get("model", {}).get("name"),
        config=config,
        num_samples=0 if scores_only else int(run.attributions.shape[0]),
        num_variants=0 if scores_only else int(run.attributions.shape[1]),
        postprocess=str(config.get("postprocess", "signed")),
        method=run_method(run.meta),
        sign=run_sign(run.meta),
        scores_only=scores_only,
        imported_from=(run.meta.get("imported") or {}).get("source"),
        distribution=_distribution(run.scores),
        completeness=completeness_summary(run.meta),
        reliability=split_half(per_sample, settings.splits, rng, settings.target, num_layers=run.num_layers),
        scores=np.asarray(run.scores, dtype=np.float64),
    )


# ---------------------------------------------------------------- per pair


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


def _mean(values: Sequence[Number]) -> Number:
    return summarize(values).mean


def band_metrics(layers: list[LayerMetrics], settings: Settings, needed: Sequence[int | None]) -> list[BandMetrics]:
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
                pearson_mean=_mean([m.pearson for m in sel]),
                spearman_mean=_mean([m.spearman for m in sel]),
                kendall_mean=_mean([m.kendall for m in sel]),
                overlap_mean=_mean([m.overlap[settings.focus_k] for m in sel]) if settings.focus_k else None,
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


def _expected_correlation(r_a: Number, r_b: Number) -> Number:
    """sqrt(r_a r_b): the correlation expected between two measurements with these reliabilities."""
    return math.sqrt(r_a * r_b) if r_a is not None and r_b is not None and r_a > 0 and r_b > 0 else None


def _predicted(ra: Reliability, rb: Reliability) -> tuple[list[Number], Number]:
    per_layer = [_expected_correlation(x, y) for x, y in zip(ra.full_layer, rb.full_layer, strict=True)]
    return per_layer, _mean(per_layer)


def _interval_statistics(a: np.ndarray, b: np.ndarray, shape: tuple[int, int], defined: list[int]) -> dict:
    """The four interval statistics of rows of [B, L*H] scores `a` against `b` (broadcast), each [B]."""
    rows = np.broadcast_shapes(a.shape, b.shape)[0]
    a, b = np.broadcast_to(a, (rows, a.shape[1])), np.broadcast_to(b, (rows, b.shape[1]))
    la, lb = a.reshape(rows, *shape), b.reshape(rows, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        layer_p = rowwise_pearson(la, lb)[:, defined]
        layer_s = rowwise_pearson(stats.rankdata(la, axis=-1), stats.rankdata(lb, axis=-1))[:, defined]
        nan = np.full(rows, np.nan)
        return {
            "global_pearson": rowwise_pearson(a, b),
            "global_spearman": rowwise_pearson(stats.rankdata(a, axis=1), stats.rankdata(b, axis=1)),
            # a layer undefined in some left-out replicate makes that replicate undefined (never a silent drop)
            "mean_layer_pearson": layer_p.mean(axis=1) if defined else nan,
            "mean_layer_spearman": layer_s.mean(axis=1) if defined else nan,
        }


INTERVAL_STATISTICS = ("global_pearson", "global_spearman", "mean_layer_pearson", "mean_layer_spearman")


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
        i for i in range(shape[0]) if not (_is_constant(ma.reshape(shape)[i]) or _is_constant(mb.reshape(shape)[i]))
    ]
    point = {k: _finite_or_none(v[0]) for k, v in _interval_statistics(ma, mb, shape, defined).items()}
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


def pair_metrics(
    runs: Sequence[Run], summaries: Sequence[RunSummary], a: int, b: int, settings: Settings
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
        shared_samples=_shared_samples(runs[a], runs[b]),
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
        predicted_global=_expected_correlation(
            summaries[a].reliability.full_global, summaries[b].reliability.full_global
        ),
        verdict=Verdict(
            verdict_level(summary["pearson"].mean, summary["spearman"].mean),
            summary["pearson"].mean,
            summary["spearman"].mean,
        ),
    )


# ---------------------------------------------------------------- across pairs


MATRIX_METRICS: dict[str, Callable[[PairMetrics, int | None], Number]] = {
    "mean_layer_pearson": lambda p, k: p.summary["pearson"].mean,
    "mean_layer_spearman": lambda p, k: p.summary["spearman"].mean,
    "global_pearson": lambda p, k: p.global_metrics.pearson,
    "global_spearman": lambda p, k: p.global_metrics.spearman,
    "mean_layer_overlap_focus": lambda p, k: p.overlap_summary[k].mean if k else None,
}


def pair_matrix(pairs: list[PairMetrics], num_runs: int, focus_k: int | None) -> tuple[dict, dict]:
    """Symmetric run x run matrices of the headline metrics (diagonal None) and their mean over pairs."""
    matrix: dict[str, list[list[Number]]] = {}
    means: dict[str, Number] = {}
    for name, get in MATRIX_METRICS.items():
        grid: list[list[Number]] = [[None] * num_runs for _ in range(num_runs)]
        for p in pairs:
            grid[p.a][p.b] = grid[p.b][p.a] = get(p, focus_k)
        matrix[name] = grid
        means[name] = _mean([get(p, focus_k) for p in pairs])
    return matrix, means


def recommendations(comp: Comparison) -> list[dict[str, Any]]:
    """The recommendation items: the rules in the module docstring applied to the measured numbers."""
    s = comp.settings
    items: list[dict[str, Any]] = []
    items += _rule_threshold(comp)
    items += _rule_reliability(comp)
    items += _rule_top_k(comp)
    diffs = [d["key"] for d in comp.config_differences if d["kind"] == "flagged"]
    if diffs:
        items.append({"rule": "config_differences", "kind": "caution", "keys": diffs})
    shared = [{"a": p.a, "b": p.b, "count": p.shared_samples} for p in comp.pairs if p.shared_samples]
    if shared:
        items.append({"rule": "shared_samples", "kind": "caution", "pairs": shared})
    rel = [(r.label, (r.completeness or {}).get("relative_total")) for r in comp.runs]
    measured = [(label, x) for label, x in rel if x is not None]
    if measured:
        high = [{"run": label, "relative": x} for label, x in measured if x > s.completeness_rtol]
        if high:
            items.append({"rule": "completeness_high", "kind": "caution", "runs": high, "rtol": s.completeness_rtol})
        else:
            items.append(
                {
                    "rule": "completeness_ok",
                    "kind": "ok",
                    "max_relative": max(x for _, x in measured),
                    "rtol": s.completeness_rtol,
                }
            )
    return items


def _rule_threshold(comp: Comparison) -> list[dict[str, Any]]:
    threshold = comp.settings.good_threshold
    lowest: list[Number] = []
    for layer in range(comp.num_layers):
        values = [p.layers[layer].pearson for p in comp.pairs]
        lowest.append(None if None in values else min(values))  # type: ignore[type-var]
    below = [{"layer": i, "min_pearson": v} for i, v in enumerate(lowest) if v is None or v <= threshold]
    if not below:
        return [
            {
                "rule": "all_layers_consistent",
                "kind": "ok",
                "threshold": threshold,
                "num_layers": comp.num_layers,
                "min_pearson": min(lowest),
            }
        ]  # type: ignore[type-var]
    return [{"rule": "layers_below_threshold", "kind": "caution", "threshold": threshold, "layers": below}]


def _rule_reliability(comp: Comparison) -> list[dict[str, Any]]:
    target = comp.settings.target
    items: list[dict[str, Any]] = []
    scores_only = [r.label for r in comp.runs if r.scores_only]
    if scores_only:
        items.append({"rule": "scores_only_runs", "kind": "caution", "runs": scores_only})
    rel = [r.reliability for r in comp.runs if not r.scores_only]  # scores-only runs have no reliability
    if not rel:
        return items
    no_signal = [i for i in range(comp.num_layers) if any(r.full_layer[i] is None or r.full_layer[i] <= 0 for r in rel)]
    short = [
        i
        for i in range(comp.num_layers)
        if i not in no_signal and any(r.full_layer[i] < target for r in rel)  # type: ignore[operator]
    ]
    if not short and not no_signal:
        lowest = min(min(r.full_layer) for r in rel)  # type: ignore[type-var]
        items.append(
            {
                "rule": "reliability_met",
                "kind": "ok",
                "target": target,
                "min_reliability": lowest,
                "num_samples": min(r.n_samples for r in rel),
            }
        )
    if short:
        bands = []
        for (lo, hi), name in zip(comp.settings.bands, comp.settings.band_names, strict=True):
            layers = [i for i in short if lo <= i <= hi]
            if layers:
                needed = max(n for i in layers for r in rel if (n := r.needed_layer[i]) is not None)
                bands.append({"band": name, "first": lo, "last": hi, "layers": layers, "samples_needed": needed})
        items.append(
            {
                "rule": "more_samples",
                "kind": "caution",
                "target": target,
                "bands": bands,
                "num_samples": [r.n_samples for r in rel],
            }
        )
        if len(rel) > 1:
            items += _rule_ensemble(comp, short)
    if no_signal:
        items.append({"rule": "no_signal_layers", "kind": "caution", "layers": no_signal})
    return items


def _rule_ensemble(comp: Comparison, short: list[int]) -> list[dict[str, Any]]:
    """Projected reliability of pooling every run's samples, from the lowest per-run reliability."""
    rel = [r.reliability for r in comp.runs if not r.scores_only]
    total = sum(r.n_samples for r in rel)
    target = comp.settings.target
    projected: dict[int, Number] = {}
    for i in short:
        worst = min(rel, key=lambda r: r.full_layer[i])
        projected[i] = spearman_brown(worst.full_layer[i], total / worst.n_samples)
    reached = [i for i, v in projected.items() if v is not None and v >= target]
    below = [i for i in projected if i not in reached]
    base = {"runs": len(rel), "total_samples": total, "target": target}
    items = []
    if reached:
        items.append(
            {
                "rule": "ensemble_helps",
                "kind": "ok",
                **base,
                "layers": reached,
                "projected": {i: projected[i] for i in reached},
            }
        )
    if below:
        items.append(
            {
                "rule": "ensemble_short",
                "kind": "caution",
                **base,
                "layers": below,
                "projected": {i: projected[i] for i in below},
            }
        )
    return items


def _rule_top_k(comp: Comparison) -> list[dict[str, Any]]:
    stable, unstable = [], []
    for k in comp.settings.top_k:
        values = [p.global_metrics.overlap[k] for p in comp.pairs]
        if None in values:
            continue
        worst = min(values)  # type: ignore[type-var]
        (stable if worst >= comp.settings.overlap_stable else unstable).append({"k": k, "min_overlap": worst})
    items = []
    if stable:
        items.append({"rule": "stable_top_k", "kind": "ok", "threshold": comp.settings.overlap_stable, "ks": stable})
    if unstable:
        items.append(
            {"rule": "unstable_top_k", "kind": "caution", "threshold": comp.settings.overlap_stable, "ks": unstable}
        )
    return items


# ---------------------------------------------------------------- entry point


def compare(
    runs: Sequence[Run | str | Path],
    top_k: str | Sequence[int] = DEFAULT_TOP_K,
    good_threshold: float = GOOD_THRESHOLD,
    bands: str | Sequence[Sequence[int]] | None = None,
    bootstrap: int | None = None,
    seed: int = 0,
    target: float = 0.9,
    splits: int = SPLITS,
    intervals: bool = True,
) -> Comparison:
    """Compare two or more runs of the same model; every number of `headattr compare` is in the result.

    `runs` are `Run` objects or run directories; scores-only runs (imported, no per-sample attributions)
    are compared on their scores, with reliability and intervals N/A. `intervals=False` skips the jackknife
    intervals; `bootstrap` is kept for callers of the former bootstrap: 0 means `intervals=False`, any other
    count is accepted and unused (the jackknife needs no replicates).
    Raises `HeadattrError` for bad input (fewer than two runs, different models, bad options).
    """
    ks = parse_top_k(top_k)
    band_ranges = parse_bands(bands)
    _check_options(good_threshold, bootstrap, target, splits)
    intervals = bool(intervals) and bootstrap != 0
    loaded = _load(runs)
    check_same_model(loaded)
    num_layers, num_heads = loaded[0].scores.shape
    if band_ranges is None:
        band_ranges, band_names = default_bands(num_layers)
    else:
        _check_bands(band_ranges, num_layers)
        band_names = ["custom"] * len(band_ranges)
    settings = Settings(
        top_k=ks,
        focus_k=_focus_k(ks, num_heads),
        good_threshold=float(good_threshold),
        bands=band_ranges,
        band_names=band_names,
        intervals=intervals,
        seed=int(seed),
        target=float(target),
        splits=int(splits),
    )
    per_sample = [
        sample_scores(r.attributions, str(r.meta.get("config", {}).get("postprocess", "signed")))
        if has_samples(r)
        else None
        for r in loaded
    ]
    labels = _labels(loaded)
    summaries = [_summarize_run(r, labels[i], per_sample[i], settings, i) for i, r in enumerate(loaded)]
    pairs = [
        pair_metrics(loaded, summaries, a, b, settings) for a in range(len(loaded)) for b in range(a + 1, len(loaded))
    ]
    if settings.intervals:
        for p in pairs:
            pa, pb = per_sample[p.a], per_sample[p.b]
            if pa is None or pb is None:
                p.intervals_note = NA_NO_SAMPLES
                continue
            estimates = {
                "global_pearson": p.global_metrics.pearson,
                "global_spearman": p.global_metrics.spearman,
                "mean_layer_pearson": p.summary["pearson"].mean,
                "mean_layer_spearman": p.summary["spearman"].mean,
            }
            p.intervals = pair_intervals(pa, pb, estimates, settings.ci_level)
    matrix, means = pair_matrix(pairs, len(loaded), settings.focus_k)
    # scores-only (imported) runs record no settings: compare the settings of the other runs only
    full = [i for i, summary in enumerate(summaries) if not summary.scores_only]
    common, diffs = config_differences([summaries[i].config for i in full] or [{}])
    for d in diffs:
        values: list[Any] = [None] * len(summaries)
        for pos, i in enumerate(full):
            values[i] = d["values"][pos]
        d["values"] = values
    model = dict(loaded[0].meta.get("model", {}))
    model.update(num_layers=int(num_layers), num_heads=int(num_heads))
    comp = Comparison(
        settings=settings,
        model=model,
        runs=summaries,
        common_config=common,
        config_differences=diffs,
        pairs=pairs,
        matrix=matrix,
        matrix_mean=means,
        verdict=Verdict(
            verdict_level(means["mean_layer_pearson"], means["mean_layer_spearman"]),
            means["mean_layer_pearson"],
            means["mean_layer_spearman"],
        ),
        consistent_layers=sum(
            all(p.layers[i].pearson is not None and p.layers[i].pearson > settings.good_threshold for p in pairs)
            for i in range(num_layers)
        ),
        recommendations=[],
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    comp.recommendations = recommendations(comp)
    return comp


def _check_options(good_threshold: float, bootstrap: int | None, target: float, splits: int) -> None:
    if not (math.isfinite(good_threshold) and -1.0 <= good_threshold <= 1.0):
        raise HeadattrError(f"--good-threshold {good_threshold}: give a correlation between -1 and 1")
    if bootstrap is not None and bootstrap < 0:
        raise HeadattrError(f"--bootstrap {bootstrap}: give a number >= 0 (0 skips the intervals)")
    if not 0.0 < target < 1.0:
        raise HeadattrError(f"--target {target}: give a reliability strictly between 0 and 1")
    if splits < 1:
        raise HeadattrError(f"splits {splits}: give at least one random split")
