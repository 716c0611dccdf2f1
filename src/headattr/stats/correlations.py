"""Correlation coefficients that say N/A (None) instead of NaN: Pearson, Spearman, Kendall, and row-wise Pearson.

A correlation is undefined for fewer than two values or a constant input (scipy would return NaN with a
warning); every function here returns None there, never NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats

Number = float | None


def finite_or_none(x: Any) -> Number:
    """`x` as a float, None when it is NaN or infinite."""
    x = float(x)
    return x if math.isfinite(x) else None


def is_constant(x: np.ndarray) -> bool:
    """Whether every element of `x` equals the first (an empty array counts as constant)."""
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
    if a.size < 2 or is_constant(a) or is_constant(b):
        return None, None
    res = func(a, b)
    stat, p = finite_or_none(res.statistic), finite_or_none(res.pvalue)
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


def rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """scipy.stats.pearsonr along the last axis; NaN where a row is constant or shorter than 2."""
    if x.shape[-1] < 2:
        return np.full(x.shape[:-1], np.nan)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return np.asarray(stats.pearsonr(x, y, axis=-1).statistic, dtype=np.float64)


def rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman along the last axis (Pearson of average ranks); NaN where a row is constant or shorter than 2."""
    return rowwise_pearson(stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1))
