"""Gate-IG engine: gates, model formats, agreement with Captum and with the straightforward reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headattr.engine import GateIGConfig, attribute_sample, objective, prepare_rows
from headattr.gates import gated
from headattr.masking import make_variants
from headattr.reference import reference_attribution, reference_objective

IDS = [1, 4, 5, 6, 41, 31, 32, 27, 28, 29, 39, 30, 12]  # [bos] + prompt (7) + answer (5)
SPAN = (8, 13)
UID = "0123456789abcdef"


def small_cfg(**kw) -> GateIGConfig:
    base = {"ig_steps": 4, "mask_probs": (0.3, 0.7), "mask_samples_per_prob": 2, "mask_seed": 5}
    return GateIGConfig(**{**base, **kw})


def ids() -> torch.Tensor:
    return torch.tensor(IDS)[None]


# ---------------------------------------------------------------- gates


@pytest.mark.parametrize("family", ["dream", "llada"])
def test_all_ones_gates_reproduce_the_model_exactly(family, request):
    spec = request.getfixturevalue(family)
    plain = spec.full_logits(ids())
    ones = {layer: torch.ones(spec.num_heads, dtype=torch.float64) for layer in range(spec.num_layers)}
    with gated(spec, ones):
        assert torch.equal(spec.full_logits(ids()), plain)


def test_zero_gate_equals_zeroing_the_heads_columns(dream):
    layer, head, d = 1, 2, dream.head_dim
    gates = torch.ones(dream.num_heads, dtype=torch.float64)
    gates[head] = 0
    with gated(dream, {layer: gates}):
        gated_logits = dream.full_logits(ids())
    proj = dream.head_modules[layer]
    saved = proj.weight.detach().clone()
    try:
        with torch.no_grad():
            proj.weight[:, head * d : (head + 1) * d] = 0
        zeroed = dream.full_logits(ids())
    finally:
        with torch.no_grad():
            proj.weight.copy_(saved)
    torch.testing.assert_close(gated_logits, zeroed, rtol=0, atol=1e-12)
    assert not torch.allclose(gated_logits, dream.full_logits(ids()))


def test_per_row_gates_in_one_batch_equal_separate_runs(dream):
    torch.manual_seed(0)
    g = torch.rand(3, dream.num_heads, dtype=torch.float64)
    with gated(dream, {0: g, 2: g.flip(0)}):
        batched = dream.full_logits(ids().expand(3, -1))
    for r in range(3):
        with gated(dream, {0: g[r], 2: g.flip(0)[r]}):
            torch.testing.assert_close(batched[r], dream.full_logits(ids())[0], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- model formats


@pytest.mark.parametrize("family", ["dream", "llada"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_loaded_models_are_bidirectional(family, attn, request):
    spec = request.getfixturevalue(family)
    spec.model.set_attn_implementation(attn)
    try:
        changed = ids().clone()
        changed[0, -1] = 20  # change the last token only
        before, after = spec.full_logits(ids()), spec.full_logits(changed)
        assert (before[0, 0] - after[0, 0]).abs().max() > 1e-6, "position 0 must see the last token"
        rope = spec.stack.position_embeddings(spec.stack.embed(ids()))
        h1 = spec.stack.run(spec.stack.embed(ids()), 0, spec.num_layers, rope)
        h2 = spec.stack.run(spec.stack.embed(changed), 0, spec.num_layers, rope)
        assert (h1[0, 0] - h2[0, 0]).abs().max() > 1e-6
    finally:
        spec.model.set_attn_implementation("sdpa")


def test_sdpa_and_eager_agree(dream):
    sdpa = dream.full_logits(ids())
    dream.model.set_attn_implementation("eager")
    try:
        # eager takes its softmax in float32, sdpa in the model dtype: agreement up to float32 rounding
        torch.testing.assert_close(dream.full_logits(ids()), sdpa, rtol=1e-5, atol=1e-6)
    finally:
        dream.model.set_attn_implementation("sdpa")


def test_logit_shift_by_family(dream, llada):
    assert dream.logit_shift is True and llada.logit_shift is False
    for spec in (dream, llada):
        v = make_variants(IDS, *SPAN, UID, [0.5], 1, 0, spec.mask_token_id)[0]
        logits = spec.full_logits(v.input_ids[None])[0]
        at = v.positions - 1 if spec.logit_shift else v.positions
        expected = -torch.nn.functional.cross_entropy(logits[at], v.labels)
        rows = prepare_rows(spec, [v], 8, cache_layers=True)
        got = objective(spec, rows, torch.tensor([0]), 0, "mean-masked")
        torch.testing.assert_close(got[0], expected)
        torch.testing.assert_close(reference_objective(spec, v.input_ids, v.positions, v.labels), expected)


def test_llada_checkpoint_maps_onto_llama_exactly(llada_dir, llada):
    """The loaded LLaDA equals a bidirectional Llama built from the same tensors under Llama's names."""
    import json

    from transformers import LlamaForCausalLM

    from headattr.models import iter_checkpoint_tensors, llada_llama_config, llada_to_llama_name

    cfg = llada_llama_config(json.loads((llada_dir / "config.json").read_text()))
    cfg.is_causal = False
    ref = LlamaForCausalLM(cfg).double()
    ref.load_state_dict({llada_to_llama_name(k): v for k, v in iter_checkpoint_tensors(llada_dir)})
    for layer in ref.model.layers:
        layer.self_attn.is_causal = False
    torch.testing.assert_close(llada.full_logits(ids()), ref(ids()).logits, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- integrated gradients


@pytest.mark.parametrize("family", ["dream", "llada"])
@pytest.mark.parametrize("scope", ["layer", "joint"])
def test_engine_equals_straightforward_reference(family, scope, request):
    """Batching, layer reuse and LM-head selection change nothing: engine == one-at-a-time full passes."""
    spec = request.getfixturevalue(family)
    cfg = small_cfg(scope=scope, baseline=0.1)
    fast = attribute_sample(spec, IDS, *SPAN, UID, cfg).attributions
    slow = reference_attribution(spec, IDS, *SPAN, UID, cfg)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rule,method", [("riemann-right", "riemann_right"), ("riemann-left", "riemann_left"),
                                         ("riemann-middle", "riemann_middle"),
                                         ("riemann-trapezoid", "riemann_trapezoid"),
                                         ("gauss-legendre", "gausslegendre")])
