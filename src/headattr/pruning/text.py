"""A pruning result as the text `headattr prune` prints: the table, the verdicts, task accuracy, faithfulness."""

from __future__ import annotations

from typing import Any

import numpy as np

from headattr.pruning.results import PruneResult
from headattr.pruning.verdicts import worse_sign


def format_table(result: PruneResult) -> str:
    """The results as a compact text table: one row per fraction (0 = unpruned), one column per order.

    Random orders show their mean and standard deviation.
    """
    short = {"loss": "loss", "accuracy": "acc", "exact_match": "exact"}
    header = ["frac", "heads"]
    for metric in result.metrics:
        name = short.get(metric, metric)
        header += [f"{name} {o}" + ("(±std)" if o == "random" else "") for o in result.display_orders]
    lines = [header]
    base = ["0", "0"]
    for metric in result.metrics:
        base += [f"{result.baseline.value(metric):.4f}"] * len(result.display_orders)
    lines.append(base)
    for i, frac in enumerate(result.fractions):
        row = [f"{frac:g}", str(result.num_removed[i])]
        for metric in result.metrics:
            for order in result.display_orders:
                if order == "random":
                    s = result.random_summary(metric)
                    row.append(f"{s['mean'][i]:.4f}±{s['std'][i]:.4f}")
                else:
                    row.append(f"{result.curves[order][metric][i]:.4f}")
        lines.append(row)
    widths = [max(len(r[c]) for r in lines) for c in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in lines)


def format_verdict_row(row: dict[str, Any]) -> str:
    """`yes`/`no` with the numbers behind it: most, random mean [95% interval], least, and the percentiles."""
    return (
        f"{'yes' if row['holds'] else 'no'} (most {row['most']:.4f} [pct {row['most_percentile']:.0f}], random "
        f"{row['random_mean']:.4f} [{row['random_low']:.4f}, {row['random_high']:.4f}], least {row['least']:.4f} "
        f"[pct {row['least_percentile']:.0f}])"
    )


def format_verdicts(result: PruneResult) -> list[str]:
    """Per metric and fraction, and for the area up to 0.3: does most > random > least hold beyond the random
    mean's 95% interval (in the metric's worse direction), with the numbers it rests on."""
    verdicts = result.verdicts()
    if not verdicts:
        return []
    lines = [f"verdict: {verdicts['rule']}; pct = percentile among the {verdicts['random_orders']} random orders"]
    for metric, v in verdicts["metrics"].items():
        worse = "higher" if worse_sign(metric) > 0 else "lower"
        lines.append(f"{metric} ({worse} is worse):")
        for row in v["fractions"]:
            lines.append(f"  {row['fraction']:g}: {format_verdict_row(row)}")
        if v["area"] is not None:
            lines.append(f"  area 0-{v['area']['upto']:g}: {format_verdict_row(v['area'])}")
    return lines


def format_task(result: PruneResult) -> list[str]:
    """Task accuracy of generated answers with 95% Wilson intervals, per metric and fraction (if measured)."""
    summary = result.task_summary()
    if summary is None:
        return []
    lines = [f"generated answers, task {summary['task']} (accuracy [95% Wilson interval]):"]
    for metric, base in summary["baseline"].items():
        lines.append(f"  {metric} unpruned {base['accuracy']:.3f} [{base['low']:.3f}, {base['high']:.3f}]")
        for i, frac in enumerate(result.fractions):
            parts = []
            for order in result.display_orders:
                c = summary["curves"][order][metric]
                if order == "random":
                    runs = np.asarray(c["accuracy"])[:, i]
                    parts.append(f"random {runs.mean():.3f} (mean of {len(runs)})")
                else:
                    parts.append(f"{order} {c['accuracy'][i]:.3f} [{c['low'][i]:.3f}, {c['high'][i]:.3f}]")
            lines.append(f"  {metric} at {frac:g}: " + "  ".join(parts))
    return lines


def format_faithfulness(result: PruneResult) -> str | None:
    """One line on the single-head ablation correlation, if it was measured."""
    sh = result.single_head
    if sh is None:
        return None

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:+.3f}"

    p = "" if sh["spearman_p"] is None else f" (p={sh['spearman_p']:.2g})"
    return (
        f"single-head ablation vs scores: Spearman {fmt(sh['spearman'])} over all heads{p}, "
        f"mean per layer {fmt(sh['spearman_per_layer_mean'])}; vs |scores|: {fmt(sh['abs']['spearman'])}, "
        f"mean per layer {fmt(sh['abs']['spearman_per_layer_mean'])}"
    )
