"""Block-sparse attention building blocks (engine/sparse_*.py) against plain restatements of the spec."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from headattr.engine.core import forward_logits
from headattr.engine.sparse_attention import flex_attention_blocks, flex_block_mask, masked_sdpa
from headattr.engine.sparse_hook import SparseState, sparse_generation
from headattr.engine.sparse_mask import BudgetRule, block_mask, block_masks, generation_start, keep_ratios
from headattr.engine.sparse_schedule import MaskStore, SparseAttention, end_time, phase, row_densities
from headattr.errors import HeadattrError
from headattr.runs.budget import allocation as budget_allocation

# ---------------------------------------------------------------- the spec, written out with loops


def softmax_row(logits: list[float]) -> list[float]:
    top = max(logits)
    e = [math.exp(x - top) for x in logits]
    return [x / sum(e) for x in e]


def top_with_ties(scores: list[float], count: int) -> set[int]:
    """The `count` best indices, ties to the lower index."""
    return set(sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:count])


def spec_block_mask(q: np.ndarray, k: np.ndarray, keep: list[float], bs: int, gen: int) -> np.ndarray:
    """The spec's section 2, head by head and query block by query block."""
    heads, t, d = q.shape
    n = -(-t // bs)
    last = next((i for i in range(n) if t - i * bs <= gen), n - 1)
    m = n - last
    out = np.zeros((heads, n, n), dtype=bool)
    for h in range(heads):
        kh = k[h // (heads // k.shape[0])]
        kk = int(np.floor(np.float32(keep[h]) * np.float32(n)))
        k_prefix = min(max(kk + 1, 1), n)
        k_gen = min(int(np.floor(np.float32(keep[h]) * np.float32(m))) + 1, m)
        for i in range(n):
            tiles_all, tiles_gen = [0.0] * n, [0.0] * m
            for r in range(i * bs, min((i + 1) * bs, t)):
                logits = [float(np.dot(q[h, r], kh[c])) / math.sqrt(d) for c in range(t)]
                p = softmax_row(logits)
                pg = softmax_row(logits[last * bs :])
                for c in range(t):
                    tiles_all[c // bs] += abs(p[c]) / (bs * bs)
                for c in range(len(pg)):
                    tiles_gen[c // bs] += abs(pg[c]) / (bs * bs)
            for j in top_with_ties(tiles_all, k_prefix):
                out[h, i, j] = j < last
            for j in top_with_ties(tiles_gen, k_gen):
                out[h, i, last + j] = True
    return out


def dense_masked(q, k, v, mask, bs, valid=None) -> torch.Tensor:
    """Softmax with -inf on every disallowed token, the token mask built entry by entry."""
    b, h, t, d = q.shape
    groups = h // k.shape[1]
    allowed = torch.zeros(b, h, t, t, dtype=torch.bool)
    for row in range(b):
        real = list(range(t)) if valid is None else [c for c in range(t) if valid[row, c]]
        rank = {c: i for i, c in enumerate(real)}
        for head in range(h):
            for r in range(t):
                for c in real:
                    allowed[row, head, r, c] = bool(mask[row, head, rank.get(r, 0) // bs, rank[c] // bs])
    logits = (q.double() @ k.double().repeat_interleave(groups, 1).transpose(2, 3)) / math.sqrt(d)
    p = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    return (p @ v.double().repeat_interleave(groups, 1)).float()


# ---------------------------------------------------------------- the block mask


def test_generation_start_and_a_hand_made_mask() -> None:
    assert generation_start(10, 4, 0) == 2 and generation_start(10, 4, 10) == 0 and generation_start(10, 4, 99) == 0
    assert generation_start(10, 4, 5) == 2  # block 1 (tokens 4..7) straddles the boundary at 5: a prefix block
    assert generation_start(10, 4, 6) == 1 and generation_start(8, 4, 4) == 1
    # q = 0: uniform probabilities; tiles 0 and 1 tie (0.1), the short tile 2 scores 0.05 (divided by bs²)
    q, k = torch.zeros(1, 10, 3), torch.randn(1, 10, 3)
    mask = block_mask(q, k, [0.3], 4, 0)  # K = 1 over all blocks: tile 0 (tie to the lower index); tile 2 own region
    assert mask[0].tolist() == [[True, False, True]] * 3
    assert block_mask(q, k, [1.0], 4, 0).all()
    assert block_mask(q, k, [0.0], 4, 10)[0].tolist() == [[True, False, False]] * 3  # all generation: K' = 1


@pytest.mark.parametrize("gen", [0, 11, 23, 40])
@pytest.mark.parametrize("kv", [4, 2])
def test_block_mask_against_the_spec_loops(gen: int, kv: int) -> None:
    gen_rng = torch.Generator().manual_seed(gen * 10 + kv)
    t, bs, d = 23, 4, 5  # n = 6 blocks, the last of 3 tokens
    q = torch.randn(4, t, d, generator=gen_rng) * 2
    k = torch.randn(kv, t, d, generator=gen_rng) * 2
    for keep in ([0.0, 0.05, 0.3, 1.0], [0.3, 0.3, 0.05, 0.0]):
        expected = spec_block_mask(q.numpy(), k.numpy(), keep, bs, gen)
        got = block_mask(q, k, torch.tensor(keep), bs, gen)
        assert got.shape == (4, 6, 6) and np.array_equal(got.numpy(), expected), (keep, gen, kv)
        assert got.any(dim=-1).all()  # every query block keeps at least one block


def test_block_mask_in_slabs_equals_one_slab(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k = torch.randn(2, 50, 4), torch.randn(2, 50, 4)
    whole = block_mask(q, k, [0.2, 0.6], 8, 17)
    monkeypatch.setattr("headattr.engine.sparse_mask.SLAB_BYTES", 1)
    assert torch.equal(block_mask(q, k, [0.2, 0.6], 8, 17), whole)


def test_padded_rows_get_their_unpadded_mask() -> None:
    gen_rng = torch.Generator().manual_seed(5)
    q, k = torch.randn(3, 4, 30, 6, generator=gen_rng), torch.randn(3, 2, 30, 6, generator=gen_rng)
    valid = torch.ones(3, 30, dtype=torch.bool)
    valid[1, :7] = False  # left padding
    valid[2, 25:] = False  # right padding
    keep = torch.tensor([0.1, 0.3, 0.5, 0.2])
    masks = block_masks(q, k, keep, 4, 9, valid)
    assert masks.shape == (3, 4, 8, 8)
    for row in range(3):
        idx = valid[row].nonzero().squeeze(1)
        alone = block_mask(q[row][:, idx], k[row][:, idx], keep, 4, 9)
        n = alone.shape[1]
        assert torch.equal(masks[row, :, :n, :n], alone) and not masks[row, :, n:].any()
        assert not masks[row, :, :, n:].any()
    assert torch.equal(block_masks(q[:1], k[:1], keep, 4, 9), masks[:1])  # no padding: the same as valid=None


# ---------------------------------------------------------------- keep ratios


def spec_keep(scores: np.ndarray, select: float, min_keep: float, kv: int | None) -> np.ndarray:
    """The spec's section 1 in float32, with torch.quantile, head by head."""
    s = torch.tensor(scores, dtype=torch.float32)
    lo, hi = torch.quantile(s.flatten(), 0.05), torch.quantile(s.flatten(), 0.95)
    w = torch.zeros_like(s)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            n = torch.clamp((s[i, j] - lo) / (hi - lo + 1e-8), 0, 1)
            w[i, j] = torch.clamp(1 + (2 / 3) * (2 * (n - 0.5)), 0.1, 10)
    w = w / w.mean()
    if kv is not None:
        g = s.shape[1] // kv
        w = torch.stack([torch.stack([w[i, (j // g) * g : (j // g + 1) * g].mean() for j in range(s.shape[1])])
                         for i in range(s.shape[0])])  # fmt: skip
    return torch.clamp(w * select, min_keep, 1.0).numpy()


def test_keep_ratios_against_the_spec() -> None:
    scores = np.random.default_rng(0).gamma(2.0, 1.0, size=(6, 8))
    for select, min_keep, kv in ((0.3, 0.1, 2), (0.3, 0.1, None), (0.5, 0.01, 4), (0.9, 0.1, 1)):
        gqa = "q" if kv is None else "kv"
        got = keep_ratios(scores, BudgetRule(select=select, min_keep=min_keep), gqa, kv)
        assert got.dtype == np.float32 and got.shape == (6, 8)
        np.testing.assert_allclose(got, spec_keep(scores, select, min_keep, kv), rtol=1e-6, atol=1e-7)
    # GQA kv: the query heads of one KV head share a ratio; budget's [L, KV] ratios agree to float32 rounding
    got = keep_ratios(scores, BudgetRule(), "kv", 2)
    assert np.array_equal(got[:, :4], got[:, [0] * 4]) and np.array_equal(got[:, 4:], got[:, [4] * 4])
    old = budget_allocation(scores, BudgetRule(), "kv", 2)["keep_ratios"]
    np.testing.assert_allclose(got[:, ::4], old, rtol=1e-6)


def test_keep_ratios_hand_made_cases() -> None:
    assert np.allclose(keep_ratios(np.full((2, 4), 3.0), BudgetRule(select=0.25), "q"), 0.25)  # equal scores
    # two heads at the extremes: weights 1/3 and 5/3 before the mean (1), so keep = select/3 and 5*select/3
    got = keep_ratios(np.array([[0.0, 1.0]]), BudgetRule(select=0.3, min_keep=0.0), "q")
    np.testing.assert_allclose(got, [[0.1, 0.5]], rtol=1e-6)
    with pytest.raises(HeadattrError, match="KV heads"):
        keep_ratios(np.ones((2, 4)), BudgetRule(), "kv")
    with pytest.raises(HeadattrError, match="evenly"):
        keep_ratios(np.ones((2, 4)), BudgetRule(), "kv", 3)


# ---------------------------------------------------------------- kernels


def random_case(seed: int, b: int, h: int, kv: int, t: int, d: int = 8):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, x, t, d, generator=gen) for x in (h, kv, kv)]


@pytest.mark.parametrize(
    ("b", "kv", "t", "bs", "pad"), [(1, 4, 32, 8, False), (2, 2, 29, 8, True), (3, 1, 37, 16, True)]
)
def test_kernels_equal_dense_masked_attention(b: int, kv: int, t: int, bs: int, pad: bool) -> None:
    q, k, v = random_case(b * 7 + t, b, 4, kv, t)
    valid = None
    if pad:
        valid = torch.ones(b, t, dtype=torch.bool)
        valid[-1, : t // 3] = False
        valid[0, t - 2 :] = False
    mask = block_masks(q, k, torch.tensor([0.0, 0.2, 0.5, 1.0]), bs, t // 2, valid)
    expected = dense_masked(q, k, v, mask, bs, valid)
    rows = slice(None) if valid is None else valid[:, None, :, None].expand_as(q)  # padding rows are discarded
    sdpa = masked_sdpa(q, k, v, mask, bs, valid)
    flex = flex_attention_blocks(q, k, v, mask, bs, valid, compiled=False)
    torch.testing.assert_close(sdpa[rows], expected[rows], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flex[rows], expected[rows], rtol=1e-5, atol=1e-5)
    assert not mask.all()  # the case is sparse: a dense answer would not pass
    dense = dense_masked(q, k, v, torch.ones_like(mask), bs, valid)
    assert (sdpa[rows] - dense[rows]).abs().max() > 1e-3


def test_keep_one_everywhere_is_dense_attention() -> None:
    q, k, v = random_case(3, 2, 4, 2, 27)
    valid = torch.ones(2, 27, dtype=torch.bool)
    valid[1, :4] = False
    mask = block_masks(q, k, 1.0, 8, 10, valid)
    assert mask[0].all() and mask[1, :, :3, :3].all()
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, valid[:, None, None, :], enable_gqa=True)
    real = valid[:, None, :, None].expand_as(q)
    torch.testing.assert_close(masked_sdpa(q, k, v, mask, 8, valid)[real], dense[real])
    torch.testing.assert_close(flex_attention_blocks(q, k, v, mask, 8, valid, compiled=False)[real], dense[real])


def test_sdpa_in_slabs_and_a_prepared_flex_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v = random_case(4, 1, 2, 2, 40)
    mask = block_masks(q, k, 0.3, 8, 16)
    whole = masked_sdpa(q, k, v, mask, 8)
    prepared = flex_block_mask(mask, 8, 40)
    torch.testing.assert_close(flex_attention_blocks(q, k, v, prepared, 8, compiled=False), whole)
    monkeypatch.setattr("headattr.engine.sparse_attention.SDPA_SLAB", 1)
    torch.testing.assert_close(masked_sdpa(q, k, v, mask, 8), whole)


@pytest.mark.skipif(not os.environ.get("HEADATTR_COMPILE_TESTS"), reason="compiling flex_attention takes a minute")
def test_compiled_flex_equals_sdpa() -> None:
    for length in (37, 45):  # a second shape: the compiled kernel must not fall back to eager on a new length
        q, k, v = random_case(9, 2, 4, 2, length)
        valid = torch.ones(2, length, dtype=torch.bool)
        valid[1, :6] = False
        real = valid[:, None, :, None].expand_as(q)
        for rows in (None, valid):
            mask = block_masks(q, k, torch.tensor([0.1, 0.3, 0.6, 1.0]), 8, 12, rows)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                compiled = flex_attention_blocks(q, k, v, mask, 8, rows, compiled=True)
            assert not [w for w in caught if "running it eagerly" in str(w.message)]
            exact = masked_sdpa(q, k, v, mask, 8, rows)
            torch.testing.assert_close(compiled[real], exact[real], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- schedule, settings, store


def test_schedule() -> None:
    assert end_time(16, 0.2) == 4 and end_time(10, 0.0) == 1 and end_time(64, 0.25) == 17
    assert [phase(s, 16, 0.2) for s in range(7)] == ["dense"] * 4 + ["build", "sparse", "sparse"]
    assert all(phase(s, 4, 0.9) == "dense" for s in range(4))  # end_time 4 >= steps: nothing sparse


def test_settings_and_store() -> None:
    keep = np.array([[0.1, 0.2], [0.3, 1.0]])
    s = SparseAttention(keep=keep)
    assert s.keep == ((0.1, 0.2), (0.3, 1.0)) and s.layer_keep(1, 2).tolist() == pytest.approx([0.3, 1.0])
    assert SparseAttention.from_meta(s.to_meta()) == s and s.to_meta()["sparse_block"] == 32
    assert SparseAttention(keep=0.25).layer_keep(0, 3).tolist() == [0.25] * 3
    assert SparseAttention().rebuild_per_block and not SparseAttention(compat="origin").rebuild_per_block
    adaptive = SparseAttention(select=0.4).from_scores(np.arange(8.0).reshape(2, 4), kv_heads=2)
    assert np.asarray(adaptive.keep).shape == (2, 4) and np.mean(adaptive.keep) == pytest.approx(0.4, abs=0.05)
    for bad in (
        {"keep": 1.5},
        {"skip": -0.1},
        {"block_size": 0},
        {"gqa": "x"},
        {"compat": "sd"},
        {"kernel": "x"},
        {"select": 0},
    ):
        with pytest.raises(HeadattrError):
            SparseAttention(**bad)
    store = MaskStore()
    store.put(3, torch.ones(1, 2, 2, 2, dtype=torch.bool))
    assert 3 in store and row_densities(store, 2) == [1.0]
    store.reset()
    with pytest.raises(HeadattrError, match="layer 3"):
        store.get(3)


# ---------------------------------------------------------------- the attention hook in a model


@pytest.fixture(scope="module")
def tiny_spec():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from headattr.models.native import native_spec, random_model

    cfg = Qwen2Config(
        vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3,
    )  # fmt: skip
    model = random_model(Qwen2ForCausalLM, cfg, torch.float32, "cpu", seed=1)
    return native_spec(model, Path("tiny"), "dream", 39, logit_shift=True, identity="tiny")


def run_model(spec, ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    if valid is None:
        return forward_logits(spec, ids)
    return forward_logits(spec, ids, key_mask=valid, position_ids=(valid.long().cumsum(-1) - 1).clamp(min=0))


def test_hook_phases_in_a_model(tiny_spec) -> None:
    ids = torch.randint(0, 39, (2, 22), generator=torch.Generator().manual_seed(0))
    plain = run_model(tiny_spec, ids)
    keep = np.array([[0.05, 0.1, 0.2, 0.3], [0.1, 0.0, 0.4, 0.2]])
    state = SparseState(SparseAttention(keep=keep, skip=0.2, block_size=4, kernel="sdpa"), 16, 8, compiled=False)
    with sparse_generation(tiny_spec, state):
        for step in range(4):  # dense: no masks
            state.step = step
            assert torch.equal(run_model(tiny_spec, ids), plain) and not state.store.masks
        state.step = 4  # build: still dense, every layer stores its mask
        assert torch.equal(run_model(tiny_spec, ids), plain)
        assert sorted(state.store.masks) == [0, 1] and state.store.get(1).blocks.shape == (2, 4, 6, 6)
        state.step = 5
        sparse = run_model(tiny_spec, ids)
        state.settings = state.settings.replace(kernel="flex")
        flex = run_model(tiny_spec, ids)
    torch.testing.assert_close(flex, sparse, rtol=1e-5, atol=1e-5)
    assert (sparse - plain).abs().max() > 1e-3  # sparse attention changes the logits
    assert tiny_spec.model.config._attn_implementation == "sdpa"
    assert torch.equal(run_model(tiny_spec, ids), plain)  # outside the block: as before


def test_hook_keep_one_is_dense_and_padding_is_invariant(tiny_spec) -> None:
    ids = torch.randint(0, 39, (2, 19), generator=torch.Generator().manual_seed(1))
    valid = torch.ones(2, 19, dtype=torch.bool)
    valid[1, :5] = False  # row 1 is left-padded
    plain = run_model(tiny_spec, ids, valid)

    def sparse(keep, ids, valid):
        state = SparseState(SparseAttention(keep=keep, skip=0.0, block_size=4, kernel="sdpa"), 8, 6)
        with sparse_generation(tiny_spec, state):
            state.step = 1
            run_model(tiny_spec, ids, valid)
            state.step = 2
            return run_model(tiny_spec, ids, valid)

    real = valid[:, :, None].expand_as(plain)
    torch.testing.assert_close(sparse(1.0, ids, valid)[real], plain[real], rtol=1e-5, atol=1e-5)
    both = sparse(0.1, ids, valid)
    alone = sparse(0.1, ids[1:, 5:], None)
    torch.testing.assert_close(both[1, 5:], alone[0], rtol=1e-5, atol=1e-5)
    assert (both[real] - plain[real]).abs().max() > 1e-3
