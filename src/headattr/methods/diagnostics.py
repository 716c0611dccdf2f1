"""The completeness summary: how far each IG path's summed attributions are from J(1) - J(baseline).

One function for every place that summarises it (`attribute`'s run.json, `ensemble`, `compare`'s report).
Inputs are per path (a path = one masked variant x one gated scope, e.g. [N, V, S] with S = layers for scope
`layer`): the completeness error `sum_h A[h] - (J(1) - J(b))` and the gap `J(1) - J(b)` itself.

Why two relative numbers. Dividing each path's error by its own gap explodes where the gap is close to zero
(a layer whose gates barely change J): the old per-path maximum read 148787 for a run whose errors were all
tiny. So:

- `relative_total` = sum |error| / sum |gap| over all paths: the aggregate ratio, the number thresholds use
  (`compare`'s `completeness_rtol`). None when every gap is 0.
- `max_relative` and `median_relative`: per-path |error| / |gap| only over paths whose |gap| is at least
  `relative_floor` = GAP_FLOOR_FRACTION (1%) of the median |gap| of all paths (scale-free, so it means the
  same for `mean-masked` and `sum` losses); `small_gap_paths` counts the paths left out. None when no path
  reaches the floor.
- `max_abs`, `mean_abs`, `median_abs`: of |error|, in J's own units.
"""

from __future__ import annotations

from typing import Any

import numpy as np

GAP_FLOOR_FRACTION = 0.01


def completeness_summary(errors: Any, gaps: Any) -> dict[str, Any] | None:
    """Summary of per-path completeness errors and gaps (any equal shapes, e.g. [N, V, S]); None if empty.

    `errors` and `gaps` are array-likes (nested lists from run.json work); a ragged or mismatched input raises
    ValueError.
    """
    err = np.abs(np.asarray(errors, dtype=np.float64)).ravel()
    gap = np.abs(np.asarray(gaps, dtype=np.float64)).ravel()
    if err.shape != gap.shape:
        raise ValueError(f"completeness errors ({err.size}) and gaps ({gap.size}) differ in size")
    if err.size == 0:
        return None
    total_gap = float(gap.sum())
    floor = GAP_FLOOR_FRACTION * float(np.median(gap))
    above = gap >= floor if floor > 0 else gap > 0
    rel = err[above] / gap[above]
    return {
        "max_abs": float(err.max()),
        "mean_abs": float(err.mean()),
        "median_abs": float(np.median(err)),
        "relative_total": float(err.sum()) / total_gap if total_gap > 0 else None,
        "max_relative": float(rel.max()) if rel.size else None,
        "median_relative": float(np.median(rel)) if rel.size else None,
        "relative_floor": floor,
        "small_gap_paths": int(err.size - rel.size),
        "paths": int(err.size),
    }


def completeness_from_diagnostics(diagnostics: dict[str, Any] | None) -> dict[str, Any] | None:
    """`completeness_summary` from run.json's per-variant `diagnostics` (`j_full` [N, V], `j_baseline` and
    `completeness_error` [N, V, S]); None when they are absent or do not fit together (e.g. ragged)."""
    diag = diagnostics or {}
    try:
        j_full = np.asarray(diag["j_full"], dtype=np.float64)
        gaps = j_full[..., None] - np.asarray(diag["j_baseline"], dtype=np.float64)
        errors = np.asarray(diag["completeness_error"], dtype=np.float64)
        if errors.shape != gaps.shape:
            return None
        summary = completeness_summary(errors, gaps)
    except (KeyError, TypeError, ValueError):
        return None
    if summary is not None and "nodes" in diag:
        summary["nodes"] = nodes_summary(diag["nodes"])
    return summary


def nodes_summary(nodes: Any) -> dict[str, float] | None:
    """Distribution of the quadrature nodes each path used (run.json `diagnostics.nodes`, any shape)."""
    n = np.asarray(nodes, dtype=np.float64).ravel()
    if n.size == 0:
        return None
    return {
        "min": float(n.min()),
        "median": float(np.median(n)),
        "mean": float(n.mean()),
        "p90": float(np.percentile(n, 90)),
        "max": float(n.max()),
        "total": float(n.sum()),
    }


def completeness_lines(summary: dict[str, Any]) -> list[str]:
    """What `headattr attribute` prints about a path method's completeness (and its nodes, when recorded)."""
    c = summary.get("completeness")
    if not c:
        return []
    total = "n/a" if c.get("relative_total") is None else f"{c['relative_total']:.2%}"
    lines = [
        f"completeness error: {total} of the total gap |J(1) - J(b)|; per path median {c['median_abs']:.3g}, "
        f"max {c['max_abs']:.3g}"
    ]
    nodes = c.get("nodes")
    if nodes:
        lines.append(
            f"quadrature nodes per path: median {nodes['median']:g}, 90th percentile {nodes['p90']:g}, "
            f"max {nodes['max']:g} ({nodes['total']:g} gradient rows in all)"
        )
    return lines
