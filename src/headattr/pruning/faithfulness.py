"""Faithfulness of scores to single-head ablation: each head's own effect and its rank correlation with the scores."""

from __future__ import annotations

from typing import Any

import numpy as np

from headattr.stats.correlations import correlate, spearman


def _spearman(scores: np.ndarray, effect: np.ndarray) -> dict[str, Any]:
    """Spearman correlation over all heads (with its p-value) and per layer (None for a constant layer)."""
    rho, p = correlate("spearman", scores, effect)
    per_layer = [spearman(s, d) for s, d in zip(scores, effect, strict=True)]
    valid = [r for r in per_layer if r is not None]
    return {
        "spearman": rho,
        "spearman_p": p,
        "spearman_per_layer": per_layer,
        "spearman_per_layer_mean": float(np.mean(valid)) if valid else None,
    }


def single_head_effects(scores: np.ndarray, delta_loss: np.ndarray, delta_accuracy: np.ndarray) -> dict[str, Any]:
    """Faithfulness: Spearman correlation of the scores with each head's own ablation effect (loss increase).

    Over all heads, and per layer (a layer whose scores or effects are constant has none; the mean is over
    the others); `abs` holds the same for |score|, which ranks heads by magnitude whatever their sign.
    """
    scores = np.asarray(scores, dtype=np.float64)
    return {
        "delta_loss": delta_loss.tolist(),
        "delta_accuracy": delta_accuracy.tolist(),
        **_spearman(scores, delta_loss),
        "abs": _spearman(np.abs(scores), delta_loss),
    }
