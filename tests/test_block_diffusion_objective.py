"""The block-diffusion objective (SDAR, LLaDA 2): J is the family's own training loss, restated here from the spec.

`../shared/spec/model-formats.md` (SDAR's training loss): the noisy copy and the clean copy concatenated
([x_t | x_0], the same positions twice), noisy block b attends to itself and to clean blocks < b, clean block b
to clean blocks <= b, clean never to noisy, blocks counted from position 0; loss = sum over the masked noisy
positions of CE / p, divided by the number of answer tokens. The restatement builds the ids, positions and
mask with loops, runs the model's own transformers forward with that float mask, and takes the loss itself.
The masks are headattr's keyed draws (`core.variants`): those are what the objective reuses.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from headattr.data.tokens import Sample
from headattr.engine import core
from headattr.engine.gates import gated
from headattr.engine.masking import MaskConfig
from headattr.methods import AblationConfig, DispersionConfig, GateIGConfig, GradientConfig, STPConfig
from headattr.models import load_model
from headattr.models.backbone import attributing
from headattr.models.block_masks import block_causal_mask, noisy_clean_mask
from headattr.runs.compute import attribute_sample, attribute_samples
from headattr.testing import make_llada2_checkpoint, make_lladamoe_checkpoint, make_sdar_checkpoint

BLOCK = 4
IDS = (1, 4, 5, 6, 41, 31, 28, 29, 39, 30, 12, 14, 15, 17)  # [bos] + prompt (5) + answer (8): blocks 1.5 to 3
ANSWER = (6, 14)
MASKING = MaskConfig(mask_probs=(0.3, 0.7, 1.0), mask_samples_per_prob=2, mask_seed=5)
FAMILIES = ("sdar", "llada2")


def sample(ids: tuple[int, ...] = IDS, uid: str = "0123456789abcdef") -> Sample:
    return Sample(0, uid, None, ids, *ANSWER, 0, 0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("block-objective")
    llada2 = make_llada2_checkpoint(base / "llada2", block_size=BLOCK)  # blocks that show on a short sample
    return {"sdar": make_sdar_checkpoint(base / "sdar"), "llada2": llada2}


@pytest.fixture(scope="module")
def specs(checkpoints):
    return {name: load_model(root, dtype="float64") for name, root in checkpoints.items()}


# ---------------------------------------------------------------- the restatement


def restated_layout(noisy: list[int], clean: list[int], block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids [1, 2T], positions [1, 2T] and the float additive mask [1, 1, 2T, 2T] of [x_t | x_0], by loops."""
    t = len(clean)
    ids = noisy + clean
    positions = list(range(t)) + list(range(t))
    mask = torch.full((2 * t, 2 * t), torch.finfo(torch.float64).min, dtype=torch.float64)
    for i in range(2 * t):
        for j in range(2 * t):
            query_noisy, key_noisy = i < t, j < t
            query_block, key_block = (i % t) // block, (j % t) // block
            if query_noisy and key_noisy:
                allowed = key_block == query_block
            elif query_noisy:
                allowed = key_block < query_block
            elif key_noisy:
                allowed = False
            else:
                allowed = key_block <= query_block
            if allowed:
                mask[i, j] = 0.0
    return torch.tensor([ids]), torch.tensor([positions]), mask[None, None]


def restated_logits(model, noisy: list[int], clean: list[int], block: int) -> torch.Tensor:
    """[2T, V] logits of the model's own transformers forward on the [x_t | x_0] layout."""
    ids, positions, mask = restated_layout(noisy, clean, block)
    return model(input_ids=ids, position_ids=positions, attention_mask=mask.to(model.dtype)).logits[0]


