"""The result objects of a comparison (`Comparison` and its parts) and their conversion to metrics.json.

Every N/A value is None, never NaN; `Comparison.to_dict` gives the JSON form (docs/compare.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np

from headattr.analysis.options import Applied
from headattr.stats.intervals import Interval

Number = float | None


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
class Comparison:
    """The result of `compare`: settings, per-run summaries, per-pair metrics, matrix, verdict, advice."""

    settings: Applied
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
        return {"format": "headattr-compare", "version": 1, **jsonable(self)}


def jsonable(obj: Any) -> Any:
    """Convert dataclasses, numpy values and int-keyed dicts to plain JSON values; NaN becomes None."""
    if is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in fields(obj):
            if f.metadata.get("json", True):
                key = "global" if f.name == "global_metrics" else f.name
                out[key] = jsonable(getattr(obj, f.name))
        return out
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    return obj
