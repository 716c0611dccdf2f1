"""The CUDA paths of `--batch-size auto` (issue 24), reached on CPU through a fake caching allocator.

`FakeCuda` stands in for the torch.cuda memory functions the planner calls. Like torch's caching allocator it
keeps the blocks of freed tensors reserved (counted as used by `mem_get_info`) until `empty_cache`, and
returns them to the device itself before it reports an out-of-memory error.
"""

from __future__ import annotations

import importlib
import weakref
from pathlib import Path

import pytest
import torch

from headattr.data.tokens import Sample
from headattr.engine import batching, core
from headattr.engine.batching import BatchPlanner, activation_bytes, cache_bytes, is_out_of_memory, measure_row_bytes
from headattr.engine.masking import MaskConfig
from headattr.methods import GateIGConfig
from headattr.models import ModelSpec
from headattr.runs.compute import cached_width
from headattr.runs.plan import dry_run
from headattr.testing import dream_7b_shapes_on_cuda

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


def h200(monkeypatch) -> FakeCuda:
    """An H200 (140 GiB) holding a 15 GB model."""
    return FakeCuda(140 * 2**30, weights=15 * GB).install(monkeypatch)


def planner_measured(row: int) -> BatchPlanner:
    """An auto planner whose probe measured `row` bytes per row of a TOKENS-token sample."""
    return BatchPlanner(dream_7b_shapes_on_cuda(), bytes_per_row_token=row / TOKENS)


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
    spec = dream_7b_shapes_on_cuda()
    spec.backbone.splits_attention = True
    held = cache_bytes(spec, 10, TOKENS, cached_width(spec, GateIGConfig()))
    # layer inputs (float32 under bf16 autocast: core.residual_dtype) and bf16 head outputs: 3.6 GB at 600 tokens
    assert held == 10 * 28 * TOKENS * 3584 * (4 + 2)
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


@pytest.mark.parametrize(
    "message",
    [
        "CUDA out of memory. Tried to allocate 2.00 GiB",
        "CUDA error: out of memory",
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 8",
    ],
)
def test_out_of_memory_messages_are_recognised(message):
    assert is_out_of_memory(RuntimeError(message))
    assert is_out_of_memory(torch.OutOfMemoryError(message))


def test_other_errors_are_not_out_of_memory():
    for message in ("CUDA error: device-side assert triggered", "CUBLAS_STATUS_EXECUTION_FAILED", "shape mismatch"):
        assert not is_out_of_memory(RuntimeError(message))
    assert not is_out_of_memory(ValueError("out of memory"))  # only torch's error types