def restated_j(spec, variant, zeroed: dict[int, list[int]] | None = None) -> torch.Tensor:
    """J = -(sum over the masked noisy positions of CE / p) / answer tokens; `zeroed` {layer: heads} zeroes
    those heads' columns of o_proj's input at every position of both copies (a hook, not headattr's gates)."""
    clean = list(IDS)
    hd = spec.head_dim

    def hook(heads):
        def zero(module, args):
            x = args[0].clone()
            for h in heads:
                x[..., h * hd : (h + 1) * hd] = 0.0
            return (x,)

        return zero

    handles = [
        spec.head_modules[layer].register_forward_pre_hook(hook(heads)) for layer, heads in (zeroed or {}).items()
    ]
    try:
        logits = restated_logits(spec.model, variant.input_ids.tolist(), clean, spec.block_size)
    finally:
        for handle in handles:
            handle.remove()
    total = sum(
        torch.nn.functional.cross_entropy(logits[m], torch.tensor(clean[m])) for m in variant.positions.tolist()
    )
    return -total / variant.prob / (ANSWER[1] - ANSWER[0])


def restated_all(spec, zeroed=None) -> np.ndarray:
    with torch.no_grad():
        return np.array([float(restated_j(spec, v, zeroed)) for v in core.variants(spec, sample(), MASKING)])


def core_j(spec, gates: dict[int, torch.Tensor] | None = None, start: int = 0, heads: bool = False) -> np.ndarray:
    rows = core.prepare(spec, sample(), MASKING, 4, cache_layers=True)
    v_idx = torch.arange(rows.num_variants)
    with torch.no_grad(), gated(spec, gates or {}):
        h = core.head_inputs(spec, rows, start, 3) if heads else None
        return core.objective(spec, rows, v_idx, start, heads=h).j.numpy()


# ---------------------------------------------------------------- the masks


