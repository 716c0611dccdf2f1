"""The `headattr` command line: a thin layer over the Python API.

Every command turns its flags into one API call. Input problems raise `HeadattrError`; `main` prints them
on one line and exits with status 2, never with a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .data import FORMATS, build_samples
from .engine import LOSS_NORMALIZE, POSTPROCESS, SCOPES, GateIGConfig
from .errors import HeadattrError
from .models import ModelSpec, load_model
from .pipeline import attribute as attribute_api
from .quadrature import RULES
from .rundir import check_output_dir


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="headattr")
def cli() -> None:
    """Gate-IG attention-head attribution for diffusion language models."""


# ---------------------------------------------------------------- attribute / info (models, engine)


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
    """'0.15,0.3' -> (0.15, 0.3); a malformed list is a one-line error naming the flag."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise HeadattrError(
            f"{flag} must be comma-separated numbers, e.g. 0.15,0.3,0.5; got {text!r}"
        ) from None


def model_options(f):
    """Flags that say how to load a model (shared by every command that loads one)."""
    options = [
        click.option(
            "--trust-remote-code", is_flag=True, help="Run the checkpoint's own Python code (off by default)."
        ),
        click.option("--head-module", default=None, help="Name of each layer's attention output projection."),
        click.option(
            "--mask-token-id", type=int, default=None, help="Mask token id, when the config has none."
        ),
        click.option(
            "--logit-shift",
            type=click.Choice(["auto", "on", "off"]),
            default="auto",
            show_default=True,
            help="on: position j is predicted from j-1 (Dream); off: from j (LLaDA); auto: by family.",
        ),
        click.option(
            "--dtype",
            type=click.Choice(["auto", "float32", "bfloat16", "float16", "float64"]),
            default="auto",
            show_default=True,
            help="Weights dtype; auto: bfloat16 on CUDA, float32 on CPU.",
        ),
        click.option("--device", default=None, help="torch device (default: cuda if available, else cpu)."),
        click.option(
            "--attn-implementation",
            type=click.Choice(["sdpa", "eager"]),
            default="sdpa",
            show_default=True,
            help="Attention kernel (results agree up to rounding).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _load(model: str, o: dict) -> ModelSpec:
    return load_model(
        model,
        dtype=o["dtype"],
        device=o["device"],
        trust_remote_code=o["trust_remote_code"],
        head_module=o["head_module"],
        mask_token_id=o["mask_token_id"],
        logit_shift=o["logit_shift"],
        attn_implementation=o["attn_implementation"],
    )


def data_options(f):
    """Flags that say how to read and select samples."""
    options = [
        click.option(
            "--data",
            "data_path",
            required=True,
            type=click.Path(path_type=Path),
            help="Dataset file: .jsonl, .json, .csv or .parquet.",
        ),
        click.option(
            "--format", "fmt", type=click.Choice(FORMATS), default="prompt-answer", show_default=True
        ),
        click.option("--prompt-field", default="prompt", show_default=True),
        click.option("--answer-field", default="answer", show_default=True),
        click.option(
            "--chat-template", is_flag=True, help="Format the prompt with the tokenizer's chat template."
        ),
        click.option(
            "--samples", type=int, default=50, show_default=True, help="Number of samples (0: all rows)."
        ),
        click.option("--stratify-by", default=None, help="Field naming each row's group (e.g. task)."),
        click.option("--samples-per-group", type=int, default=None, help="Samples drawn from each group."),
        click.option("--max-length", type=int, default=2048, show_default=True),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command()
@click.argument("model")
@data_options
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory to write.")
@click.option("--seed", type=int, default=47, show_default=True, help="Seeds everything not set below.")
@click.option("--data-seed", type=int, default=None, help="Sample selection seed (default: --seed).")
@click.option("--mask-seed", type=int, default=None, help="Masking seed (default: --seed).")
@click.option("--ig-steps", type=int, default=8, show_default=True)
@click.option("--rule", type=click.Choice(RULES), default="gauss-legendre", show_default=True)
@click.option("--scope", type=click.Choice(SCOPES), default="layer", show_default=True)
@click.option(
    "--baseline", type=float, default=0.0, show_default=True, help="Gate value at the path's start."
)
@click.option("--mask-probs", default="0.15,0.3,0.5,0.7,0.9", show_default=True)
@click.option("--mask-samples-per-prob", type=int, default=2, show_default=True)
@click.option("--loss-normalize", type=click.Choice(LOSS_NORMALIZE), default="mean-masked", show_default=True)
@click.option("--postprocess", type=click.Choice(POSTPROCESS), default="signed", show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True, help="Rows per forward pass.")
@click.option("--grad-checkpoint", is_flag=True, help="Recompute activations in backward (long sequences).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
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
    batch_size: int,
    grad_checkpoint: bool,
    overwrite: bool,
    resume: bool,
    quiet: bool,
    **options,
) -> None:
    """Compute Gate-IG head scores of MODEL on --data and write a run directory."""
    data_seed = seed if data_seed is None else data_seed
    config = GateIGConfig(
        ig_steps=ig_steps,
        rule=rule,
        scope=scope,
        baseline=baseline,
        mask_probs=parse_floats(mask_probs, "--mask-probs"),
        mask_samples_per_prob=mask_samples_per_prob,
        mask_seed=seed if mask_seed is None else mask_seed,
        loss_normalize=loss_normalize,
        postprocess=postprocess,
        batch_size=batch_size,
    )
    check_output_dir(out, overwrite, resume)
    data = {
        k: options.pop(k)
        for k in (
            "data_path",
            "fmt",
            "prompt_field",
            "answer_field",
            "chat_template",
            "samples",
            "stratify_by",
            "samples_per_group",
            "max_length",
        )
    }
    if not data["data_path"].is_file():
        raise HeadattrError(
            f"dataset file {data['data_path']} does not exist; pass an existing file to --data"
        )
    spec = _load(model, options)
    spec.set_grad_checkpoint(grad_checkpoint)
    samples, report = build_samples(
        data["data_path"],
        spec.tokenizer,
        fmt=data["fmt"],
        prompt_field=data["prompt_field"],
        answer_field=data["answer_field"],
        samples=data["samples"],
        seed=data_seed,
        stratify_by=data["stratify_by"],
        samples_per_group=data["samples_per_group"],
        max_length=data["max_length"],
        chat_template=data["chat_template"],
    )
    data["data"] = str(data.pop("data_path"))
    data["format"] = data.pop("fmt")
    cli_config = {
        "seed": seed,
        "data_seed": data_seed,
        **data,
        "grad_checkpoint": grad_checkpoint,
        **{k: options[k] for k in ("dtype", "attn_implementation", "logit_shift")},
    }
    click.echo(
        f"{spec.name}: {spec.family}, {spec.num_layers} layers x {spec.num_heads} heads; "
        f"{len(samples)} samples x {config.num_variants} masked variants; truncated: "
        f"{report.prompt_truncated} prompts, {report.answer_truncated} answers; skipped: {report.skipped}",
        err=True,
    )
    result = attribute_api(
        spec,
        samples,
        config,
        out=out,
        overwrite=overwrite,
        resume=resume,
        progress=not quiet,
        run_info={"config": cli_config, "data_report": report.to_dict()},
    )
    c = result.diagnostics()["completeness"]
    click.echo(
        f"completeness error: median {c['median_abs']:.3g}, max {c['max_abs']:.3g} "
        f"(max relative {c['max_relative']:.3g})"
    )
    click.echo(f"wrote {out}/ (scores.safetensors, run.json, heads.csv, heatmap.png)")


@cli.command()
@click.argument("model")
@model_options
def info(model: str, **options) -> None:
    """Print what headattr detects in MODEL (family, shape, mask token, shift) without attributing."""
    spec = _load(model, options)
    d = spec.describe()
    shift = "on (position j predicted from j-1)" if spec.logit_shift else "off (position j predicted from j)"
    rows = [
        ("model", d["path"]),
        ("family", d["family"]),
        ("layers", d["num_layers"]),
        ("query heads", d["num_heads"]),
        ("kv heads", d["num_kv_heads"]),
        ("head dim", d["head_dim"]),
        ("head module", d["head_module"]),
        (
            "mask token id",
            d["mask_token_id"] if d["mask_token_id"] is not None else "unknown (pass --mask-token-id)",
        ),
        ("logit shift", shift),
        ("parameters", f"{d['num_parameters']:,}"),
        ("dtype", d["dtype"]),
        ("device", d["device"]),
        ("layer reuse", "yes" if d["layer_reuse"] else "no (whole forward per layer)"),
        ("config hash", d["config_hash"][:16]),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


# ---------------------------------------------------------------- compare / ensemble (analysis)

# ---------------------------------------------------------------- prune / demo (validation)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI; input errors become one line on stderr and exit status 2."""
    try:
        cli.main(args=argv, standalone_mode=False, prog_name="headattr")
    except HeadattrError as exc:
        click.echo(f"headattr: error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("headattr: aborted", err=True)
        return 130
    except click.ClickException as exc:
        ctx_hint = " (see `headattr --help`)" if isinstance(exc, click.UsageError) else ""
        click.echo(f"headattr: error: {exc.format_message()}{ctx_hint}", err=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
