"""SDAR's block diffusion sampler (`block_diffusion_generate` of JetAstra/SDAR) with head gates, its settings.

Settings: `gen_length` (the length), `block_length` (None: the checkpoint's block size), `steps` (SDAR's
`denoising_steps`), `temperature`, `top_k` (0: off), `top_p` (1: off), `remasking_strategy` (`low_confidence_dynamic`,
`low_confidence_static`, `sequential`), `confidence_threshold`, `stop_ids` (None: the EOS ids). Defaults are
those of SDAR's `generate.py`. The canvas is the prompt and mask tokens up to a whole number of blocks; the full
prompt blocks are prefilled once into a KV cache; every later block is denoised in `steps` steps
(queries of the block see the cached blocks and the block), then its keys and values join the cache; a row stops
after a block in which a stop id has been generated. Every rule is written down in `docs/generation.md` (SDAR).

SDAR publishes no log-likelihood estimate (its evaluation scores generations only): lm-eval's loglikelihood uses
the Monte-Carlo ELBO of its training loss (`generation.blocklikelihood`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from headattr.errors import HeadattrError
from headattr.generation.blockattn import BlockAttention, KVCache
from headattr.generation.blockdiff import (
    aligned_canvas,
    block_of,
    check_common,
    denoised_rows,
    first_blocks,
    read_back,
    step_row,
    stop_ids,
    update_stopped,
    with_gen_length,
)
from headattr.generation.blocklikelihood import likelihood_masks, noisy_clean_logits
from headattr.generation.rows import generators
from headattr.generation.sampler import Predict, Sampler, positive_int, register
from headattr.generation.schedule import transfer_counts
from headattr.models import ModelSpec
from headattr.settings import Settings

SDAR_STRATEGIES = ("low_confidence_dynamic", "low_confidence_static", "sequential")


def check(s: dict[str, Any]) -> None:
    """Refuse a bad resolved SDAR setting in one line."""
    check_common(s)
    positive_int(s, "steps")
    if s["remasking_strategy"] not in SDAR_STRATEGIES:
        raise HeadattrError(
            f"unknown remasking_strategy {s['remasking_strategy']!r}; choose one of {', '.join(SDAR_STRATEGIES)}"
        )


@dataclass(frozen=True)
class SDARSettings(Settings):
    """SDAR's generation settings, with the defaults of SDAR's `generate.py` (its block length, 4 in the released
    chat models, is the checkpoint's `block_size` here; greedy decoding is `top_k=1`, or temperature 0).
    `headattr.generate(spec, ids, SDARSettings(...))`, or the same names as keyword arguments."""

    gen_length: int = 128
    block_length: int | None = None
    steps: int = 4  # `denoising_steps` in SDAR's code
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    remasking_strategy: str = "low_confidence_dynamic"
    confidence_threshold: float = 0.85
    stop_ids: tuple[int, ...] | None = None

    def validate(self) -> None:
        check(dataclasses.asdict(self))


SDAR_DEFAULTS: dict[str, Any] = dataclasses.asdict(SDARSettings())  # the names a caller may pass


def sample(
    spec: ModelSpec,
    predict: Predict,
    ids: torch.Tensor,
    valid: torch.Tensor,
    gates: dict[int, torch.Tensor],
    seed: int,
    s: dict[str, Any],
) -> torch.Tensor:
    """SDAR's `block_diffusion_generate` on every row of `ids` [B, P] (see `docs/generation.md`, SDAR):
    [B, P + gen_length], positions after a row's stop left masked."""
    mask_id, block = spec.mask_token_id, block_of(spec, s)
    x, real, pads, lengths = aligned_canvas(ids, valid, s["gen_length"], block, mask_id)
    gens = generators(x.device, x.shape[0], seed)
    stops = torch.tensor(sorted(stop_ids(spec, s["stop_ids"])), device=x.device)
    counts = transfer_counts(block, s["steps"])
    threshold = s["confidence_threshold"] if s["remasking_strategy"] == "low_confidence_dynamic" else None
    sequential = s["remasking_strategy"] == "sequential"
    firsts = first_blocks(pads, lengths, block)
    cache, first, done = KVCache(), min(firsts), [False] * x.shape[0]
    if first:  # the prefill: the blocks before every row's first denoised block
        prefill = slice(0, first * block)
        predict(x[:, prefill], real[:, prefill], gates, first * block, False, BlockAttention(block, cache, True))
    for k in range(first, x.shape[1] // block):
        cur, cur_real = x[:, k * block : (k + 1) * block], real[:, k * block : (k + 1) * block]
        for step in range(s["steps"]):
            todo = denoised_rows(cur, mask_id, k, firsts, done)
            if not todo:
                break
            logits = predict(cur, cur_real, gates, 0, False, BlockAttention(block, cache))
            for b in todo:
                step_row(cur[b], logits[b], counts[step], s, gens[b], mask_id, threshold, sequential)
        update_stopped(done, x, pads, lengths, (k + 1) * block, stops)
        if all(done) or k == x.shape[1] // block - 1:
            break
        predict(cur, cur_real, gates, block, False, BlockAttention(block, cache, True))  # the block joins the cache
    return read_back(x, ids, pads, lengths, s["gen_length"])


SAMPLER = register(
    Sampler(
        "sdar",
        SDAR_DEFAULTS,
        "gen_length",
        check,
        with_gen_length,
        sample,
        likelihood_masks,
        settings=SDARSettings,
        likelihood_logits=noisy_clean_logits,
    )
)