def test_agrees_with_captum(dream, rule, method):
    from captum.attr import IntegratedGradients

    cfg = small_cfg(rule=rule, ig_steps=5, baseline=0.2, mask_probs=(0.5,), mask_samples_per_prob=1)
    ours = attribute_sample(dream, IDS, *SPAN, UID, cfg).attributions[0]
    v = make_variants(IDS, *SPAN, UID, [0.5], 1, cfg.mask_seed, dream.mask_token_id)[0]
    for layer in range(dream.num_layers):

        def forward(g: torch.Tensor, layer: int = layer) -> torch.Tensor:
            rows = []
            for r in range(g.shape[0]):
                with gated(dream, {layer: g[r]}):
                    rows.append(reference_objective(dream, v.input_ids, v.positions, v.labels))
            return torch.stack(rows)

        ig = IntegratedGradients(forward)
        ones = torch.ones(1, dream.num_heads, dtype=torch.float64)
        theirs = ig.attribute(ones, baselines=0.2 * ones, n_steps=5, method=method)
        if rule == "riemann-trapezoid":
            # captum's trapezoid weights are [1/2n, 1/n, ..., 1/2n], summing to (n-1)/n; the trapezoid rule
            # on n nodes (and the spec) has [1/2(n-1), 1/(n-1), ...], summing to 1: same nodes, rescaled
            theirs = theirs * 5 / 4
        # captum builds its nodes in float32: agreement to ~1e-7 relative; a wrong rule is off by percents
        np.testing.assert_allclose(ours[layer], theirs[0].numpy(), rtol=1e-6, atol=1e-12)


