"""The `headattr` command line: a thin layer over the Python API.

Every command turns its flags into one API call. Input problems raise `HeadattrError`; `main` prints them
on one line and exits with status 2, never with a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import torch

from headattr.data.samples import FORMATS, DataConfig
from headattr.engine.batching import parse_batch_size, parse_max_memory
from headattr.engine.masking import LOSS_NORMALIZE, MaskConfig
from headattr.errors import HeadattrError
from headattr.methods import METHODS, NAMES, SCOPES, MethodConfig, method_config
from headattr.methods.adaptive import DEFAULT_MAX_STEPS, DEFAULT_TOL
from headattr.methods.aggregate import POSTPROCESS
from headattr.methods.quadrature import RULES
from headattr.models import ModelConfig, ModelSpec, default_device, devices, resolve_dtype
from headattr.models.loading import ATTN_IMPLEMENTATIONS, DTYPE_CHOICES, LOGIT_SHIFT
from headattr.runs import distributed
from headattr.runs.attribution import attribute as attribute_api
from headattr.runs.checkpoints import check_shard
from headattr.runs.rundir import check_output_dir


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="headattr")
def cli() -> None:
    """Attention-head attribution for diffusion language models (Gate-IG, STP, gradient, ablation, dispersion)."""


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


def _set_deterministic(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        devices.set_deterministic()  # `main` restores the previous settings


deterministic_option = click.option(
    "--deterministic",
    is_flag=True,
    expose_value=False,
    callback=_set_deterministic,
    help="Deterministic GPU kernels (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG): "
    "the same bits run to run at the same batch size; slower.",
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
        deterministic_option,
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


@cli.command()
@click.argument("model")
@data_options
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory to write.")
@click.option("--seed", type=seed_type, default=47, show_default=True, help="Seeds everything not set below.")
@click.option("--data-seed", type=seed_type, default=None, help="Sample selection seed (default: --seed).")
@click.option("--mask-seed", type=seed_type, default=None, help="Masking seed (default: --seed).")
@click.option("--method", "method_name", type=click.Choice(NAMES), default="gate-ig", show_default=True)
@click.option(
    "--ig-steps",
    type=click.IntRange(min=1),
    default=None,
    help="gate-ig: nodes of the base rule [default: 3, Simpson refined to --ig-tol (an even count is rounded up); "
    "8 for a fixed rule (--ig-tol 0 or a Riemann rule)]; stp: nodes per piece between thresholds [default: 2].",
)
@click.option(
    "--ig-tol",
    type=click.FloatRange(min=0.0),
    default=DEFAULT_TOL,
    show_default=True,
    help="gate-ig: refine each path until its completeness and estimated per-head error are within this fraction "
    "of its gap J(1) - J(b); 0: the fixed --ig-steps rule.",
)
@click.option(
    "--ig-max-steps",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_STEPS,
    show_default=True,
    help="gate-ig: the most quadrature nodes of one path.",
)
@click.option("--rule", type=click.Choice(RULES), default="gauss-legendre", show_default=True)
@click.option("--scope", type=click.Choice(SCOPES), default="layer", show_default=True, help="gate-ig (stp: joint).")
@click.option(
    "--path-samples", type=click.IntRange(min=1), default=4, show_default=True, help="stp: random threshold paths."
)
@click.option("--path-seed", type=seed_type, default=None, help="stp: seed of the thresholds (default: --seed).")
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
    help="Compute only share I (0-based) of N, balanced by token count, into the shared --out; run I = 0..N-1 "
    "in parallel processes; the last to finish writes the run.",
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
    method_name: str,
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
    """Compute head scores of MODEL on --data by --method and write a run directory."""
    batch = parse_batch_size(batch_size)
    parse_max_memory(max_memory)  # a malformed cap fails now, not after the model has loaded
    shard_spec = parse_shard(shard) if shard is not None else None
    check_shard(shard_spec, out, overwrite)
    flags = {field: options.pop(field) for field in METHOD_FLAGS.values()}
    method = method_from_flags(click.get_current_context(), method_name, flags, seed)
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
@click.option("--intervals/--no-intervals", default=True, show_default=True, help="Jackknife 95% intervals.")
@click.option(
    "--bootstrap", type=click.IntRange(min=0), default=None, help="Former bootstrap replicates; 0 = --no-intervals."
)
@click.option("--seed", type=seed_type, default=0, show_default=True, help="Seed of the split-half draws.")
@click.option("--target", type=float, default=0.9, show_default=True, help="Reliability the sample projections aim at.")
@click.option("--overwrite", is_flag=True, help="Replace the report files in an existing --out.")
def compare_cmd(
    runs: tuple[Path, ...],
    out: Path,
    lang: str,
    top_k: str,
    good_threshold: float,
    bands: str | None,
    intervals: bool,
    bootstrap: int | None,
    seed: int,
    target: float,
    overwrite: bool,
) -> None:
    """Compare two or more runs of the same model: report.md, metrics.json, layer_metrics.csv, figure."""
    from headattr.analysis.comparison import compare as compare_api
    from headattr.reports.markdown.format import fmt_corr
    from headattr.reports.outputs import write_outputs

    check_output_dir(out, overwrite)
    comparison = compare_api(
        list(runs),
        top_k=top_k,
        good_threshold=good_threshold,
        bands=bands,
        bootstrap=bootstrap,
        seed=seed,
        target=target,
        intervals=intervals,
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
    from headattr.runs.ensembling import ensemble as ensemble_api

    path = ensemble_api(list(runs), out, overwrite=overwrite)
    click.echo(f"wrote {path}/ (scores.safetensors, run.json, heads.csv, heatmap.png) from {len(runs)} runs")


# ---------------------------------------------------------------- generation settings (prune, generate)

GENERATION_FLAGS = (
    "length",
    "steps",
    "alg",
    "temperature",
    "top_p",
    "top_k",
    "alg_temp",
    "eps",
    "block_length",
    "cfg_scale",
    "remasking",
)


def generation_options(f):
    """Sampler settings (None: the family's official default); a flag of the other family is an error."""
    from headattr.generation.dream import DREAM_ALGS
    from headattr.generation.llada import LLADA_REMASKING

    options = [
        click.option(
            "--max-new-tokens",
            "--gen-length",
            "length",
            type=int,
            default=None,
            help="Tokens to generate (Dream's max_new_tokens, LLaDA's gen_length: the same setting).",
        ),
        click.option("--steps", type=int, default=None, help="Sampling steps."),
        click.option("--alg", type=click.Choice(DREAM_ALGS), default=None, help="Dream: confidence algorithm."),
        click.option("--temperature", type=float, default=None, help="Sampling temperature (0: greedy)."),
        click.option("--top-p", type=float, default=None, help="Dream: nucleus filter."),
        click.option("--top-k", type=int, default=None, help="Dream: top-k filter."),
        click.option("--alg-temp", type=float, default=None, help="Dream: temperature of the position choice."),
        click.option("--eps", type=float, default=None, help="Dream: final time of the schedule."),
        click.option("--block-length", type=int, default=None, help="LLaDA: semi-autoregressive block length."),
        click.option("--cfg-scale", type=float, default=None, help="LLaDA: classifier-free guidance scale."),
        click.option("--remasking", type=click.Choice(LLADA_REMASKING), default=None, help="LLaDA: remasking."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def generation_settings(spec: ModelSpec, options: dict) -> dict:
    """Pop the generation flags from `options` into the family's setting names (only those given)."""
    from headattr.generation.sampling import LENGTH_SETTING, resolve_settings

    given = {k: options.pop(k) for k in GENERATION_FLAGS}
    settings = {k: v for k, v in given.items() if v is not None and k != "length"}
    if given["length"] is not None and spec.family in LENGTH_SETTING:
        settings[LENGTH_SETTING[spec.family]] = given["length"]
    resolve_settings(spec, settings)  # one-line errors now, before any work
    return settings


# ---------------------------------------------------------------- prune / demo (validation)


def _parse_orders(text: str) -> tuple[str, ...]:
    """'most,least' -> ('most', 'least'), checked by `prune.check_orders`."""
    from headattr.pruning.settings import check_orders

    orders = tuple(o.strip() for o in text.split(",") if o.strip())
    check_orders(orders)
    return orders


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
    """Remove MODEL's heads in the order of a run's scores and measure the loss on held-out samples."""
    from headattr.pruning.outputs import write_outputs
    from headattr.pruning.runner import prune
    from headattr.pruning.samples import check_run_matches, select_eval_samples
    from headattr.runs.rundir import read_run

    check_output_dir(out, overwrite)
    prune_orders = _parse_orders(orders)
    prune_fractions = parse_floats(fractions, "--fractions")
    loading = model_config(options)
    run = read_run(scores_run)
    excluded = [read_run(path) for path in exclude_runs]
    gen_flags = {k: options.pop(k) for k in GENERATION_FLAGS}
    if eval_kind != "generate" and any(v is not None for v in gen_flags.values()):
        raise HeadattrError("generation settings (--steps, --alg, ...) need --eval generate")
    spec = loading.load(model)
    check_run_matches(spec, run)
    generation = None
    if eval_kind == "generate":
        from headattr.generation.taskeval import GenerationEval

        settings = generation_settings(spec, gen_flags)
        generation = GenerationEval.from_text(task, settings, batch_size, generation_seed)
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
        generation=generation,
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
@click.option(
    "--ig-steps",
    type=click.IntRange(min=1),
    default=None,
    help=f"Base nodes of Gate-IG's rule [default: 3, refined to --ig-tol {DEFAULT_TOL:g}; --quick: 2, fixed].",
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


# ---------------------------------------------------------------- export / import / budget (interoperability)


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


@cli.command("budget")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="JSON file to write.")
@click.option("--select", type=float, default=0.3, show_default=True, help="Mean keep ratio.")
@click.option("--min-keep", type=float, default=0.1, show_default=True, help="Smallest keep ratio of a head.")
@click.option("--gqa", type=click.Choice(["q", "kv"]), default="q", show_default=True, help="Per query or KV head.")
@click.option("--kv-heads", type=int, default=None, help="KV heads per layer (default: the run's model).")
@click.option("--low-percentile", type=float, default=5.0, show_default=True, help="Score percentile mapped to 0.")
@click.option("--high-percentile", type=float, default=95.0, show_default=True, help="Score percentile mapped to 1.")
@click.option("--slope", type=float, default=2.0 / 3.0, show_default=True, help="w = 1 + slope * 2 * (s - 0.5).")
@click.option("--min-weight", type=float, default=0.1, show_default=True, help="Weights clamped below at this.")
@click.option("--max-weight", type=float, default=10.0, show_default=True, help="Weights clamped above at this.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
def budget_cmd(run: Path, out: Path, gqa: str, kv_heads: int | None, overwrite: bool, **rule) -> None:
    """Per-head keep ratios for block-sparse attention from RUN's scores (the rule: headattr.budget)."""
    from headattr.runs.budget import BudgetRule, attention_budget, write_budget

    doc = attention_budget(run, rule=BudgetRule(**rule), gqa=gqa, num_kv_heads=kv_heads)
    path = write_budget(doc, out, overwrite=overwrite)
    rows, cols = doc["shape"]
    click.echo(f"mean keep ratio {doc['mean_keep_ratio']:.4f} over {rows} x {cols} {doc['heads']} heads")
    click.echo(f"wrote {path}")


# ---------------------------------------------------------------- generate (downstream evaluation)


def _prompt_ids(spec: ModelSpec, text: str, chat_template: bool) -> list[int]:
    """`[bos] + tokens` as `headattr.data` builds prompts (no bos with a chat template)."""
    from headattr.data.samples import Record, _bos, _prompt_text

    record = Record(0, text, "", None, "")
    return _bos(spec.tokenizer, chat_template) + spec.tokenizer.encode(
        _prompt_text(record, spec.tokenizer, chat_template), add_special_tokens=False
    )


def _generation_inputs(spec: ModelSpec, prompts: tuple[str, ...], data: dict) -> list[dict]:
    """Rows to generate for: {"prompt", "prompt_ids"} (+ "index", "answer" from --data)."""
    from headattr.data.samples import load_records, select_records

    chat = data["chat_template"]
    if prompts:
        return [{"prompt": p, "prompt_ids": _prompt_ids(spec, p, chat)} for p in prompts]
    path = data["data_path"]
    if not path.is_file():
        raise HeadattrError(f"dataset file {path} does not exist; pass an existing file to --data")
    records = load_records(path, data["fmt"], data["prompt_field"], data["answer_field"], data["group_by"])
    if data["samples"]:
        records = sorted(
            select_records(records, min(data["samples"], len(records)), data["seed"]), key=lambda r: r.index
        )
    rows = []
    for r in records:
        text = r.chat_prompt if chat and r.chat_prompt is not None else r.prompt
        row = {"index": r.index, "prompt": text, "answer": r.answer, "prompt_ids": _prompt_ids(spec, text, chat)}
        rows.append({**row, "group": r.group} if r.group is not None else row)
    return rows


@cli.command("generate")
@click.argument("model")
@click.option("--prompt", "prompts", multiple=True, help="Prompt text (repeatable).")
@click.option("--data", "data_path", default=None, type=click.Path(path_type=Path), help="Prompts from a dataset.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="prompt-answer", show_default=True)
@click.option("--prompt-field", default="prompt", show_default=True)
@click.option("--answer-field", default="answer", show_default=True)
@click.option("--samples", type=int, default=0, show_default=True, help="Rows of --data to use (0: all).")
@click.option("--chat-template", is_flag=True, help="Format each prompt with the tokenizer's chat template.")
@generation_options
@click.option("--head-mask", default=None, type=click.Path(path_type=Path), help="head_mask.json from prune.")
@click.option("--fraction", type=float, default=None, help="Which fraction of --head-mask to remove.")
@click.option("--order", type=click.Choice(["most", "least", "random"]), default="most", show_default=True)
@click.option("--random-order", type=int, default=0, show_default=True, help="Which random order of --head-mask.")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Write JSONL here instead of printing.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of sampling (and of --samples).")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Prompts per batch.")
@click.option("--task", default=None, help="With --data: score against the answers (gsm8k, exact, contains, regex:P).")
@click.option("--group-by", default=None, help="With --task: also report accuracy per value of this field.")
@model_options
def generate_cmd(
    model: str,
    prompts: tuple[str, ...],
    head_mask: Path | None,
    fraction: float | None,
    order: str,
    random_order: int,
    out: Path | None,
    overwrite: bool,
    seed: int,
    batch_size: int,
    task: str | None,
    group_by: str | None,
    **options,
) -> None:
    """Generate with MODEL's own sampler (Dream or LLaDA), optionally with heads removed; text cut at EOS."""
    import json

    from headattr.generation.sampling import completion_ids, completion_text, generate
    from headattr.generation.scoring import parse_task
    from headattr.runs.headmask import read_head_mask
    from headattr.runs.rundir import atomic_write_text

    if bool(prompts) == (options["data_path"] is not None):
        raise HeadattrError("give --prompt TEXT or --data FILE (one of them)")
    if (head_mask is None) != (fraction is None):
        raise HeadattrError("--head-mask and --fraction go together")
    if out is not None and out.exists() and not overwrite:
        raise HeadattrError(f"{out} already exists; pass --overwrite to replace it")
    if batch_size < 1:
        raise HeadattrError(f"--batch-size must be at least 1, got {batch_size}")
    if (task is not None or group_by is not None) and options["data_path"] is None:
        raise HeadattrError("--task and --group-by score answers: they need --data")
    scorer = parse_task(task) if task is not None else None
    data = {k: options.pop(k) for k in ("data_path", "fmt", "prompt_field", "answer_field", "samples", "chat_template")}
    data["group_by"] = group_by
    gen_flags = {k: options.pop(k) for k in GENERATION_FLAGS}
    spec = model_config(options).load(model)
    settings = generation_settings(spec, gen_flags)
    removed = read_head_mask(head_mask, fraction, order, random_order, spec) if head_mask is not None else None
    rows = _generation_inputs(spec, prompts, {**data, "seed": seed})
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        ids = generate(spec, [r["prompt_ids"] for r in chunk], head_mask=removed, seed=seed, **settings)
        width = max(len(r["prompt_ids"]) for r in chunk)
        for r, row in zip(chunk, ids, strict=True):
            r["generated_ids"] = row[width:].tolist()
            r["completion_ids"] = completion_ids(spec, row[width:])
            r["completion"] = completion_text(spec, row[width:])
    if scorer is not None:
        for r in rows:
            r["correct"] = scorer.score(r["completion"], r["answer"])
    if out is None and scorer is None:
        for r in rows:
            click.echo(r["completion"])
    if out is not None:
        atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        click.echo(f"wrote {out} ({len(rows)} completions)")
    if scorer is not None:
        for line in _accuracy_lines(scorer, rows):
            click.echo(line)


def _accuracy_lines(scorer, rows: list[dict]) -> list[str]:
    """Accuracy with its 95% Wilson interval per metric, over all rows and per group."""
    from headattr.generation.scoring import accuracy

    groups = sorted({r["group"] for r in rows if "group" in r})
    lines = []
    for metric in scorer.metrics:
        for name, members in [("all", rows)] + [(g, [r for r in rows if r.get("group") == g]) for g in groups]:
            a = accuracy([r["correct"][metric] for r in members])
            lines.append(
                f"{scorer.name} {metric} {name}: {a['accuracy']:.3f} ({a['correct']}/{a['n']}; "
                f"95% Wilson [{a['low']:.3f}, {a['high']:.3f}])"
            )
    return lines


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


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI; input errors become one line on stderr and exit status 2."""
    threads, determinism = torch.get_num_threads(), _determinism()
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
        _restore_determinism(determinism)  # so does `--deterministic`
    return 0


def _determinism() -> tuple:
    """What `--deterministic` changes: torch's and cuDNN's flags and CUBLAS_WORKSPACE_CONFIG."""
    cudnn = torch.backends.cudnn
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )


def _restore_determinism(state: tuple) -> None:
    enabled, warn_only, cudnn_deterministic, cudnn_benchmark, cublas = state
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_deterministic, cudnn_benchmark
    if cublas is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


if __name__ == "__main__":
    sys.exit(main())