@pytest.mark.parametrize(
    "error",
    [
        lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        lambda: RuntimeError("CUDA error: out of memory"),
        lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasSgemm( handle, ...)`"),
    ],
)
def test_the_failed_attempt_is_freed_before_the_cache_is_emptied(monkeypatch, error):
    """empty_cache can return only blocks no tensor holds: the failed attempt's tensors must be gone by then
    (inside the `except` block its traceback still held them)."""
    cuda = h200(monkeypatch)
    alive_at_empty: list[list[bool]] = []
    attempts: list[weakref.ref] = []

    def empty_cache() -> None:
        alive_at_empty.append([ref() is not None for ref in attempts])
        cuda.empty_cache()

    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)

    def compute(size: int) -> int:
        activations = torch.zeros(size)  # what the attempt holds when it fails
        attempts.append(weakref.ref(activations))
        if size > 4:
            raise error()
        return size

    assert planner_measured(GB).run(0, TOKENS, ANSWER, compute, most_rows=16) == 4
    assert alive_at_empty == [[False], [False, False]]  # once per failure (16, 8), every failed attempt freed


def test_a_shortage_lowers_the_next_samples_plan_and_recovers(monkeypatch):
    """After an out-of-memory error the next sample starts at the size that fitted (not at the plan capped by
    `most_rows`, which would fail again); each sample without one doubles the scale back, so a passing shortage
    does not shrink the rest of the run."""
    cuda, row = h200(monkeypatch), GB
    planner, tried, short = planner_measured(row), [], [True]

    def compute(size: int) -> int:
        tried.append(size)
        if short[0] and size > 5:  # fragmentation, say: 5 rows fit now
            raise torch.OutOfMemoryError("CUDA out of memory")
        return passes(cuda, row)(size)

    first = planner.run(0, TOKENS, ANSWER, compute, most_rows=24)
    assert tried == [24, 12, 6, 3] and first == 3
    tried.clear()
    assert planner.run(1, TOKENS, ANSWER, compute, most_rows=24) == 3  # no attempt at a size known to fail
    assert tried == [3]
    short[0] = False  # the shortage passes: two samples without an error bring the plan back to 24 rows
    sizes = [planner.run(i, TOKENS, ANSWER, compute, most_rows=24) for i in (2, 3, 4)]
    assert sizes == [6, 12, 24]


def test_an_out_of_memory_probe_falls_back_to_the_activation_model(monkeypatch):
    """The 2-row probe runs before the retry loop: an error there leaves the activation model for the sample
    (its tensors freed before the cache is emptied), and the next sample probes again."""
    cuda = h200(monkeypatch)
    spec = dream_7b_shapes_on_cuda()
    planner, probes = BatchPlanner(spec), []

    def failing_probe(spec, rows):
        probes.append(weakref.ref(torch.zeros(8)))
        held = probes[-1]()
        cuda.malloc(10**15)  # more than the device has
        return held

    monkeypatch.setattr(batching, "measure_row_bytes", failing_probe)
    planner.calibrate(lambda: None, TOKENS)
    assert planner.bytes_per_row_token is None and cuda.emptied == 1 and probes[0]() is None
    row = activation_bytes(spec, TOKENS, ANSWER)
    assert planner.size_for(TOKENS, ANSWER) == planner.budget() // row  # the activation model plans
    monkeypatch.setattr(batching, "measure_row_bytes", lambda spec, rows: 3 * GB)
    planner.calibrate(lambda: None, TOKENS)
    assert planner.bytes_per_row_token == 3 * GB / TOKENS


def test_the_probe_measures_the_variant_with_the_most_masked_tokens(dream, monkeypatch):
    """A row's logits grow with its masked tokens: the probe's rows are the densest variant's."""
    cuda = FakeCuda(10 * GB).install(monkeypatch)
    per_token = 1000  # bytes the fake charges per masked token of a pass (its logits)
    real = core.objective

    def objective(spec, rows, v_idx, start, **kw):
        logits = per_token * sum(len(rows.labels[v]) for v in v_idx.tolist())
        cuda.malloc(logits)
        out = real(spec, rows, v_idx, start, **kw)
        cuda.free(logits)
        return out

    monkeypatch.setattr(core, "objective", objective)
    sample = Sample(0, f"{0:016x}", None, (1, *range(4, 12), *range(20, 40)), 9, 29, 0, 0)
    rows = core.prepare(dream, sample, MaskConfig(mask_seed=5), 1, cache_layers=False)
    masked = [len(labels) for labels in rows.labels]
    assert max(masked) > masked[0]  # the sparsest variant comes first
    assert measure_row_bytes(dream, rows) == per_token * max(masked)


def test_the_dry_run_measures_a_row_on_cuda_as_the_run_does(dream, monkeypatch):
    """`--dry-run` on CUDA plans with the probe's measured row, not the activation model."""
    FakeCuda(80 * GB).install(monkeypatch)
    monkeypatch.setattr(ModelSpec, "device", property(lambda self: torch.device("cuda")))
    sample = Sample(0, f"{0:016x}", None, (1, *range(4, 12), 27, 28, 29, 30), 9, 13, 0, 0)
    measured = 40 * activation_bytes(dream, len(sample.input_ids), 4)  # far from the model: which one planned
    prepared = []  # the probe's rows: the first sample's variants (on the "GPU": stand-ins)
    monkeypatch.setattr(core, "prepare", lambda spec, s, masking, size, cache_layers: prepared.append(s) or "rows")
    monkeypatch.setattr(batching, "measure_row_bytes", lambda spec, rows: measured if rows == "rows" else None)
    method, masking = GateIGConfig(ig_steps=4, ig_tol=0.0), MaskConfig(mask_probs=(0.3, 0.7), mask_samples_per_prob=2)
    plan = dry_run(dream, [sample], method, masking, max_memory=int(10.5 * measured), run_probe=False)
    held = cache_bytes(dream, masking.num_variants, len(sample.input_ids), cached_width(dream, method))
    assert plan["batch_size"]["min"] == (int(10.5 * measured) - held) // measured == 10
    assert prepared == [sample]


def test_peak_flops_table_tells_gpu_form_factors_apart(monkeypatch):
    """gpu_bench's MFU divides by the peak of the GPU torch names: Hopper's SXM, NVL and PCIe parts differ."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("gpu_bench")
    expected = {
        "NVIDIA H100 80GB HBM3": 989.0,  # SXM5
        "NVIDIA H100 PCIe": 756.0,
        "NVIDIA H100 NVL": 835.0,
        "NVIDIA H200": 989.0,
        "NVIDIA H200 NVL": 835.0,
        "NVIDIA GH200 480GB": 989.0,
        "NVIDIA A100-SXM4-80GB": 312.0,
        "NVIDIA A100-PCIE-40GB": 312.0,
        "NVIDIA A100 80GB PCIe": 312.0,
        "NVIDIA L40S": 362.0,
        "NVIDIA L4": 121.0,
        "NVIDIA L40": None,  # not L4
        "NVIDIA A10G": 70.0,
        "NVIDIA H100": None,  # a form factor the table cannot tell: no guess
        "Tesla T4": None,
    }
    assert {name: bench.peak_for(name) for name in expected} == expected
