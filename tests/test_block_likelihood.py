"""The log-likelihood estimate of block-diffusion families (SDAR, LLaDA 2): the Monte-Carlo ELBO of their training
loss, against a restatement written here from docs/generation.md ("Likelihood of block-diffusion families").

Per draw i of a batch of b: t_i = (u + i / b) mod 1 (u one uniform per batch), p_i = (1 - 1e-3) t_i + 1e-3; each
continuation token masked with probability p_i given at least one (the first masked position j drawn with
probability (1 - p)^j p, later ones with p each); the sequence context + continuation laid out as [x_t | x_0]
(both copies at positions 0..T-1; noisy block b sees itself and clean blocks < b, clean block b clean blocks
<= b, clean never noisy); the draw's loss is the sum over masked noisy positions of CE times
(1 - (1 - p)^L) / p. The estimate is minus the mean loss over the draws. The restatement draws the masks from the
same generator by loops, builds the ids, positions and float mask by loops, and runs the model's own
transformers forward.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from headattr.errors import HeadattrError
from headattr.generation import blocklikelihood
from headattr.generation.lmeval import mc_loglikelihood
from headattr.models import load_model
from headattr.testing import make_llada2_checkpoint, make_sdar_checkpoint

BLOCK = 4
CONTEXT = [1, 5, 6, 7, 8]  # [bos] + 4: the continuation starts inside block 1
TARGET = [9, 10, 11, 12, 13]  # T = 10: blocks 0-3, 4-7, 8-9
FAMILIES = ("sdar", "llada2")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("block-likelihood")
    llada2 = make_llada2_checkpoint(base / "llada2", block_size=BLOCK)  # blocks that show on a short sample
    return {"sdar": make_sdar_checkpoint(base / "sdar"), "llada2": llada2}


@pytest.fixture(scope="module")
def specs(dirs):
    torch.set_num_threads(1)
    return {name: load_model(root, dtype="float64") for name, root in dirs.items()}


# ---------------------------------------------------------------- the restatement


def restated_draws(n_prompt: int, length: int, batch: int, gen: torch.Generator) -> list[tuple[list[int], float]]:
    """One batch of draws: (masked sequence positions, p / (1 - (1 - p)^L)) per row, by loops."""
    u = float(torch.rand(1, generator=gen, dtype=torch.float64))
    draws = []
    for i in range(batch):
        t = (u + i / batch) % 1
        p = (1 - 1e-3) * t + 1e-3
        first_probs = torch.tensor([(1 - p) ** j * p for j in range(length)], dtype=torch.float64)
        first = int(torch.multinomial(first_probs, 1, generator=gen))
        later = torch.rand(length, generator=gen, dtype=torch.float64)
        masked = [n_prompt + j for j in range(length) if j == first or (j > first and float(later[j]) < p)]
        draws.append((masked, p / (1 - (1 - p) ** length)))
    return draws


def restated_layout(noisy: list[int], clean: list[int], block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids [1, 2T], positions [1, 2T] and the float additive mask [1, 1, 2T, 2T] of [x_t | x_0], by loops."""
    t = len(clean)
    mask = torch.full((2 * t, 2 * t), torch.finfo(torch.float64).min, dtype=torch.float64)
    for i in range(2 * t):
        for j in range(2 * t):
            query_block, key_block = (i % t) // block, (j % t) // block
            if i < t and j < t:
                allowed = key_block == query_block
            elif i < t:
                allowed = key_block < query_block
            else:
                allowed = j >= t and key_block <= query_block
            if allowed:
                mask[i, j] = 0.0
    positions = list(range(t)) * 2
    return torch.tensor([noisy + clean]), torch.tensor([positions]), mask[None, None]


