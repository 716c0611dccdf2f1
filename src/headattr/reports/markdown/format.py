"""How the report prints numbers and tables: correlations, percentages, scores, p-values, intervals, Markdown tables.

Correlations are printed with 4 decimals, overlaps and shares as percentages with 1 decimal, and a metric
that is not defined (a constant layer, K >= N) as "N/A".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from headattr.analysis.results import Summary
from headattr.stats.intervals import Interval

NA = "N/A"
LEVEL_ICONS = {"very_high": "🟢", "high": "🟢", "moderate": "🟡", "low": "🔴", "undetermined": "⚪"}


def fmt_corr(x: float | None) -> str:
    """A correlation with 4 decimals, or N/A."""
    return NA if x is None else f"{x:.4f}"


def fmt_pct(x: float | None) -> str:
    """A fraction as a percentage with 1 decimal, or N/A."""
    return NA if x is None else f"{100 * x:.1f}%"


def fmt_score(x: float | None) -> str:
    """A head score: 6 decimals, or scientific notation when that would print as zero."""
    if x is None:
        return NA
    return f"{x:.6f}" if x == 0 or abs(x) >= 1e-4 else f"{x:.3e}"


def fmt_p(x: float | None) -> str:
    """A p-value with 3 significant digits, or N/A."""
    return NA if x is None else f"{x:.3g}"


def fmt_int(x: int | None) -> str:
    """An integer, or N/A."""
    return NA if x is None else str(x)


def fmt_interval(iv: Interval | None, fmt: Callable[[float | None], str] = fmt_corr) -> str:
    """An interval as [low, high] in `fmt`, or N/A."""
    if iv is None or iv.low is None or iv.high is None:
        return NA
    return f"[{fmt(iv.low)}, {fmt(iv.high)}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines (shared by the compare report and `headattr methods`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def layers_text(layers: list[int]) -> str:
    """Layer indices, comma-separated."""
    return ", ".join(str(i) for i in layers)


def nodes_cell(nodes: dict[str, float] | None) -> str:
    """Quadrature nodes as median / p90 / max, or N/A."""
    return "N/A" if not nodes else f"{nodes['median']:g} / {nodes['p90']:g} / {nodes['max']:g}"


def summary_cells(s: Summary) -> list[str]:
    """The table cells of a `Summary`: mean, median, min, max, std, N/A count."""
    return [fmt_corr(s.mean), fmt_corr(s.median), fmt_corr(s.min), fmt_corr(s.max), fmt_corr(s.std), str(s.n_missing)]


def value_text(v: Any) -> str:
    """A configuration value as printed in the report (floats in %g, lists in brackets)."""
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(value_text(x) for x in v) + "]"
    return NA if v is None else str(v)