def test_the_mask_helpers_are_the_spec_by_loops():
    for t, block in ((14, 4), (9, 3), (5, 8)):
        _, _, expected = restated_layout([0] * t, [0] * t, block)
        mask = noisy_clean_mask(t, block, torch.float64)
        assert mask.dtype == torch.float64 and mask.shape == (1, 1, 2 * t, 2 * t)
        assert torch.equal(mask, expected)
        causal = block_causal_mask(t, block, torch.float32)
        loops = [
            [0.0 if j // block <= i // block else torch.finfo(torch.float32).min for j in range(t)] for i in range(t)
        ]
        assert torch.equal(causal, torch.tensor(loops)[None, None])


@pytest.mark.parametrize("name", FAMILIES)
def test_the_families_declare_the_objective(name, specs):
    assert specs[name].objective == "block_diffusion" and specs[name].block_size == BLOCK
    assert specs[name].describe()["objective"] == "block_diffusion"


def test_lladamoe_keeps_the_masked_diffusion_objective(tmp_path):
    spec = load_model(make_lladamoe_checkpoint(tmp_path / "moe"), dtype="float64")
    assert spec.objective == "masked_diffusion" and "objective" not in spec.describe()
    rows = core.prepare(spec, sample(), MASKING, 4, cache_layers=False)
    assert rows.ids.shape == (MASKING.num_variants, len(IDS)) and rows.scale is None


# ---------------------------------------------------------------- J against the restatement


@pytest.mark.parametrize("name", FAMILIES)
def test_j_equals_the_restated_training_loss(name, specs):
    spec = specs[name]
    expected = restated_all(spec)
    rows = core.prepare(spec, sample(), MASKING, 4, cache_layers=True)
    assert rows.ids.shape == (MASKING.num_variants, 2 * len(IDS))
    assert core.loss_positions(spec, rows) is not None  # the last layer is narrowed here: part of what is tested
    np.testing.assert_allclose(core_j(spec), expected, rtol=1e-10, atol=0)
    for start in range(spec.num_layers):  # layer reuse (cached inputs of the 2T rows) and the attention-once trick
        np.testing.assert_allclose(core_j(spec, start=start, heads=True), expected, rtol=1e-10, atol=0)
    # the normalisation is the family's: not the mean over masked tokens
    counts = np.array([len(v.positions) for v in core.variants(spec, sample(), MASKING)])
    probs = np.repeat(MASKING.mask_probs, MASKING.mask_samples_per_prob)
    summed = core.prepare(spec, sample(), MASKING.replace(loss_normalize="sum"), 4, cache_layers=False)
    j_sum = core.objective(spec, summed, torch.arange(len(counts)), 0).j.detach().numpy()
    np.testing.assert_allclose(j_sum / probs / (ANSWER[1] - ANSWER[0]), expected, rtol=1e-10)
    assert not np.allclose(j_sum / counts, expected)


@pytest.mark.parametrize("name", FAMILIES)
def test_gates_act_on_both_copies(name, specs):
    spec = specs[name]
    zeroed = {0: [1], spec.num_layers - 1: [0, 3]}
    gates = {
        layer: torch.tensor([0.0 if h in heads else 1.0 for h in range(spec.num_heads)], dtype=spec.dtype)
        for layer, heads in zeroed.items()
    }
    expected = restated_all(spec, zeroed)
    assert not np.allclose(expected, restated_all(spec))
    np.testing.assert_allclose(core_j(spec, gates), expected, rtol=1e-10, atol=0)
    last = spec.num_layers - 1
    only_last = restated_all(spec, {last: zeroed[last]})
    np.testing.assert_allclose(core_j(spec, {last: gates[last]}, start=last, heads=True), only_last, rtol=1e-10)
    # a gate on the clean copy alone matters too: the noisy copy reads the clean blocks before its own
    clean_only = {0: [1]}

    def clean_hook(module, args):
        x = args[0].clone()
        x[:, len(IDS) :, spec.head_dim : 2 * spec.head_dim] = 0.0
        return (x,)

    handle = spec.head_modules[0].register_forward_pre_hook(clean_hook)
    try:
        partial = restated_all(spec)
    finally:
        handle.remove()
    assert not np.allclose(partial, restated_all(spec)) and not np.allclose(partial, restated_all(spec, clean_only))


@pytest.mark.parametrize("name", FAMILIES)
def test_merged_samples_equal_their_own_passes(name, specs):
    spec = specs[name]
    other = sample(IDS[:7] + (22, 23, 24, 25, 26, 27, 33), uid="fedcba9876543210")
    merged, counts = core.prepare_merged(spec, [sample(), other], MASKING, 4, cache_layers=True)
    with torch.no_grad():
        j = core.objective(spec, merged, torch.arange(sum(counts)), 1).j.numpy()
        alone = core.prepare(spec, other, MASKING, 4, cache_layers=True)
        j_other = core.objective(spec, alone, torch.arange(counts[1]), 0).j.numpy()
    np.testing.assert_allclose(j[: counts[0]], restated_all(spec), rtol=1e-10)
    np.testing.assert_allclose(j[counts[0] :], j_other, rtol=1e-10)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_later_block_never_reaches_an_earlier_one(name, specs):
    """Logits of every position of [x_t | x_0] through the core's layer stack and context: a change in noisy
    block 2 moves only noisy block 2; a change in clean block 1 moves clean blocks >= 1 and noisy blocks >= 2."""
    spec = specs[name]
    rows = core.prepare(spec, sample(), MASKING, 4, cache_layers=False)
    stack, t = spec.backbone, len(IDS)
    ctx = rows.ctx.rows(slice(0, 1))

    def logits(ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return stack.logits(stack.run(stack.embed(ids[None]), 0, spec.num_layers, ctx))[0]

    base = logits(rows.ids[0])
    tol = 1e-12  # expert matrices take their tokens together: other tokens' values may move the last bits
    for pos, moved in ((9, range(8, 12)), (t + 5, list(range(8, t)) + list(range(t + 4, 2 * t)))):
        ids = rows.ids[0].clone()
        ids[pos] = 40
        diff = (logits(ids) - base).abs().amax(dim=-1)
        still = [i for i in range(2 * t) if i not in set(moved)]
        assert diff[still].max() <= tol
        assert diff[list(moved)].min() > 1e-6  # every position the mask lets the change reach does change


# ---------------------------------------------------------------- the methods


@pytest.fixture(scope="module")
def fixed_routing(checkpoints, tmp_path_factory) -> Path:
    """The tiny LLaDA 2 checkpoint with an `expert_bias` that makes experts 0 and 1 every token's choice whatever
    the gates: the routing weights (the unbiased scores) still depend on the gates, smoothly, but no choice
    switches along an IG path, so J is smooth and completeness must hold (see docs/gate-ig.md: where a choice
    switches, J jumps and no gradient sees it)."""
    import shutil

    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("fixed-routing") / "llada2"
    shutil.copytree(checkpoints["llada2"], root)
    for shard in root.glob("*.safetensors"):
        weights = load_file(str(shard))
        for name in [n for n in weights if n.endswith("mlp.gate.expert_bias")]:
            bias = torch.zeros_like(weights[name])
            bias[:2] = 50.0
            weights[name] = bias
        save_file(weights, str(shard))
    return root


@pytest.mark.parametrize("name", ["sdar", "llada2-fixed-routing"])
def test_gate_ig_completeness_against_the_restated_gaps(name, specs, fixed_routing):
    spec = specs[name] if name in specs else load_model(fixed_routing, dtype="float64")
    result = attribute_sample(spec, sample(), GateIGConfig(), MASKING, batch_size=8)
    full = restated_all(spec)
    np.testing.assert_allclose(result.diagnostics["j_full"], full, rtol=1e-9)
    for layer in range(spec.num_layers):
        removed = restated_all(spec, {layer: list(range(spec.num_heads))})
        np.testing.assert_allclose(result.diagnostics["j_baseline"][:, layer], removed, rtol=1e-9)
        gap = full - removed
        total = result.attributions[:, layer].sum(axis=1)
        assert np.all(np.abs(total - gap) <= 0.04 * np.abs(gap) + 1e-3)


@pytest.mark.parametrize("name", FAMILIES)
def test_gradient_and_ablation_against_the_restatement(name, specs):
    spec = specs[name]
    grad = attribute_sample(spec, sample(), GradientConfig(), MASKING, batch_size=8)
    variant = core.variants(spec, sample(), MASKING)[3]
    gates = torch.ones(spec.num_layers, spec.num_heads, dtype=spec.dtype, requires_grad=True)
    with gated(spec, {layer: gates[layer] for layer in range(spec.num_layers)}):
        (expected,) = torch.autograd.grad(restated_j(spec, variant), gates)
    np.testing.assert_allclose(grad.attributions[3], expected.numpy(), rtol=1e-6, atol=1e-9)  # float32 gates
    ablation = attribute_sample(spec, sample(), AblationConfig(), MASKING, batch_size=8)
    full = restated_all(spec)
    for layer, head in ((0, 2), (spec.num_layers - 1, 1)):
        np.testing.assert_allclose(
            ablation.attributions[:, layer, head], full - restated_all(spec, {layer: [head]}), rtol=1e-8
        )


@pytest.mark.parametrize("name", FAMILIES)
def test_stp_and_merged_gate_ig_run(name, specs):
    spec = specs[name]
    stp = attribute_sample(spec, sample(), STPConfig(path_samples=2), MASKING, batch_size=8)
    assert stp.attributions.shape == (MASKING.num_variants, spec.num_layers, spec.num_heads)
    assert np.isfinite(stp.attributions).all()
    np.testing.assert_allclose(stp.diagnostics["j_full"], restated_all(spec), rtol=1e-9)
    other = sample(IDS[:7] + (22, 23, 24, 25, 26, 27, 33), uid="fedcba9876543210")
    merged = attribute_samples(spec, [sample(), other], GateIGConfig(ig_tol=0.0, ig_steps=4), MASKING, batch_size=8)
    alone = attribute_sample(spec, sample(), GateIGConfig(ig_tol=0.0, ig_steps=4), MASKING, batch_size=8)
    np.testing.assert_allclose(merged[0].attributions, alone.attributions, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", FAMILIES)
def test_dispersion_equals_the_eager_attention_of_the_layout(name, checkpoints, specs):
    """Dispersion's probabilities (captured q, k; q/k norms; RoPE; the block mask) against the attention weights
    transformers' eager attention returns for the restated layout, at the noisy answer queries, each entropy
    divided by the log of the keys its query may see."""
    spec = specs[name]
    result = attribute_sample(spec, sample(), DispersionConfig(), MASKING, batch_size=4)
    eager = load_model(checkpoints[name], dtype="float64", attn_implementation="eager")
    t = len(IDS)
    for v, variant in enumerate(core.variants(spec, sample(), MASKING)):
        ids, positions, mask = restated_layout(variant.input_ids.tolist(), list(IDS), BLOCK)
        with torch.no_grad():
            out = eager.model(input_ids=ids, position_ids=positions, attention_mask=mask, output_attentions=True)
        visible = (mask[0, 0, ANSWER[0] : ANSWER[1]] == 0).sum(-1).double()
        for layer, weights in enumerate(out.attentions):
            p = weights[0, :, ANSWER[0] : ANSWER[1]]  # [H, Q, 2T]
            assert torch.all(p[:, mask[0, 0, ANSWER[0] : ANSWER[1]] != 0] == 0)
            entropy = -(torch.special.xlogy(p, p)).sum(-1) / torch.log(visible)
            expected = entropy.mean(-1).numpy()
            np.testing.assert_allclose(1 - result.attributions[v, layer], 1 - expected, rtol=2e-3, atol=1e-7)
    assert t == 14 and np.all((result.attributions > 0) & (result.attributions <= 1))


# ---------------------------------------------------------------- precision


def test_bf16_objective_runs_and_is_close(checkpoints, specs):
    """bf16 weights under autocast with the float additive mask (sdpa): the attribution's float32 attention block
    and the family's own bf16 attention both take it, and J stays near float64's."""
    bf16 = load_model(checkpoints["sdar"], dtype="bfloat16", device="cpu")
    expected = restated_all(specs["sdar"])
    for context in (attributing, lambda: torch.autograd.grad_mode.no_grad()):
        with context():
            rows = core.prepare(bf16, sample(), MASKING, 4, cache_layers=True)
            with torch.no_grad():
                j = core.objective(bf16, rows, torch.arange(rows.num_variants), 1).j.double().numpy()
        np.testing.assert_allclose(j, expected, rtol=0.05, atol=0.05)


def test_shifted_logits_are_refused(checkpoints):
    from headattr.errors import HeadattrError

    spec = load_model(checkpoints["sdar"], dtype="float64")
    spec.logit_shift = True
    with pytest.raises(HeadattrError, match="shifted logits"):
        core.prepare(spec, sample(), MASKING, 4, cache_layers=False)


# ---------------------------------------------------------------- the command


@pytest.mark.parametrize(("name", "method"), [("sdar", "gate-ig"), ("llada2", "stp")])
def test_attribute_command_records_the_objective(name, method, checkpoints, tmp_path):
    from headattr.cli import main
    from headattr.runs.rundir import read_run

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"k{i}=v{i};k{i}?", "answer": f"v{i}xy"}) + "\n" for i in range(6)))
    out = tmp_path / "run"
    flags = ["--samples", "3", "--mask-probs", "0.5,1.0", "--mask-samples-per-prob", "1", "--quiet"]
    args = ["attribute", str(checkpoints[name]), "--data", str(data), "--out", str(out), "--method", method]
    assert main([*args, *flags, "--dtype", "float64"]) == 0
    run = read_run(out)
    assert run.meta["model"]["objective"] == "block_diffusion" and run.meta["model"]["block_size"] == BLOCK
    assert np.isfinite(run.scores).all() and np.abs(run.scores).sum() > 0
    # prune measures the loss of held-out samples on the same objective
    pruned = tmp_path / "pruned"
    prune = ["prune", str(checkpoints[name]), "--scores", str(out), "--out", str(pruned), "--fractions", "0.25"]
    assert main([*prune, "--random-orders", "1", "--eval-samples", "2", "--dtype", "float64", "--quiet"]) == 0
    assert (pruned / "pruning.json").exists()
