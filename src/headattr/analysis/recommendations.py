"""The practical recommendations of a comparison: fixed rules applied to its measured numbers.

Each rule produces a structured item (`rule`, `kind` ok/caution, and its numbers), rendered by the report:

1. `all_layers_consistent` (ok): in every pair, every layer has Pearson > good_threshold.
   `layers_below_threshold` (caution) otherwise: those layers, with their lowest Pearson over pairs.
2. `reliability_met` (ok): in every run, every layer's split-half reliability r_full >= target.
   `more_samples` (caution) otherwise: the layers below target, grouped by band, with the projected number
   of samples (largest over the band's layers and over runs) to reach the target.
3. `no_signal_layers` (caution): layers whose split-half r_full is <= 0 or N/A in some run: the head
   differences there are not distinguishable from sample noise, so no sample count can be projected.
4. `ensemble_helps` (ok) / `ensemble_short` (caution): when rule 2 fires and there are several runs: the
   layers of rule 2 whose projected reliability after pooling all runs' samples (Spearman-Brown from the
   lowest per-run r_full, lengthened by total samples / that run's samples) reaches / stays below target.
5. `stable_top_k` (ok) / `unstable_top_k` (caution): the K values whose global top-K overlap is at least
   OVERLAP_STABLE (0.9) in every pair / below it in some pair.
6. `config_differences` (caution): configuration keys that differ between runs, other than the seeds and
   the settings that cannot change the numbers (batch_size, grad_checkpoint, attn_implementation).
7. `shared_samples` (caution): pairs of runs that share samples (same sample hash): their agreement is
   partly agreement on identical data.
8. `completeness_ok` (ok) / `completeness_high` (caution): the relative completeness error
   (sum |error| / sum |J(1) - J(baseline)|, from run.json diagnostics) is at most / above
   COMPLETENESS_RTOL (0.05) in every / some run; above it, raise --ig-steps.
9. `scores_only_runs` (caution): runs without per-sample attributions (imported): their reliability and
   the pairs' intervals are N/A, and rules 2-4 use the other runs only.
"""

from __future__ import annotations

from typing import Any

from headattr.analysis.results import Comparison, Number
from headattr.stats.reliability import spearman_brown


def recommendations(comp: Comparison) -> list[dict[str, Any]]:
    """The recommendation items: the rules in the module docstring applied to the measured numbers."""
    s = comp.settings
    items: list[dict[str, Any]] = []
    items += _rule_threshold(comp)
    items += _rule_reliability(comp)
    items += _rule_top_k(comp)
    diffs = [d["key"] for d in comp.config_differences if d["kind"] == "flagged"]
    if diffs:
        items.append({"rule": "config_differences", "kind": "caution", "keys": diffs})
    shared = [{"a": p.a, "b": p.b, "count": p.shared_samples} for p in comp.pairs if p.shared_samples]
    if shared:
        items.append({"rule": "shared_samples", "kind": "caution", "pairs": shared})
    rel = [(r.label, (r.completeness or {}).get("relative_total")) for r in comp.runs]
    measured = [(label, x) for label, x in rel if x is not None]
    if measured:
        high = [{"run": label, "relative": x} for label, x in measured if x > s.completeness_rtol]
        if high:
            items.append({"rule": "completeness_high", "kind": "caution", "runs": high, "rtol": s.completeness_rtol})
        else:
            items.append(
                {
                    "rule": "completeness_ok",
                    "kind": "ok",
                    "max_relative": max(x for _, x in measured),
                    "rtol": s.completeness_rtol,
                }
            )
    return items


def _rule_threshold(comp: Comparison) -> list[dict[str, Any]]:
    """Rule 1: every layer above the good threshold in every pair, or the layers that are not."""
    threshold = comp.settings.good_threshold
    lowest: list[Number] = []
    for layer in range(comp.num_layers):
        values = [p.layers[layer].pearson for p in comp.pairs]
        lowest.append(None if None in values else min(values))  # type: ignore[type-var]
    below = [{"layer": i, "min_pearson": v} for i, v in enumerate(lowest) if v is None or v <= threshold]
    if not below:
        return [
            {
                "rule": "all_layers_consistent",
                "kind": "ok",
                "threshold": threshold,
                "num_layers": comp.num_layers,
                "min_pearson": min(lowest),
            }
        ]  # type: ignore[type-var]
    return [{"rule": "layers_below_threshold", "kind": "caution", "threshold": threshold, "layers": below}]


