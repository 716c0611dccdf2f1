"""`attribute --dry-run`: what a run will cost, without computing it.

For every sample the plan counts the rows and the layer passes Gate-IG makes (the same passes as
`methods.gate_ig`, in units of one row through one decoder layer), turns them into FLOPs, and times one
chunk of rows on the first sample to estimate the wall time.

Layer passes of one sample, V variants, n quadrature nodes, L layers (a "tail" is o_proj + MLP of the gated
layer, an "attention" is its norm + q/k/v + attention kernel; a full layer is both):

    scope layer, layer stack:  no grad  V (L-1) [cached inputs] + V [J(1)] + V L attention
                                        + V (L tails + L(L-1)/2 layers) [J at each baseline]
                               grad     V n (L tails + L(L-1)/2 layers)
    scope joint:               no grad  V L [J(1)] + V L [J(b)];   grad  V n L
    whole-model backbone:      every pass runs all L layers from the ids, and the LM head at every position

With the refined rule (`--ig-tol` > 0) the nodes a = 0 and a = 1 give J(b) and J(1) (no passes of their own),
and a one-layer path's a = 1 node comes from one pass from layer 0 for every layer (`methods.gate_ig`); given
the nodes each path used (run.json's `nodes`), `layer_passes` counts those passes, else the base rule's.

On a layer stack the last layer's tail runs only at the positions that reach the loss (`core.loss_window`,
P of T): each pass through it counts one attention part and P / T of a tail.

FLOPs (matrix products only, as `torch.utils.flop_counter` counts them; T tokens, d = H x head_dim (the
query width, which may differ from the hidden size: SDAR), P_attn / P_tail the weights of a layer's q/k/v
projections and of the other projections a token meets, `engine.shapes`: o_proj and the MLP; in a
mixture-of-experts layer o_proj, the router, the shared experts and the token's k of the E routed experts, so
that FLOPs follow the active experts while the peak memory counts every expert's weights):

    forward, per row:   attention  2 P_attn T + 4 T^2 d     (q/k/v projections; QK^T and AV)
                        tail       2 P_tail T
                        LM head    2 d V_vocab per token it runs on
    backward, per row:  attention  2 P_attn T + 10 T^2 d    (the kernel recomputes QK^T: 5 products)
                        tail       2 P_tail T;   LM head 2 d V_vocab per token

The weights are frozen, so a backward pass computes input gradients only: as many FLOPs as its forward in
the projections (training's "backward 2x forward" counts the weight gradients too). No backward reaches what
lies below a pass's first gate (the gated layer's own attention; on a whole-model backbone the layers below
the path's layer), so those parts cost their forward only. Passes are counted per layer, since layers may
differ (a mixture of experts' dense first layers). `tests/test_plan.py` checks the count against
`torch.utils.flop_counter` on both backbones, both scopes and both rules, `tests/test_plan_moe.py` on SDAR,
LLaDA-MoE and LLaDA 2. T is the sample's tokens; an objective that runs more per row (a block-diffusion loss
on [x_t | x_0]) says so through `objective_tokens`.

The probe runs one chunk of `batch` rows (forward and backward, every layer) of the first sample, so its
FLOP rate includes this machine's real efficiency; the time estimate is total FLOPs / that rate. The batch
sizes are the run's: on CUDA the plan first measures a row on the first sample, as the run does
(`BatchPlanner.calibrate`), and sets each sample's cached tensors aside from the budget.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from headattr.data.tokens import Sample
from headattr.engine import core
from headattr.engine.batching import BatchPlanner, cache_bytes, hidden_size
from headattr.engine.gates import gated
from headattr.engine.masking import MaskConfig
from headattr.engine.shapes import layer_shapes, objective_tokens
from headattr.methods import GateIGConfig
from headattr.models import ModelSpec, WholeModel
from headattr.models.backbone import attributing
from headattr.runs.compute import cached_width, largest_pass, merge_groups, merge_limit


@dataclass
class LayerPasses:
    """Row-layer passes of one sample, per layer ([L] each): full layers, attention-only parts, tails; LM-head
    tokens (a number); `grad_*` those of passes that are differentiated.

    A tail of the last layer computed at some of the positions (`core.loss_window`) counts as that fraction
    of a tail. `unreached_layers` and `unreached_attentions` are the parts of the `grad_layers` below their
    pass's first gate, which no backward reaches (whole layers; the attention part of the first gated layer).
    Counted per layer because layers may cost differently (a mixture of experts' dense first layers)."""

    grad_layers: np.ndarray
    grad_attentions: np.ndarray
    grad_tails: np.ndarray
    layers: np.ndarray
    attentions: np.ndarray
    tails: np.ndarray
    unreached_layers: np.ndarray
    unreached_attentions: np.ndarray
    grad_lm_tokens: float = 0.0
    lm_tokens: float = 0.0

    @classmethod
    def zeros(cls, num_layers: int) -> LayerPasses:
        """No passes, in a model of `num_layers` layers."""
        per_layer = [f.name for f in dataclasses.fields(cls) if not f.name.endswith("lm_tokens")]
        return cls(**{name: np.zeros(num_layers) for name in per_layer})

    @property
    def total(self) -> float:
        """Layer passes, a tail or an attention part counting as one (what the summary prints)."""
        parts = (self.grad_layers, self.grad_attentions, self.grad_tails, self.layers, self.attentions, self.tails)
        return float(sum(part.sum() for part in parts))


def layer_passes(
    spec: ModelSpec,
    method: GateIGConfig,
    masked_per_variant: list[int],
    tokens: int,
    kept: float = 1.0,
    nodes: np.ndarray | None = None,
) -> LayerPasses:
    """Gate-IG's passes for one sample of `tokens` tokens (module docstring); `masked_per_variant`: masked
    tokens of each variant; `kept`: the fraction of its positions at which the last layer's tail runs
    (`core.loss_window`); `nodes` [V, S]: the nodes each path used (default: the base rule's everywhere).

    A path's gradient rows are its nodes, each entering at the path's layer (at its o_proj when the layer stack
    splits it) and running to the loss; the fixed rule adds J(1) and each path's J(b) as forward passes, the
    refined rule has them from its a = 1 and a = 0 nodes (one-layer paths: every a = 1 node from one pass)."""
    v, n_layers, stack = len(masked_per_variant), spec.num_layers, spec.backbone.resumable
    paths = method.paths(n_layers)
    nodes = np.full((v, len(paths)), float(method.base_nodes)) if nodes is None else np.asarray(nodes, dtype=float)
    lm = np.asarray(masked_per_variant, float) if stack else np.full(v, float(tokens))  # a model run whole: all
    cached = stack and method.cache_layers
    p = LayerPasses.zeros(n_layers)
    if cached:  # every layer's input, cached: layers 0 .. L-2 once per variant
        p.layers[: n_layers - 1] += v
    last = np.zeros((2, 2))  # passes through the last layer: [whole, as the gated tail] x [no grad, grad]

    def add(rows: float, lm_tokens: float, entry: int, gate: int, splits: bool, grad: bool) -> None:
        """`rows` rows from layer `entry`'s input (its o_proj when `splits`) to the loss; first gate at `gate`."""
        if grad:
            p.grad_layers[entry + splits :] += rows
            p.grad_tails[entry] += rows * splits
            p.grad_lm_tokens += lm_tokens
            p.unreached_layers[entry:gate] += rows
            if not splits and gate < n_layers:
                p.unreached_attentions[gate] += rows
        else:
            p.layers[entry + splits :] += rows
            p.tails[entry] += rows * splits
            p.lm_tokens += lm_tokens
        last[int(splits and entry == n_layers - 1), int(grad)] += rows

    one_pass_ends = method.adaptive and len(paths) > 1 and all(len(layers) == 1 for layers in paths)
    if one_pass_ends:  # every one-layer path's a = 1 node, and J(1), from one pass from layer 0
        add(v, lm.sum(), 0, 0, False, True)
    elif not method.adaptive:  # J(1), from the deepest cached input
        add(v, lm.sum(), n_layers - 1 if cached else 0, n_layers, False, False)
    for i, layers in enumerate(paths):
        entry, splits = spec.backbone.entry_layer(layers[0]), stack and len(layers) == 1
        if splits:
            p.attentions[layers[0]] += v  # the gated layer's attention, once per variant
        if not method.adaptive:  # J at the path's baseline
            add(v, lm.sum(), entry, layers[0], splits, False)
        rows = nodes[:, i] - 1 if one_pass_ends else nodes[:, i]
        add(rows.sum(), (rows * lm).sum(), entry, layers[0], splits, True)
    if not stack:  # a model run whole computes every position of every layer
        return p
    return _narrow_last_layer(p, (last[0, 0], last[0, 1]), (last[1, 0], last[1, 1]), kept)


def _narrow_last_layer(
    p: LayerPasses, whole: tuple[float, float], tails: tuple[float, float], kept: float
) -> LayerPasses:
    """`p` with the last layer at the kept positions: of its `whole` passes (without, with gradients) each
    becomes an attention part and `kept` of a tail; its gated `tails` become `kept` of one."""
    if kept >= 1.0:  # every position: the layers run whole (`core.loss_positions` is None)
        return p
    p.layers[-1] -= whole[0]
    p.attentions[-1] += whole[0]
    p.tails[-1] += whole[0] * kept - tails[0] * (1 - kept)
    p.grad_layers[-1] -= whole[1]
    p.grad_attentions[-1] += whole[1]
    p.grad_tails[-1] += whole[1] * kept - tails[1] * (1 - kept)
    return p


def sample_passes(
    spec: ModelSpec, method: GateIGConfig, sample: Sample, masking: MaskConfig, nodes: np.ndarray | None = None
) -> LayerPasses:
    """`layer_passes` of one sample: its variants' masked tokens and its loss window from the sample itself."""
    masked = [len(v.positions) for v in core.variants(spec, sample, masking)]
    tokens = len(sample.input_ids)
    window = core.loss_window(spec, core.answer_span(spec, sample), tokens)
    kept = 1.0 if window is None else (window[1] - window[0]) / tokens
    return layer_passes(spec, method, masked, tokens, kept, nodes)


def reference_passes(spec: ModelSpec, method: GateIGConfig, sample: Sample, masking: MaskConfig) -> LayerPasses:
    """The passes of the straightforward algorithm (`headattr.reference`) on one sample: a row per variant, node
    and path through the whole model (its LM head at every position), differentiated down to the path's
    first gate; no J(1) or J(b) passes, and `method`'s rule without refinement (the reference never refines)."""
    whole = dataclasses.replace(spec, backbone=WholeModel(spec.model))
    p = sample_passes(whole, dataclasses.replace(method, ig_tol=0.0), sample, masking)
    kept = LayerPasses.zeros(spec.num_layers)
    kept.grad_layers, kept.grad_lm_tokens = p.grad_layers, p.grad_lm_tokens
    kept.unreached_layers, kept.unreached_attentions = p.unreached_layers, p.unreached_attentions
    return kept


def layer_weights(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """(P_attn, P_tail) [L] each: the weights of each layer's q/k/v projections and of the other projections
    a token meets (o_proj and the MLP's; in a mixture-of-experts layer the router, the shared experts and the
    token's k of the E routed experts): the matrices of its products (`engine.shapes.layer_shapes`)."""
    shapes = layer_shapes(spec)
    return np.array([s.attention for s in shapes], float), np.array([s.tail for s in shapes], float)


def flops(spec: ModelSpec, passes: LayerPasses, tokens: int) -> float:
    """FLOPs of one sample's passes (module docstring's formula), layer by layer (their weights may differ),
    for a sample of `tokens` tokens (`objective_tokens` of them per row). For a block-diffusion objective the
    2T rows are counted at full width everywhere, where the narrowed last layer and the LM head run on the
    noisy copy's answer only: an upper bound (within 12% of torch's count on the tests' tiny checkpoints)."""
    tokens = objective_tokens(spec, tokens)
    d = spec.num_heads * spec.head_dim
    p_attn, p_tail = layer_weights(spec)
    attention = 2 * p_attn * tokens + 4 * tokens**2 * d
    attention_back = 2 * p_attn * tokens + 10 * tokens**2 * d
    tail = 2 * p_tail * tokens  # forward and backward alike
    head = 2 * hidden_size(spec) * spec.vocab_size
    p = passes
    forward = (
        (p.layers + p.grad_layers) @ (attention + tail)
        + (p.attentions + p.grad_attentions) @ attention
        + (p.tails + p.grad_tails) @ tail
        + (p.lm_tokens + p.grad_lm_tokens) * head
    )
    reached = p.grad_layers - p.unreached_layers
    backward = (
        (reached - p.unreached_attentions + p.grad_attentions) @ attention_back
        + (reached + p.grad_tails) @ tail
        + p.grad_lm_tokens * head
    )
    return float(forward + backward)


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter (`torch.utils.flop_counter`), counting the CPU attention kernel as well: torch maps
    only the GPU kernels; the CPU kernel computes the same products, so torch's own formulas apply."""
    aten = torch.ops.aten
    cpu_attention = {
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, **__: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward: (
            lambda grad, q, k, v, *_, **__: sdpa_backward_flop_count(grad, q, k, v)
        ),
    }
    return FlopCounterMode(display=False, custom_mapping=cpu_attention)


def probe(spec: ModelSpec, sample: Sample, masking: MaskConfig, rows: int) -> tuple[float, float]:
    """Seconds and FLOPs of one chunk of `rows` rows of `sample`, forward and backward through every layer."""
    prepared = core.prepare(spec, sample, masking, rows, cache_layers=False)
    v_idx = torch.arange(rows, device=spec.device) % prepared.num_variants

    def once(r: int) -> None:
        g = torch.ones(r, spec.num_layers, spec.num_heads, device=spec.device, requires_grad=True)
        with gated(spec, {layer: g[:, layer] for layer in range(spec.num_layers)}):
            j = core.objective(spec, prepared, v_idx[:r], 0).j
            torch.autograd.grad(j.sum(), g)

    once(1)  # warm-up: kernels, allocator
    if spec.device.type == "cuda":
        torch.cuda.synchronize(spec.device)
    start = time.perf_counter()
    once(rows)
    if spec.device.type == "cuda":
        torch.cuda.synchronize(spec.device)
    seconds = time.perf_counter() - start
    return seconds, flops(spec, probe_passes(spec, prepared, v_idx), len(sample.input_ids))


def probe_passes(spec: ModelSpec, rows: core.Rows, v_idx: torch.Tensor) -> LayerPasses:
    """The passes of `probe`: the rows `v_idx` from layer 0 to the loss, every layer gated."""
    tokens = rows.ids.shape[1]
    n = len(v_idx)
    lm = float(n * tokens) if not spec.backbone.resumable else float(sum(len(rows.labels[int(v)]) for v in v_idx))
    p = LayerPasses.zeros(spec.num_layers)
    p.grad_layers += n
    p.grad_lm_tokens = lm
    p.unreached_attentions[0] = n
    keep = core.loss_positions(spec, rows)
    if keep is None or not spec.backbone.resumable:
        return p
    return _narrow_last_layer(p, (0, n), (0, 0), (keep.stop - keep.start) / tokens)


def dry_run(
    spec: ModelSpec,
    samples: list[Sample],
    method: GateIGConfig,
    masking: MaskConfig,
    batch_size: int | str = "auto",
    max_memory: str | float | int | None = None,
    run_probe: bool = True,
) -> dict[str, Any]:
    """The plan of an attribution run (module docstring), as a JSON-ready dict; computes no attribution. Its
    probes run as the attribution would (`models.backbone.attributing`)."""
    with attributing():
        return _plan(spec, samples, method, masking, batch_size, max_memory, run_probe)


def _plan(
    spec: ModelSpec,
    samples: list[Sample],
    method: GateIGConfig,
    masking: MaskConfig,
    batch_size: int | str,
    max_memory: str | float | int | None,
    run_probe: bool,
) -> dict[str, Any]:
    planner = BatchPlanner.create(spec, batch_size, max_memory)
    tokens = np.array([len(s.input_ids) for s in samples])
    per_sample, total_flops, batches, holds = [], 0.0, [], []
    most = largest_pass(method, masking, spec.num_layers)
    # samples computed together (CPU) share their passes, which may then hold more rows: as the runner plans
    groups = merge_groups([core.merge_key(s) for s in samples], merge_limit(spec, method))
    companions = {i: len(group) for group in groups for i in group}
    first = samples[0]
    # on CUDA the run measures a row's cost on its first sample (`BatchPlanner.calibrate`): so does the plan
    planner.calibrate(lambda: core.prepare(spec, first, masking, 1, cache_layers=False), len(first.input_ids))
    width = cached_width(spec, method)
    for position, s in enumerate(samples):
        passes = sample_passes(spec, method, s, masking)
        f = flops(spec, passes, len(s.input_ids))
        tokens_s, variants = len(s.input_ids), companions[position] * masking.num_variants
        held = cache_bytes(spec, variants, objective_tokens(spec, tokens_s), width)
        size = planner.size_for(tokens_s, s.answer_end - s.answer_start, companions[position] * most, held)
        batches.append(size)
        holds.append(held)
        total_flops += f
        per_sample.append({"index": s.index, "tokens": len(s.input_ids), "layer_passes": passes.total, "flops": f})
    paths = len(method.paths(spec.num_layers))
    plan: dict[str, Any] = {
        "samples": len(samples),
        "tokens": {"min": int(tokens.min()), "median": float(np.median(tokens)), "max": int(tokens.max())},
        "rows_per_path": masking.num_variants * method.base_nodes,
        "paths": paths,
        "rows_per_sample": masking.num_variants * method.base_nodes * paths,
        "layer_passes_per_sample": [p["layer_passes"] for p in per_sample],
        "flops": total_flops,
        "batch_size": {"requested": batch_size, "min": min(batches), "max": max(batches)},
        "peak_memory_bytes": peak_memory(spec, planner, first, holds[0], batches[0]),
        "per_sample": per_sample,
    }
    plan.update(architecture(spec, int(tokens.max())))
    if run_probe:
        seconds, probe_flops = probe(spec, first, masking, batches[0])
        rate = probe_flops / max(seconds, 1e-9)
        plan["probe"] = {"rows": batches[0], "seconds": seconds, "flops": probe_flops, "flop_per_s": rate}
        plan["estimated_seconds"] = total_flops / rate
    return plan


def architecture(spec: ModelSpec, tokens: int) -> dict[str, Any]:
    """The plan's entries for mixture-of-experts and block-diffusion models (none for dense, full-sequence ones,
    whose plan is unchanged): experts, the parameters a token meets against all of them, the weights' bytes;
    the block size and the tokens per row the objective runs for the longest sample (`objective_tokens`)."""
    out: dict[str, Any] = {}
    if spec.num_experts:
        routed = sum(s.routed for s in layer_shapes(spec))
        inactive = routed - routed * spec.active_experts // spec.num_experts
        weights = sum(p.numel() * p.element_size() for p in spec.model.parameters())
        out["experts"] = {
            "routed": spec.num_experts,
            "active": spec.active_experts,
            "parameters": spec.num_parameters,
            "active_parameters": spec.num_parameters - inactive,
            "weights_bytes": weights,
        }
    if spec.block_size:
        out["blocks"] = {
            "block_size": spec.block_size,
            "tokens": tokens,
            "objective_tokens": objective_tokens(spec, tokens),
        }
    return out


def architecture_lines(plan: dict[str, Any]) -> list[str]:
    """`describe`'s lines for `architecture`'s entries."""
    lines = []
    if "experts" in plan:
        x = plan["experts"]
        lines.append(
            f"mixture of experts: {x['active']} of {x['routed']} routed experts per token; FLOPs count the "
            f"{x['active_parameters'] / 1e9:.3g} B parameters a token meets (router, shared and active experts), "
            f"memory the weights of all {x['parameters'] / 1e9:.3g} B ({x['weights_bytes'] / 2**30:.2f} GiB)"
        )
    if "blocks" in plan:
        b = plan["blocks"]
        lines.append(
            f"block diffusion, block size {b['block_size']}: rows of {b['objective_tokens']} tokens for the longest "
            f"sample of {b['tokens']} (the objective's layout; FLOPs and memory are counted for it)"
        )
    return lines


def peak_memory(spec: ModelSpec, planner: BatchPlanner, sample: Sample, held: int, batch: int) -> int:
    """Bytes at the peak of the first sample: weights + its cached tensors (`held`: layer inputs, head
    outputs) + `batch` rows' activations."""
    weights = sum(p.numel() * p.element_size() for p in spec.model.parameters())
    rows = batch * planner.row_bytes(len(sample.input_ids), sample.answer_end - sample.answer_start)
    return int(weights + held + rows)


def describe(plan: dict[str, Any], spec: ModelSpec, method: GateIGConfig) -> list[str]:
    """The lines `attribute --dry-run` prints."""
    t, b = plan["tokens"], plan["batch_size"]
    passes = plan["layer_passes_per_sample"]
    lines = [
        f"dry run: {plan['samples']} samples; tokens min {t['min']}, median {t['median']:g}, max {t['max']}",
        f"rows: {plan['rows_per_path']} per path (variants x {method.base_nodes} nodes) x {plan['paths']} paths "
        f"(scope {method.scope}) = {plan['rows_per_sample']} per sample",
        f"layer passes per sample (row x layer): min {min(passes):,.0f}, max {max(passes):,.0f} "
        + pass_formula(spec, method),
        f"FLOPs: {plan['flops']:.3g} [forward 2 P T + 4 T^2 d per layer, LM head 2 d V per masked token; "
        "backward of frozen weights: 2 P T + 10 T^2 d]",
        f"batch size {b['requested']}: {b['min']}"
        + (f"..{b['max']}" if b["max"] != b["min"] else "")
        + f" rows per pass; peak memory about {plan['peak_memory_bytes'] / 2**30:.2f} GiB (first sample)",
    ]
    if method.adaptive:  # the nodes a path spends depend on its integrand: only bounds are known beforehand
        lines.append(
            f"error-controlled quadrature (--ig-tol {method.ig_tol:g}): the counts are the base rule's "
            f"{method.base_nodes} nodes per path; refinement can raise a path to {method.ig_max_steps} nodes, so the "
            f"gradient work is between 1x and {method.ig_max_steps / method.base_nodes:.3g}x the above "
            "(run.json diagnostics.nodes records what each path used)"
        )
    lines += architecture_lines(plan)
    if "probe" in plan:
        p = plan["probe"]
        lines.append(
            f"probe: {p['rows']} rows of the first sample, forward + backward, in {p['seconds']:.3g} s "
            f"({p['flop_per_s'] / 1e12:.3g} TFLOP/s); estimated time {format_seconds(plan['estimated_seconds'])} "
            "on this process"
        )
    return lines


def pass_formula(spec: ModelSpec, method: GateIGConfig) -> str:
    """The bracketed formula `describe` prints after the layer passes (module docstring, n: the base nodes)."""
    stack = spec.backbone.resumable
    if method.scope == "layer" and stack and method.adaptive:
        return (
            "[V(L-1) + VL attention + VL (every a = 1 node) + V(n-1)(L tails + L(L-1)/2 layers); last layer's "
            "tail at the answer positions only]"
        )
    if method.scope == "layer" and stack:
        return (
            "[V(L-1) + V + VL attention + (Vn + V)(L tails + L(L-1)/2 layers); last layer's tail at the "
            "answer positions only]"
        )
    return "[V n L per path" + ("" if method.adaptive else " + V L per path + V L") + "]"


def format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
