"""Gate-IG's scope `layer` computes the gated layer's attention once per variant (issue 10, item 2).

The gates of layer l scale the input of its o_proj, so its q/k/v and attention do not depend on them; the
quadrature nodes re-run only o_proj onward. These tests compare that path with the whole-layer path (the
backbone told it cannot split a layer), in float64 on both native families, with and without gradient
checkpointing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headattr.data.tokens import Sample
from headattr.engine import core
from headattr.engine.gates import gated
from headattr.engine.masking import MaskConfig
from headattr.methods import GateIGConfig
from headattr.runs.compute import attribute_sample

IDS = (1, 4, 5, 6, 41, 31, 32, 27, 28, 29, 39, 30, 12)
SAMPLE = Sample(0, "0123456789abcdef", None, IDS, 8, 13, 0, 0)
MASKING = MaskConfig(mask_probs=(0.3, 0.7), mask_samples_per_prob=2, mask_seed=5)
METHOD = GateIGConfig(ig_steps=4, scope="layer")


def gate_ig(spec, split: bool, batch_size: int = 5):
    """Gate-IG of SAMPLE with the attention-once path on (`split`) or off."""
    stack = spec.backbone
    stack.splits_attention = split  # instance attribute shadows the class's True
    try:
        return attribute_sample(spec, SAMPLE, METHOD, MASKING, batch_size)
    finally:
        del stack.splits_attention


def assert_same(a, b, rtol: float = 1e-10) -> None:
    np.testing.assert_allclose(a.attributions, b.attributions, rtol=rtol, atol=1e-13)
    for name in ("j_full", "j_baseline", "completeness_error"):
        np.testing.assert_allclose(a.diagnostics[name], b.diagnostics[name], rtol=rtol, atol=1e-13)


@pytest.mark.parametrize("family", ["dream", "llada"])
def test_attention_once_equals_the_whole_layer_path(family, request):
    spec = request.getfixturevalue(family)
    once, whole = gate_ig(spec, True), gate_ig(spec, False)
    assert np.abs(whole.attributions).max() > 1e-6  # a real signal, not zeros agreeing
    assert_same(once, whole)


def test_attention_once_is_used_by_scope_layer(dream, monkeypatch):
    """Each path computes its layer's head outputs once, and no whole-layer pass starts at the gated layer."""
    calls, runs = [], []
    real_heads, real_run = dream.backbone.head_input, dream.backbone.run
    monkeypatch.setattr(
        dream.backbone, "head_input", lambda h, i, c: calls.append((i, h.requires_grad)) or real_heads(h, i, c)
    )
    monkeypatch.setattr(
        dream.backbone, "run", lambda h, s, e, c: runs.append((s, torch.is_grad_enabled())) or real_run(h, s, e, c)
    )
    gate_ig(dream, True, batch_size=64)
    # without gradients: each layer's head outputs, one chunk of every variant, once per layer
    assert [i for i, grad in calls if not grad] == list(range(dream.num_layers))
    # with gradients: only rows already inside a joined pass (gated at an earlier layer) run a layer's attention
    assert calls[dream.num_layers :] and all(i >= 1 and grad for i, grad in calls[dream.num_layers :])
    # layer 0 is run whole only while caching the layer inputs and in the one pass that gives every path's
    # a = 1 node (all gates 1: no path's own layer is skipped there)
    assert [grad for s, grad in runs if s == 0] == [False, True]


def test_attention_once_with_gradient_checkpointing(dream, monkeypatch):
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain = gate_ig(dream, True)
    dream.backbone.set_grad_checkpoint(True)
    try:
        checkpointed = gate_ig(dream, True)
    finally:
        dream.backbone.set_grad_checkpoint(False)
    assert calls  # the layer tail and the layers after it went through torch's checkpoint
    assert_same(checkpointed, plain, rtol=1e-12)


def test_head_input_resumes_to_the_whole_layer(llada):
    """run_from_heads(head_input(h)) is the decoder layer's own forward, under per-row gates."""
    rows = core.prepare(llada, SAMPLE, MASKING, 64, cache_layers=True)
    layer, v = 1, torch.arange(rows.num_variants)
    heads = core.head_inputs(llada, rows, layer, 3)
    g = torch.rand(len(v), llada.num_heads, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with gated(llada, {layer: g}), torch.no_grad():
        split = core.objective(llada, rows, v, layer, heads=heads).j
        whole = core.objective(llada, rows, v, layer).j
    torch.testing.assert_close(split, whole, rtol=1e-12, atol=1e-12)
