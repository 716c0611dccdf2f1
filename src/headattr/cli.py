"""The `headattr` command line: a thin layer over the Python API.

Every command turns its flags into one API call. Input problems raise `HeadattrError`; `main` prints them
on one line and exits with status 2, never with a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import torch

from . import distributed
from .aggregate import POSTPROCESS
from .attribution import attribute as attribute_api
from .attribution import check_shard
from .batching import parse_batch_size, parse_max_memory
from .data import FORMATS, DataConfig
from .errors import HeadattrError
from .masking import LOSS_NORMALIZE, MaskConfig
from .methods import SCOPES, GateIGConfig
from .models import ModelConfig, default_device, resolve_dtype
from .models.loading import ATTN_IMPLEMENTATIONS, DTYPE_CHOICES, LOGIT_SHIFT
from .quadrature import RULES
from .rundir import check_output_dir


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="headattr")
def cli() -> None:
    """Gate-IG attention-head attribution for diffusion language models."""


# ---------------------------------------------------------------- attribute / info (models, methods)


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
    """'0.15,0.3' -> (0.15, 0.3); a malformed list is a one-line error naming the flag."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise HeadattrError(f"{flag} must be comma-separated numbers, e.g. 0.15,0.3,0.5; got {text!r}") from None


def _set_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
    if value is not None:
        torch.set_num_threads(value)  # `main` restores the previous count


threads_option = click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    expose_value=False,
    callback=_set_threads,
    help="CPU threads for torch (default: torch's choice; 1 is often faster on a busy machine).",
)


