"""Keep ratios per head for each allocation of one budget: adaptive, uniform, inverted, random.

All four spend the same budget, the adaptive allocation's mean keep ratio, exactly:

- `adaptive`: the run's head scores [L, H] through the budget rule at `select` (`SparseAttention.from_scores`:
  `min_keep`, `gqa`); with `gqa="kv"` every query head of a KV group has its group's ratio;
- `uniform`: every head the adaptive mean (SparseD's uniform sparsity is `select` everywhere; the two differ only
  where the rule's clamps to [min_keep, 1] bind, and then the adaptive mean is the budget actually compared);
- `inverted`: the adaptive ratios reassigned in the order of the negated scores: the unit with the lowest score
  gets the largest ratio, and so on (ties by the lower index);
- `random`: the adaptive ratios reassigned by a seeded permutation (`np.random.default_rng([seed, draw])`), the
  same permutation at every `select`, so a draw is one random ranking of the heads across budgets.

A unit is what the rule allocates to: a KV group of one layer with `gqa="kv"` (its query heads keep one ratio,
and groups are of equal size, so a permutation of groups keeps the mean), a query head with `gqa="q"`.
Permuting the ratios (rather than applying the rule to negated or shuffled scores) keeps the multiset of
ratios, so the means are equal exactly, whatever the clamps do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from headattr.engine.sparse_schedule import SparseAttention
from headattr.errors import HeadattrError


@dataclass(frozen=True)
class Configuration:
    """One configuration of the evaluation: dense (`allocation` "dense", no keep) or an allocation at `select`
    (`draw` numbers the random draws), with its keep ratios [L, H]."""

    allocation: str
    select: float | None = None
    draw: int | None = None
    keep: np.ndarray | None = None

    @property
    def name(self) -> str:
        """ "dense", "adaptive@0.3", "random#1@0.3"."""
        if self.allocation == "dense":
            return "dense"
        draw = f"#{self.draw}" if self.draw is not None else ""
        return f"{self.allocation}{draw}@{self.select:g}"

    @property
    def keep_mean(self) -> float | None:
        """The mean keep ratio over all heads (the nominal budget); None for dense."""
        return None if self.keep is None else float(np.mean(self.keep))


def _group_size(num_heads: int, gqa: str, kv_heads: int | None) -> int:
    """Query heads per allocation unit: H / kv_heads with gqa "kv", else 1."""
    if gqa != "kv" or kv_heads is None:
        return 1
    if kv_heads < 1 or num_heads % kv_heads:
        raise HeadattrError(f"{num_heads} query heads cannot share {kv_heads} KV heads evenly")
    return num_heads // kv_heads


def _units(values: np.ndarray, group: int, mean: bool = False) -> np.ndarray:
    """[L, H] -> [L * H / group]: one value per unit, its first query head's (keep ratios, equal within a unit,
    are copied exactly) or with `mean` the mean over its query heads (scores)."""
    num_layers, num_heads = values.shape
    grouped = values.reshape(num_layers, num_heads // group, group)
    return (grouped.mean(axis=2) if mean else grouped[:, :, 0]).ravel()


def _expand(units: np.ndarray, shape: tuple[int, int], group: int) -> np.ndarray:
    """[U] -> [L, H]: each unit's value for each of its query heads."""
    return np.repeat(units.reshape(shape[0], shape[1] // group), group, axis=1)


def adaptive_keep(scores: np.ndarray, select: float, min_keep: float, gqa: str, kv_heads: int | None) -> np.ndarray:
    """[L, H] float64 keep ratios of the budget rule (`SparseAttention.from_scores`, float32 values)."""
    rule = SparseAttention(select=select, min_keep=min_keep, gqa=gqa)
    return np.asarray(rule.from_scores(np.asarray(scores), kv_heads).keep, dtype=np.float64)


def inverted_keep(adaptive: np.ndarray, scores: np.ndarray, group: int) -> np.ndarray:
    """The adaptive ratios [L, H] given to the units in the order of the negated scores."""
    ratios = _units(adaptive, group)
    order = np.argsort(_units(np.asarray(scores, dtype=np.float64), group, mean=True), kind="stable")
    out = np.empty_like(ratios)
    out[order] = np.sort(ratios)[::-1]  # the lowest score gets the largest ratio
    return _expand(out, adaptive.shape, group)


def random_keep(adaptive: np.ndarray, seed: int, draw: int, group: int) -> np.ndarray:
    """The adaptive ratios [L, H] permuted over the units by `default_rng([seed, draw]).permutation`."""
    ratios = _units(adaptive, group)
    perm = np.random.default_rng([seed, draw]).permutation(ratios.size)
    return _expand(ratios[perm], adaptive.shape, group)


def allocation_keep(
    allocation: str,
    scores: np.ndarray,
    select: float,
    *,
    min_keep: float = 0.1,
    gqa: str = "kv",
    kv_heads: int | None = None,
    seed: int = 0,
    draw: int = 0,
) -> np.ndarray:
    """[L, H] keep ratios of `allocation` at `select` (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    adaptive = adaptive_keep(scores, select, min_keep, gqa, kv_heads)
    group = _group_size(scores.shape[1], gqa, kv_heads)
    if allocation == "adaptive":
        return adaptive
    if allocation == "uniform":
        return np.full(adaptive.shape, float(np.mean(adaptive)))
    if allocation == "inverted":
        return inverted_keep(adaptive, scores, group)
    if allocation == "random":
        return random_keep(adaptive, seed, draw, group)
    raise HeadattrError(f"unknown allocation {allocation!r}; choose adaptive, uniform, inverted or random")


def configurations(settings, scores: np.ndarray, kv_heads: int | None) -> list[Configuration]:
    """Dense, then at every select each allocation of `settings` (a `SparseEvalSettings`; random: each draw)."""
    out = [Configuration("dense")]
    for select in settings.selects:
        for allocation in settings.allocations:
            draws = range(settings.random_draws) if allocation == "random" else [None]
            for draw in draws:
                keep = allocation_keep(
                    allocation,
                    scores,
                    select,
                    min_keep=settings.min_keep,
                    gqa=settings.gqa,
                    kv_heads=kv_heads,
                    seed=settings.seed,
                    draw=draw or 0,
                )
                out.append(Configuration(allocation, select, draw, keep))
    return out
