"""The transfer schedule of iterative unmasking: how many masked positions each step commits.

One rule for LLaDA's sampler (per block) and prune's exact-match decoder (per answer).
"""

from __future__ import annotations


def transfer_counts(n_masked: int, steps: int) -> list[int]:
    """Positions committed at each of `steps` steps that fill `n_masked`: equal shares, the first
    `n_masked % steps` steps one more (LLaDA's `get_num_transfer_tokens`)."""
    base, extra = divmod(n_masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]
