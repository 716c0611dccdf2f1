"""The rules of head-adaptive block-sparse attention: keep ratios per head, and each layer's block mask.

- `BudgetRule` and its steps (`normalised_scores`, `head_weights`, `group_kv`): the allocation rule as
  `headattr budget` computes it (float64, numpy; see `headattr.runs.budget`).
- `keep_ratios(scores [L, H], rule, gqa, kv_heads) -> [L, H] float32`: the same rule as the sparse-attention
  system computes it (float32, torch.quantile, an epsilon in the scale), one ratio per query head.
- `block_mask(q [H, T, d], k [H_kv, T, d], keep [H], block_size, generation_length) -> bool [H, n, n]`: which
  key blocks each query block of each head attends to; `block_masks` does it for a padded batch.

Block mask rule (n = ceil(T / bs) blocks; `last` = the first block of the generation region, the smallest i
with T - i*bs <= G, else n - 1, so a block straddling the prompt/generation boundary is a prefix block):

- prefix key blocks 0..last-1: P = softmax(q_i k^T / sqrt(d)) in float32 over all T keys; a tile's score is its
  sum of P divided by bs*bs (also for a short last block); the top K = min(max(floor(keep*n) + 1, 1), n) tiles
  over all n blocks are taken, then those with index >= last dropped;
- generation key blocks last..n-1: a second softmax over keys last*bs..T-1, tile scores the same way over its
  m = n - last blocks, the top K' = min(floor(keep*m) + 1, m) kept: every query block keeps at least one block;
- ties go to the lower block index.

Padding (`block_masks` with `valid`): each row's mask is that row's mask computed on its real tokens alone (as
if it were unpadded at batch size 1), so padding keys never enter a softmax or a tile score, are never chosen,
and a row's mask does not depend on its batch. Token t of row b then lies in block `token_blocks(valid)[b, t]`
(its rank among the row's real tokens // bs).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from headattr.errors import HeadattrError

GQA = ("q", "kv")
# the largest [H, rows, T] float32 probability slab built at once (bytes): bounds the memory of `block_mask`
SLAB_BYTES = 1 << 28


@dataclass(frozen=True)
class BudgetRule:
    """The parameters of the allocation rule: percentiles of the global scale, the weight's slope and clamp, the
    mean keep ratio `select` and its floor `min_keep`."""

    select: float = 0.3
    min_keep: float = 0.1
    low_percentile: float = 5.0
    high_percentile: float = 95.0
    slope: float = 2.0 / 3.0
    min_weight: float = 0.1
    max_weight: float = 10.0

    def check(self) -> None:
        """Raise HeadattrError for parameters outside their meaningful ranges."""
        if not all(math.isfinite(v) for v in asdict(self).values()):
            raise HeadattrError("budget parameters must be finite numbers")
        if not 0.0 < self.select <= 1.0:
            raise HeadattrError(f"--select {self.select}: give the mean keep ratio in (0, 1]")
        if not 0.0 <= self.min_keep <= 1.0:
            raise HeadattrError(f"--min-keep {self.min_keep}: give a keep ratio in [0, 1]")
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise HeadattrError(
                f"--low-percentile {self.low_percentile} / --high-percentile {self.high_percentile}: "
                "need 0 <= low < high <= 100"
            )
        if not 0.0 < self.min_weight <= self.max_weight:
            raise HeadattrError(f"--min-weight {self.min_weight} / --max-weight {self.max_weight}: need 0 < min <= max")


def normalised_scores(scores: np.ndarray, low_percentile: float, high_percentile: float) -> np.ndarray:
    """Scores [L, H] mapped to [0, 1] between two global percentiles (numpy's linear interpolation); when both
    percentiles coincide, a step: 0 below, 1 above, 0.5 at that value."""
    x = np.asarray(scores, dtype=np.float64)
    lo, hi = np.percentile(x, [low_percentile, high_percentile])
    if hi > lo:
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return np.where(x < lo, 0.0, np.where(x > hi, 1.0, 0.5))


def head_weights(scores: np.ndarray, rule: BudgetRule) -> np.ndarray:
    """[L, H] relative weights with global mean 1: 1 + slope * 2 * (s - 0.5), clamped, over their mean."""
    s = normalised_scores(scores, rule.low_percentile, rule.high_percentile)
    w = np.clip(1.0 + rule.slope * 2.0 * (s - 0.5), rule.min_weight, rule.max_weight)
    return w / w.mean()


def group_kv(weights: np.ndarray, num_kv_heads: int) -> np.ndarray:
    """[L, H] -> [L, KV]: the mean over each KV head's query heads (j*g .. (j+1)*g - 1, g = H / KV, as
    `repeat_kv` lays them out). Equal-sized groups keep the global mean."""
    num_layers, num_heads = weights.shape
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise HeadattrError(f"{num_heads} query heads cannot share {num_kv_heads} KV heads evenly; check --kv-heads")
    return weights.reshape(num_layers, num_kv_heads, num_heads // num_kv_heads).mean(axis=2)


def keep_ratios(
    scores: np.ndarray | torch.Tensor, rule: BudgetRule | None = None, gqa: str = "kv", kv_heads: int | None = None
) -> np.ndarray:
    """Keep ratio per query head [L, H] (float32) from head scores [L, H] (larger = more important).

    In float32: lo, hi = torch.quantile (linear) of all L*H scores at the rule's percentiles;
    n = clamp((s - lo) / (hi - lo + 1e-8), 0, 1); w = clamp(1 + slope * (2 * (n - 0.5)), min_weight,
    max_weight) / its global mean; with `gqa="kv"` every query head takes the mean weight of its KV group
    (query head h is in group h // (H / kv_heads)); keep = clamp(w * select, min_keep, 1).
    """
    rule = rule or BudgetRule()
    rule.check()
    if gqa not in GQA:
        raise HeadattrError(f"unknown gqa {gqa!r}; choose q (per query head) or kv (per KV head)")
    x = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    if x.dim() != 2:
        raise HeadattrError(f"head scores must be [layers, heads], got shape {tuple(x.shape)}")
    flat = x.flatten()
    lo = torch.quantile(flat, rule.low_percentile / 100)
    hi = torch.quantile(flat, rule.high_percentile / 100)
    n = ((x - lo) / (hi - lo + 1e-8)).clamp(0.0, 1.0)
    w = (1.0 + rule.slope * (2.0 * (n - 0.5))).clamp(rule.min_weight, rule.max_weight)
    w = w / w.mean()
    if gqa == "kv":
        if kv_heads is None:
            raise HeadattrError("gqa kv needs the number of KV heads (kv_heads)")
        num_layers, num_heads = w.shape
        if kv_heads < 1 or num_heads % kv_heads:
            raise HeadattrError(f"{num_heads} query heads cannot share {kv_heads} KV heads evenly")
        groups = w.view(num_layers, kv_heads, num_heads // kv_heads)
        w = groups.mean(dim=2, keepdim=True).expand_as(groups).reshape(num_layers, num_heads)
    return (w * rule.select).clamp(rule.min_keep, 1.0).numpy()


def generation_start(length: int, block_size: int, generation_length: int) -> int:
    """`last`: the smallest block i with length - i*bs <= G, else n - 1 (G = 0 gives n - 1, G >= T gives 0)."""
    n = -(-length // block_size)
    first = max(0, -(-(length - generation_length) // block_size))
    return min(first, n - 1)


def _tile_scores(p: torch.Tensor, block_size: int, rows: int, blocks: int) -> torch.Tensor:
    """[H, R, C] probabilities (R <= rows*bs rows, C <= blocks*bs columns) -> [H, rows, blocks] tile sums / bs²
    (missing rows and columns of short blocks count as zero)."""
    h, r, c = p.shape
    p = torch.nn.functional.pad(p.abs(), (0, blocks * block_size - c, 0, rows * block_size - r))
    tiles = p.view(h, rows, block_size, blocks, block_size).sum(dim=(2, 4))
    return tiles / (block_size * block_size)


def _top_blocks(scores: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """[H, R, m] tile scores, [H] counts -> bool [H, R, m]: each row's `count[h]` best tiles (ties: lower index)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    )
    return rank < count[:, None, None]


def _region(q: torch.Tensor, k: torch.Tensor, start: int, block_size: int) -> torch.Tensor:
    """Tile scores [H, r, m] of query rows q [H, R, d] over keys k[:, start:] (float32 softmax over those keys)."""
    logits = (q @ k[:, start:].transpose(1, 2)) / math.sqrt(q.shape[-1])
    p = torch.softmax(logits, dim=-1)
    m = -(-(k.shape[1] - start) // block_size)
    return _tile_scores(p, block_size, -(-q.shape[1] // block_size), m)


def block_mask(
    q: torch.Tensor,
    k: torch.Tensor,
    keep: torch.Tensor | np.ndarray | float,
    block_size: int,
    generation_length: int,
) -> torch.Tensor:
    """bool [H, n, n]: query block i of head h may attend to key block j (module docstring's rule).

    `q` [H, T, d] and `k` [H_kv, T, d] are post-RoPE; with H_kv < H, query head h reads key head
    h // (H / H_kv). `keep` [H] (or one ratio for every head). Query blocks are processed in slabs so that no
    more than `SLAB_BYTES` of probabilities exist at once.
    """
    num_heads, length, dim = q.shape
    if k.shape[0] < 1 or num_heads % k.shape[0] or k.shape[1:] != q.shape[1:]:
        raise HeadattrError(f"q {tuple(q.shape)} and k {tuple(k.shape)} do not fit together")
    if block_size < 1 or length < 1:
        raise HeadattrError(f"block size {block_size} and sequence length {length} must be at least 1")
    q, k = q.float(), k.float().repeat_interleave(num_heads // k.shape[0], dim=0)
    keep = torch.as_tensor(keep, dtype=torch.float32, device=q.device).expand(num_heads)
    n = -(-length // block_size)
    last = generation_start(length, block_size, max(int(generation_length), 0))
    m = n - last
    k_prefix = (torch.floor(keep * n).long() + 1).clamp(1, n)
    k_generation = (torch.floor(keep * m).long() + 1).clamp(max=m)
    mask = torch.zeros(num_heads, n, n, dtype=torch.bool, device=q.device)
    slab = max(1, SLAB_BYTES // (4 * num_heads * length * block_size))
    for first in range(0, n, slab):
        rows = slice(first * block_size, min((first + slab) * block_size, length))
        chosen = _top_blocks(_region(q[:, rows], k, 0, block_size), k_prefix)
        chosen[..., last:] = _top_blocks(_region(q[:, rows], k, last * block_size, block_size), k_generation)
        mask[:, first : first + chosen.shape[1]] = chosen
    return mask


def token_blocks(valid: torch.Tensor, block_size: int) -> torch.Tensor:
    """[B, T] long: the block of each token, its rank among its row's real tokens // bs (a pad token: the block
    of the real token before it, block 0 before the first; its output is discarded, but its row must allow
    some real key)."""
    rank = valid.long().cumsum(dim=1) - 1
    return rank.clamp(min=0) // block_size


def block_masks(
    q: torch.Tensor,
    k: torch.Tensor,
    keep: torch.Tensor | np.ndarray | float,
    block_size: int,
    generation_length: int,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """bool [B, H, n, n] for a batch: q [B, H, T, d], k [B, H_kv, T, d], `valid` [B, T] (True = a real token;
    None = no padding). Row b's mask is `block_mask` of its real tokens alone, with n = ceil(max real length /
    bs); blocks past a shorter row's end stay False."""
    batch, num_heads, length, _ = q.shape
    if valid is None:
        return torch.stack([block_mask(q[b], k[b], keep, block_size, generation_length) for b in range(batch)])
    valid = valid.to(device=q.device, dtype=torch.bool)
    lengths = valid.sum(dim=1).tolist()
    n = -(-max(max(lengths), 1) // block_size)
    out = torch.zeros(batch, num_heads, n, n, dtype=torch.bool, device=q.device)
    for b, real in enumerate(lengths):
        if real:
            idx = valid[b].nonzero().squeeze(1)
            row = block_mask(q[b][:, idx], k[b][:, idx], keep, block_size, generation_length)
            out[b, :, : row.shape[1], : row.shape[2]] = row
    return out
