"""`headattr methods`: every attribution method on one model, measured (consistency, faithfulness, cost)."""

from __future__ import annotations

from pathlib import Path

import click

from headattr.cli.app import cli
from headattr.cli.options import model_config, model_options
from headattr.data.samples import DataConfig
from headattr.errors import HeadattrError
from headattr.methods import NAMES


@cli.command("methods")
@click.argument("model", required=False)
@click.option(
    "--data",
    "data_path",
    default=None,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Prompt/answer dataset [default with MODEL omitted: the built-in demo data].",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory for runs/ and methods.*.")
@click.option("--methods", "method_names", default=",".join(NAMES), show_default=True, help="Methods to compare.")
@click.option("--seeds", default="47,1234", show_default=True, help="Seeds (at least two): samples, masks, paths.")
@click.option("--quick", is_flag=True, help="Reduced size (about a minute on the built-in model).")
@click.option(
    "--lang", type=click.Choice(["en", "zh"]), default="en", show_default=True, help="Language of methods.md."
)
@click.option("--samples", type=click.IntRange(min=2), default=None, help="Samples per run [default: 12; --quick: 4].")
@click.option(
    "--eval-samples", type=click.IntRange(min=1), default=None, help="Held-out samples [default: 24; --quick: 8]."
)
@click.option("--random-orders", type=click.IntRange(min=1), default=None, help="Random pruning orders [20; 5].")
@click.option("--stratify-by", default=None, help="Group field to draw samples evenly from [built-in data: task].")
@click.option("--quiet", is_flag=True, help="No progress output.")
@model_options
def methods_cmd(
    model: str | None,
    data_path: Path | None,
    out: Path,
    method_names: str,
    seeds: str,
    quick: bool,
    lang: str,
    samples: int | None,
    eval_samples: int | None,
    random_orders: int | None,
    stratify_by: str | None,
    quiet: bool,
    **options,
) -> None:
    """Every attribution method on MODEL (default: the built-in model): consistency, faithfulness, cost."""
    from dataclasses import replace

    from headattr.benchmark.methods import FULL, QUICK, parse_methods, parse_seeds, run_benchmark
    from headattr.demo import DATA_FILE, MODEL_DIR

    names, seed_list = parse_methods(method_names), parse_seeds(seeds)
    if model is not None and data_path is None:
        raise HeadattrError("with a MODEL, pass --data (the built-in data belongs to the built-in model)")
    base = QUICK if quick else FULL
    size = replace(
        base,
        samples=samples or base.samples,
        eval_samples=eval_samples or base.eval_samples,
        random_orders=random_orders or base.random_orders,
    )
    builtin = model is None
    data = DataConfig(
        path=str(data_path or DATA_FILE),
        samples=size.samples,
        seed=seed_list[0],
        stratify_by=stratify_by or ("task" if builtin else None),
    )
    spec = model_config(options).load(str(MODEL_DIR) if builtin else model)
    result = run_benchmark(
        out, spec=spec, data=data, methods=names, seeds=seed_list, size=size, lang=lang, progress=not quiet
    )
    for n in result.summary["ranking"]:
        m = result.summary["methods"][n]
        click.echo(
            f"{n:<10} consistency {m['consistency']['global_spearman']:.3f}  F {m['faithfulness']['F']:.2f}  "
            f"passes/sample {m['cost']['forward_passes_per_sample'] + m['cost']['backward_passes_per_sample']:.1f}"
        )
    for path in result.paths.values():
        click.echo(f"wrote {path}")
