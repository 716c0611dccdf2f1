"""`headattr compare` and `headattr ensemble`: what is computed from finished runs (no model is loaded)."""

from __future__ import annotations

from pathlib import Path

import click

from headattr.analysis.options import CompareSettings
from headattr.cli.app import cli
from headattr.cli.options import seed_type
from headattr.runs.rundir import check_output_dir

DEFAULTS = CompareSettings()  # the flags' defaults are the settings class's


@cli.command("compare")
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory for report.md, metrics.json, layer_metrics.csv and consistency_analysis.png.",
)
@click.option("--lang", type=click.Choice(["en", "zh"]), default="en", show_default=True, help="Language of report.md.")
@click.option(
    "--top-k", default=",".join(map(str, DEFAULTS.top_k)), show_default=True, help="K values of the top-K overlaps."
)
@click.option(
    "--good-threshold",
    type=float,
    default=DEFAULTS.good_threshold,
    show_default=True,
    help="Per-layer Pearson that counts as good.",
)
@click.option("--bands", default=None, help="Layer bands FIRST-LAST,..., e.g. 0-5,6-15,16-27 (default: thirds).")
@click.option(
    "--intervals/--no-intervals", default=DEFAULTS.intervals, show_default=True, help="Jackknife 95% intervals."
)
@click.option(
    "--bootstrap", type=click.IntRange(min=0), default=None, help="Former bootstrap replicates; 0 = --no-intervals."
)
@click.option("--seed", type=seed_type, default=DEFAULTS.seed, show_default=True, help="Seed of the split-half draws.")
@click.option(
    "--target",
    type=float,
    default=DEFAULTS.target,
    show_default=True,
    help="Reliability the sample projections aim at.",
)
@click.option("--overwrite", is_flag=True, help="Replace the report files in an existing --out.")
def compare_cmd(runs: tuple[Path, ...], out: Path, lang: str, overwrite: bool, **settings) -> None:
    """Compare two or more runs of the same model: report.md, metrics.json, layer_metrics.csv, figure."""
    from headattr.analysis.comparison import compare as compare_api
    from headattr.reports.markdown.format import fmt_corr
    from headattr.reports.outputs import write_outputs

    check_output_dir(out, overwrite)
    comparison = compare_api(list(runs), **settings)
    paths = write_outputs(comparison, out, lang=lang, overwrite=overwrite)
    v = comparison.verdict
    click.echo(
        f"consistency: {v.level.replace('_', ' ')} (mean per-layer Pearson {fmt_corr(v.pearson_mean)}, "
        f"Spearman {fmt_corr(v.spearman_mean)})"
    )
    for path in paths.values():
        click.echo(f"wrote {path}")


@cli.command("ensemble")
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="New run directory for the ensemble.")
@click.option("--overwrite", is_flag=True, help="Replace the run files in an existing --out.")
def ensemble_cmd(runs: tuple[Path, ...], out: Path, overwrite: bool) -> None:
    """Average runs of the same model into a new run directory (usable by compare)."""
    from headattr.runs.ensembling import ensemble as ensemble_api

    path = ensemble_api(list(runs), out, overwrite=overwrite)
    click.echo(f"wrote {path}/ (scores.safetensors, run.json, heads.csv, heatmap.png) from {len(runs)} runs")
