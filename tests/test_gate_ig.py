"""The core and Gate-IG: gates, model formats, the objective, agreement with Captum and with the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headattr.data.tokens import Sample
from headattr.engine import core
from headattr.engine.gates import gated
from headattr.engine.masking import MaskConfig, make_variants
from headattr.methods import GateIGConfig
from headattr.methods.reference import full_logits, reference_attribution, reference_objective
from headattr.runs.attribution import attribute
from headattr.runs.compute import attribute_sample

IDS = [1, 4, 5, 6, 41, 31, 32, 27, 28, 29, 39, 30, 12]  # [bos] + prompt (7) + answer (5)
SPAN = (8, 13)
UID = "0123456789abcdef"
SAMPLE = Sample(0, UID, None, tuple(IDS), *SPAN, 0, 0)
MASKING = MaskConfig(mask_probs=(0.3, 0.7), mask_samples_per_prob=2, mask_seed=5)


def run(spec, batch_size: int = 64, masking: MaskConfig = MASKING, **method):
    """Gate-IG of SAMPLE with the fixed 4-node rule unless told otherwise."""
    return attribute_sample(spec, SAMPLE, GateIGConfig(**{"ig_steps": 4, "ig_tol": 0.0, **method}), masking, batch_size)


def masks(probs, draws, seed, mask_id=3):
    masking = MaskConfig(mask_probs=probs, mask_samples_per_prob=draws, mask_seed=seed)
    return make_variants(IDS, *SPAN, UID, masking, mask_id)


def ids() -> torch.Tensor:
    return torch.tensor(IDS)[None]


# ---------------------------------------------------------------- gates


@pytest.mark.parametrize("family", ["dream", "llada"])
def test_all_ones_gates_reproduce_the_model_exactly(family, request):
    spec = request.getfixturevalue(family)
    plain = full_logits(spec, ids())
    ones = {layer: torch.ones(spec.num_heads, dtype=torch.float64) for layer in range(spec.num_layers)}
    with gated(spec, ones):
        assert torch.equal(full_logits(spec, ids()), plain)


def test_zero_gate_equals_zeroing_the_heads_columns(dream):
    layer, head, d = 1, 2, dream.head_dim
    gates = torch.ones(dream.num_heads, dtype=torch.float64)
    gates[head] = 0
    with gated(dream, {layer: gates}):
        gated_logits = full_logits(dream, ids())
    proj = dream.head_modules[layer]
    saved = proj.weight.detach().clone()
    try:
        with torch.no_grad():
            proj.weight[:, head * d : (head + 1) * d] = 0
        zeroed = full_logits(dream, ids())
    finally:
        with torch.no_grad():
            proj.weight.copy_(saved)
    torch.testing.assert_close(gated_logits, zeroed, rtol=0, atol=1e-12)
    assert not torch.allclose(gated_logits, full_logits(dream, ids()))


def test_per_row_gates_in_one_batch_equal_separate_runs(dream):
    torch.manual_seed(0)
    g = torch.rand(3, dream.num_heads, dtype=torch.float64)
    with gated(dream, {0: g, 2: g.flip(0)}):
        batched = full_logits(dream, ids().expand(3, -1))
    for r in range(3):
        with gated(dream, {0: g[r], 2: g.flip(0)[r]}):
            torch.testing.assert_close(batched[r], full_logits(dream, ids())[0], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- model formats


@pytest.mark.parametrize("family", ["dream", "llada"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_loaded_models_are_bidirectional(family, attn, request):
    spec = request.getfixturevalue(family)
    spec.model.set_attn_implementation(attn)
    try:
        changed = ids().clone()
        changed[0, -1] = 20  # change the last token only
        before, after = full_logits(spec, ids()), full_logits(spec, changed)
        assert (before[0, 0] - after[0, 0]).abs().max() > 1e-6, "position 0 must see the last token"
        stack = spec.backbone
        ctx = stack.context(stack.embed(ids()))
        h1 = stack.run(stack.embed(ids()), 0, spec.num_layers, ctx)
        h2 = stack.run(stack.embed(changed), 0, spec.num_layers, ctx)
        assert (h1[0, 0] - h2[0, 0]).abs().max() > 1e-6
    finally:
        spec.model.set_attn_implementation("sdpa")


def test_sdpa_and_eager_agree(dream):
    sdpa = full_logits(dream, ids())
    dream.model.set_attn_implementation("eager")
    try:
        # eager takes its softmax in float32, sdpa in the model dtype: agreement up to float32 rounding
        torch.testing.assert_close(full_logits(dream, ids()), sdpa, rtol=1e-5, atol=1e-6)
    finally:
        dream.model.set_attn_implementation("sdpa")


def test_logit_shift_by_family(dream, llada):
    assert dream.logit_shift is True and llada.logit_shift is False
    for spec in (dream, llada):
        masking = MaskConfig(mask_probs=(0.5,), mask_samples_per_prob=1, mask_seed=0)
        v = core.variants(spec, SAMPLE, masking)[0]
        logits = full_logits(spec, v.input_ids[None])[0]
        at = v.positions - 1 if spec.logit_shift else v.positions
        expected = -torch.nn.functional.cross_entropy(logits[at], v.labels)
        rows = core.prepare(spec, SAMPLE, masking, 8, cache_layers=True)
        for start in range(spec.num_layers):  # any cached layer input gives the same J
            got = core.objective(spec, rows, torch.tensor([0]), start, with_logits=True)
            torch.testing.assert_close(got.j[0], expected)
            torch.testing.assert_close(got.logits, logits[at])  # the logits it returns are the ones it scored
            assert torch.equal(got.labels, v.labels) and torch.equal(got.owner, torch.zeros_like(v.labels))
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
    torch.testing.assert_close(full_logits(llada, ids()), ref(ids()).logits, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- integrated gradients


@pytest.mark.parametrize("family", ["dream", "llada"])
@pytest.mark.parametrize("scope", ["layer", "joint"])
def test_engine_equals_straightforward_reference(family, scope, request):
    """Batching, layer reuse and LM-head selection change nothing: Gate-IG == one-at-a-time full passes."""
    spec = request.getfixturevalue(family)
    method = GateIGConfig(ig_steps=4, scope=scope, baseline=0.1, ig_tol=0.0)
    fast = attribute_sample(spec, SAMPLE, method, MASKING).attributions
    slow = reference_attribution(spec, SAMPLE, method, MASKING)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "rule,method",
    [
        ("riemann-right", "riemann_right"),
        ("riemann-left", "riemann_left"),
        ("riemann-middle", "riemann_middle"),
        ("riemann-trapezoid", "riemann_trapezoid"),
        ("gauss-legendre", "gausslegendre"),
    ],
)
def test_agrees_with_captum(dream, rule, method):
    from captum.attr import IntegratedGradients

    masking = MaskConfig(mask_probs=(0.5,), mask_samples_per_prob=1, mask_seed=5)
    ours = run(dream, masking=masking, rule=rule, ig_steps=5, baseline=0.2).attributions[0]
    v = core.variants(dream, SAMPLE, masking)[0]
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
        d = run(dream, rule=rule, ig_steps=steps).diagnostics
        gap = np.abs(d["j_full"][:, None] - d["j_baseline"])
        return float(np.median(np.abs(d["completeness_error"]) / gap))

    gl, rr = error("gauss-legendre", 8), error("riemann-right", 8)
    assert gl < rr / 100, (gl, rr)
    assert error("gauss-legendre", 16) < 1e-5


def test_completeness_error_is_the_identity_gap(dream):
    """sum_h A[l, h] - (J(1) - J(b at layer l)), with J recomputed independently by full passes."""
    r = run(dream, baseline=0.25)
    d = r.diagnostics
    v = core.variants(dream, SAMPLE, MASKING)[3]
    j1 = reference_objective(dream, v.input_ids, v.positions, v.labels).item()
    with gated(dream, {2: torch.full((dream.num_heads,), 0.25, dtype=torch.float64)}):
        jb = reference_objective(dream, v.input_ids, v.positions, v.labels).item()
    assert d["j_full"][3] == pytest.approx(j1, rel=1e-10)
    assert d["j_baseline"][3, 2] == pytest.approx(jb, rel=1e-10)
    assert d["completeness_error"][3, 2] == pytest.approx(r.attributions[3, 2].sum() - (j1 - jb), abs=1e-12)


def test_batch_size_does_not_change_results(dream):
    big = run(dream, batch_size=64).attributions
    for bs in (1, 3):
        np.testing.assert_allclose(run(dream, batch_size=bs).attributions, big, rtol=1e-10, atol=1e-14)


def test_lm_head_only_at_masked_positions_and_weights_frozen(dream):
    seen = []
    hook = dream.backbone.lm_head.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        run(dream, masking=MaskConfig(mask_probs=(1.0,), mask_samples_per_prob=1), ig_steps=2)
    finally:
        hook.remove()
    n_answer = SPAN[1] - SPAN[0]
    # every pass scores whole rows at their masked positions only; a pass holds at most one row per path
    # (layer) and node (2), since the paths of all layers share passes
    assert seen and all(rows % n_answer == 0 and rows // n_answer <= 2 * dream.num_layers for rows in seen)
    assert all(p.grad is None and not p.requires_grad for p in dream.model.parameters())


def test_masks_are_keyed_not_ordered():
    a = masks([0.15, 0.5, 1.0], 2, 7)
    # adding probabilities after the first leaves its draws unchanged: nothing depends on how many follow
    b = masks([0.15], 2, 7)
    assert all(torch.equal(x.positions, y.positions) for x, y in zip(a[:2], b, strict=True))
    # the draws of probability index 1 depend on (seed, uid, index, draw) only
    c = masks([0.9, 0.5], 2, 7)
    assert all(torch.equal(x.positions, y.positions) for x, y in zip(a[2:4], c[2:4], strict=True))
    # another seed draws other masks (20 draws of 5 tokens at p = 0.5 cannot all coincide by chance here)
    other_seed = zip(masks([0.5], 20, 7), masks([0.5], 20, 8), strict=True)
    assert any(not torch.equal(x.positions, y.positions) for x, y in other_seed)
    assert a[4].positions.tolist() == list(range(*SPAN))  # p = 1 masks every answer token
    assert all(len(v.positions) >= 1 for v in masks([1e-9], 5, 0))


@pytest.mark.parametrize("family", ["dream", "llada"])
def test_grad_checkpoint_changes_nothing(family, request):
    spec = request.getfixturevalue(family)
    plain = run(spec).attributions
    spec.backbone.set_grad_checkpoint(True)
    try:
        recomputed = run(spec).attributions
    finally:
        spec.backbone.set_grad_checkpoint(False)
    np.testing.assert_allclose(recomputed, plain, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- error-controlled quadrature


@pytest.mark.parametrize("scope", ["layer", "joint"])
def test_adaptive_paths_meet_their_tolerance_and_approach_the_integral(dream, scope):
    """Every refined path ends within tol of its gap (or at the node cap), closer to a 128-node rule than the
    fixed base rule it started from."""
    tol, atol = 0.01, 1e-3
    adaptive = run(dream, scope=scope, ig_steps=2, ig_tol=tol, baseline=0.0)
    fixed = run(dream, scope=scope, ig_steps=2)
    exact = run(dream, scope=scope, ig_steps=128)
    d = adaptive.diagnostics
    gap = np.abs(d["j_full"][:, None] - d["j_baseline"])
    capped = d["nodes"] >= GateIGConfig().ig_max_steps - 2  # one more split (2 nodes) would pass the cap
    assert np.all((np.abs(d["completeness_error"]) <= tol * gap + atol) | capped)
    assert np.all(d["nodes"] >= 2) and np.all(d["nodes"] <= GateIGConfig().ig_max_steps)
    err = np.abs(adaptive.attributions - exact.attributions).max()
    assert err < np.abs(fixed.attributions - exact.attributions).max()
    assert err <= 0.02 * np.abs(exact.attributions).max()


def test_adaptive_results_do_not_depend_on_the_batch_size(dream):
    one = run(dream, batch_size=1, ig_steps=2, ig_tol=0.01)
    many = run(dream, batch_size=64, ig_steps=2, ig_tol=0.01)
    assert one.attributions.tobytes() == many.attributions.tobytes()
    assert np.array_equal(one.diagnostics["nodes"], many.diagnostics["nodes"])


def test_riemann_rules_are_never_refined(dream):
    r = run(dream, rule="riemann-right", ig_steps=3, ig_tol=0.5)
    assert np.all(r.diagnostics["nodes"] == 3)


def test_ig_steps_default_follows_the_rule():
    """`--ig-tol 0` alone is the seed report's 8-node rule; the refined rule starts from Simpson's 3 nodes."""
    assert GateIGConfig(ig_tol=0.0).ig_steps == 8
    assert GateIGConfig().ig_steps == 3 and GateIGConfig().adaptive
    assert GateIGConfig(rule="riemann-right").ig_steps == 8
    assert GateIGConfig(ig_steps=5).ig_steps == 5


def test_a_fixed_rule_may_use_more_nodes_than_the_refinement_cap(dream):
    """--ig-max-steps bounds refinement; a fixed rule (--ig-tol 0, or Riemann) of more nodes still runs."""
    for rule in ("gauss-legendre", "riemann-right"):
        r = run(dream, masking=MaskConfig(mask_probs=(0.5,), mask_samples_per_prob=1), rule=rule, ig_steps=300)
        assert np.all(r.diagnostics["nodes"] == 300)


def test_the_end_nodes_come_from_shared_passes_and_equal_each_paths_own(dream):
    """The refined rule takes every path's a = 0 node, with J(b), from one joined pass, and every one-layer
    path's a = 1 node, with J(1), from one pass from layer 0: the same numbers as each path's own passes."""
    from headattr.methods.gate_ig import _end_nodes, _gradients_of, _known_nodes, _path_rows, _SamplePaths, path_heads

    adaptive, fixed = run(dream, ig_steps=2, ig_tol=0.01), run(dream, ig_steps=2)  # fixed: J from own passes
    for name in ("j_full", "j_baseline"):
        np.testing.assert_allclose(adaptive.diagnostics[name], fixed.diagnostics[name], rtol=1e-12, atol=1e-14)
    rows = core.prepare(dream, SAMPLE, MASKING, 64, cache_layers=True)
    paths = [[layer] for layer in range(dream.num_layers)]
    heads = [path_heads(dream, rows, layers, layers[0], 64) for layers in paths]
    own, calls = _path_rows(dream, rows, _SamplePaths(paths, [p[0] for p in paths], heads, 0.0), 64, "test"), []
    counted = lambda r: calls.append(r) or own(r)  # noqa: E731
    _, _, known = _end_nodes(counted, dream, rows, paths, 64, "test")
    evaluate = _known_nodes(_gradients_of(counted), known)
    calls.clear()
    ends = [(pid, np.array([0.0, 1.0])) for pid in range(len(paths) * rows.num_variants)]
    served = evaluate(ends)
    assert not calls  # served without running the model
    for values, (_, grads) in zip(served, own(ends), strict=True):
        np.testing.assert_allclose(values, grads, rtol=1e-12, atol=1e-14)


def test_samples_of_one_length_share_passes_and_give_the_same_numbers(dream, monkeypatch):
    from headattr.methods import common
    from headattr.runs import compute

    same = [
        Sample(i, f"{i:016x}", None, tuple([1, *range(4 + i, 11 + i), 39, 30, 12, 9, 8]), 8, 13, 0, 0) for i in range(3)
    ]
    other = Sample(3, "f" * 16, None, tuple(IDS[:-1]), 8, 12, 0, 0)
    samples = [same[0], other, same[1], same[2]]
    method = GateIGConfig(ig_steps=2, ig_tol=0.01)
    passes, real = [], common.joined_objective

    def counted(*args, **kwargs):
        passes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(common, "joined_objective", counted)
    results = []
    for merge in (compute.MERGE_SAMPLES, 1):
        monkeypatch.setattr(compute, "MERGE_SAMPLES", merge)
        passes.clear()
        results.append((attribute(dream, samples, method, MASKING, batch_size=64, progress=False), len(passes)))
    (merged, merged_passes), (alone, alone_passes) = results
    assert merged.attributions.tobytes() == alone.attributions.tobytes()
    assert all(merged.per_variant[k].tobytes() == alone.per_variant[k].tobytes() for k in alone.per_variant)
    assert merged_passes < alone_passes  # the three samples of one length shared their rounds


def test_a_group_interrupted_between_checkpoints_is_computed_whole_on_resume(dream, tmp_path, monkeypatch):
    from headattr.runs import checkpoints, compute

    samples = [
        Sample(i, f"{i:016x}", None, tuple([1, *range(4 + i, 11 + i), 39, 30, 12, 9, 8]), 8, 13, 0, 0) for i in range(4)
    ]
    kw = dict(method=GateIGConfig(ig_steps=2, ig_tol=0.01), masking=MASKING, batch_size=64, progress=False)
    whole = attribute(dream, samples, out=tmp_path / "whole", **kw)
    saved, real = [], checkpoints.save_checkpoint

    def save_twice(*args):
        if len(saved) == 2:
            raise KeyboardInterrupt  # killed after two of the group's four checkpoints
        saved.append(args[1])
        real(*args)

    monkeypatch.setattr(checkpoints, "save_checkpoint", save_twice)
    with pytest.raises(KeyboardInterrupt):
        attribute(dream, samples, out=tmp_path / "cut", **kw)
    monkeypatch.setattr(checkpoints, "save_checkpoint", real)
    groups, real_compute = [], compute.attribute_samples
    monkeypatch.setattr(
        compute, "attribute_samples", lambda spec, group, *a: groups.append(len(group)) or real_compute(spec, group, *a)
    )
    resumed = attribute(dream, samples, out=tmp_path / "cut", resume=True, **kw)
    assert groups == [4]  # the two read back are computed again as companions: the same passes as the whole run
    assert saved == [0, 1] and resumed.timings["computed_samples"] == 2 and resumed.timings["resumed_samples"] == 2
    assert (tmp_path / "cut/scores.safetensors").read_bytes() == (tmp_path / "whole/scores.safetensors").read_bytes()
    assert resumed.attributions.tobytes() == whole.attributions.tobytes()


def test_merge_groups_and_split():
    from headattr.methods import SampleAttribution
    from headattr.runs.compute import merge_groups

    assert merge_groups([5, 7, 5, 5, 7, 5], 2) == [[0, 2], [1, 4], [3, 5]]
    assert merge_groups([5, 5, 5], 1) == [[0], [1], [2]]
    whole = SampleAttribution(np.arange(5 * 2 * 3.0).reshape(5, 2, 3), {"j": np.arange(5.0)})
    first, second = whole.split([2, 3])
    assert first.attributions.shape == (2, 2, 3) and np.array_equal(second.diagnostics["j"], [2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="one token length and answer span"):
        core.prepare_merged(None, [SAMPLE, Sample(1, "1" * 16, None, tuple(IDS[:-1]), 8, 12, 0, 0)], MASKING, 4, True)


def test_bf16_autocast_keeps_the_quadrature_off_its_cap_on_the_built_in_model():
    # issue 24: bf16 weights under autocast (CPU autocast here, as on CUDA), on the 20 samples those that
    # hit the 256-node cap (docs/gate-ig.md, "Precision"): 12 with a bf16 residual stream (5 paths); 2 and 14
    # with bf16 attention (8 paths: its biased gradient misses the gap by up to 10%); 10 with the absolute
    # floor 1e-3 below J's own rounding (2 paths of gap 0.07 nats)
    from headattr.data.samples import build_samples
    from headattr.demo import DATA_FILE, MODEL_DIR
    from headattr.models import load_model
    from headattr.models.backbone import attributing
    from headattr.runs.compute import attribute_samples

    spec = load_model(MODEL_DIR, dtype="bfloat16", device="cpu")
    assert core.autocasts(spec)
    samples, _ = build_samples(str(DATA_FILE), spec.tokenizer, samples=20, seed=47, stratify_by="task")
    samples = [samples[i] for i in (2, 10, 12, 14)]
    rows = core.prepare(spec, samples[0], MaskConfig(), 64, cache_layers=True)
    assert {h.dtype for h in rows.hidden_in} == {torch.float32}  # the residual stream between layers
    assert core.head_inputs(spec, rows, 1, 64).dtype == torch.bfloat16  # outside attribution: the family's own
    with attributing():
        assert core.head_inputs(spec, rows, 1, 64).dtype == torch.float32  # the attention block
    method = GateIGConfig()
    for s in samples:
        (r,) = attribute_samples(spec, [s], method, MaskConfig(), 256)
        d = r.diagnostics
        gap = np.abs(d["j_full"][:, None] - d["j_baseline"])
        assert d["nodes"].max() < method.ig_max_steps - 1  # one more split would not have passed the cap
        assert np.abs(d["completeness_error"]).sum() <= 0.025 * gap.sum()  # documented: at most 2.5% per sample
        assert d["at_floor"].shape == d["nodes"].shape  # recorded under autocast (run.json: paths_at_noise_floor)
        assert method.summarize({k: v[None] for k, v in d.items()})["paths_at_noise_floor"]["of"] == d["nodes"].size


def test_paths_at_the_node_cap_are_counted_and_said():
    # a path refined until --ig-max-steps is recorded in run.json's summary and printed, never silent
    method = GateIGConfig(ig_max_steps=9)
    nodes = np.array([[[3.0, 9.0], [8.0, 5.0]]])  # [N, V, S]: 9 hit the cap, 8 = one more split would pass it
    diagnostics = {
        "j_full": np.ones((1, 2)),
        "j_baseline": np.zeros((1, 2, 2)),
        "completeness_error": np.zeros((1, 2, 2)),
        "nodes": nodes,
    }
    summary = method.summarize(diagnostics)
    assert summary["paths_at_cap"] == {"count": 2, "of": 4, "cap": 9}
    assert any("2 of 4 paths reached --ig-max-steps 9" in line for line in method.summary_lines(summary))
    assert "paths_at_cap" not in GateIGConfig(ig_max_steps=9).summarize({**diagnostics, "nodes": nodes * 0 + 3})
