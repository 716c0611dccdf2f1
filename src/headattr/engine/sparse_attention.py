"""Attention restricted to a block mask, two kernels that compute it exactly.

A block mask is bool [B, H, n, n] (`headattr.engine.sparse_mask.block_masks`): token r of row b may attend to
token c iff `mask[b, h, blk[b, r], blk[b, c]]` and c is a real token, where `blk = token_blocks(valid, bs)`
(without padding simply r // bs). Masked attention is a softmax over the allowed keys only, scale 1/sqrt(d) by
default. Only the block mask is kept between calls; token-level masks exist only inside a kernel call.

- `masked_sdpa`: the block mask expanded to a boolean token mask, slab by slab of query rows, for
  `torch.nn.functional.scaled_dot_product_attention`: exact, O(rows x T) extra memory per slab.
- `flex_attention_blocks`: `torch.nn.attention.flex_attention` with a `BlockMask` that skips the unselected
  tiles (`flex_block_mask`; built once per stored mask and reusable), compiled where torch can compile it
  (with a fallback to the eager, unfused implementation, which materialises the scores).

q [B, H, T, d], k and v [B, H_kv, T, d] (H_kv divides H; query head h reads key head h // (H / H_kv)).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from headattr.engine.sparse_mask import token_blocks

# the largest boolean token mask built at once by `masked_sdpa` (elements)
SDPA_SLAB = 1 << 26


def _layout(valid: torch.Tensor | None, batch: int, length: int, block_size: int, device: torch.device):
    """Each token's block [B, T] and key validity [B, T] (all True without padding)."""
    if valid is None:
        valid = torch.ones(batch, length, dtype=torch.bool, device=device)
    valid = valid.to(device=device, dtype=torch.bool)
    return token_blocks(valid, block_size), valid


def token_mask(mask: torch.Tensor, blk: torch.Tensor, valid: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
    """bool [B, H, R, T]: the token mask of query rows `rows` (all by default) from the block mask
    [B, H, n, n], token blocks `blk` [B, T] and key validity `valid` [B, T]."""
    b, h, n, _ = mask.shape
    t = blk.shape[1]
    q_blk = blk if rows is None else blk[:, rows]
    r = q_blk.shape[1]
    by_row = mask.gather(2, q_blk[:, None, :, None].expand(b, h, r, n))
    allowed = by_row.gather(3, blk[:, None, None, :].expand(b, h, r, t))
    return allowed & valid[:, None, None, :]


def masked_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    block_size: int,
    valid: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """[B, H, T, d]: attention restricted to the block mask, through SDPA with a boolean token mask (exact)."""
    batch, heads, length, dim = q.shape
    blk, valid = _layout(valid, batch, length, block_size, q.device)
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    groups = heads // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    step = max(1, SDPA_SLAB // max(1, batch * heads * length))
    out = []
    for first in range(0, length, step):
        rows = slice(first, min(first + step, length))
        allowed = token_mask(mask, blk, valid, rows)
        out.append(torch.nn.functional.scaled_dot_product_attention(q[:, :, rows], k, v, allowed, scale=scale))
    return torch.cat(out, dim=2)


def _kv_lists(chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [B, H, n, n] -> (count [B, H, n], indices [B, H, n, n]) in `BlockMask.from_kv_blocks`' form:
    each query block's chosen key blocks first, in index order."""
    count = chosen.sum(dim=-1, dtype=torch.int32)
    order = torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return count, order


def flex_block_mask(mask: torch.Tensor, block_size: int, length: int, valid: torch.Tensor | None = None) -> BlockMask:
    """The flex `BlockMask` of a block mask [B, H, n, n] over T = `length` tokens.

    Without padding the flex tiles are the mask's own blocks (`from_kv_blocks`, no token-level work): tiles
    wholly inside T are full, those of a short last block partial, resolved by a mask_mod that reads the block
    mask. With padding a row's blocks are counted over its real tokens, so they do not line up with flex's
    tiles: `create_block_mask` evaluates the mask_mod per token, once.
    """
    batch, heads, n, _ = mask.shape
    device = mask.device
    if valid is not None and bool(valid.all()):
        valid = None
    blk, valid_t = _layout(valid, batch, length, block_size, device)
    span = n * block_size  # flex pads T up to whole tiles: index tensors cover the padded range
    blk = torch.nn.functional.pad(blk, (0, span - length), value=n - 1)
    valid_t = torch.nn.functional.pad(valid_t, (0, span - length), value=False)

    def mask_mod(b, h, q_idx, kv_idx):
        return mask[b, h, blk[b, q_idx], blk[b, kv_idx]] & valid_t[b, kv_idx]

    if valid is not None:
        return create_block_mask(mask_mod, batch, heads, length, length, device=device, BLOCK_SIZE=block_size)
    whole = torch.ones(n, dtype=torch.bool, device=device)
    if length % block_size:
        whole[-1] = False
    full = mask & whole[:, None] & whole[None, :]
    partial = mask & ~full
    count, order = _kv_lists(partial)
    full_count, full_order = _kv_lists(full)
    return BlockMask.from_kv_blocks(
        count, order, full_count, full_order, BLOCK_SIZE=block_size, mask_mod=mask_mod, seq_lengths=(length, length)
    )


_COMPILED: dict[str, Any] = {}
_UNCOMPILABLE: set[tuple[str, torch.dtype]] = set()  # (device type, dtype) where compiling failed once


def _flex(compiled: bool) -> Any:
    """flex_attention, compiled once per process when asked. Static shapes: one kernel per shape (a generation
    keeps its shape), because inductor's dynamic-shape flex kernel fails to build on CPU (torch 2.13)."""
    if not compiled:
        return flex_attention
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(flex_attention, dynamic=False)
    return _COMPILED["fn"]


def flex_attention_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | BlockMask,
    block_size: int,
    valid: torch.Tensor | None = None,
    scale: float | None = None,
    compiled: bool = True,
) -> torch.Tensor:
    """[B, H, T, d]: attention restricted to the block mask through FlexAttention.

    `mask` is the block mask [B, H, n, n] or its prepared `flex_block_mask` (reuse one across the steps that
    share a mask). `compiled` runs `torch.compile(flex_attention)`; if compilation fails (no compiler, an
    unsupported device or dtype) the eager implementation runs instead, with one warning per device and dtype.
    """
    length = q.shape[2]
    if not isinstance(mask, BlockMask):
        mask = flex_block_mask(mask, block_size, length, valid)
    gqa = q.shape[1] != k.shape[1]
    kind = (q.device.type, q.dtype)
    if compiled and kind not in _UNCOMPILABLE:
        try:
            return _flex(True)(q, k, v, block_mask=mask, scale=scale, enable_gqa=gqa)
        except Exception as exc:  # an inductor or compiler failure: the eager kernel gives the same numbers
            _UNCOMPILABLE.add(kind)  # e.g. float64 on CPU: not tried again (each try costs a compilation)
            warnings.warn(
                f"compiled flex_attention failed on {kind[0]} {kind[1]} ({type(exc).__name__}); running it eagerly",
                stacklevel=2,
            )
    with warnings.catch_warnings():  # the eager path warns that it is unfused on every call
        warnings.simplefilter("ignore", UserWarning)
        return flex_attention(q, k, v, block_mask=mask, scale=scale, enable_gqa=gqa)
