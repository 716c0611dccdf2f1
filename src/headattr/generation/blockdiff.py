"""What the block-diffusion samplers (SDAR's, LLaDA 2's) share: the block-aligned canvas, the token draw, the
commit rule and the stop ids.

Padding (see `docs/generation.md`, "Block diffusion"): each row's own canvas is its prompt followed by mask tokens
up to a whole number of blocks (blocks counted from the row's first real token); the rows are then left-padded to
the longest canvas, so every row's padding is whole blocks and block k of the batch is block k - pad_b / B of
row b. The samplers walk the batch's blocks; a row whose block holds no mask token is untouched by the step (its
keys and values are still computed, as a prefill would). The tokens are read back into the caller's layout.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from headattr.errors import HeadattrError
from headattr.generation.sampler import positive_int
from headattr.models import ModelSpec


def aligned_canvas(
    ids: torch.Tensor, valid: torch.Tensor, gen_length: int, block: int, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    """The canvas [B, W] of left-padded prompts `ids` [B, P] (`valid` [B, P]): each row's prompt, then mask tokens
    up to a multiple of `block` that holds `gen_length` more, left-padded to the widest (W, a multiple of
    `block`). Returns (canvas, its validity [B, W], each row's padding, each row's prompt length)."""
    lengths = valid.sum(dim=1).tolist()
    spans = [-(-(n + gen_length) // block) * block for n in lengths]
    width = max(spans)
    fill = 0 if mask_id != 0 else 1  # padding must not look masked; it is hidden from every query anyway
    x = torch.full((ids.shape[0], width), fill, dtype=ids.dtype, device=ids.device)
    for b, (n, span) in enumerate(zip(lengths, spans, strict=True)):
        x[b, width - span :] = mask_id
        x[b, width - span : width - span + n] = ids[b, ids.shape[1] - n :]
    pads = [width - span for span in spans]
    real = torch.arange(width, device=ids.device)[None] >= torch.tensor(pads, device=ids.device)[:, None]
    return x, real, pads, lengths


def read_back(x: torch.Tensor, ids: torch.Tensor, pads: list[int], lengths: list[int], gen_length: int) -> torch.Tensor:
    """The caller's layout [B, P + gen_length]: the left padding of `ids` [B, P], then each row's prompt and
    first `gen_length` generated positions from the canvas `x` [B, W] (a mask token of the prompt's last,
    denoised block is filled there; the rest of the last block is dropped)."""
    out = torch.cat([ids, ids.new_zeros(ids.shape[0], gen_length)], dim=1)
    for b, (pad, n) in enumerate(zip(pads, lengths, strict=True)):
        out[b, ids.shape[1] - n :] = x[b, pad : pad + n + gen_length]
    return out


def draw_tokens(logits: torch.Tensor, s: dict[str, Any], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n], their probability [n]) for logits [n, V]: logits / temperature, top_k (0: off) and top_p
    (1: off) filtering to -inf, softmax, one categorical draw per position from `gen`; at temperature 0 the
    argmax of the filtered logits instead (no draw), with its probability under the filtered softmax."""
    if s["temperature"] > 0 and s["temperature"] != 1:
        logits = logits / s["temperature"]
    if s["top_k"] > 0:
        kth = torch.topk(logits, min(s["top_k"], logits.shape[-1]))[0][..., -1, None]
        logits = torch.where(logits < kth, torch.full_like(logits, -torch.inf), logits)
    if s["top_p"] < 1:
        ordered, order = torch.sort(logits, descending=True)
        drop = torch.cumsum(F.softmax(ordered, dim=-1), dim=-1) > s["top_p"]
        drop[..., 1:] = drop[..., :-1].clone()  # the token that crosses top_p is kept
        drop[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), -torch.inf)
    probs = F.softmax(logits, dim=-1)
    if s["temperature"] > 0:
        tokens = torch.multinomial(probs, 1, generator=gen)[:, 0]
    else:
        tokens = probs.argmax(dim=-1)
    return tokens, torch.gather(probs, -1, tokens[:, None])[:, 0]


