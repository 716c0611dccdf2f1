"""SDAR, LLaDA-MoE and LLaDA 2: native adapters against a direct computation from the checkpoint's own tensors.

The reference below reads the tiny checkpoints by their released weight names and computes the forward pass
in plain torch as each family's modelling code defines it: embeddings, RMSNorm (in float32, as all of them do),
attention with the family's RoPE (full or partial, rotate-half, frequencies in float32), q/k norms, the fused
QKV split, the MoE routing written out token by token, the LM head. Then: gates at 1 change nothing, routing
is identical with gates at 1, the gate gradient flows through the routing, and no checkpoint code runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from headattr.engine.gates import gated
from headattr.errors import HeadattrError
from headattr.methods.reference import full_logits
from headattr.models import load_model
from headattr.testing import make_llada2_checkpoint, make_lladamoe_checkpoint, make_sdar_checkpoint

IDS = torch.tensor([[1, 4, 5, 6, 41, 31, 3, 3, 28, 29, 39, 30, 12], [1, 9, 3, 3, 3, 3, 3, 3, 20, 21, 22, 23, 2]])
MAKERS = {
    "sdar": make_sdar_checkpoint,
    "lladamoe": make_lladamoe_checkpoint,
    "lladamoe-shared": lambda root: make_lladamoe_checkpoint(root, shared_expert=True),
    "llada2": make_llada2_checkpoint,
}
MOE = ("lladamoe", "lladamoe-shared", "llada2")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("moe-block")
    return {name: make(base / name) for name, make in MAKERS.items()}


@pytest.fixture(scope="module")
def specs(checkpoints):
    return {name: load_model(root, dtype="float64") for name, root in checkpoints.items()}


# ---------------------------------------------------------------- the direct computation


def tensors(root: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint by its released name, in float64."""
    out = {}
    for shard in sorted(root.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            out.update({k: f.get_tensor(k).double() for k in f.keys()})
    return out


def rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis, computed in float32 and scaled in the input's dtype (as every family does)."""
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rope(x: torch.Tensor, theta: float, rotary: int) -> torch.Tensor:
    """x [H, T, D]: the first `rotary` channels of each head rotated (rotate-half within them), the rest as is;
    frequencies and angles in float32."""
    t = x.shape[1]
    inv = 1.0 / (theta ** (torch.arange(0, rotary, 2, dtype=torch.int64).float() / rotary))
    angles = torch.arange(t).float()[:, None] * inv[None]
    cos, sin = torch.cat([angles, angles], -1).cos().double(), torch.cat([angles, angles], -1).sin().double()
    rot, rest = x[..., :rotary], x[..., rotary:]
    half = rotary // 2
    turned = torch.cat([-rot[..., half:], rot[..., :half]], -1)
    return torch.cat([rot * cos + turned * sin, rest], -1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bidirectional attention of q [H, T, D] over k, v [K, T, D] (query head h reads kv head h // (H / K));
    returns the heads' outputs concatenated [T, H * D]."""
    rep = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
    weights = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
    return (weights @ v).transpose(0, 1).reshape(q.shape[1], -1)


def mlp(x: torch.Tensor, w: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    gate, up, down = (w[f"{prefix}.{p}_proj.weight"] for p in ("gate", "up", "down"))
    return (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T


def softmax_routing(x: torch.Tensor, w: dict[str, torch.Tensor], p: str, top_k: int):
    """LLaDA-MoE: softmax (float32) of the router logits, the top-k probabilities as they are (no
    renormalisation), cast back to the model's dtype. Returns per token [(expert, weight), ...]."""
    probs = torch.softmax((x @ w[f"{p}.gate.weight"].T).float(), dim=-1)
    return [
        [(int(e), float(probs[t, e].double())) for e in probs[t].argsort(descending=True)[:top_k]]
        for t in range(len(x))
    ]


def group_limited_routing(x: torch.Tensor, w: dict[str, torch.Tensor], p: str, cfg: dict):
    """LLaDA 2: sigmoid scores in float32; choice on scores + expert_bias within the `topk_group` groups of best
    top-2 sums; weights = chosen unbiased scores / their sum x routed_scaling_factor, in float32."""
    scores = torch.sigmoid(x.float() @ w[f"{p}.gate.weight"].float().T)
    biased = scores.double() + w[f"{p}.gate.expert_bias"]
    size = cfg["num_experts"] // cfg["n_group"]
    out = []
    for t in range(len(x)):
        groups = [
            biased[t, g * size : (g + 1) * size].sort(descending=True).values[:2].sum() for g in range(cfg["n_group"])
        ]
        kept = sorted(range(cfg["n_group"]), key=lambda g: -groups[g])[: cfg["topk_group"]]
        candidates = [e for g in kept for e in range(g * size, (g + 1) * size)]
        chosen = sorted(candidates, key=lambda e: -biased[t, e])[: cfg["num_experts_per_tok"]]
        chosen_scores = scores[t, chosen]  # float32, and so is the arithmetic that follows (as in LLaDA 2)
        weights = chosen_scores / (chosen_scores.sum() + 1e-20) * cfg["routed_scaling_factor"]
        out.append(list(zip(chosen, weights.tolist(), strict=True)))
    return out


def experts(x: torch.Tensor, w: dict[str, torch.Tensor], p: str, routes) -> torch.Tensor:
    """Each token's chosen experts' MLPs on it, weighted: [T, d]."""
    rows = [sum(weight * mlp(x[t : t + 1], w, f"{p}.experts.{e}")[0] for e, weight in routes[t]) for t in range(len(x))]
    return torch.stack(rows)


def reference_logits(root: Path, ids: torch.Tensor) -> torch.Tensor:
    """[T] ids -> [T, V] logits of the checkpoint at `root`, from its tensors and config alone."""
    cfg = json.loads((root / "config.json").read_text())
    w = tensors(root)
    kind = cfg["model_type"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["head_dim"] if kind != "lladamoe" else cfg["hidden_size"] // heads
    rotary = int(hd * cfg.get("partial_rotary_factor", 1.0))
    eps = cfg["rms_norm_eps"]
    h = w["model.word_embeddings.weight" if kind == "llada2_moe" else "model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        x = rms(h, w[f"{p}.input_layernorm.weight"], eps)
        if kind == "llada2_moe":
            a = f"{p}.attention"
            qkv = (x @ w[f"{a}.query_key_value.weight"].T).view(len(x), heads + 2 * kv, hd).split([heads, kv, kv], 1)
            q, k, v = (t.transpose(0, 1) for t in qkv)
            q, k = rms(q, w[f"{a}.query_layernorm.weight"], eps), rms(k, w[f"{a}.key_layernorm.weight"], eps)
            out_proj = w[f"{a}.dense.weight"]
        else:
            a = f"{p}.self_attn"
            q, k, v = ((x @ w[f"{a}.{n}_proj.weight"].T).view(len(x), -1, hd).transpose(0, 1) for n in "qkv")
            q, k = rms(q, w[f"{a}.q_norm.weight"], eps), rms(k, w[f"{a}.k_norm.weight"], eps)
            out_proj = w[f"{a}.o_proj.weight"]
        theta = cfg["rope_theta"]
        h = h + attention(rope(q, theta, rotary), rope(k, theta, rotary), v) @ out_proj.T
        x = rms(h, w[f"{p}.post_attention_layernorm.weight"], eps)
        if f"{p}.mlp.gate.weight" not in w:  # a dense layer
            h = h + mlp(x, w, f"{p}.mlp")
        elif kind == "lladamoe":
            routed = experts(x, w, f"{p}.mlp", softmax_routing(x, w, f"{p}.mlp", cfg["num_experts_per_tok"]))
            shared = mlp(x, w, f"{p}.shared_expert") if f"{p}.shared_expert.up_proj.weight" in w else 0.0
            h = h + routed + shared
        else:
            routed = experts(x, w, f"{p}.mlp", group_limited_routing(x, w, f"{p}.mlp", cfg))
            h = h + routed + mlp(x, w, f"{p}.mlp.shared_experts")
    return rms(h, w["model.norm.weight"], eps) @ w["lm_head.weight"].T


# ---------------------------------------------------------------- the adapters


@pytest.mark.parametrize("name", list(MAKERS))
def test_logits_equal_the_direct_computation(name, checkpoints, specs):
    spec = specs[name]
    expected = torch.stack([reference_logits(checkpoints[name], row) for row in IDS])
    torch.testing.assert_close(full_logits(spec, IDS), expected, rtol=1e-9, atol=1e-9)
    stack = spec.backbone  # the layer-by-layer path the core runs
    h = stack.embed(IDS)
    torch.testing.assert_close(
        stack.logits(stack.run(h, 0, spec.num_layers, stack.context(h))), expected, rtol=1e-9, atol=1e-9
    )


@pytest.mark.parametrize("name", list(MAKERS))
def test_eager_attention_is_bidirectional_too(name, checkpoints, specs):
    eager = load_model(checkpoints[name], dtype="float64", attn_implementation="eager")
    # eager takes the softmax in float32: equal to that precision (a causal mask would change everything)
    torch.testing.assert_close(full_logits(eager, IDS), full_logits(specs[name], IDS), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(MAKERS))
def test_attention_split_at_the_gates_is_the_whole_layer(name, specs):
    """`head_input` + `run_from_heads` (the attention-once path) equal running the layers whole, and so does a
    pass whose last layer runs only at some positions (`keep`)."""
    stack = specs[name].backbone
    h = stack.embed(IDS)
    ctx = stack.context(h)
    whole = stack.run(h, 0, specs[name].num_layers, ctx)
    kept = stack.run_joined([(0, h, None)], specs[name].num_layers, ctx, keep=slice(3, 8))
    # each expert multiplies its tokens as one matrix: with fewer tokens in the pass, the last bits may differ
    tol = 1e-13 if name in MOE else 0.0
    torch.testing.assert_close(kept, whole[:, 3:8], rtol=tol, atol=tol)
    for layer in range(specs[name].num_layers):
        whole = stack.run(h, layer, specs[name].num_layers, ctx)
        split = stack.run_from_heads(h, stack.head_input(h, layer, ctx), layer, specs[name].num_layers, ctx)
        torch.testing.assert_close(split, whole, rtol=0, atol=0)
        h = stack.run(h, layer, layer + 1, ctx)


@pytest.mark.parametrize("name", list(MAKERS))
def test_gates_at_one_change_nothing(name, specs):
    spec = specs[name]
    plain = full_logits(spec, IDS)
    with gated(spec, {layer: torch.ones(spec.num_heads, dtype=spec.dtype) for layer in range(spec.num_layers)}):
        torch.testing.assert_close(full_logits(spec, IDS), plain, rtol=0, atol=0)


def routers(spec) -> list[torch.nn.Module]:
    return [layer.mlp.gate for layer in spec.model.model.layers if hasattr(layer.mlp, "experts")]


def routing_of(spec, gates: dict[int, torch.Tensor] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each MoE layer's (chosen experts, their weights) [N, k] in one forward pass."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(module, args, out):
        weights, chosen = (out[1], out[2]) if len(out) == 3 else (out[1], out[0])
        seen.append((chosen.detach().clone(), weights.detach().clone()))

    handles = [router.register_forward_hook(record) for router in routers(spec)]
    try:
        with gated(spec, gates or {}):
            full_logits(spec, IDS)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("name", MOE)
def test_routing_is_identical_with_gates_at_one(name, specs):
    spec = specs[name]
    ones = {layer: torch.ones(spec.num_heads, dtype=spec.dtype) for layer in range(spec.num_layers)}
    plain, gated_ones = routing_of(spec), routing_of(spec, ones)
    assert len(plain) == spec.num_layers - 1  # layer 0 is dense in both tiny checkpoints
    for (e0, w0), (e1, w1) in zip(plain, gated_ones, strict=True):
        assert torch.equal(e0, e1) and torch.equal(w0, w1)
    removed = {0: torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=spec.dtype)}
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(plain, routing_of(spec, removed), strict=True)), (
        "removing a head should move some token to other experts (else the test shows nothing)"
    )


def _objective(spec, gates: torch.Tensor, detach_routing: bool = False) -> torch.Tensor:
    """J = <logits, a fixed random direction> with per-layer gates [L, H]."""
    direction = torch.randn(*IDS.shape, spec.vocab_size, generator=torch.Generator().manual_seed(0), dtype=spec.dtype)
    originals = {}
    if detach_routing:  # the routing weights as constants: what the gradient would be without the routing's part
        for router in routers(spec):
            originals[router] = router.forward
            router.forward = lambda h, f=router.forward: tuple(t.detach() for t in f(h))
    try:
        with gated(spec, {layer: gates[layer] for layer in range(spec.num_layers)}):
            return (full_logits(spec, IDS) * direction).sum()
    finally:
        for router, forward in originals.items():
            router.forward = forward


def _smooth_step(spec, layer: int, head: int) -> float:
    """The largest finite-difference step (well above the float32 routing's rounding) at which gate (layer, head)
    moved either way chooses the same experts everywhere: J is smooth over the interval."""
    chosen = [experts for experts, _ in routing_of(spec)]
    for step in (1e-2, 3e-3, 1e-3):
        moves = [
            routing_of(spec, {layer: 1 + sign * step * (torch.arange(spec.num_heads) == head)}) for sign in (1, -1)
        ]
        if all(a.equal(b[0]) for moved in moves for a, b in zip(chosen, moved, strict=True)):
            return step
    raise AssertionError("every step changes the chosen experts; pick another gate")


@pytest.mark.parametrize("name", MOE)
def test_gate_gradient_flows_through_the_routing(name, specs):
    """d J / d gate equals a central difference, and differs from the gradient with the routing weights held
    constant: the routing's dependence on the gates is part of the gradient."""
    spec = specs[name]
    layer, head = spec.num_layers - 1, 2  # the last layer: its own routing is the only one the gate moves
    gates = torch.ones(spec.num_layers, spec.num_heads, dtype=spec.dtype, requires_grad=True)
    (grad,) = torch.autograd.grad(_objective(spec, gates), gates)
    (held,) = torch.autograd.grad(_objective(spec, gates, detach_routing=True), gates)
    with torch.no_grad():
        step = _smooth_step(spec, layer, head)
        bump = torch.zeros_like(gates)
        bump[layer, head] = step
        numeric = (_objective(spec, gates + bump) - _objective(spec, gates - bump)) / (2 * step)
    torch.testing.assert_close(grad[layer, head], numeric, rtol=1e-3, atol=1e-6)
    assert abs(float(grad[layer, head] - held[layer, head])) > 10 * abs(float(grad[layer, head] - numeric))


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("trust", [False, True])
def test_loading_never_runs_checkpoint_code(trust, checkpoints, monkeypatch):
    """The auto_map's modules exist and would raise if imported; transformers' remote-code loader would too."""
    import importlib

    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint code was loaded")

    for where in ("dynamic_module_utils", "models.auto.auto_factory", "models.auto.configuration_auto"):
        monkeypatch.setattr(importlib.import_module(f"transformers.{where}"), "get_class_from_dynamic_module", refuse)
    for root in checkpoints.values():
        cfg = json.loads((root / "config.json").read_text())
        modules = {target.split(".")[0] for target in cfg["auto_map"].values()}
        for module in modules:
            (root / f"{module}.py").write_text("raise AssertionError('checkpoint code was imported')\n")
        assert load_model(root, dtype="float64", trust_remote_code=trust).family == cfg["model_type"]
        assert not [name for name in sys.modules if name.split(".")[-1] in modules]


def test_info_values(specs, dream, llada):
    """The shape `headattr info` prints: heads, KV heads, head_dim (here != hidden / heads), experts, block size."""
    sdar, moe, llada2 = specs["sdar"], specs["lladamoe"], specs["llada2"]
    assert (sdar.num_heads, sdar.num_kv_heads, sdar.head_dim, sdar.block_size) == (4, 2, 16, 4)
    assert sdar.architecture_rows() == [("block size", "4 (block diffusion)")]
    assert (moe.num_experts, moe.active_experts, moe.block_size, moe.head_dim) == (8, 2, None, 8)
    assert moe.architecture_rows() == [("experts", 8), ("active experts", 2)]
    assert (llada2.num_kv_heads, llada2.head_dim, llada2.num_experts, llada2.active_experts) == (2, 12, 8, 2)
    assert llada2.describe()["block_size"] == 32 and llada2.head_module_label.startswith("attention.dense")
    assert {s.mask_token_id for s in specs.values()} == {3}  # from the tokenizer: the configs name none
    for dense in (dream, llada):  # run.json of the dense families is unchanged
        assert dense.architecture() == {} and dense.architecture_rows() == []
        assert not {"num_experts", "active_experts", "block_size"} & set(dense.describe())


def test_info_command_on_each_family(checkpoints, capsys):
    from headattr.cli import main

    for root in checkpoints.values():
        assert main(["info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "sdar" in out and "lladamoe" in out and "llada2_moe" in out


@pytest.mark.parametrize("name", ["dense", "attention.dense", "o_proj"])
def test_llada2_accepts_its_own_head_module_name(name, checkpoints):
    spec = load_model(checkpoints["llada2"], dtype="float64", head_module=name)
    assert spec.head_modules == [layer.self_attn.o_proj for layer in spec.model.model.layers]


def test_unsupported_lladamoe_options_are_one_line(checkpoints, tmp_path):
    import shutil

    root = tmp_path / "clipped"
    shutil.copytree(checkpoints["lladamoe"], root)
    cfg = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**cfg, "clip_qkv": 8.0}))
    with pytest.raises(HeadattrError, match="clip_qkv"):
        load_model(root)
