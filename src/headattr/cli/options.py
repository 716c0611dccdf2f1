"""Options shared by several commands: model loading, data selection, sampler settings, and their parsers.

Each group of flags mirrors one settings class (`ModelConfig`, `DataConfig`, the family's sampler settings)
and takes its defaults from that class, so a default is written once; the matching builder (`model_config`,
`data_config`, `generation_settings`) pops the flags from a command's keyword arguments into the settings.
"""

from __future__ import annotations

from pathlib import Path

import click
import torch

from headattr.data.records import FORMATS
from headattr.data.samples import DataConfig
from headattr.errors import HeadattrError
from headattr.models import ModelConfig, ModelSpec, devices
from headattr.models.loading import ATTN_IMPLEMENTATIONS, DTYPE_CHOICES, LOGIT_SHIFT

seed_type = click.IntRange(min=0)


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
    """'0.15,0.3' -> (0.15, 0.3); a malformed list is a one-line error naming the flag."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise HeadattrError(f"{flag} must be comma-separated numbers, e.g. 0.15,0.3,0.5; got {text!r}") from None


def parse_names(text: str) -> tuple[str, ...]:
    """'most, least' -> ('most', 'least'): a comma-separated list of names, blanks dropped (the caller checks them)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def apply(f, options: list):
    """Decorate `f` with `options`, the first listed first in --help."""
    for option in reversed(options):
        f = option(f)
    return f


# ---------------------------------------------------------------- per-command process settings


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


# ---------------------------------------------------------------- model loading (ModelConfig)

MODEL_KEYS = (
    "dtype",
    "device",
    "trust_remote_code",
    "head_module",
    "mask_token_id",
    "logit_shift",
    "attn_implementation",
)


def model_options(f):
    """Flags that say how to load a model (shared by every command that loads one): `ModelConfig`'s fields."""
    return apply(
        f,
        [
            click.option(
                "--trust-remote-code", is_flag=True, help="Run the checkpoint's own Python code (off by default)."
            ),
            threads_option,
            deterministic_option,
            click.option(
                "--head-module",
                default=ModelConfig.head_module,
                help="Name of each layer's attention output projection (a family's own names work, e.g. attn_out).",
            ),
            click.option(
                "--mask-token-id",
                type=click.IntRange(min=0),
                default=ModelConfig.mask_token_id,
                help="Mask token id, when the config has none.",
            ),
            click.option(
                "--logit-shift",
                type=click.Choice(LOGIT_SHIFT),
                default=ModelConfig.logit_shift,
                show_default=True,
                help="on: position j is predicted from j-1 (Dream); off: from j (LLaDA); auto: by family.",
            ),
            click.option(
                "--dtype",
                type=click.Choice(DTYPE_CHOICES),
                default=ModelConfig.dtype,
                show_default=True,
                help="Weights dtype; auto: bfloat16 on CUDA, float32 on CPU.",
            ),
            click.option(
                "--device", default=ModelConfig.device, help="torch device (default: cuda if available, else cpu)."
            ),
            click.option(
                "--attn-implementation",
                type=click.Choice(ATTN_IMPLEMENTATIONS),
                default=ModelConfig.attn_implementation,
                show_default=True,
                help="Attention kernel (results agree up to rounding).",
            ),
        ],
    )


def model_config(options: dict, grad_checkpoint: bool = False) -> ModelConfig:
    """The `ModelConfig` of a command's `model_options` (popped from `options`)."""
    return ModelConfig(**{k: options.pop(k) for k in MODEL_KEYS}, grad_checkpoint=grad_checkpoint)


# ---------------------------------------------------------------- data selection (DataConfig)


def record_options(f):
    """How a dataset's rows are read (`--format`, `--prompt-field`, `--answer-field`): `DataConfig`'s fields."""
    return apply(
        f,
        [
            click.option("--format", "fmt", type=click.Choice(FORMATS), default=DataConfig.format, show_default=True),
            click.option("--prompt-field", default=DataConfig.prompt_field, show_default=True),
            click.option("--answer-field", default=DataConfig.answer_field, show_default=True),
        ],
    )


def data_options(f):
    """Flags that say how to read and select samples: `DataConfig`'s fields."""
    return apply(
        f,
        [
            click.option(
                "--data",
                "data_path",
                required=True,
                type=click.Path(path_type=Path, exists=True, dir_okay=False),
                help="Dataset file: .jsonl, .json, .csv or .parquet.",
            ),
            record_options,
            click.option("--chat-template", is_flag=True, help="Format the prompt with the tokenizer's chat template."),
            click.option(
                "--samples",
                type=click.IntRange(min=0),
                default=DataConfig.samples,
                show_default=True,
                help="Number of samples (0: all rows).",
            ),
            click.option(
                "--stratify-by", default=DataConfig.stratify_by, help="Field naming each row's group (e.g. task)."
            ),
            click.option(
                "--samples-per-group",
                type=click.IntRange(min=1),
                default=DataConfig.samples_per_group,
                help="Samples drawn from each group.",
            ),
            click.option("--max-length", type=click.IntRange(min=1), default=DataConfig.max_length, show_default=True),
        ],
    )


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


# ---------------------------------------------------------------- sampler settings (prune, generate)

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
    "remasking_strategy",
    "confidence_threshold",
    "threshold",
    "minimal_topk",
)