def _rule_reliability(comp: Comparison) -> list[dict[str, Any]]:
    """Rules 2-4 and 9: split-half reliability against the target, over the runs with per-sample attributions."""
    target = comp.settings.target
    items: list[dict[str, Any]] = []
    scores_only = [r.label for r in comp.runs if r.scores_only]
    if scores_only:
        items.append({"rule": "scores_only_runs", "kind": "caution", "runs": scores_only})
    rel = [r.reliability for r in comp.runs if not r.scores_only]  # scores-only runs have no reliability
    if not rel:
        return items
    no_signal = [i for i in range(comp.num_layers) if any(r.full_layer[i] is None or r.full_layer[i] <= 0 for r in rel)]
    short = [
        i
        for i in range(comp.num_layers)
        if i not in no_signal and any(r.full_layer[i] < target for r in rel)  # type: ignore[operator]
    ]
    if not short and not no_signal:
        lowest = min(min(r.full_layer) for r in rel)  # type: ignore[type-var]
        items.append(
            {
                "rule": "reliability_met",
                "kind": "ok",
                "target": target,
                "min_reliability": lowest,
                "num_samples": min(r.n_samples for r in rel),
            }
        )
    if short:
        bands = []
        for (lo, hi), name in zip(comp.settings.bands, comp.settings.band_names, strict=True):
            layers = [i for i in short if lo <= i <= hi]
            if layers:
                needed = max(n for i in layers for r in rel if (n := r.needed_layer[i]) is not None)
                bands.append({"band": name, "first": lo, "last": hi, "layers": layers, "samples_needed": needed})
        items.append(
            {
                "rule": "more_samples",
                "kind": "caution",
                "target": target,
                "bands": bands,
                "num_samples": [r.n_samples for r in rel],
            }
        )
        if len(rel) > 1:
            items += _rule_ensemble(comp, short)
    if no_signal:
        items.append({"rule": "no_signal_layers", "kind": "caution", "layers": no_signal})
    return items


def _rule_ensemble(comp: Comparison, short: list[int]) -> list[dict[str, Any]]:
    """Projected reliability of pooling every run's samples, from the lowest per-run reliability."""
    rel = [r.reliability for r in comp.runs if not r.scores_only]
    total = sum(r.n_samples for r in rel)
    target = comp.settings.target
    projected: dict[int, Number] = {}
    for i in short:
        worst = min(rel, key=lambda r: r.full_layer[i])
        projected[i] = spearman_brown(worst.full_layer[i], total / worst.n_samples)
    reached = [i for i, v in projected.items() if v is not None and v >= target]
    below = [i for i in projected if i not in reached]
    base = {"runs": len(rel), "total_samples": total, "target": target}
    items = []
    if reached:
        items.append(
            {
                "rule": "ensemble_helps",
                "kind": "ok",
                **base,
                "layers": reached,
                "projected": {i: projected[i] for i in reached},
            }
        )
    if below:
        items.append(
            {
                "rule": "ensemble_short",
                "kind": "caution",
                **base,
                "layers": below,
                "projected": {i: projected[i] for i in below},
            }
        )
    return items


def _rule_top_k(comp: Comparison) -> list[dict[str, Any]]:
    """Rule 5: the K values whose global top-K overlap is stable in every pair, and those that are not."""
    stable, unstable = [], []
    for k in comp.settings.top_k:
        values = [p.global_metrics.overlap[k] for p in comp.pairs]
        if None in values:
            continue
        worst = min(values)  # type: ignore[type-var]
        (stable if worst >= comp.settings.overlap_stable else unstable).append({"k": k, "min_overlap": worst})
    items = []
    if stable:
        items.append({"rule": "stable_top_k", "kind": "ok", "threshold": comp.settings.overlap_stable, "ks": stable})
    if unstable:
        items.append(
            {"rule": "unstable_top_k", "kind": "caution", "threshold": comp.settings.overlap_stable, "ks": unstable}
        )
    return items
