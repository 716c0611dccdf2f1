"""`headattr export`, `import` and `budget`: head scores to and from other tools' formats."""

from __future__ import annotations

from pathlib import Path

import click

from headattr.cli.app import cli
from headattr.runs.budget import BudgetRule


@cli.command("export")
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(["adaptive-dllm", "npy", "csv", "json", "head-mask"]),
    help="adaptive-dllm: head_importance.pt; npy [L, H]; csv heads table; json; head-mask: 0/1 keep masks.",
)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="File (head-mask: OUT.safetensors + OUT.json)."
)
@click.option("--keep", default="0.5", show_default=True, help="head-mask: fractions of heads to keep, e.g. 0.5,0.7.")
@click.option("--per-layer", is_flag=True, help="head-mask: keep the fraction in every layer.")
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
def export_cmd(run: Path, fmt: str, out: Path, keep: str, per_layer: bool, overwrite: bool) -> None:
    """Write RUN's head scores for other tools (larger = more important in every format)."""
    from headattr.runs.interop import export_run

    for path in export_run(run, fmt, out, keep=keep, per_layer=per_layer, overwrite=overwrite):
        click.echo(f"wrote {path}")


@cli.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory to create.")
@click.option("--negate", is_flag=True, help="Negate the scores (files that attribute the loss: useful heads < 0).")
@click.option("--model", default=None, help="The scores' model (directory or hub id), so that `prune` accepts the run.")
@click.option("--overwrite", is_flag=True, help="Replace the run files in an existing --out.")
def import_cmd(file: Path, out: Path, negate: bool, model: str | None, overwrite: bool) -> None:
    """Turn a head_importance.pt (loaded weights-only: no code runs) into a scores-only run directory."""
    from headattr.runs.interop import import_head_importance

    path = import_head_importance(file, out, negate=negate, model=model, overwrite=overwrite)
    sign = ", negated" if negate else ""
    click.echo(f"wrote {path}/ (scores.safetensors, run.json, heads.csv, heatmap.png): scores only{sign}")


def _rule_option(flag: str, help: str):
    """A `BudgetRule` field as a float flag, defaulting to the rule's default."""
    field = flag.removeprefix("--").replace("-", "_")
    return click.option(flag, type=float, default=getattr(BudgetRule, field), show_default=True, help=help)


@cli.command("budget")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="JSON file to write.")
@_rule_option("--select", "Mean keep ratio.")
@_rule_option("--min-keep", "Smallest keep ratio of a head.")
@click.option("--gqa", type=click.Choice(["q", "kv"]), default="q", show_default=True, help="Per query or KV head.")
@click.option("--kv-heads", type=int, default=None, help="KV heads per layer (default: the run's model).")
@_rule_option("--low-percentile", "Score percentile mapped to 0.")
@_rule_option("--high-percentile", "Score percentile mapped to 1.")
@_rule_option("--slope", "w = 1 + slope * 2 * (s - 0.5).")
@_rule_option("--min-weight", "Weights clamped below at this.")
@_rule_option("--max-weight", "Weights clamped above at this.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
def budget_cmd(run: Path, out: Path, gqa: str, kv_heads: int | None, overwrite: bool, **rule) -> None:
    """Per-head keep ratios for block-sparse attention from RUN's scores (the rule: headattr.budget)."""
    from headattr.runs.budget import attention_budget, write_budget

    doc = attention_budget(run, rule=BudgetRule(**rule), gqa=gqa, num_kv_heads=kv_heads)
    path = write_budget(doc, out, overwrite=overwrite)
    rows, cols = doc["shape"]
    click.echo(f"mean keep ratio {doc['mean_keep_ratio']:.4f} over {rows} x {cols} {doc['heads']} heads")
    click.echo(f"wrote {path}")
