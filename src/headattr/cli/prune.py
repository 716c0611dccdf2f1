"""`headattr prune`: remove heads in the order of a run's scores and measure held-out loss (and task accuracy)."""

from __future__ import annotations

from pathlib import Path

import click

from headattr.cli.app import cli
from headattr.cli.options import (
    GENERATION_FLAGS,
    generation_options,
    generation_settings,
    held_out_options,
    model_config,
    model_options,
    parse_floats,
    parse_names,
    seed_type,
    sparse_options,
    sparse_settings,
)
from headattr.errors import HeadattrError
from headattr.pruning.settings import RANK_BY, PruneSettings
from headattr.runs.rundir import check_output_dir

DEFAULTS = PruneSettings()  # the flags' defaults are the settings class's


def _echo_prune(result, paths: dict) -> None:
    """Print the pruning table, the faithfulness line and where each output is."""
    from headattr.pruning.text import format_faithfulness, format_table, format_task, format_verdicts

    click.echo(format_table(result))
    for line in format_verdicts(result) + format_task(result):
        click.echo(line)
    line = format_faithfulness(result)
    if line:
        click.echo(line)
    for path in paths.values():
        click.echo(f"wrote {path}")


def _generation(spec, eval_kind: str, task: str, flags: dict, batch_size: int, seed: int, sparse=None):
    """`--eval generate`: the generated-answer evaluation (task, the family's settings from the flags, sparse
    attention); else None."""
    if eval_kind != "generate":
        return None
    from headattr.generation.taskeval import GenerationEval

    return GenerationEval.from_text(task, generation_settings(spec, flags), batch_size, seed, sparse)


@cli.command("prune")
@click.argument("model")
@click.option(
    "--scores",
    "scores_run",
    required=True,
    type=click.Path(path_type=Path),
    help="Run directory whose scores rank the heads.",
)
@held_out_options
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory for the pruning outputs.")
@click.option(
    "--fractions",
    default=",".join(f"{f:g}" for f in DEFAULTS.fractions),
    show_default=True,
    help="Fractions of heads to remove.",
)
@click.option("--orders", default=",".join(DEFAULTS.orders), show_default=True, help="Removal orders.")
@click.option(
    "--random-orders",
    type=click.IntRange(min=0),
    default=DEFAULTS.random_orders,
    show_default=True,
    help="Number of random orders.",
)
@click.option("--seed", type=seed_type, default=DEFAULTS.seed, show_default=True, help="Seed of the random orders.")
@click.option("--per-layer", is_flag=True, help="Remove the same fraction of heads in every layer.")
@click.option(
    "--rank-by",
    type=click.Choice(RANK_BY),
    default=DEFAULTS.rank_by,
    show_default=True,
    help="Rank heads by signed score, or by |score| (least = nearest zero).",
)
@click.option("--single-head", is_flag=True, help="Also remove each head on its own; correlate with the scores.")
@click.option("--exact-match", is_flag=True, help="Also decode each answer from a fully masked answer (slower).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Rows per forward pass.")
@click.option(
    "--eval",
    "eval_kind",
    type=click.Choice(["loss", "generate"]),
    default="loss",
    show_default=True,
    help="generate: also generate every held-out answer with the model's sampler and score it with --task.",
)
@click.option("--task", default="exact", show_default=True, help="gsm8k, exact, contains or regex:PATTERN.")
@click.option("--generation-seed", type=seed_type, default=0, show_default=True, help="Seed of the sampler.")
@generation_options
@sparse_options
@click.option("--overwrite", is_flag=True, help="Replace the pruning files in an existing --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@model_options
def prune_cmd(
    model: str,
    scores_run: Path,
    data_path: Path | None,
    eval_data: Path | None,
    exclude_runs: tuple[Path, ...],
    out: Path,
    fractions: str,
    orders: str,
    random_orders: int,
    seed: int,
    per_layer: bool,
    rank_by: str,
    single_head: bool,
    exact_match: bool,
    eval_samples: int,
    eval_seed: int,
    batch_size: int,
    eval_kind: str,
    task: str,
    generation_seed: int,
    overwrite: bool,
    quiet: bool,
    **options,
) -> None:
    """Remove MODEL's heads in the order of a run's scores and measure the loss on held-out samples.
    \f
    Long because its signature lists the command's 22 flags (one parameter each, as click passes them).
    """
    from headattr.pruning.outputs import write_outputs
    from headattr.pruning.runner import prune
    from headattr.pruning.samples import check_run_matches, select_eval_samples
    from headattr.runs.rundir import read_run

    check_output_dir(out, overwrite)
    settings = PruneSettings(
        fractions=parse_floats(fractions, "--fractions"),
        orders=parse_names(orders),
        random_orders=random_orders,
        seed=seed,
        per_layer=per_layer,
        rank_by=rank_by,
        single_head=single_head,
        decode=exact_match,
    )
    loading = model_config(options)
    run = read_run(scores_run)
    excluded = [read_run(path) for path in exclude_runs]
    gen_flags = {k: options.pop(k) for k in GENERATION_FLAGS}
    if eval_kind != "generate" and any(v is not None for v in gen_flags.values()):
        raise HeadattrError("generation settings (--steps, --alg, ...) need --eval generate")
    sparse = sparse_settings(options)
    if eval_kind != "generate" and sparse is not None:
        raise HeadattrError("--sparse changes generation: it needs --eval generate")
    spec = loading.load(model)
    check_run_matches(spec, run)
    generation = _generation(spec, eval_kind, task, gen_flags, batch_size, generation_seed, sparse)
    selection = select_eval_samples(
        spec, run, data=data_path, eval_data=eval_data, n=eval_samples, seed=eval_seed, exclude_runs=excluded
    )
    held_out = f"{len(selection.samples)} held-out samples of {selection.source}"
    click.echo(
        f"{spec.name}: {spec.num_layers} layers x {spec.num_heads} heads; evaluating on {held_out} "
        f"({selection.excluded} attribution rows excluded)",
        err=True,
    )
    result = prune(
        spec, run, selection.samples, settings, batch_size=batch_size, progress=not quiet, generation=generation
    )
    result.eval_info.update(selection.to_dict(), eval_seed=eval_seed)
    _echo_prune(result, write_outputs(result, out))
