"""`headattr attribute`: a method's head scores over a dataset into a run directory (or `--dry-run`'s plan).

The method, masking and data flags default to their settings classes' defaults (`GateIGConfig`, `STPConfig`,
`MaskConfig`, `DataConfig`); under torchrun every rank runs this command and rank 0 writes the run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from headattr.cli.app import cli
from headattr.cli.options import (
    apply,
    data_config,
    data_options,
    model_config,
    model_options,
    parse_floats,
    seed_type,
)
from headattr.data.samples import DataConfig
from headattr.engine.batching import DEFAULT_FRACTION, parse_batch_size, parse_max_memory
from headattr.engine.masking import LOSS_NORMALIZE, MaskConfig
from headattr.errors import HeadattrError
from headattr.methods import METHODS, NAMES, SCOPES, GateIGConfig, MethodConfig, STPConfig, method_config
from headattr.methods.adaptive import DEFAULT_BASE_STEPS
from headattr.methods.aggregate import POSTPROCESS
from headattr.methods.quadrature import RULES
from headattr.runs import distributed
from headattr.runs.attribution import attribute as attribute_api
from headattr.runs.checkpoints import check_shard
from headattr.runs.rundir import check_output_dir

# `--seed` seeds the sample choice, the masks and STP's paths, whose settings classes share one default seed
SEED = DataConfig.seed

# the flags that set a method's own settings: flag -> the settings field it sets
METHOD_FLAGS = {
    "--ig-steps": "ig_steps",
    "--ig-tol": "ig_tol",
    "--ig-max-steps": "ig_max_steps",
    "--rule": "rule",
    "--scope": "scope",
    "--baseline": "baseline",
    "--path-samples": "path_samples",
    "--path-seed": "path_seed",
}


def parse_shard(text: str) -> tuple[int, int]:
    """'1/4' -> (1, 4); text that is not two integers is a one-line error."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise HeadattrError(f"--shard must be I/N, e.g. 0/4; got {text!r}") from None
    return index, count  # the range is `check_shard`'s, shared with the Python API


def method_from_flags(ctx: click.Context, name: str, values: dict, seed: int) -> MethodConfig:
    """The method `name` with the method flags given on the command line (the rest: the method's defaults).

    A flag given explicitly that the method has no setting for is a one-line error; `path_seed` defaults to
    `seed`, as the data and mask seeds do.
    """
    fields = METHODS[name].__dataclass_fields__
    settings = {}
    for flag, field in METHOD_FLAGS.items():
        if ctx.get_parameter_source(field) not in (
            click.core.ParameterSource.COMMANDLINE,
            click.core.ParameterSource.ENVIRONMENT,
        ):
            continue
        if field not in fields:
            own = [f for f, k in METHOD_FLAGS.items() if k in fields]
            raise HeadattrError(
                f"{flag} does not apply to --method {name} "
                f"({'its settings: ' + ', '.join(own) if own else 'it has no settings'})"
            )
        settings[field] = values[field]
    if "path_seed" in fields:
        settings.setdefault("path_seed", seed)
    return method_config(name, **settings)


def method_options(f):
    """`--method` and the method settings flags (`METHOD_FLAGS`), defaults from Gate-IG's and STP's settings."""
    options = [
        click.option("--method", "method_name", type=click.Choice(NAMES), default=GateIGConfig.name, show_default=True),
        click.option(
            "--ig-steps",
            type=click.IntRange(min=1),
            default=None,
            help=f"gate-ig: nodes of the base rule [default: {DEFAULT_BASE_STEPS}, Simpson refined to --ig-tol (an "
            "even count is rounded up); 8 for a fixed rule (--ig-tol 0 or a Riemann rule)]; stp: nodes per piece "
            f"between thresholds [default: {STPConfig.ig_steps}].",
        ),
        click.option(
            "--ig-tol",
            type=click.FloatRange(min=0.0),
            default=GateIGConfig.ig_tol,
            show_default=True,
            help="gate-ig: refine each path until its completeness and estimated per-head error are within this "
            "fraction of its gap J(1) - J(b); 0: the fixed --ig-steps rule.",
        ),
        click.option(
            "--ig-max-steps",
            type=click.IntRange(min=1),
            default=GateIGConfig.ig_max_steps,
            show_default=True,
            help="gate-ig: the most quadrature nodes of one path.",
        ),
        click.option("--rule", type=click.Choice(RULES), default=GateIGConfig.rule, show_default=True),
        click.option(
            "--scope",
            type=click.Choice(SCOPES),
            default=GateIGConfig.scope,
            show_default=True,
            help=f"gate-ig (stp: {STPConfig.scope}).",
        ),
        click.option(
            "--path-samples",
            type=click.IntRange(min=1),
            default=STPConfig.path_samples,
            show_default=True,
            help="stp: random threshold paths.",
        ),
        click.option(
            "--path-seed", type=seed_type, default=None, help="stp: seed of the thresholds (default: --seed)."
        ),
        click.option(
            "--baseline",
            type=click.FloatRange(0.0, 1.0, max_open=True),
            default=GateIGConfig.baseline,
            show_default=True,
            help="Gate value at the path's start.",
        ),
    ]
    return apply(f, options)


