"""Iterative unmasking decoder for masked diffusion LMs, used to measure exact-match accuracy.

`headattr prune` checks what removing heads does to a model's answers, not only to its loss. For that it
decodes each answer from a fully masked span the way diffusion LMs generate: predict every masked position,
commit the most confident one(s), and repeat with the committed tokens visible. It is model-agnostic: the
caller passes a function from token ids to logits (where gates or pruning hooks already apply) and says
whether logits are shifted (Dream: position j is predicted at j-1) or not (LLaDA: at j).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from headattr.generation.schedule import transfer_counts

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def _answer_positions(positions: torch.Tensor | Sequence[int], batch: int, length: int, shift: bool) -> torch.Tensor:
    """Positions as a `[B, P]` LongTensor (a 1D input is shared by all rows), checked against the length."""
    pos = torch.as_tensor(positions, dtype=torch.long)
    if pos.dim() == 1:
        pos = pos.unsqueeze(0).expand(batch, -1)
    if pos.dim() != 2 or pos.shape[0] != batch:
        raise ValueError(f"positions must be [P] or [B, P] with B={batch}, got shape {tuple(pos.shape)}")
    if pos.numel() and (int(pos.min()) < (1 if shift else 0) or int(pos.max()) >= length):
        low = 1 if shift else 0
        raise ValueError(f"answer positions must lie in [{low}, {length - 1}] (shift={shift})")
    for row in pos:
        if row.unique().numel() != row.numel():
            raise ValueError("answer positions of a row must be distinct")
    return pos


@torch.no_grad()
def unmask_decode(
    logits_fn: LogitsFn,
    input_ids: torch.Tensor,
    positions: torch.Tensor | Sequence[int],
    mask_token_id: int,
    shift: bool,
    steps: int | None = None,
    narrow: bool = False,
) -> torch.LongTensor:
    """Fill the answer `positions` of `input_ids` ([B, T]) by confidence-ordered iterative unmasking.

    The answer positions are set to `mask_token_id` first (they start fully masked whatever they held).
    Each step calls `logits_fn(ids) -> [B, T, V]` once, reads the prediction of every still-masked answer
    position (at `j - 1` if `shift`, else at `j`; the mask token itself is never predicted), and commits the
    most confident ones (highest softmax probability of the argmax token; ties go to the earlier position).
    `steps` defaults to the number of answer positions, i.e. one token per step; fewer steps commit several
    tokens per step. Rows are decoded together and independently. Returns the completed ids ([B, T]).

    `narrow`: `logits_fn(ids, keep=slice(lo, hi))` returns only the logits [B, hi - lo, V] of the positions the
    predictions are read from, so the model's LM head need not run at every position (a [B, T, V] tensor at
    a 150k vocabulary is gigabytes).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    batch, length = input_ids.shape
    pos = _answer_positions(positions, batch, length, shift).to(input_ids.device)
    n_answer = pos.shape[1]
    ids = input_ids.clone().long()
    if n_answer == 0:
        return ids
    steps = n_answer if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    steps = min(steps, n_answer)
    ids.scatter_(1, pos, mask_token_id)
    still_masked = torch.ones(batch, n_answer, dtype=torch.bool, device=ids.device)
    source = pos - 1 if shift else pos  # where each answer position's prediction is read
    rows = torch.arange(batch, device=ids.device).unsqueeze(1)
    lo, hi = int(source.min()), int(source.max()) + 1
    for count in transfer_counts(n_answer, steps):  # as even as possible, earlier steps one more
        if narrow:
            scores = logits_fn(ids, keep=slice(lo, hi))[rows, source - lo].float()  # [B, P, V]
        else:
            scores = logits_fn(ids)[rows, source].float()
        scores[..., mask_token_id] = float("-inf")
        probs = torch.softmax(scores, dim=-1)
        confidence, tokens = probs.max(dim=-1)  # [B, P]
        confidence = confidence.masked_fill(~still_masked, -1.0)
        # Stable descending sort: equal confidences keep position order, so the result is deterministic.
        order = torch.sort(confidence, dim=-1, descending=True, stable=True).indices[:, :count]
        chosen = torch.zeros_like(still_masked).scatter_(1, order, True)
        ids.scatter_(1, pos, torch.where(chosen, tokens, ids.gather(1, pos)))
        still_masked &= ~chosen
    return ids
