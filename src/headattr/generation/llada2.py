"""LLaDA 2's sampler (the `generate()` of LLaDA 2's modelling code) with head gates, its settings.

Settings: `gen_length` (the length), `block_length` (None: the checkpoint's block size), `steps`, `temperature`,
`top_k` (0: off), `top_p` (1: off), `threshold`, `minimal_topk` (steps are capped at gen_length // minimal_topk),
`eos_ids` (None: the EOS ids). Defaults are those of LLaDA 2's `generate()`. The canvas is the prompt and mask
tokens up to a whole number of blocks; for each block after the prompt's full blocks, each step runs the
whole prefix up to the block's end (block-causal, no cache) and commits every masked position of the block whose
confidence exceeds `threshold` if at least k do, else the k most confident (k from an even split of the block
over the steps); a row stops after a block in which an EOS has been generated. Every rule is written down in
`docs/generation.md` (LLaDA 2).

LLaDA 2 publishes no log-likelihood estimate: lm-eval's loglikelihood uses the Monte-Carlo ELBO of its training
loss (`generation.blocklikelihood`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from headattr.errors import HeadattrError
from headattr.generation.blockattn import BlockAttention
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


def check(s: dict[str, Any]) -> None:
    """Refuse a bad resolved LLaDA 2 setting in one line."""
    check_common(s)
    positive_int(s, "steps")
    positive_int(s, "minimal_topk")
    if s["minimal_topk"] > s["gen_length"]:
        raise HeadattrError(f"minimal_topk {s['minimal_topk']} must be <= gen_length {s['gen_length']}")
    if not 0 <= s["threshold"] <= 1:
        raise HeadattrError(f"threshold must be in [0, 1], got {s['threshold']}")


@dataclass(frozen=True)
class LLaDA2Settings(Settings):
    """LLaDA 2's generation settings, with the defaults of its `generate()` (its block length 32 is the
    checkpoint's `block_size` here). `headattr.generate(spec, ids, LLaDA2Settings(...))`, or the same names as
    keyword arguments."""

    gen_length: int = 2048
    block_length: int | None = None
    steps: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    threshold: float = 0.95
    minimal_topk: int = 1
    eos_ids: tuple[int, ...] | None = None

    def validate(self) -> None:
        check(dataclasses.asdict(self))


LLADA2_DEFAULTS: dict[str, Any] = dataclasses.asdict(LLaDA2Settings())  # the names a caller may pass


def sample(
    spec: ModelSpec,
    predict: Predict,
    ids: torch.Tensor,
    valid: torch.Tensor,
    gates: dict[int, torch.Tensor],
    seed: int,
    s: dict[str, Any],
) -> torch.Tensor:
    """LLaDA 2's `generate` on every row of `ids` [B, P] (see `docs/generation.md`, LLaDA 2):
    [B, P + gen_length], positions after a row's stop left masked."""
    mask_id, block = spec.mask_token_id, block_of(spec, s)
    x, real, pads, lengths = aligned_canvas(ids, valid, s["gen_length"], block, mask_id)
    gens = generators(x.device, x.shape[0], seed)
    stops = torch.tensor(sorted(stop_ids(spec, s["eos_ids"])), device=x.device)
    counts = transfer_counts(block, min(s["steps"], s["gen_length"] // s["minimal_topk"]))
    firsts, done = first_blocks(pads, lengths, block), [False] * x.shape[0]
    for k in range(min(firsts), x.shape[1] // block):
        begin, end = k * block, (k + 1) * block
        for count in counts:
            todo = denoised_rows(x[:, begin:end], mask_id, k, firsts, done)
            if not todo:
                break
            logits = predict(x[:, :end], real[:, :end], gates, begin, False, BlockAttention(block))
            for b in todo:
                step_row(x[b, begin:end], logits[b], count, s, gens[b], mask_id, s["threshold"])
        update_stopped(done, x, pads, lengths, end, stops)
        if all(done):
            break
    return read_back(x, ids, pads, lengths, s["gen_length"])


SAMPLER = register(
    Sampler(
        "llada2",
        LLADA2_DEFAULTS,
        "gen_length",
        check,
        with_gen_length,
        sample,
        likelihood_masks,
        settings=LLaDA2Settings,
        likelihood_logits=noisy_clean_logits,
    )
)