def zeroing(spec, zeroed: dict[int, list[int]]) -> list:
    """Forward pre-hooks zeroing the listed heads' columns of o_proj's input (not headattr's gates)."""

    def hook(heads):
        def zero(module, args):
            x = args[0].clone()
            for h in heads:
                x[..., h * spec.head_dim : (h + 1) * spec.head_dim] = 0.0
            return (x,)

        return zero

    return [spec.head_modules[layer].register_forward_pre_hook(hook(heads)) for layer, heads in zeroed.items()]


@torch.no_grad()
def restated_estimate(spec, context, target, mc_num, batch, seed, zeroed=None) -> float:
    """Minus the mean over draws of sum over masked noisy positions of CE x (1 - (1 - p)^L) / p."""
    clean = context + target
    gen = torch.Generator().manual_seed(seed)
    handles = zeroing(spec, zeroed or {})
    losses = []
    try:
        for _ in range(max(mc_num // batch, 1)):
            for masked, weight in restated_draws(len(context), len(target), batch, gen):
                noisy = [spec.mask_token_id if k in masked else tok for k, tok in enumerate(clean)]
                ids, positions, mask = restated_layout(noisy, clean, spec.block_size)
                logits = spec.model(input_ids=ids, position_ids=positions, attention_mask=mask).logits[0]
                ce = [torch.nn.functional.cross_entropy(logits[k], torch.tensor(clean[k])) for k in masked]
                losses.append(float(sum(ce)) / weight)
    finally:
        for handle in handles:
            handle.remove()
    return -sum(losses) / len(losses)


# ---------------------------------------------------------------- the estimate


@pytest.mark.parametrize("family", FAMILIES)
def test_estimate_equals_the_restatement(specs, family):
    spec = specs[family]
    assert spec.block_size == BLOCK
    got = mc_loglikelihood(spec, CONTEXT, TARGET, mc_num=6, batch=3, seed=11)
    assert got == pytest.approx(restated_estimate(spec, CONTEXT, TARGET, 6, 3, 11), rel=1e-9)
    assert math.isfinite(got) and got < 0


@pytest.mark.parametrize("family", FAMILIES)
def test_removed_head_changes_the_estimate_as_zeroing_it_does(specs, family):
    spec = specs[family]
    gates = {1: torch.ones(spec.num_heads, dtype=torch.float64)}
    gates[1][2] = 0.0
    plain = mc_loglikelihood(spec, CONTEXT, TARGET, mc_num=4, batch=2, seed=5)
    removed = mc_loglikelihood(spec, CONTEXT, TARGET, mc_num=4, batch=2, seed=5, gates=gates)
    assert removed != pytest.approx(plain, rel=1e-6)
    assert removed == pytest.approx(restated_estimate(spec, CONTEXT, TARGET, 4, 2, 5, zeroed={1: [2]}), rel=1e-9)


def test_estimate_is_deterministic_given_the_seed(specs):
    spec = specs["sdar"]
    a = mc_loglikelihood(spec, CONTEXT, TARGET, mc_num=4, batch=2, seed=3)
    assert a == mc_loglikelihood(spec, CONTEXT, TARGET, mc_num=4, batch=2, seed=3)
    assert a != mc_loglikelihood(spec, CONTEXT, TARGET, mc_num=4, batch=2, seed=4)


def block_causal_log_probs(spec, ids: list[int]) -> torch.Tensor:
    """log softmax [V] at the last position of `ids` under the inference block-causal mask (built by loops)."""
    t = len(ids)
    mask = torch.zeros(1, 1, t, t, dtype=torch.float64)
    for i in range(t):
        for j in range(t):
            if j // spec.block_size > i // spec.block_size:
                mask[0, 0, i, j] = torch.finfo(torch.float64).min
    with torch.no_grad():
        return torch.log_softmax(spec.model(input_ids=torch.tensor([ids]), attention_mask=mask).logits[0, -1], -1)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_token_estimate_is_the_exact_log_probability(specs, family):
    """With L = 1 every draw masks the token with weight p / (1 - (1 - p)) = 1, and the noisy block sees what
    inference sees: the estimate is log p(token | context) exactly, so the model's preferred token scores highest."""
    spec = specs[family]
    exact = block_causal_log_probs(spec, [*CONTEXT, spec.mask_token_id])
    for token in (9, int(exact.argmax())):
        got = mc_loglikelihood(spec, CONTEXT, [token], mc_num=4, batch=2, seed=1)
        assert got == pytest.approx(float(exact[token]), rel=1e-9)
    best = mc_loglikelihood(spec, CONTEXT, [int(exact.argmax())], mc_num=2, batch=2)
    others = [mc_loglikelihood(spec, CONTEXT, [tok], mc_num=2, batch=2) for tok in range(4, 12)]
    assert all(best >= x for x in others)


# ---------------------------------------------------------------- the draws


@pytest.mark.parametrize(("length", "p"), [(3, 0.3), (2, 0.05)])
def test_row_mask_is_bernoulli_given_at_least_one(length, p):
    """Pattern frequencies of `_row_mask` against p^k (1 - p)^(L - k) / (1 - (1 - p)^L), within 5 sigma."""
    gen = torch.Generator().manual_seed(0)
    n = 6000
    counts: dict[tuple[bool, ...], int] = {}
    for _ in range(n):
        key = tuple(blocklikelihood._row_mask(length, p, gen).tolist())
        counts[key] = counts.get(key, 0) + 1
    hit = 1 - (1 - p) ** length
    assert sum(counts.values()) == n and (False,) * length not in counts
    for code in range(1, 2**length):
        pattern = tuple(bool(code >> j & 1) for j in range(length))
        k = sum(pattern)
        want = p**k * (1 - p) ** (length - k) / hit
        sigma = math.sqrt(want * (1 - want) / n)
        assert abs(counts.get(pattern, 0) / n - want) < 5 * sigma + 1e-12


@pytest.mark.parametrize("length", [1, 3])
def test_draws_weigh_each_token_once_on_average(length):
    """E[number masked / weight] = L: each token's cross-entropy counts once in expectation, as in the
    unconditioned CE / p estimate (forcing a token without the (1 - (1 - p)^L) factor would give ~6.9 for L = 1)."""
    gen = torch.Generator().manual_seed(2)
    seq = torch.arange(2 + length)[None].expand(400, -1)
    total = 0.0
    for _ in range(5):
        noisy, weight = blocklikelihood.likelihood_masks(seq, 2, 99, gen)
        masked = noisy == 99
        assert bool(masked.any(dim=1).all()) and not bool(masked[:, :2].any())
        total += float((masked / weight).sum()) / (5 * 400)
    assert total == pytest.approx(length, rel=0.05)


def test_empty_continuation_is_a_one_line_error(specs):
    with pytest.raises(HeadattrError, match="continuation is empty") as err:
        mc_loglikelihood(specs["sdar"], CONTEXT, [], mc_num=2, batch=2)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- the lm-eval model


@pytest.mark.parametrize("family", FAMILIES)
def test_lmeval_model_scores_requests(dirs, family):
    pytest.importorskip("lm_eval")
    from types import SimpleNamespace

    from headattr.generation import lmeval

    model = lmeval.HeadattrLM(pretrained=str(dirs[family]), dtype="float64", mc_num=4, mc_batch_size=2)
    requests = [SimpleNamespace(args=("copy:ab=", cont)) for cont in ("ab", "ba", "x")]
    out = model.loglikelihood(requests)
    assert len(out) == 3 and all(isinstance(ll, float) and math.isfinite(ll) and greedy is False for ll, greedy in out)
    ctx, target = model._pair("copy:ab=", "ab")
    seed = lmeval._seed_for(model.seed, "copy:ab=", "ab")
    assert out[0][0] == mc_loglikelihood(model.spec, ctx, target, mc_num=4, batch=2, seed=seed)
