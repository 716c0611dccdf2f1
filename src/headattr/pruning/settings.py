"""The settings of a pruning experiment: which heads are removed in which orders, and what is measured."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from headattr.errors import HeadattrError
from headattr.runs.headmask import ORDERS, num_to_remove
from headattr.settings import Settings, at_least, choice

RANK_BY = ("score", "abs")
DEFAULT_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)


def check_orders(orders: Sequence[str]) -> None:
    """Raise unless `orders` is a non-empty list of known orders."""
    if not orders:
        raise HeadattrError("--orders is empty; choose from most, least, random")
    for order in orders:
        if order not in ORDERS:
            raise HeadattrError(f"unknown pruning order {order!r} in --orders; choose from {', '.join(ORDERS)}")


@dataclass(frozen=True)
class PruneSettings(Settings):
    """What `prune` removes and measures (the `headattr prune` flags of the same names).

    `fractions` of the heads are removed in each of `orders` (`most`, `least`, `random`: `random_orders`
    orders seeded by `seed`), over all heads at once or, with `per_layer`, the same number in every layer;
    heads are ranked by their signed score (`rank_by="score"`) or its magnitude (`"abs"`). `single_head` also
    removes every head on its own; `decode` also measures exact match of the decoded answer. The meta form
    uses pruning.json's `settings` names (`exact_match` for `decode`).
    """

    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    orders: tuple[str, ...] = ORDERS
    random_orders: int = 10
    seed: int = 0
    per_layer: bool = False
    rank_by: str = "score"
    single_head: bool = False
    decode: bool = False

    META_NAMES = {"decode": "exact_match"}

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        object.__setattr__(self, "orders", tuple(self.orders))
        super().__post_init__()

    def validate(self) -> None:
        if not self.fractions:
            raise HeadattrError("--fractions is empty; give at least one fraction, e.g. 0.1")
        for f in self.fractions:
            num_to_remove(f, 1)  # range check
        check_orders(self.orders)
        if "random" in self.orders:
            at_least("--random-orders", self.random_orders, 1)
            at_least("--seed", self.seed, 0)  # the random orders' seed sequence takes no negative seed
        choice("--rank-by", self.rank_by, RANK_BY)

    def override(self, **options: Any) -> PruneSettings:
        """A copy with the `options` that are not None applied (and validated); self when there are none."""
        given = {k: v for k, v in options.items() if v is not None}
        return self.replace(**given) if given else self
