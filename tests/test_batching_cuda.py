"""The CUDA paths of `--batch-size auto` (issue 24), reached on CPU through a fake caching allocator.

`FakeCuda` stands in for the torch.cuda memory functions the planner calls. Like torch's caching allocator it
keeps the blocks of freed tensors reserved (counted as used by `mem_get_info`) until `empty_cache`, and
returns them to the device itself before it reports an out-of-memory error.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from headattr import core
from headattr.attribution import cached_width
from headattr.batching import BatchPlanner, cache_bytes
from headattr.data import Sample
from headattr.masking import MaskConfig
from headattr.methods import GateIGConfig

GB = 10**9
TOKENS, ANSWER = 600, 200


class FakeCuda:
    """A device of `total` bytes holding `weights` bytes, behind a caching allocator."""

    def __init__(self, total: int, weights: int = 0):
        self.total, self.allocated, self.reserved, self.peak = total, weights, weights, weights
        self.emptied = 0

    def malloc(self, n: int) -> None:
        """Cached blocks serve first (ignoring fragmentation), then the device; the allocator returns its cached
        blocks to the device before it gives up, so only the allocated bytes can run it out of memory."""
        if self.allocated + n > self.total:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {n} bytes")
        self.allocated += n
        self.reserved = max(self.reserved, self.allocated)
        self.peak = max(self.peak, self.allocated)

    def free(self, n: int) -> None:
        self.allocated -= n  # the block stays reserved: the allocator caches it

    def empty_cache(self) -> None:
        self.reserved = self.allocated
        self.emptied += 1

    def mem_get_info(self, device=None) -> tuple[int, int]:
        return self.total - self.reserved, self.total

    def memory_reserved(self, device=None) -> int:
        return self.reserved

    def memory_allocated(self, device=None) -> int:
        return self.allocated

    def max_memory_allocated(self, device=None) -> int:
        return self.peak

    def reset_peak_memory_stats(self, device=None) -> None:
        self.peak = self.allocated

    def synchronize(self, device=None) -> None:
        pass

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
        for name in (
            "mem_get_info",
            "memory_reserved",
            "memory_allocated",
            "max_memory_allocated",
            "reset_peak_memory_stats",
            "empty_cache",
            "synchronize",
        ):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        return self


def dream_7b_on_cuda() -> SimpleNamespace:
    """What the planner reads of Dream 7B in bf16 on a GPU (nothing runs on it)."""
    return SimpleNamespace(
        model=SimpleNamespace(config=SimpleNamespace(hidden_size=3584, intermediate_size=18944)),
        num_kv_heads=4,
        head_dim=128,
        num_heads=28,
        num_layers=28,
        dtype=torch.bfloat16,
        device=torch.device("cuda"),
        vocab_size=152064,
        backbone=SimpleNamespace(resumable=True),
    )


def h200(monkeypatch) -> FakeCuda:
    """An H200 (140 GiB) holding a 15 GB model."""
    return FakeCuda(140 * 2**30, weights=15 * GB).install(monkeypatch)


def planner_measured(row: int) -> BatchPlanner:
    """An auto planner whose probe measured `row` bytes per row of a TOKENS-token sample."""
    return BatchPlanner(dream_7b_on_cuda(), bytes_per_row_token=row / TOKENS)


def passes(cuda: FakeCuda, row: int):
    """compute(size) of a sample: its rows' activations allocated, then freed (the allocator keeps them)."""

    def compute(size: int) -> int:
        cuda.malloc(size * row)
        cuda.free(size * row)
        return size

    return compute


def test_the_budget_counts_the_allocators_cached_blocks_as_free(monkeypatch):
    """The issue's simulation: 29 rows for sample 0 and 3 for every later one, before the fix."""
    cuda, row = h200(monkeypatch), int(3.8 * GB)
    planner = planner_measured(row)
    sizes = [planner.run(i, TOKENS, ANSWER, passes(cuda, row)) for i in range(3)]
    assert sizes[0] >= 25  # the plan fills the device: (140 GiB - 15 GB) x 0.9 / 3.8 GB
    assert cuda.reserved > cuda.allocated + (sizes[0] - 1) * row  # sample 0's blocks are still cached
    assert min(sizes[1:]) >= 0.8 * sizes[0]  # the criterion (it is equal here: nothing else changed)
    assert cuda.emptied == 0  # nothing had to be released for it


def test_the_budget_sets_aside_the_samples_cached_tensors(monkeypatch):
    """The layer inputs and head outputs are allocated after the budget is measured: the plan subtracts them, so
    the planned rows fit beside them at the first attempt."""
    cuda, row = FakeCuda(40 * GB, weights=15 * GB).install(monkeypatch), int(3.8 * GB)
    spec = dream_7b_on_cuda()
    spec.backbone.splits_attention = True
    held = cache_bytes(spec, 10, TOKENS, cached_width(spec, GateIGConfig()))
    assert held == 10 * 28 * TOKENS * 2 * 3584 * 2  # layer inputs and head outputs: 2.4 GB at 600 tokens
    planner, tried = planner_measured(row), []
    planner.max_memory = 1.0  # --max-memory 1.0: no slack that could hide the caches

    def compute(size: int) -> int:
        tried.append(size)
        cuda.malloc(held)  # the sample's caches, then its passes
        try:
            cuda.malloc(size * row)
        finally:
            cuda.free(held)
        cuda.free(size * row)
        return size

    size = planner.run(0, TOKENS, ANSWER, compute, held=held)
    assert tried == [size] == [(25 * GB - held) // row] == [5]  # 6 without the caches, which do not fit


def test_cached_width_is_what_a_sample_holds(dream):
    """`cached_width` against the tensors a Gate-IG sample really holds: its cached layer inputs and, for
    one-layer paths, every layer's head outputs."""
    masking = MaskConfig(mask_probs=(0.3, 0.7), mask_samples_per_prob=2, mask_seed=5)
    sample = Sample(0, f"{0:016x}", None, (1, *range(4, 12), 27, 28, 29, 30), 9, 13, 0, 0)
    tokens = len(sample.input_ids)
    for method in (GateIGConfig(scope="layer"), GateIGConfig(scope="joint")):
        rows = core.prepare(dream, sample, masking, 64, cache_layers=method.cache_layers)
        held = sum(h.numel() * h.element_size() for h in rows.hidden_in)
        if method.scope == "layer":
            held += sum(core.head_inputs(dream, rows, layer, 64).nbytes for layer in range(dream.num_layers))
        assert cache_bytes(dream, masking.num_variants, tokens, cached_width(dream, method)) == held
