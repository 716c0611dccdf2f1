"""`prune` on block-diffusion families (SDAR, LLaDA 2): exact match decodes under block-causal attention.

`../shared/spec/model-formats.md`: these models attend only block-causally, query i sees key j iff
j // B <= i // B, blocks counted from position 0 of the sequence. The references here build that mask position by
position and run the model's own transformers forward with it (one row, no padding, RoPE positions 0..T-1), with
removed heads zeroed by a hook on o_proj's input (not headattr's gates). A left-padded row must give what it gives
alone: its blocks counted from its first real token, as the block samplers align them.
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
from headattr.generation import decode
from headattr.generation.sampling import _logits
from headattr.models import load_model
from headattr.models.block_masks import block_causal_mask, padded_block_causal_mask
from headattr.pruning import evaluation
from headattr.testing import make_llada2_checkpoint, make_sdar_checkpoint

BLOCK = 4
IDS = (1, 4, 5, 6, 41, 31, 28, 29, 39, 30, 12, 14, 15, 17)  # [bos] + prompt (5) + answer (8): blocks 1.5 to 3
ANSWER = (6, 14)
FAMILIES = ("sdar", "llada2")
REMOVED = {0: [1], 1: [0, 2]}  # the heads the second gate configuration removes
TOL = 1e-10  # float64; the layer stack and the model's own forward order a few sums differently
# LLaDA 2's router computes its weights in float32: padding moves the attention's float64 sums in their last bit
# (more keys, weighted exactly 0), which can move a routing weight by one float32 ulp (~6e-8 relative) and a
# logit by ~1e-7. A block misplaced by the padding moves logits by more than 1e-4 (asserted below).
PADDED_TOL = {"sdar": 1e-10, "llada2": 1e-6}


def sample(ids: tuple[int, ...] = IDS, answer: tuple[int, int] = ANSWER) -> Sample:
    return Sample(0, "0123456789abcdef", None, ids, *answer, 0, 0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("block-prune")
    llada2 = make_llada2_checkpoint(base / "llada2", block_size=BLOCK)  # blocks that show on a short sample
    return {"sdar": make_sdar_checkpoint(base / "sdar"), "llada2": llada2}


@pytest.fixture(scope="module")
def specs(checkpoints):
    torch.set_num_threads(1)
    return {name: load_model(root, dtype="float64") for name, root in checkpoints.items()}


# ---------------------------------------------------------------- the restatement


def loop_mask(t: int, block: int, allow_all: bool = False, offset: int = 0) -> torch.Tensor:
    """[1, 1, T, T] float64: 0 where (j + offset) // block <= (i + offset) // block (or everywhere with
    `allow_all`), else the minimum."""
    mask = torch.zeros(1, 1, t, t, dtype=torch.float64)
    for i in range(t):
        for j in range(t):
            if (j + offset) // block > (i + offset) // block and not allow_all:
                mask[0, 0, i, j] = torch.finfo(torch.float64).min
    return mask


def own_logits(
    spec, ids: list[int], removed: dict[int, list[int]] | None = None, allow_all: bool = False, offset: int = 0
) -> torch.Tensor:
    """[T, V] of the model's own forward over one row under the loop-built block-causal mask (`loop_mask`);
    `removed` {layer: heads} zeroes those heads' columns of o_proj's input."""
    hd = spec.head_dim

    def zero(heads):
        def hook(module, args):
            x = args[0].clone()
            for h in heads:
                x[..., h * hd : (h + 1) * hd] = 0.0
            return (x,)

        return hook

    handles = [spec.head_modules[layer].register_forward_pre_hook(zero(h)) for layer, h in (removed or {}).items()]
    try:
        with torch.no_grad():
            mask = loop_mask(len(ids), spec.block_size, allow_all, offset)
            return spec.model(input_ids=torch.tensor([ids]), attention_mask=mask.to(spec.model.dtype)).logits[0]
    finally:
        for handle in handles:
            handle.remove()


def two_configurations(spec) -> torch.Tensor:
    """[2, L, H]: every head kept, then REMOVED's heads at 0."""
    gates = torch.ones(2, spec.num_layers, spec.num_heads)
    for layer, heads in REMOVED.items():
        gates[1, layer, heads] = 0.0
    return gates


