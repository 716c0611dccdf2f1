"""The completeness summary (diagnostics.py) against direct computations."""

from __future__ import annotations

import numpy as np
import pytest

from headattr.methods.diagnostics import GAP_FLOOR_FRACTION, completeness_from_diagnostics, completeness_summary


def test_summary_against_direct_computation() -> None:
    rng = np.random.default_rng(0)
    gaps = rng.uniform(0.5, 2.0, size=(4, 3, 2)) * rng.choice([-1, 1], size=(4, 3, 2))
    gaps[0, 0, 0] = 1e-9  # a path whose gates barely change J
    errors = 1e-3 * rng.normal(size=gaps.shape)
    errors[0, 0, 0] = 1e-4  # tiny in absolute terms, 1e5 times its own gap
    s = completeness_summary(errors, gaps)
    e, g = np.abs(errors).ravel(), np.abs(gaps).ravel()
    assert s["relative_total"] == pytest.approx(e.sum() / g.sum())
    floor = GAP_FLOOR_FRACTION * np.median(g)
    kept = [ei / gi for ei, gi in zip(e, g, strict=True) if gi >= floor]
    assert s["max_relative"] == pytest.approx(max(kept)) and s["median_relative"] == pytest.approx(np.median(kept))
    assert s["max_relative"] < 0.1  # the near-zero gap no longer dominates (it would give 1e5)
    assert s["small_gap_paths"] == 1 and s["paths"] == 24 and s["relative_floor"] == pytest.approx(floor)
    assert (s["max_abs"], s["mean_abs"], s["median_abs"]) == pytest.approx((e.max(), e.mean(), np.median(e)))


def test_degenerate_inputs() -> None:
    assert completeness_summary([], []) is None
    s = completeness_summary([[0.1, 0.0]], [[0.0, 0.0]])
    assert s["relative_total"] is None and s["max_relative"] is None and s["small_gap_paths"] == 2
    with pytest.raises(ValueError):
        completeness_summary([1.0, 2.0], [1.0])


def test_from_run_json_diagnostics() -> None:
    j_full = [[1.0, 2.0]]
    j_base = [[[0.0, 0.5], [1.0, 1.5]]]
    err = [[[0.01, -0.02], [0.0, 0.03]]]
    s = completeness_from_diagnostics({"j_full": j_full, "j_baseline": j_base, "completeness_error": err})
    assert s["relative_total"] == pytest.approx(0.06 / (1.0 + 0.5 + 1.0 + 0.5))
    assert completeness_from_diagnostics(None) is None
    assert completeness_from_diagnostics({"j_full": j_full}) is None
    assert (
        completeness_from_diagnostics(
            {"j_full": [[1.0]], "j_baseline": [[[0.0, 1.0], [2.0]]], "completeness_error": err}
        )
        is None
    )
