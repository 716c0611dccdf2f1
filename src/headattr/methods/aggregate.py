"""From raw per-variant attributions to head scores (spec: Aggregation).

Kept apart from the methods so that analysis code (jackknife intervals, split halves, ensembles) recomputes scores
from stored attributions exactly as `attribute` does.
"""

from __future__ import annotations

import numpy as np

POSTPROCESS = ("signed", "abs", "relu")


def postprocess(x: np.ndarray, how: str) -> np.ndarray:
    """Apply `signed` (identity), `abs` or `relu` elementwise."""
    if how == "signed":
        return x
    if how == "abs":
        return np.abs(x)
    if how == "relu":
        return np.maximum(x, 0.0)
    raise ValueError(f"unknown postprocess {how!r}; choose one of {', '.join(POSTPROCESS)}")


def sample_scores(attributions: np.ndarray, how: str = "signed") -> np.ndarray:
    """Per-sample scores [N, L, H]: mean over a sample's variants, then `how`.

    `attributions` is [N, V, L, H] (raw signed, per sample and masked variant). Computed in float64.
    """
    per_sample = np.asarray(attributions, dtype=np.float64).mean(axis=1)
    return postprocess(per_sample, how)


def final_scores(attributions: np.ndarray, how: str = "signed") -> np.ndarray:
    """Final head scores [L, H] float32: the mean over samples of `sample_scores`."""
    return sample_scores(attributions, how).mean(axis=0).astype(np.float32)
