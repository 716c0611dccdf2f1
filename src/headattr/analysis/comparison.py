"""`compare`: the entry point of `headattr compare`, and the run x run matrices of the headline metrics.

Two runs of `headattr attribute` on the same model differ only in their random draws (samples, masks).
`compare` measures how much their head scores agree (`agreement`), how much of the disagreement is
sampling noise (`uncertainty`, `reliability`), and how many samples would make each layer reproducible;
everything is computed from the run directories, and the report (`headattr.reports`) only formats these
numbers. With more than two runs the verdict uses the means over all pairs. The metrics.json schema is in
docs/compare.md.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headattr.analysis.agreement import mean_of, pair_metrics, verdict_level
from headattr.analysis.inputs import config_differences, load_runs, run_labels, summarize_run
from headattr.analysis.options import (
    Applied,
    CompareSettings,
    check_bands,
    check_options,
    default_bands,
    focus_k,
)
from headattr.analysis.recommendations import recommendations
from headattr.analysis.reliability import NA_NO_SAMPLES
from headattr.analysis.results import Comparison, Number, PairMetrics, RunSummary, Verdict
from headattr.analysis.uncertainty import pair_intervals
from headattr.methods.aggregate import sample_scores
from headattr.runs.rundir import Run, check_same_model, has_samples

MATRIX_METRICS: dict[str, Callable[[PairMetrics, int | None], Number]] = {
    "mean_layer_pearson": lambda p, k: p.summary["pearson"].mean,
    "mean_layer_spearman": lambda p, k: p.summary["spearman"].mean,
    "global_pearson": lambda p, k: p.global_metrics.pearson,
    "global_spearman": lambda p, k: p.global_metrics.spearman,
    "mean_layer_overlap_focus": lambda p, k: p.overlap_summary[k].mean if k else None,
}


def pair_matrix(pairs: list[PairMetrics], num_runs: int, focus_k: int | None) -> tuple[dict, dict]:
    """Symmetric run x run matrices of the headline metrics (diagonal None) and their mean over pairs."""
    matrix: dict[str, list[list[Number]]] = {}
    means: dict[str, Number] = {}
    for name, get in MATRIX_METRICS.items():
        grid: list[list[Number]] = [[None] * num_runs for _ in range(num_runs)]
        for p in pairs:
            grid[p.a][p.b] = grid[p.b][p.a] = get(p, focus_k)
        matrix[name] = grid
        means[name] = mean_of([get(p, focus_k) for p in pairs])
    return matrix, means


def compare(
    runs: Sequence[Run | str | Path],
    top_k: str | Sequence[int] | None = None,
    good_threshold: float | None = None,
    bands: str | Sequence[Sequence[int]] | None = None,
    bootstrap: int | None = None,
    seed: int | None = None,
    target: float | None = None,
    splits: int | None = None,
    intervals: bool | None = None,
    *,
    settings: CompareSettings | None = None,
) -> Comparison:
    """Compare two or more runs of the same model; every number of `headattr compare` is in the result.

    `runs` are `Run` objects or run directories; scores-only runs (imported, no per-sample attributions)
    are compared on their scores, with reliability and intervals N/A. What is computed is `settings`
    (default `CompareSettings()`); the keyword arguments of the same names, where given, override its fields.
    `bootstrap` is kept for callers of the former bootstrap: 0 means `intervals=False`, any other count is
    accepted and unused (the jackknife needs no replicates).
    Raises `HeadattrError` for bad input (fewer than two runs, different models, bad options).
    """
    chosen = (settings or CompareSettings()).override(
        top_k=top_k, good_threshold=good_threshold, bands=bands, seed=seed, target=target, splits=splits
    )
    check_options(chosen.good_threshold, bootstrap, chosen.target, chosen.splits)
    with_intervals = (chosen.intervals if intervals is None else bool(intervals)) and bootstrap != 0
    loaded = load_runs(runs)
    check_same_model(loaded)
    num_layers, num_heads = loaded[0].scores.shape
    applied = _applied(chosen, with_intervals, num_layers, num_heads)
    per_sample = [_sample_scores(r) for r in loaded]
    labels = run_labels(loaded)
    summaries = [summarize_run(r, labels[i], per_sample[i], applied, i) for i, r in enumerate(loaded)]
    pairs = [
        pair_metrics(loaded, summaries, a, b, applied) for a in range(len(loaded)) for b in range(a + 1, len(loaded))
    ]
    if applied.intervals:
        _add_intervals(pairs, per_sample, applied)
    matrix, means = pair_matrix(pairs, len(loaded), applied.focus_k)
    common, diffs = _config_table(summaries)
    model = dict(loaded[0].meta.get("model", {}))
    model.update(num_layers=int(num_layers), num_heads=int(num_heads))
    comp = Comparison(
        settings=applied,
        model=model,
        runs=summaries,
        common_config=common,
        config_differences=diffs,
        pairs=pairs,
        matrix=matrix,
        matrix_mean=means,
        verdict=Verdict(
            verdict_level(means["mean_layer_pearson"], means["mean_layer_spearman"]),
            means["mean_layer_pearson"],
            means["mean_layer_spearman"],
        ),
        consistent_layers=sum(
            all(p.layers[i].pearson is not None and p.layers[i].pearson > applied.good_threshold for p in pairs)
            for i in range(num_layers)
        ),
        recommendations=[],
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    comp.recommendations = recommendations(comp)
    return comp


def _sample_scores(run: Run) -> np.ndarray | None:
    """[N, L, H] per-sample scores of a run with samples, post-processed as the run's scores were; else None."""
    if not has_samples(run):
        return None
    return sample_scores(run.attributions, str(run.meta.get("config", {}).get("postprocess", "signed")))


