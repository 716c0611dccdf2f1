"""The last layer computes its output only at the positions that reach the loss (`core.loss_positions`).

Every later layer is gone at the last one, so o_proj and the MLP there need only the answer span's positions
(its attention still reads every position's keys and values). These tests compare that path with the
full-width one (`loss_positions` answering None), in float64 on both native families and both scopes, and
check that the last layer really runs at the answer span only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headattr.data.tokens import Sample
from headattr.engine import core
from headattr.engine.masking import MaskConfig
from headattr.methods import GateIGConfig
from headattr.runs.compute import attribute_sample

# 24 tokens with a 5-token answer: the kept positions (16, the minimum) are fewer than the tokens
IDS = (1, 4, 5, 6, 41, 31, 32, 27, 28, 29, 39, 30, 12, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18)
SAMPLE = Sample(0, "0123456789abcdef", None, IDS, 19, 24, 0, 0)
MASKING = MaskConfig(mask_probs=(0.3, 0.7), mask_samples_per_prob=2, mask_seed=5)


def test_loss_positions_cover_the_answer_and_are_widened_to_the_minimum(dream, llada):
    for spec in (dream, llada):
        rows = core.prepare(spec, SAMPLE, MASKING, 64, cache_layers=False)
        window = core.loss_positions(spec, rows)
        keep = list(range(window.start, window.stop))
        # the predictors of 19..23 (18..22 for Dream's shifted logits), widened to 16 positions, the extra ones
        # taken after the span up to the last token, then before it
        assert keep == list(range(8, 24))
        assert all(p in keep for v in rows.predict_at for p in v.tolist())
        rows.answer = None
        assert core.loss_positions(spec, rows) is None


@pytest.mark.parametrize("family", ["dream", "llada"])
@pytest.mark.parametrize("scope", ["layer", "joint"])
def test_last_layer_at_the_loss_positions_equals_the_full_width_pass(family, scope, request, monkeypatch):
    spec = request.getfixturevalue(family)
    method = GateIGConfig(ig_steps=4, scope=scope)
    kept = attribute_sample(spec, SAMPLE, method, MASKING, 5)
    monkeypatch.setattr(core, "loss_positions", lambda spec, rows: None)
    full = attribute_sample(spec, SAMPLE, method, MASKING, 5)
    assert np.abs(full.attributions).max() > 1e-6  # a real signal, not zeros agreeing
    np.testing.assert_allclose(kept.attributions, full.attributions, rtol=1e-10, atol=1e-13)
    for name in ("j_full", "j_baseline", "completeness_error"):
        np.testing.assert_allclose(kept.diagnostics[name], full.diagnostics[name], rtol=1e-10, atol=1e-13)


def test_the_last_layer_runs_only_at_the_loss_positions(dream):
    widths: dict[str, list[int]] = {"last": [], "other": []}
    hooks = [
        layer.mlp.register_forward_hook(
            lambda m, args, out, last=(i == dream.num_layers - 1): widths["last" if last else "other"].append(
                args[0].shape[1]
            )
        )
        for i, layer in enumerate(dream.backbone.layers)
    ]
    try:
        attribute_sample(dream, SAMPLE, GateIGConfig(ig_steps=4, scope="layer"), MASKING, 64)
    finally:
        for h in hooks:
            h.remove()
    assert set(widths["other"]) == {len(IDS)}
    # every pass that reaches the last layer (gradient passes, J at the baseline) runs it at the kept positions
    assert widths["last"] and set(widths["last"]) == {core.MIN_LOSS_POSITIONS}


def test_the_narrow_last_layer_with_gradient_checkpointing(dream, monkeypatch):
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    method = GateIGConfig(ig_steps=4, scope="layer")
    plain = attribute_sample(dream, SAMPLE, method, MASKING, 5)
    dream.backbone.set_grad_checkpoint(True)
    try:
        checkpointed = attribute_sample(dream, SAMPLE, method, MASKING, 5)
    finally:
        dream.backbone.set_grad_checkpoint(False)
    assert any(getattr(f, "__name__", "") == "_layer_keeping" for f in calls)  # recomputed in backward too
    np.testing.assert_allclose(checkpointed.attributions, plain.attributions, rtol=1e-12, atol=1e-14)
