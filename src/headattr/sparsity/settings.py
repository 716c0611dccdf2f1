"""The settings of a sparse-attention evaluation (`headattr sparse`): budgets, allocations, the sparse pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from headattr.errors import HeadattrError
from headattr.settings import Settings, at_least, choice

ALLOCATIONS = ("adaptive", "uniform", "inverted", "random")
DEFAULT_SELECTS = (0.1, 0.2, 0.3, 0.5)


def check_allocations(allocations: Sequence[str]) -> None:
    """Raise unless `allocations` is a non-empty list of known allocations without repeats."""
    if not allocations:
        raise HeadattrError(f"--allocations is empty; choose from {', '.join(ALLOCATIONS)}")
    for name in allocations:
        if name not in ALLOCATIONS:
            raise HeadattrError(f"unknown allocation {name!r} in --allocations; choose from {', '.join(ALLOCATIONS)}")
    if len(set(allocations)) != len(allocations):
        raise HeadattrError(f"--allocations names an allocation twice: {','.join(allocations)}")


@dataclass(frozen=True)
class SparseEvalSettings(Settings):
    """What `headattr sparse` compares (the command's flags of the same names).

    At every mean keep ratio of `selects`, each of `allocations` (`allocations.allocation_keep`): `adaptive`
    (the run's scores through the budget rule with `min_keep` and `gqa`), `uniform`, `inverted` and
    `random_draws` seeded (`seed`) `random` permutations, all spending the adaptive allocation's mean keep
    ratio. The sparse pass: `block_size`, `skip`, `compat`, `kernel` (`SparseAttention`'s fields). Paired
    comparisons: `resamples` bootstrap draws seeded by `bootstrap_seed`.
    """

    selects: tuple[float, ...] = DEFAULT_SELECTS
    allocations: tuple[str, ...] = ALLOCATIONS
    random_draws: int = 3
    seed: int = 0
    block_size: int = 32
    skip: float = 0.2
    min_keep: float = 0.1
    gqa: str = "kv"
    compat: str | None = None
    kernel: str = "flex"
    resamples: int = 10000
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "selects", tuple(float(s) for s in self.selects))
        object.__setattr__(self, "allocations", tuple(self.allocations))
        super().__post_init__()

    def validate(self) -> None:
        if not self.selects:
            raise HeadattrError("--select is empty; give at least one mean keep ratio, e.g. 0.3")
        for s in self.selects:
            if not 0.0 < s <= 1.0:
                raise HeadattrError(f"--select {s:g}: give mean keep ratios in (0, 1]")
        if len(set(self.selects)) != len(self.selects):
            raise HeadattrError("--select names a keep ratio twice")
        check_allocations(self.allocations)
        if "random" in self.allocations:
            at_least("--random-draws", self.random_draws, 1)
        at_least("--seed", self.seed, 0)
        at_least("--resamples", self.resamples, 100)
        at_least("--bootstrap-seed", self.bootstrap_seed, 0)
        if int(self.block_size) != self.block_size or self.block_size < 1:
            raise HeadattrError(f"--sparse-block {self.block_size}: give a positive number of tokens")
        if not 0.0 <= self.skip <= 1.0:
            raise HeadattrError(f"--sparse-skip {self.skip}: give the dense fraction of the steps in [0, 1]")
        if not 0.0 <= self.min_keep <= 1.0:
            raise HeadattrError(f"--sparse-min-keep {self.min_keep}: give a keep ratio in [0, 1]")
        choice("--sparse-gqa", self.gqa, ("kv", "q"))
        choice("--sparse-compat", "none" if self.compat is None else self.compat, ("none", "origin"))
        choice("--sparse-kernel", self.kernel, ("flex", "sdpa"))
