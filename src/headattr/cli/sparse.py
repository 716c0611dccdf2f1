"""`headattr sparse`: held-out items generated dense and under head-adaptive, uniform, inverted and random sparse
attention budgets, compared with paired statistics (the work: `headattr.sparsity`, the report:
`headattr.reports.sparse`)."""

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
)
from headattr.reports.strings import LANGS, check_lang
from headattr.runs.rundir import check_output_dir
from headattr.sparsity.settings import SparseEvalSettings

DEFAULTS = SparseEvalSettings()  # the flags' defaults are the settings class's


def _echo_summary(summary: dict, paths: dict) -> None:
    """One line per configuration (primary metric), one per paired comparison, and the files written."""
    from headattr.sparsity.results import named_verdict

    metric = summary["task"]["metrics"][0]
    for c in summary["configurations"]:
        a, used, spt = c["accuracy"][metric], c["budget_used"], c["seconds_per_token"]
        click.echo(
            f"{c['name']:>18}  {metric} {a['accuracy']:.3f} [{a['low']:.3f}, {a['high']:.3f}]  "
            f"budget used {'N/A' if used is None else f'{used:.3f}'}  "
            f"{'N/A' if spt is None else f'{spt:.4g}'} s/token"
        )
    for c in summary["comparisons"]:
        if c["metric"] == metric:
            click.echo(
                f"{c['a']} vs {c['b']}: {c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}], "
                f"McNemar p {c['p_value']:.3g}: {named_verdict(c)}"
            )
    for path in paths.values():
        click.echo(f"wrote {path}")


@cli.command("sparse")
@click.argument("model")
@click.option(
    "--scores", "scores_run", required=True, type=click.Path(path_type=Path), help="Run whose scores allocate."
)
@held_out_options
@click.option("--task", default="exact", show_default=True, help="gsm8k, exact, contains or regex:PATTERN.")
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Directory for sparse.json, sparse.png, sparse.md."
)
@click.option(
    "--select",
    "selects",
    default=",".join(f"{s:g}" for s in DEFAULTS.selects),
    show_default=True,
    help="Mean keep ratios.",
)
@click.option(
    "--allocations", default=",".join(DEFAULTS.allocations), show_default=True, help="Allocations to compare."
)
@click.option(
    "--random-draws",
    type=click.IntRange(min=1),
    default=DEFAULTS.random_draws,
    show_default=True,
    help="Random permutations.",
)
@click.option(
    "--seed", type=seed_type, default=DEFAULTS.seed, show_default=True, help="Seed of the random permutations."
)
@click.option("--sparse-block", type=int, default=DEFAULTS.block_size, show_default=True, help="Tokens per block.")
@click.option(
    "--sparse-skip", type=float, default=DEFAULTS.skip, show_default=True, help="Dense fraction of the steps."
)
@click.option(
    "--sparse-min-keep", type=float, default=DEFAULTS.min_keep, show_default=True, help="Floor of a head's keep ratio."
)
@click.option(
    "--sparse-gqa",
    type=click.Choice(["kv", "q"]),
    default=DEFAULTS.gqa,
    show_default=True,
    help="Allocate per KV group or per query head.",
)
@click.option(
    "--sparse-compat",
    type=click.Choice(["none", "origin"]),
    default="none",
    show_default=True,
    help="origin: one LLaDA mask across blocks.",
)
@click.option(
    "--sparse-kernel",
    type=click.Choice(["flex", "sdpa"]),
    default=DEFAULTS.kernel,
    show_default=True,
    help="Sparse attention kernel.",
)
@click.option(
    "--resamples",
    type=click.IntRange(min=100),
    default=DEFAULTS.resamples,
    show_default=True,
    help="Paired bootstrap draws.",
)
@click.option(
    "--bootstrap-seed",
    type=seed_type,
    default=DEFAULTS.bootstrap_seed,
    show_default=True,
    help="Seed of the bootstrap.",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Prompts per generate call."
)
@click.option("--generation-seed", type=seed_type, default=0, show_default=True, help="Seed of the sampler.")
@generation_options
@click.option("--lang", type=click.Choice(LANGS), default="en", show_default=True, help="Language of sparse.md.")
@click.option("--overwrite", is_flag=True, help="Replace the files in an existing --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@model_options
def sparse_cmd(model: str, scores_run: Path, **flags) -> None:
    """Generate held-out items of MODEL dense and under sparse-attention budgets allocated from a run's scores."""
    from headattr.generation.sampling import resolve_settings
    from headattr.generation.scoring import parse_task
    from headattr.pruning.samples import check_held_out, check_run_matches, select_eval_samples
    from headattr.reports.sparse import write_sparse_outputs
    from headattr.runs.rundir import read_run
    from headattr.sparsity.evaluate import evaluate_sparse
    from headattr.sparsity.results import build_result

    settings = _settings(flags)
    task = parse_task(flags["task"])
    check_lang(flags["lang"])
    check_output_dir(flags["out"], flags["overwrite"])
    run = read_run(scores_run)
    excluded = [read_run(p) for p in flags["exclude_runs"]]
    gen_flags = {k: flags.pop(k) for k in GENERATION_FLAGS}
    spec = model_config(flags).load(model)
    check_run_matches(spec, run)
    generation = generation_settings(spec, gen_flags)
    selection = select_eval_samples(
        spec, run, data=flags["data_path"], eval_data=flags["eval_data"], n=flags["eval_samples"],
        seed=flags["eval_seed"], exclude_runs=excluded,
    )  # fmt: skip
    check_held_out(run, selection.samples)
    click.echo(f"{spec.name}: {len(selection.samples)} held-out items of {selection.source}", err=True)
    outcomes = evaluate_sparse(
        spec, run.scores, selection.samples, task, settings, generation=generation, seed=flags["generation_seed"],
        batch_size=flags["batch_size"], progress=not flags["quiet"],
    )  # fmt: skip
    info = {
        "model": {"name": spec.name, "path": spec.path, "config_hash": spec.config_hash},
        "run": {"path": str(run.path), "config_hash": run.meta.get("model", {}).get("config_hash")},
        "eval": selection.to_dict() | {"eval_seed": flags["eval_seed"]},
        "generation": {"settings": resolve_settings(spec, generation), "seed": flags["generation_seed"]},
    }
    result = build_result(outcomes, settings, task.name, info)
    paths = write_sparse_outputs(result, flags["out"], flags["lang"])
    _echo_summary(result.to_dict(), paths)


def _settings(flags: dict) -> SparseEvalSettings:
    """The `SparseEvalSettings` of the command's flags (one-line errors before any work)."""
    return SparseEvalSettings(
        selects=parse_floats(flags["selects"], "--select"),
        allocations=parse_names(flags["allocations"]),
        random_draws=flags["random_draws"],
        seed=flags["seed"],
        block_size=flags["sparse_block"],
        skip=flags["sparse_skip"],
        min_keep=flags["sparse_min_keep"],
        gqa=flags["sparse_gqa"],
        compat=None if flags["sparse_compat"] == "none" else flags["sparse_compat"],
        kernel=flags["sparse_kernel"],
        resamples=flags["resamples"],
        bootstrap_seed=flags["bootstrap_seed"],
    )
