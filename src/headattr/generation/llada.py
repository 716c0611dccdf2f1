"""LLaDA's sampler (`generate()` of ML-GSAI/LLaDA) with head gates, its settings and its evaluation.

Settings: `gen_length` (the length), `steps`, `block_length`, `temperature`, `cfg_scale`, `remasking`
(`low_confidence`, `random`); logits are not shifted. Every rule is written down in `docs/generation.md`
(LLaDA). The log-likelihood estimate of LLaDA's evaluation masks exact counts of continuation tokens, spread
evenly over 1..L.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from headattr.engine.gates import batch_gates
from headattr.engine.sparse_hook import denoising_step
from headattr.errors import HeadattrError
from headattr.generation.rows import first_masked, row_span, start
from headattr.generation.sampler import Predict, Sampler, positive_int, register
from headattr.generation.schedule import transfer_counts
from headattr.models import ModelSpec
from headattr.settings import Settings

LLADA_REMASKING = ("low_confidence", "random")


def check(s: dict[str, Any]) -> None:
    """Refuse a bad resolved LLaDA setting in one line (lengths, steps and blocks must divide as in LLaDA)."""
    for name in ("gen_length", "steps", "block_length"):
        positive_int(s, name)
    if s["gen_length"] % s["block_length"]:
        raise HeadattrError(
            f"gen_length {s['gen_length']} must be a multiple of block_length {s['block_length']} (as in LLaDA)"
        )
    blocks = s["gen_length"] // s["block_length"]
    if s["steps"] % blocks:
        raise HeadattrError(f"steps {s['steps']} must be a multiple of the number of blocks {blocks} (as in LLaDA)")
    if s["temperature"] < 0 or s["cfg_scale"] < 0:
        raise HeadattrError("temperature and cfg_scale must be >= 0")
    if s["remasking"] not in LLADA_REMASKING:
        raise HeadattrError(f"unknown remasking {s['remasking']!r}; choose one of {', '.join(LLADA_REMASKING)}")


@dataclass(frozen=True)
class LLaDASettings(Settings):
    """LLaDA's generation settings, with the keyword defaults of LLaDA's generate(). `headattr.generate(spec,
    ids, LLaDASettings(...))`, or the same names as keyword arguments; checked on construction (`check`)."""

    gen_length: int = 128
    steps: int = 128
    block_length: int = 128
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"

    def validate(self) -> None:
        check(dataclasses.asdict(self))


LLADA_DEFAULTS: dict[str, Any] = dataclasses.asdict(LLaDASettings())  # the names a caller may pass


def with_length(settings: dict[str, Any], n: int) -> dict[str, Any]:
    """`settings` generating `n` tokens; without a `block_length`, the block is the whole generation."""
    return {"block_length": n, **settings, "gen_length": n}


def _step_row(
    x: torch.Tensor,
    logits: torch.Tensor,
    s: dict[str, Any],
    block_end: int,
    count: int,
    mask_id: int,
    gen: torch.Generator,
    lo: int = 0,
) -> None:
    """One step on one row's unpadded view `x` [T] in place; `logits` [T - lo, V] predict positions lo..T-1,
    where every masked position is; `block_end` ends the block."""
    masked = x == mask_id
    if s["temperature"] > 0:
        # Gumbel-max in float64: exp(logits) / (-log u) ** temperature, as LLaDA's add_gumbel_noise; the noise
        # is drawn for every position, as the official code draws it, so that the generator gives the same draws
        shape = (1, x.shape[0], logits.shape[-1])
        noise = torch.rand(shape, dtype=torch.float64, device=x.device, generator=gen)[0, lo:]
        noisy = logits.to(torch.float64).exp() / (-torch.log(noise)) ** s["temperature"]
    else:
        noisy = logits
    tokens = x.clone()
    tokens[lo:] = torch.argmax(noisy, dim=-1)  # may be the mask token: then the position stays masked
    if s["remasking"] == "low_confidence":
        p = F.softmax(logits, dim=-1)
        score = torch.full(x.shape, -torch.inf, dtype=p.dtype, device=x.device)
        score[lo:] = torch.gather(p, -1, tokens[lo:, None])[:, 0]
    else:
        score = torch.rand((1, x.shape[0]), device=x.device, generator=gen)[0]
    score[block_end:] = -torch.inf
    tokens = torch.where(masked, tokens, x)
    confidence = torch.where(masked, score, -torch.inf)
    chosen = torch.topk(confidence, k=count)[1]
    x[chosen] = tokens[chosen]


def sample(
    spec: ModelSpec,
    predict: Predict,
    ids: torch.Tensor,
    valid: torch.Tensor,
    gates: dict[int, torch.Tensor],
    seed: int,
    s: dict[str, Any],
) -> torch.Tensor:
    """LLaDA's `generate` on every row of `ids` [B, P] (see `docs/generation.md`, LLaDA): [B, P + N]."""
    mask_id, width = spec.mask_token_id, ids.shape[1]
    x, valid, offsets, gens = start(ids, valid, s["gen_length"], mask_id, seed)
    prompt = (x != mask_id) & valid  # guidance hides these; prompt mask tokens are not part of it
    n_blocks = s["gen_length"] // s["block_length"]
    steps = s["steps"] // n_blocks
    guided = s["cfg_scale"] > 0
    both_gates = batch_gates(gates, x.shape[0], 2) if guided else gates
    for blk in range(n_blocks):
        begin = width + blk * s["block_length"]
        end = begin + s["block_length"]
        schedules = [transfer_counts(int((x[b, begin:end] == mask_id).sum()), steps) for b in range(x.shape[0])]
        for i in range(steps):
            lo = first_masked(x, valid, mask_id)  # only x's masked positions are read, also under guidance
            denoising_step(i, steps, blk, n_blocks)  # sparse attention's schedule (nothing when dense)
            if guided:
                un_x = x.masked_fill(prompt, mask_id)
                both = predict(torch.cat([x, un_x]), torch.cat([valid, valid]), both_gates, lo, False)
                cond, uncond = torch.chunk(both, 2, dim=0)
                logits = uncond + (s["cfg_scale"] + 1) * (cond - uncond)
            else:
                logits = predict(x, valid, gates, lo, False)
            for b, off in enumerate(offsets):
                row_logits, row_lo = row_span(logits, b, off, lo)
                _step_row(x[b, off:], row_logits, s, end - off, schedules[b][i], mask_id, gens[b], row_lo)
    return x


def likelihood_masks(
    seq: torch.Tensor, n_prompt: int, mask_id: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA's draw: b rows mask exactly x_i of the L target tokens, x_i spread evenly over 1..L from a random k."""
    b, total = seq.shape
    length = total - n_prompt
    k = int(torch.randint(1, length + 1, (), generator=gen))
    counts = torch.round(torch.linspace(float(k), k + (b - 1) * (length / b), steps=b)).long()
    counts = ((counts - 1) % length) + 1
    masked = torch.zeros(b, total, dtype=torch.bool)
    for i in range(b):
        masked[i, n_prompt + torch.randperm(length, generator=gen)[: int(counts[i])]] = True
    weight = (counts.double() / length)[:, None].expand(b, total)
    return torch.where(masked, mask_id, seq), weight


SAMPLER = register(
    Sampler(
        "llada",
        LLADA_DEFAULTS,
        "gen_length",
        check,
        with_length,
        sample,
        likelihood_masks,
        settings=LLaDASettings,
        sparse=True,
    )
)