def generation_options(f):
    """Sampler settings (None: the family's official default); a flag of the other family is an error."""
    from headattr.generation.dream import DREAM_ALGS
    from headattr.generation.llada import LLADA_REMASKING
    from headattr.generation.sdar import SDAR_STRATEGIES

    return apply(
        f,
        [
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
            click.option("--top-p", type=float, default=None, help="Dream, SDAR, LLaDA 2: nucleus filter."),
            click.option("--top-k", type=int, default=None, help="Dream, SDAR, LLaDA 2: top-k filter."),
            click.option("--alg-temp", type=float, default=None, help="Dream: temperature of the position choice."),
            click.option("--eps", type=float, default=None, help="Dream: final time of the schedule."),
            click.option(
                "--block-length",
                type=int,
                default=None,
                help="LLaDA: semi-autoregressive block length; SDAR, LLaDA 2: block length [the checkpoint's].",
            ),
            click.option("--cfg-scale", type=float, default=None, help="LLaDA: classifier-free guidance scale."),
            click.option("--remasking", type=click.Choice(LLADA_REMASKING), default=None, help="LLaDA: remasking."),
            click.option(
                "--remasking-strategy", type=click.Choice(SDAR_STRATEGIES), default=None, help="SDAR: commit rule."
            ),
            click.option(
                "--confidence-threshold", type=float, default=None, help="SDAR: dynamic rule's confidence threshold."
            ),
            click.option("--threshold", type=float, default=None, help="LLaDA 2: confidence threshold."),
            click.option("--minimal-topk", type=int, default=None, help="LLaDA 2: tokens committed per step at least."),
        ],
    )


def generation_settings(spec: ModelSpec, options: dict) -> dict:
    """Pop the generation flags from `options` into the family's setting names (only those given)."""
    from headattr.generation.sampling import length_setting, resolve_settings

    given = {k: options.pop(k) for k in GENERATION_FLAGS}
    settings = {k: v for k, v in given.items() if v is not None and k != "length"}
    if given["length"] is not None:
        settings[length_setting(spec)] = given["length"]  # a model that cannot generate: its one-line error
    resolve_settings(spec, settings)  # one-line errors now, before any work
    return settings


def held_out_options(f):
    """The held-out rows a command evaluates on (`pruning.samples.select_eval_samples`): prune and sparse."""
    return apply(
        f,
        [
            click.option(
                "--data",
                "data_path",
                default=None,
                type=click.Path(path_type=Path),
                help="The run's dataset (default: the file recorded in its run.json); held-out rows are evaluated.",
            ),
            click.option(
                "--eval-data",
                default=None,
                type=click.Path(path_type=Path),
                help="Evaluate on this file instead (same format as the run's data; the run's samples are still "
                "excluded).",
            ),
            click.option(
                "--exclude-run",
                "exclude_runs",
                multiple=True,
                type=click.Path(path_type=Path),
                help="Also keep this run's samples out of the evaluation set (repeatable), e.g. the other seed's run.",
            ),
            click.option(
                "--eval-samples",
                type=click.IntRange(min=1),
                default=100,
                show_default=True,
                help="Held-out samples to evaluate on.",
            ),
            click.option(
                "--eval-seed", type=seed_type, default=0, show_default=True, help="Seed of the held-out sample choice."
            ),
        ],
    )


# ---------------------------------------------------------------- sparse attention (SparseAttention)

SPARSE_FLAGS = (
    "sparse",
    "sparse_skip",
    "sparse_block",
    "sparse_select",
    "sparse_min_keep",
    "sparse_gqa",
    "sparse_compat",
    "sparse_kernel",
)


def sparse_options(f):
    """Block-sparse attention during generation: `SparseAttention`'s fields (None: not given, its default)."""
    from headattr.engine.sparse_schedule import SparseAttention as S

    return apply(
        f,
        [
            click.option(
                "--sparse",
                default=None,
                help="Block-sparse attention with keep ratios from a budget file (headattr budget), a run "
                "directory's scores, or uniform:RATIO.",
            ),
            click.option("--sparse-skip", type=float, default=None, help=f"Dense fraction of the steps [{S.skip}]."),
            click.option("--sparse-block", type=int, default=None, help=f"Tokens per block [{S.block_size}]."),
            click.option("--sparse-select", type=float, default=None, help=f"RUN: mean keep ratio [{S.select}]."),
            click.option("--sparse-min-keep", type=float, default=None, help=f"RUN: least keep ratio [{S.min_keep}]."),
            click.option(
                "--sparse-gqa", type=click.Choice(["kv", "q"]), default=None, help=f"RUN: ratio per [{S.gqa}] head."
            ),
            click.option(
                "--sparse-compat",
                type=click.Choice(["none", "origin"]),
                default=None,
                help="origin: LLaDA's one mask across generation blocks, as the origin system [none].",
            ),
            click.option(
                "--sparse-kernel", type=click.Choice(["flex", "sdpa"]), default=None, help=f"Kernel [{S.kernel}]."
            ),
        ],
    )


def sparse_settings(options: dict):
    """Pop the sparse flags from `options` into a `SparseAttention` (None without --sparse); one-line errors."""
    from headattr.generation.sparse import sparse_settings as build

    given = {k: options.pop(k) for k in SPARSE_FLAGS}
    return build(given.pop("sparse"), given)
