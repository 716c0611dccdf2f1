"""headattr against numbers it did not compute: the origin code's Gate-IG scores and logits (fixtures/origin-gate-ig).

`references.json` holds head scores that the origin code (adaptive-dllm's `compute_layer_ig` on its own Dream and
LLaDA model code, float32 CPU) produced on two tiny random checkpoints, and the first logits of the unmasked first
row. They are data, never re-made (fixtures/README.md). Each case runs through the command line, as a user would.

The gradient and ablation methods have no origin numbers; they are checked against `_DreamByHand`, a forward pass
written here from the checkpoint's weights alone, which must itself reproduce the origin's logits and Gate-IG
scores before its gradient and ablation values are trusted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tokenizers
import torch
from safetensors.torch import load_file

from headattr.cli import main
from headattr.runs.rundir import read_run

ORIGIN = Path(__file__).parent / "fixtures" / "origin-gate-ig"
CASES = json.loads((ORIGIN / "references.json").read_text())
ROWS = [json.loads(line) for line in (ORIGIN / "data.jsonl").read_text().splitlines() if line.strip()]
# the references' README: pass when max |diff| <= 1e-4 + 1e-3 max |ref|
ATOL, RTOL = 1e-4, 1e-3


def tolerance(reference: np.ndarray) -> float:
    return ATOL + RTOL * float(np.abs(reference).max())


def cli_scores(model: str, flags: list[str], out: Path, capsys) -> np.ndarray:
    args = ["attribute", str(ORIGIN / model), "--data", str(ORIGIN / "data.jsonl"), "--out", str(out), "--quiet"]
    code = main([*args, *flags, "--device", "cpu", "--threads", "1"])
    _, err = capsys.readouterr()
    assert code == 0, err
    return np.asarray(read_run(out).scores, dtype=np.float64)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_cli_reproduces_the_origin_scores(case, tmp_path, capsys):
    reference = np.asarray(case["scores"], dtype=np.float64)
    scores = cli_scores(case["model"], case["flags"], tmp_path / "run", capsys)
    assert scores.shape == reference.shape
    assert np.abs(scores - reference).max() <= tolerance(reference)


@pytest.mark.parametrize("model", ["dream-tiny", "llada-tiny"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_loaded_model_reproduces_the_origin_logits(model, attn):
    """Whatever attention kernel is asked for, and with the default dtype on CPU (float32)."""
    from headattr import load_model
    from headattr.engine import core

    check = next(c for c in CASES if c["model"] == model)["logits_check"]
    spec = load_model(ORIGIN / model, device="cpu", attn_implementation=attn)
    assert spec.dtype == torch.float32
    with torch.no_grad():
        logits = core.forward_logits(spec, torch.tensor([check["input"]]))
    got = logits[0, check["positions"], :8].double().numpy()
    np.testing.assert_allclose(got, np.asarray(check["logits_first_row"]), atol=1e-4, rtol=1e-4)


def test_left_padding_does_not_change_the_origin_logits():
    """A padded row (the samplers' batches) gives the origin's logits at its real tokens: padding is hidden
    from every query and RoPE positions count real tokens only."""
    from headattr import load_model
    from headattr.engine import core

    check = next(c for c in CASES if c["model"] == "dream-tiny")["logits_check"]
    spec = load_model(ORIGIN / "dream-tiny", device="cpu", attn_implementation="eager")
    pad = 3
    ids = torch.tensor([[95] * pad + check["input"]])
    key_mask = torch.arange(ids.shape[1])[None] >= pad
    positions = (torch.arange(ids.shape[1]) - pad).clamp(min=0)[None]
    with torch.no_grad():
        logits = core.forward_logits(spec, ids, key_mask, positions)
    got = logits[0, [pad + p for p in check["positions"]], :8].double().numpy()
    np.testing.assert_allclose(got, np.asarray(check["logits_first_row"]), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model", ["dream-tiny", "llada-tiny"])
def test_text_is_tokenized_as_the_origin_tokenized_it(model):
    """The first row's ids are the origin's input (prompt and answer tokenized apart, no special tokens)."""
    from headattr import load_model

    spec = load_model(ORIGIN / model, device="meta")
    row = ROWS[0]
    ids = [*spec.tokenizer(row["prompt"], add_special_tokens=False).input_ids]
    ids += spec.tokenizer(row["answer"], add_special_tokens=False).input_ids
    assert ids == next(c for c in CASES if c["model"] == model)["logits_check"]["input"]


# ---------------------------------------------------------------- gradient and ablation, by hand


class _DreamByHand:
    """Dream (Qwen2 blocks, bidirectional) written from the weights: RMSNorm, q/k/v with bias, RoPE (halves
    rotated), grouped KV heads, softmax attention over every position, a gate on each head's slice of o_proj's
    input, SwiGLU MLP. float64 throughout."""

    def __init__(self, root: Path):
        self.w = {k: v.double() for k, v in load_file(str(root / "model.safetensors")).items()}
        cfg = json.loads((root / "config.json").read_text())
        self.layers, self.heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
        self.kv_heads, self.eps, self.theta = cfg["num_key_value_heads"], cfg["rms_norm_eps"], cfg["rope_theta"]
        self.mask_id = cfg["mask_token_id"]

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w[name]

    def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        out = x @ self.w[name + ".weight"].T
        return out + self.w[name + ".bias"] if name + ".bias" in self.w else out

    def rope(self, x: torch.Tensor) -> torch.Tensor:
        """x [H, T, d] rotated by position."""
        d, t = x.shape[-1], x.shape[-2]
        inv = 1.0 / self.theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        angle = torch.arange(t, dtype=torch.float64)[:, None] * inv[None]
        cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
        half = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
        return x * cos + half * sin

    def attention(self, x: torch.Tensor, layer: int, gates: torch.Tensor) -> torch.Tensor:
        p = f"model.layers.{layer}.self_attn."
        t = x.shape[0]
        q = self.linear(x, p + "q_proj").view(t, self.heads, -1).transpose(0, 1)
        k = self.linear(x, p + "k_proj").view(t, self.kv_heads, -1).transpose(0, 1)
        v = self.linear(x, p + "v_proj").view(t, self.kv_heads, -1).transpose(0, 1)
        group = self.heads // self.kv_heads
        k, v = self.rope(k).repeat_interleave(group, 0), v.repeat_interleave(group, 0)
        q = self.rope(q)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), -1)
        heads = (weights @ v) * gates[:, None, None]  # [H, T, d]
        return self.linear(heads.transpose(0, 1).reshape(t, -1), p + "o_proj")

    def logits(self, ids: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """Logits [T, V] of ids [T] with head gates [L, H]."""
        x = self.w["model.embed_tokens.weight"][ids]
        for layer in range(self.layers):
            p = f"model.layers.{layer}."
            x = x + self.attention(self.norm(x, p + "input_layernorm.weight"), layer, gates[layer])
            h = self.norm(x, p + "post_attention_layernorm.weight")
            up = torch.nn.functional.silu(self.linear(h, p + "mlp.gate_proj")) * self.linear(h, p + "mlp.up_proj")
            x = x + self.linear(up, p + "mlp.down_proj")
        return self.linear(self.norm(x, "model.norm.weight"), "lm_head")

    def j(self, ids: list[int], answer_start: int, gates: torch.Tensor) -> torch.Tensor:
        """-mean CE of the fully masked answer, position j predicted at j - 1 (Dream's shift); gates [L, H]."""
        masked = torch.tensor(ids[:answer_start] + [self.mask_id] * (len(ids) - answer_start))
        logits = self.logits(masked, gates)
        targets = torch.tensor(ids[answer_start:])
        return -torch.nn.functional.cross_entropy(logits[answer_start - 1 : -1], targets)


def _tokenized_rows() -> list[tuple[list[int], int]]:
    """(ids, answer start) per data row, from the tokenizers library and the checkpoint's tokenizer.json."""
    tok = tokenizers.Tokenizer.from_file(str(ORIGIN / "dream-tiny" / "tokenizer.json"))
    out = []
    for row in ROWS:
        prompt = tok.encode(row["prompt"], add_special_tokens=False).ids
        answer = tok.encode(row["answer"], add_special_tokens=False).ids
        out.append((prompt + answer, len(prompt)))
    return out


@pytest.fixture(scope="module")
def by_hand() -> _DreamByHand:
    model = _DreamByHand(ORIGIN / "dream-tiny")
    check = next(c for c in CASES if c["model"] == "dream-tiny")["logits_check"]
    ones = torch.ones(model.layers, model.heads, dtype=torch.float64)
    logits = model.logits(torch.tensor(check["input"]), ones)[check["positions"], :8]
    # trusted only because it reproduces the origin's logits (and, below, its Gate-IG scores)
    np.testing.assert_allclose(logits.numpy(), np.asarray(check["logits_first_row"]), atol=1e-5)
    return model


def _mean_over_rows(fn) -> np.ndarray:
    return np.mean([fn(ids, start) for ids, start in _tokenized_rows()], axis=0)


def test_the_forward_by_hand_reproduces_the_origin(by_hand):
    """The by-hand model's right-Riemann layer Gate-IG (8 nodes, baseline 0, shift on) is the origin's."""
    case = next(c for c in CASES if c["name"] == "dream-layer-right-shift")

    def gate_ig(ids: list[int], start: int) -> np.ndarray:
        scores = np.zeros((by_hand.layers, by_hand.heads))
        for layer in range(by_hand.layers):
            for k in range(1, 9):
                gates = torch.ones(by_hand.layers, by_hand.heads, dtype=torch.float64)
                row = torch.full((by_hand.heads,), k / 8, dtype=torch.float64, requires_grad=True)
                gates = torch.cat([gates[:layer], row[None], gates[layer + 1 :]])
                (grad,) = torch.autograd.grad(by_hand.j(ids, start, gates), row)
                scores[layer] += grad.numpy() / 8
        return scores

    reference = np.asarray(case["scores"])
    assert np.abs(_mean_over_rows(gate_ig) - reference).max() <= tolerance(reference)


def test_gradient_method_is_dj_dgate_at_one(by_hand, tmp_path, capsys):
    def gradient(ids: list[int], start: int) -> np.ndarray:
        gates = torch.ones(by_hand.layers, by_hand.heads, dtype=torch.float64, requires_grad=True)
        return torch.autograd.grad(by_hand.j(ids, start, gates), gates)[0].numpy()

    expected = _mean_over_rows(gradient)
    flags = ["--samples", "4", "--mask-probs", "1.0", "--mask-samples-per-prob", "1", "--method", "gradient"]
    scores = cli_scores("dream-tiny", flags, tmp_path / "run", capsys)
    assert np.abs(scores - expected).max() <= tolerance(expected)


def test_ablation_method_is_j_minus_j_without_the_head(by_hand, tmp_path, capsys):
    def ablation(ids: list[int], start: int) -> np.ndarray:
        full = by_hand.j(ids, start, torch.ones(by_hand.layers, by_hand.heads, dtype=torch.float64))
        out = np.zeros((by_hand.layers, by_hand.heads))
        for layer in range(by_hand.layers):
            for head in range(by_hand.heads):
                gates = torch.ones(by_hand.layers, by_hand.heads, dtype=torch.float64)
                gates[layer, head] = 0.0
                out[layer, head] = float(full - by_hand.j(ids, start, gates))
        return out

    expected = _mean_over_rows(ablation)
    flags = ["--samples", "4", "--mask-probs", "1.0", "--mask-samples-per-prob", "1", "--method", "ablation"]
    scores = cli_scores("dream-tiny", flags, tmp_path / "run", capsys)
    assert np.abs(scores - expected).max() <= tolerance(expected)
