"""`headattr generate`: completions of prompts or dataset rows, optionally with heads removed, printed or
written as JSONL and optionally scored (the work: `headattr.generation.completions`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from headattr.cli.app import cli
from headattr.cli.options import (
    GENERATION_FLAGS,
    generation_options,
    generation_settings,
    model_config,
    model_options,
    record_options,
    sparse_options,
    sparse_settings,
)
from headattr.errors import HeadattrError


@cli.command("generate")
@click.argument("model")
@click.option("--prompt", "prompts", multiple=True, help="Prompt text (repeatable).")
@click.option("--data", "data_path", default=None, type=click.Path(path_type=Path), help="Prompts from a dataset.")
@record_options
@click.option("--samples", type=int, default=0, show_default=True, help="Rows of --data to use (0: all).")
@click.option("--chat-template", is_flag=True, help="Format each prompt with the tokenizer's chat template.")
@generation_options
@sparse_options
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
    """Generate with MODEL's own sampler (Dream or LLaDA), optionally with heads removed or block-sparse
    attention; text cut at EOS."""
    from headattr.generation.completions import accuracies, complete, dataset_prompts, score, text_prompts
    from headattr.generation.scoring import parse_task
    from headattr.runs.headmask import read_head_mask
    from headattr.runs.rundir import atomic_write_text

    _check_flags(prompts, options["data_path"], head_mask, fraction, out, overwrite, batch_size, task, group_by)
    scorer = parse_task(task) if task is not None else None
    data = {k: options.pop(k) for k in ("data_path", "fmt", "prompt_field", "answer_field", "samples", "chat_template")}
    gen_flags = {k: options.pop(k) for k in GENERATION_FLAGS}
    sparse = sparse_settings(options)
    spec = model_config(options).load(model)
    settings = generation_settings(spec, gen_flags)
    removed = read_head_mask(head_mask, fraction, order, random_order, spec) if head_mask is not None else None
    if prompts:
        rows = text_prompts(spec, prompts, data["chat_template"])
    else:
        rows = dataset_prompts(
            spec,
            data["data_path"],
            format=data["fmt"],
            prompt_field=data["prompt_field"],
            answer_field=data["answer_field"],
            samples=data["samples"],
            seed=seed,
            chat_template=data["chat_template"],
            group_by=group_by,
        )
    rows = complete(spec, rows, batch_size=batch_size, head_mask=removed, seed=seed, sparse=sparse, **settings)
    if scorer is not None:
        rows = score(rows, scorer)
    if out is None and scorer is None:
        for r in rows:
            click.echo(r.completion)
    if out is not None:
        atomic_write_text(out, "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in rows))
        click.echo(f"wrote {out} ({len(rows)} completions)")
    if scorer is not None:
        for metric, group, a in accuracies(rows, scorer):
            click.echo(
                f"{scorer.name} {metric} {group}: {a['accuracy']:.3f} ({a['correct']}/{a['n']}; "
                f"95% Wilson [{a['low']:.3f}, {a['high']:.3f}])"
            )


def _check_flags(prompts, data_path, head_mask, fraction, out, overwrite, batch_size, task, group_by) -> None:
    """The flag combinations `generate` refuses, as one-line errors before the model loads."""
    if bool(prompts) == (data_path is not None):
        raise HeadattrError("give --prompt TEXT or --data FILE (one of them)")
    if (head_mask is None) != (fraction is None):
        raise HeadattrError("--head-mask and --fraction go together")
    if out is not None and out.exists() and not overwrite:
        raise HeadattrError(f"{out} already exists; pass --overwrite to replace it")
    if batch_size < 1:
        raise HeadattrError(f"--batch-size must be at least 1, got {batch_size}")
    if (task is not None or group_by is not None) and data_path is None:
        raise HeadattrError("--task and --group-by score answers: they need --data")