def masking_options(f):
    """The objective's flags: `MaskConfig`'s fields (its seed is `--mask-seed`), and the per-sample postprocess."""
    options = [
        click.option("--mask-probs", default=",".join(f"{p:g}" for p in MaskConfig.mask_probs), show_default=True),
        click.option(
            "--mask-samples-per-prob",
            type=click.IntRange(min=1),
            default=MaskConfig.mask_samples_per_prob,
            show_default=True,
        ),
        click.option(
            "--loss-normalize", type=click.Choice(LOSS_NORMALIZE), default=MaskConfig.loss_normalize, show_default=True
        ),
        click.option("--postprocess", type=click.Choice(POSTPROCESS), default="signed", show_default=True),
    ]
    return apply(f, options)


def run_options(f):
    """How the run is computed and written: batch size, memory cap, checkpoints, resume, shards, progress."""
    options = [
        click.option(
            "--batch-size",
            default="auto",
            show_default=True,
            help="Rows per forward pass: an integer, or auto (from the free memory and a row's measured cost; an "
            "out-of-memory error halves it and retries; results never depend on it).",
        ),
        click.option(
            "--max-memory",
            default=None,
            help="Cap for --batch-size auto: a size (40GB, 512MiB) or a fraction of the free memory "
            f"(0.8; default {DEFAULT_FRACTION:g}).",
        ),
        click.option("--grad-checkpoint", is_flag=True, help="Recompute activations in backward (long sequences)."),
        click.option("--overwrite", is_flag=True, help="Replace an existing run directory."),
        click.option("--resume", is_flag=True, help="Continue an interrupted run in --out."),
        click.option(
            "--shard",
            default=None,
            metavar="I/N",
            help="Compute only share I (0-based) of N, balanced by token count, into the shared --out; run I = "
            "0..N-1 in parallel processes; the last to finish writes the run.",
        ),
        click.option("--quiet", is_flag=True, help="No progress bar."),
        click.option(
            "--dry-run",
            is_flag=True,
            help="Print the plan (samples, tokens, rows, layer passes, FLOPs, batch size, peak memory, a timed "
            "probe's estimate) and exit without computing or writing --out.",
        ),
    ]
    return apply(f, options)


@cli.command()
@click.argument("model")
@data_options
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory to write.")
@click.option("--seed", type=seed_type, default=SEED, show_default=True, help="Seeds everything not set below.")
@click.option("--data-seed", type=seed_type, default=None, help="Sample selection seed (default: --seed).")
@click.option("--mask-seed", type=seed_type, default=None, help="Masking seed (default: --seed).")
@method_options
@masking_options
@run_options
@model_options
def attribute(
    model: str,
    out: Path,
    seed: int,
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
    """Compute head scores of MODEL on --data by --method and write a run directory."""
    batch = parse_batch_size(batch_size)
    parse_max_memory(max_memory)  # a malformed cap fails now, not after the model has loaded
    shard_spec = parse_shard(shard) if shard is not None else None
    check_shard(shard_spec, out, overwrite)
    method, masking, postprocess = _method_and_masking(options, seed)
    data_seed = options.pop("data_seed")
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
        if world is None or world.is_main:
            click.echo(_opening_line(spec, samples, masking, report, world), err=True)
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
            progress=not (quiet or (world is not None and not world.is_main)),
            data_report=report,
        )
    finally:
        if world is not None:  # on an error, leave without waiting for the other ranks (`distributed.finish`)
            distributed.finish(wait=sys.exc_info()[0] is None)
    if world is None or world.is_main:
        _report_result(result, out, shard, batch)


def _method_and_masking(options: dict, seed: int) -> tuple[MethodConfig, MaskConfig, str]:
    """Pop the method and masking flags from `options`: the method, the objective and the postprocess."""
    flags = {field: options.pop(field) for field in METHOD_FLAGS.values()}
    method = method_from_flags(click.get_current_context(), options.pop("method_name"), flags, seed)
    mask_seed = options.pop("mask_seed")
    masking = MaskConfig(
        mask_probs=parse_floats(options.pop("mask_probs"), "--mask-probs"),
        mask_samples_per_prob=options.pop("mask_samples_per_prob"),
        mask_seed=seed if mask_seed is None else mask_seed,
        loss_normalize=options.pop("loss_normalize"),
    )
    return method, masking, options.pop("postprocess")


def _opening_line(spec, samples, masking: MaskConfig, report, world: distributed.World | None) -> str:
    """What `attribute` says on stderr before computing: the model, the samples and the data report."""
    return (
        f"{spec.name}: {spec.family}, {spec.num_layers} layers x {spec.num_heads} heads; "
        f"{len(samples)} samples x {masking.num_variants} masked variants; {report.summary()}"
        + (f"; {world.size} ranks" if world is not None else "")
    )


def _print_plan(spec, samples, method, masking, batch, max_memory) -> None:
    """`attribute --dry-run`: the plan's lines (headattr.plan), nothing computed or written."""
    from headattr.runs.plan import describe, dry_run

    if not method.plannable:
        plannable = ", ".join(name for name, cls in METHODS.items() if cls.plannable)
        raise HeadattrError(f"--dry-run plans {plannable} runs; drop it for --method {method.name}")
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
    for line in result.method.summary_lines(result.method.summarize(result.per_variant)):
        click.echo(line)
    if batch == "auto" and result.timings.get("batch_size") is not None:
        click.echo(f"batch size auto: {result.timings['batch_size']} rows per pass (run.json timings.batch_size)")
    click.echo(f"wrote {out}/ (scores.safetensors, run.json, heads.csv, heatmap.png)")
