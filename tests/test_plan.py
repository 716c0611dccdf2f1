"""`attribute --dry-run` (issue 10, item 4): the plan's pass counts are Gate-IG's, its FLOPs are those torch counts, and
nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from headattr.cli import main
from headattr.data.tokens import Sample
from headattr.engine import core
from headattr.engine.gates import gated
from headattr.engine.masking import MaskConfig
from headattr.methods import GateIGConfig
from headattr.methods.reference import reference_attribution
from headattr.models import WholeModel
from headattr.runs.compute import attribute_sample
from headattr.runs.plan import (
    LayerPasses,
    dry_run,
    flop_counter,
    flops,
    layer_passes,
    probe_passes,
    reference_passes,
    sample_passes,
)

SAMPLE = Sample(0, "0123456789abcdef", None, (1, 4, 5, 6, 41, 31, 32, 27, 28, 29, 39, 30, 12), 8, 13, 0, 0)
MASKING = MaskConfig(mask_probs=(0.3, 0.7), mask_samples_per_prob=2, mask_seed=5)


# 24 tokens, a 5-token answer: the last layer's tail runs at 16 of them (`core.loss_window`)
LONG = Sample(0, "0123456789abcdef", None, (*SAMPLE.input_ids, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18), 19, 24, 0, 0)


def count_passes(spec, method: GateIGConfig, monkeypatch, sample: Sample = SAMPLE) -> LayerPasses:
    """Run Gate-IG on `sample`, counting every row's pass through each layer, attention part, tail (in units of
    one at every position), layer by layer, and the LM head's tokens."""
    stack, seen, tokens = spec.backbone, LayerPasses.zeros(spec.num_layers), len(sample.input_ids)
    run, heads, tail, logits = stack.run, stack.head_input, stack._layer_tail, stack.logits

    def add(name: str, amount: float, layers: slice | int | None = None) -> None:
        key = "grad_" + name if torch.is_grad_enabled() else name
        if layers is None:
            setattr(seen, key, getattr(seen, key) + amount)
        else:
            getattr(seen, key)[layers] += amount

    monkeypatch.setattr(stack, "run", lambda h, a, b, c: add("layers", h.shape[0], slice(a, b)) or run(h, a, b, c))
    monkeypatch.setattr(stack, "head_input", lambda h, i, c: add("attentions", h.shape[0], i) or heads(h, i, c))
    monkeypatch.setattr(
        stack, "_layer_tail", lambda r, x, i: add("tails", r.shape[0] * r.shape[1] / tokens, i) or tail(r, x, i)
    )
    monkeypatch.setattr(stack, "logits", lambda h: add("lm_tokens", h.shape[0]) or logits(h))
    attribute_sample(spec, sample, method, MASKING, batch_size=5)
    return seen


@pytest.mark.parametrize("scope", ["layer", "joint"])
@pytest.mark.parametrize(("sample", "kept"), [(SAMPLE, 1.0), (LONG, 16 / 24)])
def test_layer_passes_are_those_gate_ig_makes(dream, monkeypatch, scope, sample, kept):
    method = GateIGConfig(ig_steps=3, scope=scope, ig_tol=0.0)  # the plan counts the base rule's passes
    masked = [len(v.positions) for v in core.variants(dream, sample, MASKING)]
    counted, modelled = (
        count_passes(dream, method, monkeypatch, sample),
        layer_passes(dream, method, masked, len(sample.input_ids), kept),
    )
    for name, value in vars(modelled).items():
        if name.startswith("unreached"):  # what no backward reaches: torch's counter checks it (below)
            continue
        assert getattr(counted, name) == pytest.approx(value, rel=1e-12), name
    assert (counted.grad_attentions.sum() > 0) == (kept < 1)  # the last layer split into attention and a narrow tail


def counted(spec, sample, method) -> tuple[float, object]:
    """FLOPs torch counts in one sample's attribution, and the nodes each path used."""
    with flop_counter() as counter:
        result = attribute_sample(spec, sample, method, MASKING, batch_size=5)
    return counter.get_total_flops(), result.diagnostics["nodes"]


@pytest.mark.parametrize("family", ["dream", "llada"])
@pytest.mark.parametrize("backbone", ["stack", "whole"])
@pytest.mark.parametrize("scope", ["layer", "joint"])
@pytest.mark.parametrize("tol", [0.0, 0.05])
@pytest.mark.parametrize("sample", [SAMPLE, LONG], ids=["short", "long"])
def test_flop_model_is_torchs_count(request, monkeypatch, family, backbone, scope, tol, sample):
    spec = request.getfixturevalue(family)
    if backbone == "whole":  # a model run whole: the LM head at every position, backward to the gate only
        monkeypatch.setattr(spec, "backbone", WholeModel(spec.model))
    method = GateIGConfig(ig_steps=3, scope=scope, ig_tol=tol)
    measured, nodes = counted(spec, sample, method)
    modelled = flops(spec, sample_passes(spec, method, sample, MASKING, nodes), len(sample.input_ids))
    assert modelled == pytest.approx(measured, rel=1e-12)  # exact: both count every product


