"""`--batch-size auto` (issue 10, item 3): rows per pass from free memory, halving on out-of-memory errors.

Tested on CPU by limiting the free memory the planner sees and by injecting out-of-memory errors; in every
case the scores must be byte-identical to a fixed batch size's, since rows never interact.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from headattr.cli import main
from headattr.data.tokens import Sample
from headattr.engine import batching
from headattr.engine.batching import BatchPlanner, activation_bytes, cache_bytes, parse_batch_size, parse_max_memory
from headattr.engine.masking import MaskConfig
from headattr.errors import HeadattrError
from headattr.methods import GateIGConfig, common
from headattr.runs.attribution import attribute
from headattr.runs.compute import cached_width
from headattr.testing import dream_7b_shapes_on_cuda

MASKING = MaskConfig(mask_probs=(0.3, 0.7), mask_samples_per_prob=2, mask_seed=5)  # V = 4
METHOD = GateIGConfig(ig_steps=4, ig_tol=0.0)  # the fixed rule: 16 rows per path
SAMPLES = [
    Sample(i, f"{i:016x}", None, tuple([1, *range(4 + i, 12 + i), 27, 28, 29, 30]), 9, 13, 0, 0) for i in range(3)
]


def run(spec, tmp_path, name: str, **kw):
    return attribute(spec, SAMPLES, METHOD, MASKING, out=tmp_path / name, progress=False, **kw)


def test_parse_batch_size_and_max_memory():
    assert parse_batch_size("auto") == "auto" and parse_batch_size("AUTO") == "auto"
    assert parse_batch_size("12") == 12 and parse_batch_size(3) == 3
    for bad in ("0", "-2", "big", "1.5"):
        with pytest.raises(HeadattrError, match="--batch-size"):
            parse_batch_size(bad)
    assert parse_max_memory("40GB") == 40 * 10**9 and parse_max_memory("512MiB") == 512 * 2**20
    assert parse_max_memory("0.8") == 0.8 and parse_max_memory(None) is None and parse_max_memory(4096) == 4096
    for bad in ("0", "1.5", "-1GB", "40 parsecs", "GB"):
        with pytest.raises(HeadattrError, match="--max-memory"):
            parse_max_memory(bad)


def test_activation_model_of_dream_7b_shapes():
    """The documented model: 225 KB per token per layer in bf16 for Dream 7B on CUDA, plus the logits."""
    spec = dream_7b_shapes_on_cuda()
    per_token_layer = 2 * (10 * 3584 + 2 * 512 + 4 * 18944)
    assert per_token_layer == 225_280
    assert activation_bytes(spec, 600, 0) == 600 * 28 * per_token_layer
    assert activation_bytes(spec, 600, 200) - activation_bytes(spec, 600, 0) == 12 * 152064 * 200
    spec.backbone.grad_checkpoint = True  # only the layer inputs and one layer's activations are kept
    assert activation_bytes(spec, 600, 0) == 600 * (28 * 2 * 3584 + per_token_layer)


def test_limited_memory_picks_a_small_batch_and_changes_nothing(dream, tmp_path, monkeypatch):
    fixed = run(dream, tmp_path, "fixed", batch_size=64)
    tokens = len(SAMPLES[0].input_ids)
    row = activation_bytes(dream, tokens, 4)
    # the 3 samples (one shape: merged on CPU) hold their layer inputs and head outputs beside the rows
    held = cache_bytes(dream, len(SAMPLES) * MASKING.num_variants, tokens, cached_width(dream, METHOD))
    assert held > row  # enough that planning without it would pick 4 rows below
    monkeypatch.setattr(batching, "free_memory", lambda device: int((3.5 * row + held) / batching.DEFAULT_FRACTION))
    auto = run(dream, tmp_path, "auto")
    assert auto.timings["batch_size"] == 3  # 3.5 rows' worth of budget once the caches are set aside
    assert (tmp_path / "auto/scores.safetensors").read_bytes() == (tmp_path / "fixed/scores.safetensors").read_bytes()
    meta = json.loads((tmp_path / "auto/run.json").read_text())
    assert meta["config"]["batch_size"] == "auto" and meta["timings"]["batch_size"] == 3
    capped = run(dream, tmp_path, "capped", max_memory=int(2 * row + held))  # --max-memory caps the budget
    assert capped.timings["batch_size"] == 2
    np.testing.assert_array_equal(capped.attributions, fixed.attributions)


def test_cpu_passes_stay_within_the_cache_budget_and_change_nothing(dream, tmp_path, monkeypatch):
    run(dream, tmp_path, "fixed", batch_size=64)
    monkeypatch.setattr(batching, "free_memory", lambda device: 10**15)  # memory would allow every row at once
    values = len(SAMPLES[0].input_ids) * batching.hidden_size(dream)
    monkeypatch.setattr(batching, "CPU_PASS_VALUES", 5 * values + 1)  # room for 5 rows' hidden states
    auto = run(dream, tmp_path, "auto")
    assert auto.timings["batch_size"] == 5 and auto.timings["batch_size_max"] == 5
    assert (tmp_path / "auto/scores.safetensors").read_bytes() == (tmp_path / "fixed/scores.safetensors").read_bytes()
    cuda = SimpleNamespace(device=torch.device("cuda"))  # no cache cap there (nothing runs: no CUDA needed)
    assert BatchPlanner(cuda).cache_rows(10**6) == batching.MAX_ROWS


@pytest.mark.parametrize(
    "error",
    [
        lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
        lambda: RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
        lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    ],
)
def test_out_of_memory_halves_the_batch_and_retries_the_same_rows(dream, tmp_path, monkeypatch, error):
    run(dream, tmp_path, "fixed", batch_size=64)
    real, failed = common.joined_objective, []

    def joined_objective(spec, rows, joins, *args, **kw):
        n_rows = sum(len(j.v_idx) for j in joins)
        if n_rows > 5:  # the device "holds" at most 5 rows
            failed.append(n_rows)
            raise error()
        return real(spec, rows, joins, *args, **kw)

    monkeypatch.setattr(common, "joined_objective", joined_objective)
    monkeypatch.setattr(batching, "free_memory", lambda device: 10**15)  # the plan: every row in one pass
    auto = run(dream, tmp_path, "auto")
    # planned: the first round's 16 rows of every layer's path, of all 3 samples (one length: merged), in one pass
    assert failed and min(failed) > 5 and failed[0] == len(SAMPLES) * 16 * dream.num_layers
    assert auto.timings["batch_size"] <= 5 and auto.timings["batch_size"] >= 3  # halved until it fit
    assert (tmp_path / "auto/scores.safetensors").read_bytes() == (tmp_path / "fixed/scores.safetensors").read_bytes()
    # the retried passes are those of a run at the size it settled on, to the last bit of every array (against
    # 64 rows, float64 J can differ in its last bit on CPUs whose kernel rounds a product's last rows apart:
    # MKL on AMD EPYC, the last M mod 4 rows; README, "A 7B model on a GPU")
    settled = run(dream, tmp_path, "settled", batch_size=auto.timings["batch_size"])
    assert auto.timings["batch_size"] == auto.timings["batch_size_max"]
    for name in ("j_baseline", "j_full", "completeness_error"):
        np.testing.assert_array_equal(auto.per_variant[name], settled.per_variant[name])


def test_out_of_memory_with_a_fixed_batch_is_one_line(dream, monkeypatch):
    def objective(*args, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(common, "objective", objective)
    with pytest.raises(HeadattrError, match="out of memory at --batch-size 8; use --batch-size auto"):
        attribute(dream, SAMPLES[:1], METHOD, MASKING, batch_size=8, progress=False)
    planner = BatchPlanner(dream)
    with pytest.raises(HeadattrError, match="one row per pass"):
        planner.run(0, 10, 4, lambda size: objective())


def test_other_runtime_errors_are_not_retried(dream):
    planner, calls = BatchPlanner(dream), []

    def compute(size):
        calls.append(size)
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        planner.run(0, 10, 4, compute)
    assert len(calls) == 1


@pytest.mark.parametrize("flag", [["--batch-size", "lots"], ["--max-memory", "a lot"]])
def test_bad_batch_flags_are_one_line(dream_dir, tmp_path, capsys, flag):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "answer": "b"}\n')
    code = main(["attribute", str(dream_dir), "--data", str(data), "--out", str(tmp_path / "r"), *flag])
    err = capsys.readouterr().err
    assert code == 2 and flag[0] in err and len(err.strip().splitlines()) == 1
