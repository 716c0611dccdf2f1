"""benchmarks/gpu_bench.py --tiny: the GPU benchmark's code path end to end on CPU (issue 10, item 6), and its
--family shapes (issue 23, item 4)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bench.py"


def test_gpu_bench_tiny_runs_on_cpu_and_ends_with_one_json_line():
    p = subprocess.run(
        [sys.executable, str(BENCH), "--tiny", "--seconds", "0"], capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert set(result["scopes"]) == {"layer", "joint"}
    for r in result["scopes"].values():
        assert r["samples"] >= 1 and r["tokens_per_s"] > 0 and r["flops"] > 0 and r["batch_size"] >= 1
        assert r["projected_50_samples_s"] > 0
    assert result["scopes"]["layer"]["flops"] > result["scopes"]["joint"]["flops"]  # L paths against one
    assert result["reference"]["per_sample_s"] > 0 and result["speedup_vs_reference"] > 0
    assert result["work_ratio_fixed_rule"] > 1  # headattr does less work than the straightforward algorithm
    assert any(line.startswith("scope layer:") for line in lines) and "straightforward" in p.stdout


# ---------------------------------------------------------------- --family: the released shapes of issue 23


@pytest.fixture
def shapes(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH.parent))
    return importlib.import_module("model_shapes")


@pytest.mark.parametrize("family", ["llada", "sdar", "lladamoe", "llada2_moe"])
def test_family_builds_at_tiny_scale_and_attributes(shapes, monkeypatch, family):
    """The CPU rehearsal's path: the family's adapter builds a random tiny model of its shape, which Gate-IG runs."""
    from headattr.engine.masking import MaskConfig

    bench = importlib.import_module("gpu_bench")
    cfg = shapes.TINY[family]
    spec = shapes.family_spec(family, True, "cpu", torch.float32)
    assert spec.family == family and all(torch.isfinite(p).all() for p in spec.model.parameters())
    assert all(torch.isfinite(b).all() for b in spec.model.buffers())  # `to_empty` left none unset
    heads = cfg.get("num_attention_heads") or cfg["n_heads"]
    hidden = cfg.get("hidden_size") or cfg["d_model"]
    assert (spec.num_heads, spec.head_dim) == (heads, cfg.get("head_dim") or hidden // heads)
    assert (spec.num_experts, spec.active_experts) == (cfg.get("num_experts"), cfg.get("num_experts_per_tok"))
    assert spec.block_size == cfg.get("block_size")
    samples = bench.synthetic_samples(1, 12, 4, spec.vocab_size)
    result = bench.run_scope(spec, samples, "joint", 0.0, MaskConfig(mask_probs=(0.5,), mask_samples_per_prob=1), 5)
    assert result["samples"] == 1 and result["flops"] > 0 and result["batch_size"] >= 1


def meta_spec(shapes, family: str):
    """The released shape on the meta device (no memory): what `family_spec` builds on a GPU."""
    from headattr.models import native

    cls, config, arch = shapes.transformers_model(family, shapes.RELEASED[family])
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = cls(config)
    return native.native_spec(model, Path(family), family, 0, False, identity=family, **arch)


def test_released_shapes_have_the_published_parameter_counts(shapes):
    """LLaDA 2.0 mini: 16 B parameters, 1.4 B met per token, 789 M of them besides the embeddings (Ling 2.0's
    announcement); LLaDA-MoE-7B-A1B: 7 B, about 1 B besides the embeddings; SDAR-8B and LLaDA 8B: 8 B."""
    from headattr.runs.plan import architecture

    mini = meta_spec(shapes, "llada2_moe")
    x = architecture(mini, 600)["experts"]
    embeddings = 2 * mini.vocab_size * 2048
    assert round(x["parameters"] / 1e9) == 16 and round(x["active_parameters"] / 1e8) == 14
    assert round((x["active_parameters"] - embeddings) / 1e6) == 789
    assert (mini.num_heads, mini.num_kv_heads, mini.head_dim, x["routed"], x["active"]) == (16, 4, 128, 256, 8)
    assert mini.model.config.rope_parameters["partial_rotary_factor"] * mini.head_dim == 64
    moe = architecture(meta_spec(shapes, "lladamoe"), 600)["experts"]
    assert round(moe["parameters"] / 1e9) == 7 and round((moe["active_parameters"] - 2 * 157184 * 2048) / 1e9) == 1
    for family in ("sdar", "llada"):
        assert round(meta_spec(shapes, family).num_parameters / 1e9) == 8


def test_gpu_bench_family_tiny_runs_on_cpu(shapes):
    cmd = [sys.executable, str(BENCH), "--tiny", "--family", "llada2_moe", "--seconds", "0"]
    p = subprocess.run([*cmd, "--scopes", "joint", "--no-reference"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["family"] == "llada2_moe" and set(result["scopes"]) == {"joint"} and "reference" not in result
    assert result["parameters"] > 0 and result["scopes"]["joint"]["flops"] > 0
    assert "4 of 16 experts per token" in p.stdout