def commit(confidence: torch.Tensor, masked: torch.Tensor, count: int, threshold: float | None) -> torch.Tensor:
    """Which positions of a block [n] to commit: with a `threshold`, every masked position whose confidence
    exceeds it when at least `count` do; otherwise the min(`count`, masked) most confident masked ones."""
    confidence = torch.where(masked, confidence, -torch.inf)
    if threshold is not None:
        high = confidence > threshold
        if int(high.sum()) >= count:
            return high
    chosen = torch.zeros_like(masked)
    chosen[torch.topk(confidence, min(count, int(masked.sum())))[1]] = True
    return chosen


def step_row(
    block: torch.Tensor,
    logits: torch.Tensor,
    count: int,
    s: dict[str, Any],
    gen: torch.Generator,
    mask_id: int,
    threshold: float | None,
    sequential: bool = False,
) -> None:
    """One denoising step on one row's block `block` [n] in place, from its logits [n, V]: a token is drawn at
    every position (`draw_tokens`), and the committed masked positions (`commit` on the drawn tokens'
    probabilities, or with `sequential` the first `count` masked ones) take theirs. A drawn mask token leaves
    its position masked."""
    tokens, confidence = draw_tokens(logits, s, gen)
    masked = block == mask_id
    if sequential:
        chosen = masked & (masked.cumsum(0) <= count)
    else:
        chosen = commit(confidence, masked, count, threshold)
    block[chosen] = tokens[chosen]


def first_blocks(pads: list[int], lengths: list[int], block: int) -> list[int]:
    """Each row's first denoised block of the canvas: the block after its prompt's full blocks (which are only
    read, never denoised, even where they hold the mask token: the official samplers prefill them)."""
    return [(pad + (n // block) * block) // block for pad, n in zip(pads, lengths, strict=True)]


def denoised_rows(block_ids: torch.Tensor, mask_id: int, k: int, firsts: list[int], done: list[bool]) -> list[int]:
    """The rows a step at block k changes (`block_ids` [B, n], the block's tokens): not stopped, at or past their
    first denoised block (`first_blocks`), and a mask token still in the block."""
    holds = (block_ids == mask_id).any(dim=1).tolist()
    return [b for b in range(block_ids.shape[0]) if holds[b] and not done[b] and k >= firsts[b]]


def update_stopped(
    done: list[bool], x: torch.Tensor, pads: list[int], lengths: list[int], end: int, stops: torch.Tensor
) -> None:
    """Mark, in `done`, every row of the canvas `x` [B, W] with a stop id among its generated positions before
    `end` (its positions after its prompt)."""
    for b in range(x.shape[0]):
        done[b] = done[b] or bool(torch.isin(x[b, pads[b] + lengths[b] : end], stops).any())


def block_of(spec: ModelSpec, s: dict[str, Any]) -> int:
    """The block size of settings `s`: `block_length`, or the checkpoint's `block_size` when it is None."""
    block = s["block_length"] if s["block_length"] is not None else spec.block_size
    if block is None:
        raise HeadattrError(f"{spec.name} records no block size; pass block_length")
    return int(block)


def stop_ids(spec: ModelSpec, given: Any) -> set[int]:
    """The stop ids: `given` (an id or ids), or the model's EOS ids (`ModelSpec.eos_ids`) when it is None."""
    if given is not None:
        return {int(i) for i in ([given] if isinstance(given, int) else given)}
    return spec.eos_ids()


def check_common(s: dict[str, Any]) -> None:
    """Refuse a bad resolved block-diffusion setting (shared by SDAR's and LLaDA 2's) in one line."""
    positive_int(s, "gen_length")
    if s["block_length"] is not None:
        positive_int(s, "block_length")
    if s["temperature"] < 0:
        raise HeadattrError(f"temperature must be >= 0, got {s['temperature']}")
    positive_int(s, "top_k", 0)
    if not 0 < s["top_p"] <= 1:
        raise HeadattrError(f"top_p must be in (0, 1], got {s['top_p']}")


def with_gen_length(settings: dict[str, Any], n: int) -> dict[str, Any]:
    """`settings` generating `n` tokens (the block-diffusion samplers' length setting, `gen_length`)."""
    return {**settings, "gen_length": n}