def recording(monkeypatch) -> list[dict]:
    """Every call of the exact-match decoder inside `pruning.evaluation`: its input ids, the ids and `keep` of
    each logits call with the logits returned, and the decoded ids."""
    calls: list[dict] = []

    def recorded(logits_fn, input_ids, *args, **kwargs):
        call = {"passes": [], "input": input_ids.clone()}

        def fn(ids, keep=None):
            out = logits_fn(ids, keep=keep)
            call["passes"].append((ids.clone(), keep, out.clone()))
            return out

        call["decoded"] = decode.unmask_decode(fn, input_ids, *args, **kwargs)
        calls.append(call)
        return call["decoded"]

    monkeypatch.setattr(evaluation, "unmask_decode", recorded)
    return calls


# ---------------------------------------------------------------- the mask


def test_the_padded_mask_is_the_loops():
    """Per row, blocks counted from its first real token; padded keys hidden, a padded query sees itself."""
    valid = torch.tensor([[True] * 9, [False] * 3 + [True] * 6, [False] * 5 + [True] * 4])
    block, t = 4, 9
    mask = padded_block_causal_mask(valid, block, torch.float32)
    assert mask.shape == (3, 1, t, t) and mask.dtype == torch.float32
    low = torch.finfo(torch.float32).min
    for b, pad in enumerate((0, 3, 5)):
        for i in range(t):
            for j in range(t):
                if i < pad:
                    allowed = j == i
                else:
                    allowed = pad <= j and (j - pad) // block <= (i - pad) // block
                assert float(mask[b, 0, i, j]) == (0.0 if allowed else low), (b, i, j)
    assert torch.equal(mask[:1], block_causal_mask(t, block, torch.float32))


# ---------------------------------------------------------------- the decoder's forward


@pytest.mark.parametrize("name", FAMILIES)
def test_exact_match_decodes_on_the_block_causal_forward(name, specs, monkeypatch):
    """Every logits pass of prune's exact-match decoder equals the model's own forward with the loop-built mask
    (per gate configuration, removed heads zeroed by a hook), and not its bidirectional forward."""
    spec = specs[name]
    calls = recording(monkeypatch)
    evaluation.sample_exact_match(spec, sample(), two_configurations(spec), batch_size=2)
    assert len(calls) == 1 and len(calls[0]["passes"]) == ANSWER[1] - ANSWER[0]  # one token per step
    for ids, keep, out in calls[0]["passes"]:
        assert out.shape[0] == 2 and keep == slice(*ANSWER)
        for row, removed in enumerate((None, REMOVED)):
            expected = own_logits(spec, ids[row].tolist(), removed)[keep]
            assert torch.allclose(out[row], expected, rtol=0, atol=TOL)
    ids, keep, out = calls[0]["passes"][0]
    bidirectional = own_logits(spec, ids[0].tolist(), allow_all=True)[keep]
    assert (out[0] - bidirectional).abs().max() > 1e-4  # the mask is what makes the equality


@pytest.mark.parametrize("name", FAMILIES)
def test_padded_rows_predict_as_alone(name, specs):
    """Generation's plain forward (`sampling._logits`) on left-padded rows whose padding is not whole blocks:
    each row's real positions equal its own unpadded block-causal forward (blocks from its first real token),
    not one whose blocks are counted from the padded row's position 0."""
    spec = specs[name]
    rows = [list(IDS), list(IDS[:11]), list(IDS[2:11])]  # 14, 11, 9 tokens: 0, 3, 5 padded positions
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), 0, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, width - len(r) :] = torch.tensor(r)
        valid[b, width - len(r) :] = True
    gates = {layer: torch.ones(len(rows), spec.num_heads, dtype=torch.float64) for layer in REMOVED}
    for layer, heads in REMOVED.items():
        gates[layer][1, heads] = 0.0  # the second row under removed heads
    out = _logits(spec, ids, valid, gates)
    for b, r in enumerate(rows):
        removed = REMOVED if b == 1 else None
        got, expected = out[b, width - len(r) :], own_logits(spec, r, removed)
        assert torch.allclose(got, expected, rtol=0, atol=PADDED_TOL[name])
        if width > len(r):
            from_zero = own_logits(spec, r, removed, offset=width - len(r))
            assert (got - from_zero).abs().max() > 1e-4


