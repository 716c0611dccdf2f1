"""The options of a comparison: `CompareSettings` (what a caller chooses), its parsing and checks, the fixed
thresholds, and `Applied` (the settings as resolved for one model, recorded in metrics.json)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headattr.errors import HeadattrError
from headattr.settings import Settings
from headattr.stats.intervals import CI_LEVEL

DEFAULT_TOP_K: tuple[int, ...] = (5, 10, 15, 20, 25, 30)
FOCUS_K = 10
GOOD_THRESHOLD = 0.9
VERDICT_LEVELS: tuple[tuple[str, float], ...] = (("very_high", 0.9), ("high", 0.8), ("moderate", 0.7))
OVERLAP_STABLE = 0.9
COMPLETENESS_RTOL = 0.05
TREND_ALPHA = 0.05
SPLITS = 20
BAND_NAMES = ("shallow", "middle", "deep")


@dataclass(frozen=True)
class CompareSettings(Settings):
    """What `compare` computes (the `headattr compare` flags of the same names).

    `top_k`: the top-k overlaps (a "5,10" string or ints); `good_threshold`: the correlation a layer needs to
    count as consistent; `bands`: (first, last) layer ranges (None: thirds of the model); `intervals`: the
    jackknife intervals, seeded by `seed` where a split is drawn; `target` and `splits`: split-half reliability.
    """

    top_k: tuple[int, ...] = DEFAULT_TOP_K
    good_threshold: float = GOOD_THRESHOLD
    bands: tuple[tuple[int, int], ...] | None = None
    seed: int = 0
    target: float = 0.9
    splits: int = SPLITS
    intervals: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "top_k", tuple(parse_top_k(self.top_k)))
        bands = parse_bands(self.bands)
        object.__setattr__(self, "bands", None if bands is None else tuple(bands))
        super().__post_init__()

    def validate(self) -> None:
        check_options(self.good_threshold, None, self.target, self.splits)

    def override(self, **options: Any) -> CompareSettings:
        """A copy with the `options` that are not None applied (and validated); self when there are none."""
        given = {k: v for k, v in options.items() if v is not None}
        return self.replace(**given) if given else self


@dataclass
class Applied:
    """The options the comparison ran with, resolved for the model, and the fixed thresholds it applied."""

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


def check_bands(bands: list[tuple[int, int]], num_layers: int) -> None:
    """Raise unless every band lies inside the model's layers 0..num_layers-1."""
    for lo, hi in bands:
        if hi >= num_layers:
            raise HeadattrError(f"--bands: range {lo}-{hi} is outside the model's layers 0-{num_layers - 1}")


def focus_k(ks: list[int], num_heads: int) -> int | None:
    """FOCUS_K if requested and defined per layer, else the defined requested K closest to it."""
    valid = [k for k in ks if k < num_heads]
    if not valid:
        return None
    return min(valid, key=lambda k: (abs(k - FOCUS_K), k))


def check_options(good_threshold: float, bootstrap: int | None, target: float, splits: int) -> None:
    """Raise a one-line `HeadattrError` for an option outside its range."""
    if not (math.isfinite(good_threshold) and -1.0 <= good_threshold <= 1.0):
        raise HeadattrError(f"--good-threshold {good_threshold}: give a correlation between -1 and 1")
    if bootstrap is not None and bootstrap < 0:
        raise HeadattrError(f"--bootstrap {bootstrap}: give a number >= 0 (0 skips the intervals)")
    if not 0.0 < target < 1.0:
        raise HeadattrError(f"--target {target}: give a reliability strictly between 0 and 1")
    if splits < 1:
        raise HeadattrError(f"splits {splits}: give at least one random split")
