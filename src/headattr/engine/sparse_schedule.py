"""When a generation's attention is sparse: the settings, the dense/build/sparse schedule, the mask store.

A generation of `steps` denoising steps (0-based `step`) with `skip` runs

- dense while step < end_time = int(steps * skip) + 1 (the Python float product, truncated);
- dense at step == end_time, where every layer builds its block mask from that step's q and k and stores it;
- restricted to the stored mask at every later step (never rebuilt). With end_time >= steps nothing is sparse.

A new generation starts with an empty `MaskStore`. LLaDA's semi-autoregressive blocks: by default the sampler
resets the store and counts steps within each generation block (each block builds its own masks);
`compat="origin"` keeps one counter over the whole generation and never resets, so one mask (built at global
step end_time) serves every later block, as the origin system does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from headattr.engine.sparse_mask import BudgetRule, keep_ratios
from headattr.errors import HeadattrError
from headattr.settings import Settings, choice

PHASES = ("dense", "build", "sparse")


def end_time(steps: int, skip: float) -> int:
    """The step at which masks are built: int(steps * skip) + 1 (16 steps, skip 0.2: 4)."""
    return int(steps * skip) + 1


def phase(step: int, steps: int, skip: float) -> str:
    """ "dense" before end_time, "build" (dense, masks built) at it, "sparse" after it."""
    end = end_time(steps, skip)
    return "dense" if step < end else "build" if step == end else "sparse"


@dataclass(frozen=True)
class SparseAttention(Settings):
    """Head-adaptive block-sparse attention for generation.

    `keep`: one ratio for every head (uniform sparsity), per-layer, per-query-head ratios [L, H] (stored as
    nested tuples; `from_scores` computes them with `select`, `min_keep`, `gqa`), or the path (a string) of a
    run directory or a `headattr budget` file, which generation resolves against the model
    (`headattr.generation.sparse.resolve_sparse`). `skip`: the dense fraction
    of the steps (see the module docstring). `block_size`: tokens per block. `compat`: None (rebuild masks per
    LLaDA generation block) or "origin" (one mask across blocks). `kernel`: "flex" (FlexAttention, compiled
    where possible) or "sdpa" (exact masked SDPA).
    """

    keep: Any = 0.3
    skip: float = 0.2
    block_size: int = 32
    select: float = 0.3
    min_keep: float = 0.1
    gqa: str = "kv"
    compat: str | None = None
    kernel: str = "flex"

    META_NAMES = {
        "keep": "sparse_keep",
        "skip": "sparse_skip",
        "block_size": "sparse_block",
        "select": "sparse_select",
        "min_keep": "sparse_min_keep",
        "gqa": "sparse_gqa",
        "compat": "sparse_compat",
        "kernel": "sparse_kernel",
    }

    def __post_init__(self) -> None:
        keep = self.keep
        if isinstance(keep, os.PathLike):
            keep = os.fspath(keep)
        if not isinstance(keep, (int, float, str)):  # an array: frozen, hashable, JSON-ready nested tuples
            keep = tuple(tuple(float(x) for x in row) for row in np.asarray(keep, dtype=np.float64))
        object.__setattr__(self, "keep", float(keep) if isinstance(keep, (int, float)) else keep)
        super().__post_init__()

    def validate(self) -> None:
        values = np.zeros(()) if isinstance(self.keep, str) else np.asarray(self.keep, dtype=np.float64)
        if isinstance(self.keep, str) and not self.keep:
            raise HeadattrError("--sparse: give a budget file, a run directory or uniform:RATIO, not an empty path")
        if values.ndim not in (0, 2) or values.size == 0 or not np.all((values >= 0) & (values <= 1)):
            raise HeadattrError("--sparse keep ratios must be one number or a [layers, heads] array, all in [0, 1]")
        if not 0.0 <= self.skip <= 1.0:
            raise HeadattrError(f"--sparse-skip {self.skip}: give the dense fraction of the steps in [0, 1]")
        if int(self.block_size) != self.block_size or self.block_size < 1:
            raise HeadattrError(f"--sparse-block {self.block_size}: give a positive number of tokens")
        if not 0.0 < self.select <= 1.0:
            raise HeadattrError(f"--sparse-select {self.select}: give the mean keep ratio in (0, 1]")
        if not 0.0 <= self.min_keep <= 1.0:
            raise HeadattrError(f"--sparse-min-keep {self.min_keep}: give a keep ratio in [0, 1]")
        choice("--sparse-gqa", self.gqa, ("kv", "q"))
        choice("--sparse-compat", "none" if self.compat is None else self.compat, ("none", "origin"))
        choice("--sparse-kernel", self.kernel, ("flex", "sdpa"))

    def from_scores(self, scores: np.ndarray, kv_heads: int | None = None) -> SparseAttention:
        """A copy whose `keep` is the allocation of head scores [L, H] under this object's select, min_keep
        and gqa (`keep_ratios`)."""
        rule = BudgetRule(select=self.select, min_keep=self.min_keep)
        return self.replace(keep=keep_ratios(scores, rule, self.gqa, kv_heads))

    def layer_keep(self, layer: int, num_heads: int) -> torch.Tensor:
        """[H] float32 keep ratios of layer `layer`."""
        if isinstance(self.keep, str):
            raise HeadattrError(f"keep ratios from {self.keep} are not resolved yet (generation.sparse.resolve_sparse)")
        if isinstance(self.keep, float):
            return torch.full((num_heads,), self.keep, dtype=torch.float32)
        row = self.keep[layer]
        if len(row) != num_heads:
            raise HeadattrError(f"keep ratios have {len(row)} heads in layer {layer}; the model has {num_heads}")
        return torch.tensor(row, dtype=torch.float32)

    @property
    def rebuild_per_block(self) -> bool:
        """Whether each LLaDA generation block builds its own masks (the default) or reuses the first."""
        return self.compat != "origin"


@dataclass
class StoredMask:
    """One layer's block mask [B, H, n, n], the key validity [B, T] it was built for, and the kernel's
    prepared form of it (built on first use, reused by every later step)."""

    blocks: torch.Tensor
    valid: torch.Tensor | None = None
    prepared: Any = None


@dataclass
class MaskStore:
    """The block masks of one generation, one per layer: filled at the build step, read afterwards."""

    masks: dict[int, StoredMask] = field(default_factory=dict)

    def reset(self) -> None:
        """Forget every mask (a new generation, or a new LLaDA generation block by default)."""
        self.masks.clear()

    def put(self, layer: int, blocks: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        self.masks[layer] = StoredMask(blocks, valid)

    def get(self, layer: int) -> StoredMask:
        if layer not in self.masks:
            raise HeadattrError(f"no block mask stored for layer {layer}: the build step did not run")
        return self.masks[layer]

    def __contains__(self, layer: object) -> bool:
        return layer in self.masks


def row_densities(store: MaskStore, block_size: int) -> list[float]:
    """Per row of the stored masks: the mean fraction of its own key blocks (n_b = ceil(real tokens / bs))
    that its query blocks attend, over layers, heads and query blocks: the budget a row used. A row's mask
    covers its real tokens only (`block_masks` with `valid`), so the blocks past a shorter row's end are not
    counted as unattended."""
    per_layer = []
    for stored in store.masks.values():
        blocks = stored.blocks  # [B, H, n, n]
        if stored.valid is None:
            per_layer.append(blocks.double().mean(dim=(1, 2, 3)).tolist())
            continue
        counts = (stored.valid.sum(dim=-1) + block_size - 1) // block_size
        per_layer.append([blocks[b, :, :c, :c].double().mean().item() for b, c in enumerate(counts.tolist())])
    return np.mean(per_layer, axis=0).tolist() if per_layer else []