def parse_shard(text: str) -> tuple[int, int]:
    """'1/4' -> (1, 4); text that is not two integers is a one-line error."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise HeadattrError(f"--shard must be I/N, e.g. 0/4; got {text!r}") from None
    return index, count  # the range is `check_shard`'s, shared with the Python API


def model_options(f):
    """Flags that say how to load a model (shared by every command that loads one): `ModelConfig`'s fields."""
    options = [
        click.option(
            "--trust-remote-code", is_flag=True, help="Run the checkpoint's own Python code (off by default)."
        ),
        threads_option,
        click.option(
            "--head-module",
            default=None,
            help="Name of each layer's attention output projection (a family's own names work, e.g. attn_out).",
        ),
        click.option(
            "--mask-token-id", type=click.IntRange(min=0), default=None, help="Mask token id, when the config has none."
        ),
        click.option(
            "--logit-shift",
            type=click.Choice(LOGIT_SHIFT),
            default="auto",
            show_default=True,
            help="on: position j is predicted from j-1 (Dream); off: from j (LLaDA); auto: by family.",
        ),
        click.option(
            "--dtype",
            type=click.Choice(DTYPE_CHOICES),
            default="auto",
            show_default=True,
            help="Weights dtype; auto: bfloat16 on CUDA, float32 on CPU.",
        ),
        click.option("--device", default=None, help="torch device (default: cuda if available, else cpu)."),
        click.option(
            "--attn-implementation",
            type=click.Choice(ATTN_IMPLEMENTATIONS),
            default="sdpa",
            show_default=True,
            help="Attention kernel (results agree up to rounding).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def model_config(options: dict, grad_checkpoint: bool = False) -> ModelConfig:
    """The `ModelConfig` of a command's `model_options` (popped from `options`)."""
    keys = (
        "dtype",
        "device",
        "trust_remote_code",
        "head_module",
        "mask_token_id",
        "logit_shift",
        "attn_implementation",
    )
    return ModelConfig(**{k: options.pop(k) for k in keys}, grad_checkpoint=grad_checkpoint)


def data_options(f):
    """Flags that say how to read and select samples: `DataConfig`'s fields."""
    options = [
        click.option(
            "--data",
            "data_path",
            required=True,
            type=click.Path(path_type=Path, exists=True, dir_okay=False),
            help="Dataset file: .jsonl, .json, .csv or .parquet.",
        ),
        click.option("--format", "fmt", type=click.Choice(FORMATS), default="prompt-answer", show_default=True),
        click.option("--prompt-field", default="prompt", show_default=True),
        click.option("--answer-field", default="answer", show_default=True),
        click.option("--chat-template", is_flag=True, help="Format the prompt with the tokenizer's chat template."),
        click.option(
            "--samples",
            type=click.IntRange(min=0),
            default=50,
            show_default=True,
            help="Number of samples (0: all rows).",
        ),
        click.option("--stratify-by", default=None, help="Field naming each row's group (e.g. task)."),
        click.option(
            "--samples-per-group", type=click.IntRange(min=1), default=None, help="Samples drawn from each group."
        ),
        click.option("--max-length", type=click.IntRange(min=1), default=2048, show_default=True),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def data_config(options: dict, seed: int) -> DataConfig:
    """The `DataConfig` of a command's `data_options` (popped from `options`)."""
    return DataConfig(
        path=str(options.pop("data_path")),
        format=options.pop("fmt"),
        prompt_field=options.pop("prompt_field"),
        answer_field=options.pop("answer_field"),
        chat_template=options.pop("chat_template"),
        samples=options.pop("samples"),
        seed=seed,
        stratify_by=options.pop("stratify_by"),
        samples_per_group=options.pop("samples_per_group"),
        max_length=options.pop("max_length"),
    )


seed_type = click.IntRange(min=0)


@cli.command()
@click.argument("model")
@data_options
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory to write.")
@click.option("--seed", type=seed_type, default=47, show_default=True, help="Seeds everything not set below.")
@click.option("--data-seed", type=seed_type, default=None, help="Sample selection seed (default: --seed).")
@click.option("--mask-seed", type=seed_type, default=None, help="Masking seed (default: --seed).")
@click.option("--ig-steps", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--rule", type=click.Choice(RULES), default="gauss-legendre", show_default=True)
@click.option("--scope", type=click.Choice(SCOPES), default="layer", show_default=True)
@click.option(
    "--baseline",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.0,
    show_default=True,
    help="Gate value at the path's start.",
)
@click.option("--mask-probs", default="0.15,0.3,0.5,0.7,0.9", show_default=True)
@click.option("--mask-samples-per-prob", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--loss-normalize", type=click.Choice(LOSS_NORMALIZE), default="mean-masked", show_default=True)
@click.option("--postprocess", type=click.Choice(POSTPROCESS), default="signed", show_default=True)
@click.option(
    "--batch-size",
    default="auto",
    show_default=True,
    help="Rows per forward pass: an integer, or auto (from the free memory and a row's measured cost; an "
    "out-of-memory error halves it and retries; results never depend on it).",
)
@click.option(
    "--max-memory",
    default=None,
    help="Cap for --batch-size auto: a size (40GB, 512MiB) or a fraction of the free memory (0.8; default 0.9).",
)
@click.option("--grad-checkpoint", is_flag=True, help="Recompute activations in backward (long sequences).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Compute only every N-th sample from the I-th (0-based) into the shared --out; run I = 0..N-1 in "
    "parallel processes; the last to finish writes the run.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (samples, tokens, rows, layer passes, FLOPs, batch size, peak memory, a timed probe's "
    "estimate) and exit without computing or writing --out.",
)
@model_options
def attribute(
    model: str,
    out: Path,
    seed: int,
    data_seed: int | None,
    mask_seed: int | None,
    ig_steps: int,
    rule: str,
    scope: str,
    baseline: float,
    mask_probs: str,
    mask_samples_per_prob: int,
    loss_normalize: str,
    postprocess: str,
    batch_size: str,
    max_memory: str | None,
    grad_checkpoint: bool,
    overwrite: bool,
    resume: bool,
    shard: str | None,
    quiet: bool,
    dry_run: bool,
    **options,
) -> None:
    """Compute Gate-IG head scores of MODEL on --data and write a run directory."""
    batch = parse_batch_size(batch_size)
    parse_max_memory(max_memory)  # a malformed cap fails now, not after the model has loaded
    shard_spec = parse_shard(shard) if shard is not None else None
    check_shard(shard_spec, out, overwrite)
    method = GateIGConfig(ig_steps=ig_steps, rule=rule, scope=scope, baseline=baseline)
    masking = MaskConfig(
        mask_probs=parse_floats(mask_probs, "--mask-probs"),
        mask_samples_per_prob=mask_samples_per_prob,
        mask_seed=seed if mask_seed is None else mask_seed,
        loss_normalize=loss_normalize,
    )
    data = data_config(options, seed if data_seed is None else data_seed)
    world = _join_world(options, shard_spec)
    try:
        loading = model_config(options, grad_checkpoint)
        if world is None and not dry_run:  # under torchrun rank 0 checks while opening the run, and tells all
            check_output_dir(out, overwrite, resume or shard_spec is not None)
        spec = loading.load(model)
        samples, report = data.build(spec.tokenizer)
        if dry_run:
            _print_plan(spec, samples, method, masking, batch, max_memory)
            return
        quiet = quiet or (world is not None and not world.is_main)
        if world is None or world.is_main:
            click.echo(
                f"{spec.name}: {spec.family}, {spec.num_layers} layers x {spec.num_heads} heads; "
                f"{len(samples)} samples x {masking.num_variants} masked variants; {report.summary()}"
                + (f"; {world.size} ranks" if world is not None else ""),
                err=True,
            )
        result = attribute_api(
            spec,
            samples,
            method,
            masking,
            postprocess=postprocess,
            batch_size=batch,
            max_memory=max_memory,
            seed=seed,
            out=out,
            overwrite=overwrite,
            resume=resume,
            shard=shard_spec,
            world=world,
            progress=not quiet,
            data_report=report,
        )
    finally:
        if world is not None:
            distributed.finish()
    if world is not None and not world.is_main:
        return
    _report_result(result, out, shard, batch)


def _print_plan(spec, samples, method, masking, batch, max_memory) -> None:
    """`attribute --dry-run`: the plan's lines (headattr.plan), nothing computed or written."""
    from .plan import describe, dry_run

    if not samples:
        raise HeadattrError("no samples to attribute; check the dataset and --samples")
    for line in describe(dry_run(spec, samples, method, masking, batch, max_memory), spec, method):
        click.echo(line)


def _join_world(options: dict, shard: tuple[int, int] | None) -> distributed.World | None:
    """Under torchrun (WORLD_SIZE > 1): this rank's `World`, its device set in `options`, the group joined."""
    world = distributed.world_from_env()
    if world is None:
        return None
    if shard is not None:
        raise HeadattrError("--shard splits a run across separate jobs; under torchrun the ranks split it already")
    options["device"] = distributed.device_for(world, options["device"])
    distributed.init(world, options["device"])
    return world


def _report_result(result, out: Path, shard: str | None, batch) -> None:
    """What `attribute` prints once the run is written (or this shard is done)."""
    if result is None:
        click.echo(
            f"shard {shard}: its samples are done; the shard that finishes last writes the run in {out} "
            "(or finish the missing samples in one process with --resume)"
        )
        return
    c = result.diagnostics()["completeness"]
    click.echo(
        f"completeness error: median {c['median_abs']:.3g}, max {c['max_abs']:.3g} "
        f"(max relative {c['max_relative']:.3g})"
    )
    if batch == "auto" and result.timings.get("batch_size") is not None:
        click.echo(f"batch size auto: {result.timings['batch_size']} rows per pass (run.json timings.batch_size)")
    click.echo(f"wrote {out}/ (scores.safetensors, run.json, heads.csv, heatmap.png)")


@cli.command()
@click.argument("model")
@model_options
def info(model: str, **options) -> None:
    """Print what headattr detects in MODEL (family, shape, mask token, shift) without attributing.

    Only the config, the tokenizer and the weights' names and shapes are read (a meta-device model), so this
    takes a second on a 7B checkpoint; the dtype and device are those a run with the same flags would use.
    """
    loading = model_config(options)
    device = loading.device or default_device()
    dtype = str(resolve_dtype(loading.dtype, device)).removeprefix("torch.")
    spec = loading.replace(device="meta", dtype=dtype).load(model)
    d = spec.describe()
    shift = "on (position j predicted from j-1)" if spec.logit_shift else "off (position j predicted from j)"
    rows = [
        ("model", d["path"]),
        ("family", d["family"]),
        ("layers", d["num_layers"]),
        ("query heads", d["num_heads"]),
        ("kv heads", d["num_kv_heads"]),
        ("head dim", d["head_dim"]),
        ("head module", d["head_module_label"]),
        (
            "mask token id",
            d["mask_token_id"] if d["mask_token_id"] is not None else "unknown (pass --mask-token-id)",
        ),
        ("logit shift", shift),
        ("parameters", f"{d['num_parameters']:,}"),
        ("dtype", dtype),
        ("device", device),
        ("layer reuse", "yes" if d["layer_reuse"] else "no (whole forward per layer)"),
        ("config hash", d["config_hash"][:16]),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


# ---------------------------------------------------------------- compare / ensemble (analysis)


@cli.command("compare")
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory for report.md, metrics.json, layer_metrics.csv and consistency_analysis.png.",
)
@click.option("--lang", type=click.Choice(["en", "zh"]), default="en", show_default=True, help="Language of report.md.")
@click.option("--top-k", default="5,10,15,20,25,30", show_default=True, help="K values of the top-K overlaps.")
@click.option(
    "--good-threshold", type=float, default=0.9, show_default=True, help="Per-layer Pearson that counts as good."
)
@click.option("--bands", default=None, help="Layer bands FIRST-LAST,..., e.g. 0-5,6-15,16-27 (default: thirds).")
@click.option(
    "--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True, help="Bootstrap replicates (0: skip)."
)
@click.option(
    "--seed", type=seed_type, default=0, show_default=True, help="Seed of the bootstrap and split-half draws."
)
@click.option("--target", type=float, default=0.9, show_default=True, help="Reliability the sample projections aim at.")
@click.option("--overwrite", is_flag=True, help="Replace the report files in an existing --out.")
def compare_cmd(
    runs: tuple[Path, ...],
    out: Path,
    lang: str,
    top_k: str,
    good_threshold: float,
    bands: str | None,
    bootstrap: int,
    seed: int,
    target: float,
    overwrite: bool,
) -> None:
    """Compare two or more runs of the same model: report.md, metrics.json, layer_metrics.csv, figure."""
    from .consistency import compare as compare_api
    from .report import fmt_corr, write_outputs

    check_output_dir(out, overwrite)
    comparison = compare_api(
        list(runs),
        top_k=top_k,
        good_threshold=good_threshold,
        bands=bands,
        bootstrap=bootstrap,
        seed=seed,
        target=target,
    )
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
    from .ensemble import ensemble as ensemble_api

    path = ensemble_api(list(runs), out, overwrite=overwrite)
    click.echo(f"wrote {path}/ (scores.safetensors, run.json, heads.csv, heatmap.png) from {len(runs)} runs")


# ---------------------------------------------------------------- prune / demo (validation)


def _parse_orders(text: str) -> tuple[str, ...]:
    """'most,least' -> ('most', 'least'), checked by `prune.check_orders`."""
    from .prune import check_orders

    orders = tuple(o.strip() for o in text.split(",") if o.strip())
    check_orders(orders)
    return orders


def _echo_prune(result, paths: dict) -> None:
    """Print the pruning table, the faithfulness line and where each output is."""
    from .prune import format_faithfulness, format_ordering, format_table

    click.echo(format_table(result))
    for line in format_ordering(result):
        click.echo(line)
    line = format_faithfulness(result)
    if line:
        click.echo(line)
    for path in paths.values():
        click.echo(f"wrote {path}")


@cli.command("prune")
@click.argument("model")
@click.option(
    "--scores",
    "scores_run",
    required=True,
    type=click.Path(path_type=Path),
    help="Run directory whose scores rank the heads.",
)
@click.option(
    "--data",
    "data_path",
    default=None,
    type=click.Path(path_type=Path),
    help="The run's dataset (default: the file recorded in its run.json); held-out rows are evaluated.",
)
@click.option(
    "--eval-data",
    default=None,
    type=click.Path(path_type=Path),
    help="Evaluate on this file instead (same format as the run's data; the run's samples are still excluded).",
)
@click.option(
    "--exclude-run",
    "exclude_runs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Also keep this run's samples out of the evaluation set (repeatable), e.g. the other seed's run.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory for the pruning outputs.")
@click.option("--fractions", default="0.05,0.1,0.2,0.3,0.5", show_default=True, help="Fractions of heads to remove.")
@click.option("--orders", default="most,least,random", show_default=True, help="Removal orders.")
@click.option(
    "--random-orders", type=click.IntRange(min=0), default=10, show_default=True, help="Number of random orders."
)
@click.option("--seed", type=seed_type, default=0, show_default=True, help="Seed of the random orders.")
@click.option("--per-layer", is_flag=True, help="Remove the same fraction of heads in every layer.")
@click.option(
    "--rank-by",
    type=click.Choice(["score", "abs"]),
    default="score",
    show_default=True,
    help="Rank heads by signed score, or by |score| (least = nearest zero).",
)
@click.option("--single-head", is_flag=True, help="Also remove each head on its own; correlate with the scores.")
@click.option("--exact-match", is_flag=True, help="Also decode each answer from a fully masked answer (slower).")
@click.option(
    "--eval-samples",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Held-out samples to evaluate on.",
)
@click.option("--eval-seed", type=seed_type, default=0, show_default=True, help="Seed of the held-out sample choice.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Rows per forward pass.")
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
    overwrite: bool,
    quiet: bool,
    **options,
) -> None:
    """Remove MODEL's heads in the order of a run's scores and measure the loss on held-out samples."""
    from .prune import check_run_matches, prune, select_eval_samples, write_outputs
    from .rundir import read_run

    check_output_dir(out, overwrite)
    prune_orders = _parse_orders(orders)
    prune_fractions = parse_floats(fractions, "--fractions")
    loading = model_config(options)
    run = read_run(scores_run)
    excluded = [read_run(path) for path in exclude_runs]
    spec = loading.load(model)
    check_run_matches(spec, run)
    selection = select_eval_samples(
        spec, run, data=data_path, eval_data=eval_data, n=eval_samples, seed=eval_seed, exclude_runs=excluded
    )
    click.echo(
        f"{spec.name}: {spec.num_layers} layers x {spec.num_heads} heads; evaluating on {len(selection.samples)} "
        f"held-out samples of {selection.source} ({selection.excluded} attribution rows excluded)",
        err=True,
    )
    result = prune(
        spec,
        run,
        selection.samples,
        fractions=prune_fractions,
        orders=prune_orders,
        random_orders=random_orders,
        seed=seed,
        per_layer=per_layer,
        rank_by=rank_by,
        single_head=single_head,
        decode=exact_match,
        batch_size=batch_size,
        progress=not quiet,
    )
    result.eval_info.update(selection.to_dict(), eval_seed=eval_seed)
    _echo_prune(result, write_outputs(result, out))


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
@click.option("--ig-steps", type=click.IntRange(min=1), default=None, help="IG steps [default: 8; --quick: 2].")
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
    from .demo import DATA_FILE, MODEL_DIR
    from .demo.run import format_summary, run_demo

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


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI; input errors become one line on stderr and exit status 2."""
    threads = torch.get_num_threads()
    try:
        cli.main(args=argv, standalone_mode=False, prog_name="headattr")
    except HeadattrError as exc:
        click.echo(f"headattr: error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("headattr: interrupted (an interrupted `attribute` continues with --resume)", err=True)
        return 130
    except click.ClickException as exc:
        ctx_hint = " (see `headattr --help`)" if isinstance(exc, click.UsageError) else ""
        click.echo(f"headattr: error: {exc.format_message()}{ctx_hint}", err=True)
        return exc.exit_code
    finally:
        torch.set_num_threads(threads)  # `--threads` lasts one command, also when main is called in-process
    return 0


if __name__ == "__main__":
    sys.exit(main())