def test_completeness_gauss_legendre_beats_riemann(dream):
    def error(rule: str, steps: int) -> float:
        r = attribute_sample(dream, IDS, *SPAN, UID, small_cfg(rule=rule, ig_steps=steps))
        gap = np.abs(r.j_full[:, None] - r.j_baseline)
        return float(np.median(np.abs(r.completeness_error) / gap))

    gl, rr = error("gauss-legendre", 8), error("riemann-right", 8)
    assert gl < rr / 100, (gl, rr)
    assert error("gauss-legendre", 16) < 1e-5


def test_completeness_error_is_the_identity_gap(dream):
    """sum_h A[l, h] - (J(1) - J(b at layer l)), with J recomputed independently by full passes."""
    cfg = small_cfg(baseline=0.25)
    r = attribute_sample(dream, IDS, *SPAN, UID, cfg)
    v = make_variants(IDS, *SPAN, UID, list(cfg.mask_probs), 2, cfg.mask_seed, dream.mask_token_id)[3]
    j1 = reference_objective(dream, v.input_ids, v.positions, v.labels).item()
    with gated(dream, {2: torch.full((dream.num_heads,), 0.25, dtype=torch.float64)}):
        jb = reference_objective(dream, v.input_ids, v.positions, v.labels).item()
    assert r.j_full[3] == pytest.approx(j1, rel=1e-10)
    assert r.j_baseline[3, 2] == pytest.approx(jb, rel=1e-10)
    assert r.completeness_error[3, 2] == pytest.approx(r.attributions[3, 2].sum() - (j1 - jb), abs=1e-12)


def test_batch_size_does_not_change_results(dream):
    big = attribute_sample(dream, IDS, *SPAN, UID, small_cfg(batch_size=64)).attributions
    for bs in (1, 3):
        np.testing.assert_allclose(attribute_sample(dream, IDS, *SPAN, UID, small_cfg(batch_size=bs)).attributions,
                                   big, rtol=1e-10, atol=1e-14)


def test_lm_head_only_at_masked_positions_and_weights_frozen(dream):
    seen = []
    hook = dream.stack.lm_head.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        cfg = small_cfg(mask_probs=(1.0,), mask_samples_per_prob=1, ig_steps=2)
        attribute_sample(dream, IDS, *SPAN, UID, cfg)
    finally:
        hook.remove()
    n_answer = SPAN[1] - SPAN[0]
    assert seen and all(rows % n_answer == 0 and rows <= 2 * n_answer for rows in seen)
    assert all(p.grad is None and not p.requires_grad for p in dream.model.parameters())


def test_masks_are_keyed_not_ordered():
    a = make_variants(IDS, *SPAN, UID, [0.15, 0.5, 1.0], 2, 7, 3)
    b = make_variants(IDS, *SPAN, UID, [0.5], 2, 7, 3)
    assert [v.positions.tolist() for v in a[2:4]] != [] and all(
        torch.equal(x.positions, y.positions) is not None for x, y in zip(a, b, strict=False))
    # the draws of probability index 1 depend on (seed, uid, index, draw) only
    c = make_variants(IDS, *SPAN, UID, [0.9, 0.5], 2, 7, 3)
    assert all(torch.equal(x.positions, y.positions) for x, y in zip(a[2:4], c[2:4], strict=True))
    assert a[4].positions.tolist() == list(range(*SPAN))  # p = 1 masks every answer token
    assert all(len(v.positions) >= 1 for v in make_variants(IDS, *SPAN, UID, [1e-9], 5, 0, 3))


@pytest.mark.parametrize("family", ["dream", "llada"])
def test_grad_checkpoint_changes_nothing(family, request):
    spec = request.getfixturevalue(family)
    plain = attribute_sample(spec, IDS, *SPAN, UID, small_cfg()).attributions
    spec.set_grad_checkpoint(True)
    try:
        recomputed = attribute_sample(spec, IDS, *SPAN, UID, small_cfg()).attributions
    finally:
        spec.set_grad_checkpoint(False)
    np.testing.assert_allclose(recomputed, plain, rtol=1e-12, atol=1e-15)