@pytest.mark.parametrize("family", ["dream", "llada"])
@pytest.mark.parametrize("scope", ["layer", "joint"])
def test_reference_flops_are_torchs_count(request, family, scope):
    spec = request.getfixturevalue(family)
    method = GateIGConfig(ig_steps=2, scope=scope, ig_tol=0.0)
    with flop_counter() as counter:
        reference_attribution(spec, LONG, method, MASKING)
    modelled = flops(spec, reference_passes(spec, method, LONG, MASKING), len(LONG.input_ids))
    assert modelled == pytest.approx(counter.get_total_flops(), rel=1e-12)


def test_probe_flops_are_torchs_count(dream):
    prepared = core.prepare(dream, LONG, MASKING, 4, cache_layers=False)
    v_idx = torch.arange(4) % prepared.num_variants
    g = torch.ones(4, dream.num_layers, dream.num_heads, requires_grad=True)
    with flop_counter() as counter:
        with gated(dream, {layer: g[:, layer] for layer in range(dream.num_layers)}):
            torch.autograd.grad(core.objective(dream, prepared, v_idx, 0).j.sum(), g)
    assert flops(dream, probe_passes(dream, prepared, v_idx), len(LONG.input_ids)) == counter.get_total_flops()


def test_dry_run_plan_and_probe(dream):
    plan = dry_run(dream, [SAMPLE, SAMPLE], GateIGConfig(ig_steps=2), MASKING, batch_size=3)
    # 4 variants x 3 nodes: the refined rule starts from --ig-steps 2 rounded up to Simpson's odd count
    assert plan["rows_per_path"] == 12 and plan["paths"] == dream.num_layers and plan["batch_size"]["min"] == 3
    assert plan["probe"]["rows"] == 3 and plan["estimated_seconds"] > 0 and plan["peak_memory_bytes"] > 0
    assert plan["flops"] == 2 * plan["per_sample"][0]["flops"]
    json.dumps(plan)  # JSON-ready


def test_dry_run_plans_the_batch_size_the_run_uses(dream):
    from headattr.runs.attribution import attribute

    method = GateIGConfig(ig_steps=2, ig_tol=0.0)
    plan = dry_run(dream, [SAMPLE] * 3, method, MASKING, run_probe=False)
    result = attribute(dream, [SAMPLE] * 3, method, MASKING, progress=False)
    # three samples of one shape share passes on CPU: each pass may hold three samples' rows
    assert plan["batch_size"]["max"] == result.timings["batch_size_max"] == 3 * plan["rows_per_sample"]


def test_cli_dry_run_prints_the_plan_and_writes_nothing(dream_dir, tmp_path: Path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"k{i}=v;k{i}?", "answer": f"v{i}"}) + "\n" for i in range(5)))
    out = tmp_path / "never"
    code = main(["attribute", str(dream_dir), "--data", str(data), "--samples", "3", "--out", str(out), "--dry-run"])
    stdout = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert "dry run: 3 samples; tokens min" in stdout and "FLOPs" in stdout and "batch size auto" in stdout
    assert "layer passes per sample" in stdout and "estimated time" in stdout and "peak memory" in stdout


def test_cli_dry_run_of_a_method_it_cannot_plan_is_one_line(dream_dir, tmp_path: Path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"k{i}=v;k{i}?", "answer": f"v{i}"}) + "\n" for i in range(3)))
    args = ["attribute", str(dream_dir), "--data", str(data), "--samples", "2", "--out", str(tmp_path / "o")]
    assert main([*args, "--dry-run", "--method", "stp"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "headattr: error: --dry-run plans gate-ig runs; drop it for --method stp"
    ]


def test_largest_pass_counts_the_first_rounds_rows():
    # rows of a first round, counted from the rule: variants x nodes (x paths for Gate-IG, whose paths share passes)
    from headattr.engine.batching import MAX_ROWS
    from headattr.methods import GradientConfig, STPConfig
    from headattr.runs.compute import largest_pass

    masking = MaskConfig(mask_probs=(0.3, 0.7), mask_samples_per_prob=2)
    assert largest_pass(GateIGConfig(), masking, 6) == 4 * 3 * 6  # Simpson's 3 nodes per one-layer path
    assert largest_pass(GateIGConfig(scope="joint", ig_steps=8, ig_tol=0.0), masking, 6) == 4 * 8
    assert largest_pass(STPConfig(ig_steps=2), masking, 6) == 4 * 2
    assert largest_pass(GradientConfig(), masking, 6) == MAX_ROWS