def _applied(chosen: CompareSettings, intervals: bool, num_layers: int, num_heads: int) -> Applied:
    """The comparison's `Applied` for a model of `num_layers` x `num_heads` (default bands: thirds)."""
    ks, band_ranges = list(chosen.top_k), None if chosen.bands is None else list(chosen.bands)
    if band_ranges is None:
        band_ranges, band_names = default_bands(num_layers)
    else:
        check_bands(band_ranges, num_layers)
        band_names = ["custom"] * len(band_ranges)
    return Applied(
        top_k=ks,
        focus_k=focus_k(ks, num_heads),
        good_threshold=float(chosen.good_threshold),
        bands=band_ranges,
        band_names=band_names,
        intervals=intervals,
        seed=int(chosen.seed),
        target=float(chosen.target),
        splits=int(chosen.splits),
    )


def _add_intervals(pairs: list[PairMetrics], per_sample: list[np.ndarray | None], settings: Applied) -> None:
    """Set each pair's jackknife intervals, or the reason it has none (a scores-only run)."""
    for p in pairs:
        pa, pb = per_sample[p.a], per_sample[p.b]
        if pa is None or pb is None:
            p.intervals_note = NA_NO_SAMPLES
            continue
        estimates = {
            "global_pearson": p.global_metrics.pearson,
            "global_spearman": p.global_metrics.spearman,
            "mean_layer_pearson": p.summary["pearson"].mean,
            "mean_layer_spearman": p.summary["spearman"].mean,
        }
        p.intervals = pair_intervals(pa, pb, estimates, settings.ci_level)


def _config_table(summaries: list[RunSummary]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`config_differences` of the runs, with one value per run (None for scores-only runs)."""
    # scores-only (imported) runs record no settings: compare the settings of the other runs only
    full = [i for i, summary in enumerate(summaries) if not summary.scores_only]
    common, diffs = config_differences([summaries[i].config for i in full] or [{}])
    for d in diffs:
        values: list[Any] = [None] * len(summaries)
        for pos, i in enumerate(full):
            values[i] = d["values"][pos]
        d["values"] = values
    return common, diffs