@pytest.mark.parametrize("name", FAMILIES)
def test_a_later_block_never_changes_an_earlier_prediction(name, specs, monkeypatch):
    """A token changed in block 2 moves the logits of blocks 2 and 3 only (prune's forward, under gates); and the
    decoded tokens of the answer's blocks 1-2 are the same whether block 3 follows or not (one token per step:
    a later block's commits never change an earlier block's confidences, so the earlier ones come in the same
    order)."""
    spec = specs[name]
    gates = two_configurations(spec)[1:]
    with torch.no_grad(), gated(spec, {layer: gates[:, layer] for layer in range(spec.num_layers)}):
        base = core.forward_logits(spec, torch.tensor([IDS]))[0]
        changed = torch.tensor([IDS])
        changed[0, 9] = 40
        moved = (core.forward_logits(spec, changed)[0] - base).abs().amax(dim=-1)
    tol = 1e-12  # expert matrices take their tokens together: other tokens' values may move the last bits
    assert moved[:8].max() <= tol and moved[8:].min() > 1e-6
    calls = recording(monkeypatch)
    evaluation.sample_exact_match(spec, sample(), gates, batch_size=1)
    evaluation.sample_exact_match(spec, sample(IDS[:12], (ANSWER[0], 12)), gates, batch_size=1)
    whole, cut = calls[0]["decoded"][0], calls[1]["decoded"][0]
    assert torch.equal(whole[:12], cut)


# ---------------------------------------------------------------- the command


@pytest.mark.parametrize("name", FAMILIES)
def test_prune_exact_match_command(name, checkpoints, tmp_path, monkeypatch):
    """`attribute`, then `prune --exact-match` through the command line: every decode is block-causal (its
    first pass equals the loop-built forward) and the exact-match curves are recorded."""
    from headattr.cli import main

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"k{i}=v{i};k{i}?", "answer": f"v{i}xy"}) + "\n" for i in range(6)))
    run = tmp_path / "run"
    attribute = ["attribute", str(checkpoints[name]), "--data", str(data), "--out", str(run), "--method", "gradient"]
    flags = ["--samples", "3", "--mask-probs", "0.5,1.0", "--mask-samples-per-prob", "1", "--dtype", "float64"]
    assert main([*attribute, *flags, "--quiet"]) == 0
    calls = recording(monkeypatch)
    out = tmp_path / "pruned"
    prune = ["prune", str(checkpoints[name]), "--scores", str(run), "--out", str(out), "--fractions", "0.25"]
    more = ["--random-orders", "1", "--eval-samples", "2", "--exact-match", "--dtype", "float64", "--quiet"]
    assert main([*prune, *more]) == 0
    d = json.loads((out / "pruning.json").read_text())
    for order in ("most", "least"):
        curve = np.asarray(d["curves"][order]["exact_match"], dtype=float)
        assert np.isfinite(curve).all() and ((curve >= 0) & (curve <= 1)).all()
    assert len(calls) == 2  # one decode per held-out sample: every configuration in one chunk (batch size 64)
    spec = load_model(checkpoints[name], dtype="float64")
    hits = []
    for call in calls:  # row 0 is the unpruned model (the fraction-0 baseline)
        ids, keep, logits = call["passes"][0]
        assert torch.allclose(logits[0], own_logits(spec, ids[0].tolist())[keep], rtol=0, atol=TOL)
        hits.append(bool(torch.equal(call["decoded"][0], call["input"][0])))
    assert d["baseline"]["exact_match"] == pytest.approx(np.mean(hits))  # what the decodes found is recorded
