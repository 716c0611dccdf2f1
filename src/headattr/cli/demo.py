"""`headattr demo`: the built-in model attributed with two seeds, compared, and validated by pruning."""

from __future__ import annotations

from pathlib import Path

import click

from headattr.cli.app import cli
from headattr.cli.options import deterministic_option, threads_option
from headattr.methods import GateIGConfig
from headattr.methods.adaptive import DEFAULT_BASE_STEPS


@cli.command("demo")
@click.option(
    "--out",
    default=Path("headattr-demo"),
    show_default=True,
    type=click.Path(path_type=Path),
    help="Directory for every output of the demo.",
)
@click.option(
    "--samples", type=click.IntRange(min=1), default=None, help="Samples per attribution run [default: 50; --quick: 8]."
)
@click.option(
    "--ig-steps",
    type=click.IntRange(min=1),
    default=None,
    help=f"Base nodes of Gate-IG's rule [default: {DEFAULT_BASE_STEPS}, refined to --ig-tol {GateIGConfig.ig_tol:g}; "
    "--quick: 2, fixed].",
)
@click.option("--overwrite", is_flag=True, help="Replace the outputs of an earlier demo in --out.")
@click.option("--quick", is_flag=True, help="Reduced size, for a smoke test in seconds.")
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="A checkpoint of the demo's kind, e.g. retrained by python -m headattr.demo.train [default: built-in].",
)
@click.option(
    "--data",
    "data_file",
    default=None,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A prompt/answer JSONL with a task field [default: the built-in demo data].",
)
@threads_option
@deterministic_option
@click.option("--quiet", is_flag=True, help="No progress output.")
def demo_cmd(
    out: Path,
    samples: int | None,
    ig_steps: int | None,
    overwrite: bool,
    quick: bool,
    model_dir: Path | None,
    data_file: Path | None,
    quiet: bool,
) -> None:
    """Attribute the built-in model with two seeds, compare the runs, and validate the scores by pruning."""
    from headattr.demo import DATA_FILE, MODEL_DIR
    from headattr.demo.run import format_summary, run_demo

    result = run_demo(
        out,
        samples=samples,
        ig_steps=ig_steps,
        quick=quick,
        overwrite=overwrite,
        progress=not quiet,
        model_dir=model_dir or MODEL_DIR,
        data_file=data_file or DATA_FILE,
    )
    for line in format_summary(result.summary):
        click.echo(line)
    click.echo(f"finished in {result.timings['total_s']:.0f} s; outputs:")
    for name, path in result.paths.items():
        click.echo(f"  {name:<26} {path}")
