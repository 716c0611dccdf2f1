"""Additive attention masks of block diffusion (SDAR, TraDo, LLaDA 2): blocks of `block_size` tokens counted from
position 0 of the sequence (the prompt included), bidirectional inside a block, causal across blocks.

Every mask here is a float additive mask `[1, 1, Q, K]`: 0 where query i may attend to key j, the dtype's most
negative finite value where it may not, shared by every row of a batch (batch axis 1, broadcast), except
`padded_block_causal_mask`'s `[B, 1, T, T]`, one per row of a padded batch. Float, never boolean: transformers
5's eager attention adds a boolean mask to the scores as 0/1, which is silently wrong
(`../shared/spec/model-formats.md`). Every query may attend to at least itself, so no softmax row is empty.

    block_causal_mask(T, B, dtype, device)     # [1, 1, T, T]: key block <= query block (generation, inference)
    padded_block_causal_mask(valid, B, dtype)  # [B, 1, T, T]: the same per row, blocks from its first real token
    noisy_clean_mask(T, B, dtype, device)      # [1, 1, 2T, 2T]: the [x_t | x_0] training layout
"""

from __future__ import annotations

import torch

from headattr.errors import HeadattrError


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[Q, K] boolean "may attend" -> [1, 1, Q, K] additive float mask (0 or the dtype's minimum)."""
    if not dtype.is_floating_point:
        raise ValueError(f"an additive attention mask needs a floating dtype, got {dtype}")
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def _blocks(length: int, block_size: int, device: torch.device | str | None) -> torch.Tensor:
    """[length] the block of each position 0..length-1."""
    if block_size is None or block_size < 1:
        raise HeadattrError(f"block size {block_size!r} is not a positive integer; check the checkpoint's block_size")
    return torch.arange(length, device=device) // block_size


def block_causal_mask(
    length: int, block_size: int, dtype: torch.dtype, device: torch.device | str | None = None
) -> torch.Tensor:
    """[1, 1, T, T]: query i may attend to key j iff j // B <= i // B (block diffusion at inference)."""
    blocks = _blocks(length, block_size, device)
    return additive(blocks[None, :] <= blocks[:, None], dtype)


def padded_block_causal_mask(valid: torch.Tensor, block_size: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, T, T] for a batch whose real tokens are `valid` [B, T] (True = real; left padding): blocks of each
    row counted over its real tokens, i.e. from its first real token, as the row would have them alone. Query i
    may attend to key j iff j's block <= i's block and key j is real, or j == i (a padded query sees only
    itself, so no softmax row is empty; what it computes is never read). Without padding: `block_causal_mask`."""
    _blocks(0, block_size, valid.device)  # refuses a block size that is not a positive integer
    real = valid.to(torch.bool)
    blocks = torch.div(real.long().cumsum(dim=1) - 1, block_size, rounding_mode="floor")  # [B, T]; padding: -1
    diagonal = torch.eye(real.shape[1], dtype=torch.bool, device=real.device)
    allowed = (blocks[:, None, :] <= blocks[:, :, None]) & (real[:, None, :] | diagonal)  # [B, Q, K]
    return additive(allowed, dtype)[0, 0, :, None]  # [1, 1, B, Q, K] -> [B, 1, Q, K]


def noisy_clean_mask(
    length: int, block_size: int, dtype: torch.dtype, device: torch.device | str | None = None
) -> torch.Tensor:
    """[1, 1, 2T, 2T] for a sequence laid out as [x_t | x_0] (a noisy and a clean copy of T positions each):
    noisy block b attends to itself and to clean blocks < b; clean block b to clean blocks <= b; clean never
    to noisy (the training loss of SDAR and LLaDA 2)."""
    blocks = _blocks(length, block_size, device).repeat(2)  # [2T]: both copies count blocks from 0
    noisy = torch.arange(2 * length, device=device) < length  # [2T]
    q_block, k_block = blocks[:, None], blocks[None, :]
    q_noisy, k_noisy = noisy[:, None], noisy[None, :]
    allowed = (q_noisy & k_noisy & (k_block == q_block)) | (~k_noisy & (k_block < q_block))
    allowed |= ~q_noisy & ~k_noisy & (k_block == q_block)
    return additive(allowed, dtype)
