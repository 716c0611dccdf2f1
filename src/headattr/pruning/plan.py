"""The gate configurations of a pruning experiment: which heads each removes, stacked in evaluation order.

Heads are ranked by the signed score (a negative score says removing the head helps) or, with
`rank_by="abs"`, by its magnitude. The configurations are, in order: the unpruned model (the fraction-0
baseline), every (order, repetition, fraction) of the removal plan, then with `single_head` every head alone.
Removing a head is gating it to 0, which removes it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from headattr.errors import HeadattrError
from headattr.pruning.settings import RANK_BY, PruneSettings
from headattr.runs.headmask import heads_to_remove, random_rng

# order -> repetition -> fraction -> removed (layer, head) pairs; one repetition for `most` and `least`
Plan = dict[str, list[list[list[tuple[int, int]]]]]


def gate_matrix(num_layers: int, num_heads: int, removed: Sequence[tuple[int, int]]) -> np.ndarray:
    """[L, H] gates: 0 for the removed heads, 1 for every other."""
    gates = np.ones((num_layers, num_heads))
    for layer, head in removed:
        gates[layer, head] = 0.0
    return gates


def ranking_scores(scores: np.ndarray, rank_by: str) -> np.ndarray:
    """What heads are ranked by: the scores as they are (`score`) or their magnitude (`abs`)."""
    if rank_by == "score":
        return scores
    if rank_by == "abs":
        return np.abs(scores)
    raise HeadattrError(f"unknown --rank-by {rank_by!r}; choose one of {', '.join(RANK_BY)}")


def removal_plan(scores: np.ndarray, settings: PruneSettings) -> Plan:
    """The heads each order removes at each fraction, ranked by [L, H] `scores` (see `Plan`)."""
    plan: Plan = {}
    for order in settings.orders:
        reps = range(settings.random_orders) if order == "random" else range(1)
        plan[order] = [
            [
                heads_to_remove(
                    scores, order, f, settings.per_layer, random_rng(settings.seed, r) if order == "random" else None
                )
                for f in settings.fractions
            ]
            for r in reps
        ]
    return plan


@dataclass(frozen=True)
class Configurations:
    """The stacked gates [C, L, H] of an experiment: row 0 the baseline, then `pruned` rows, then `singles`."""

    gates: np.ndarray
    pruned: int
    singles: int

    @property
    def generated(self) -> slice:
        """The rows whose answers are generated with `--eval generate`: all but the single heads."""
        return slice(0, 1 + self.pruned)

    def decode_rows(self, decode: bool) -> np.ndarray:
        """[C] where exact match is measured: every row but the single heads, with `decode`."""
        return np.array([decode] * (1 + self.pruned) + [False] * self.singles)


def configurations(
    plan: Plan, orders: Sequence[str], num_layers: int, num_heads: int, single_head: bool
) -> Configurations:
    """The baseline, every configuration of `plan` in `orders`, and with `single_head` every head alone."""
    pruned = [heads for order in orders for rep in plan[order] for heads in rep]
    singles = [[(layer, head)] for layer in range(num_layers) for head in range(num_heads)] if single_head else []
    gates = np.stack([gate_matrix(num_layers, num_heads, r) for r in [[], *pruned, *singles]])
    return Configurations(gates, len(pruned), len(singles))


def split_curves(
    values: dict[str, np.ndarray], plan: Plan, orders: Sequence[str], num_fractions: int
) -> tuple[dict[str, dict[str, np.ndarray]], int]:
    """Per order and metric, the plan's rows of `values` (metric -> [C], rows as `configurations` stacks them):
    [F] for most and least, [R, F] for random; and the row where the single heads start."""
    curves: dict[str, dict[str, np.ndarray]] = {}
    at = 1
    for order in orders:
        n_rep = len(plan[order])
        block = slice(at, at + n_rep * num_fractions)
        curves[order] = {m: v[block].reshape(n_rep, num_fractions) for m, v in values.items()}
        if order != "random":
            curves[order] = {m: v[0] for m, v in curves[order].items()}
        at = block.stop
    return curves, at
