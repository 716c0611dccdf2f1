"""Areas under curves measured at a few x positions (a pruning curve over the fraction of heads removed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def curve_area(
    fractions: Sequence[float], values: np.ndarray, baseline: float, upto: float | None = None
) -> np.ndarray | None:
    """Trapezoid area under `values` ([..., F] at `fractions`, [F]) from 0 to `upto`, each [...].

    The arguments run x, then y, then the curve's value at x = 0 (`baseline`, not measured among
    `fractions`). Only measured fractions in (0, upto] count (within 1e-9); `upto` defaults to the largest
    fraction. None when no fraction counts.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if upto is None:
        upto = float(fr.max())
    keep = (fr > 0) & (fr <= upto + 1e-9)
    if not keep.any():
        return None
    order = np.argsort(fr[keep])
    x = np.concatenate([[0.0], fr[keep][order]])
    v = np.asarray(values, dtype=np.float64)[..., keep][..., order]
    y = np.concatenate([np.full(v.shape[:-1] + (1,), baseline), v], axis=-1)
    return ((x[1:] - x[:-1]) * (y[..., 1:] + y[..., :-1]) / 2).sum(axis=-1)
