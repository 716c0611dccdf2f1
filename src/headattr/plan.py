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
    whole-model backbone:      every pass runs all L layers from the ids

On a layer stack the last layer's tail runs only at the positions that reach the loss (`core.loss_window`,
P of T): each pass through it counts one attention part and P / T of a tail.

FLOPs (T tokens, d hidden, P_attn / P_tail the weights of a layer's q/k/v and of its o_proj + MLP):

    forward, per row:  attention  2 P_attn T + 4 T^2 d      (q/k/v projections; QK^T and AV)
                       tail       2 P_tail T
                       LM head    2 d V_vocab per masked token
    backward ~ 2 x forward, for the passes that need gradients.

The probe runs one chunk of `batch` rows (forward and backward, every layer) of the first sample, so its
FLOP rate includes this machine's real efficiency; the time estimate is total FLOPs / that rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import core
from .attribution import largest_pass, merge_groups, merge_limit
from .batching import BatchPlanner, hidden_size
from .data import Sample
from .gates import gated
from .masking import MaskConfig
from .methods import GateIGConfig
from .models import ModelSpec


@dataclass
class LayerPasses:
    """Row-layer passes of one sample: full layers, attention-only parts, tails, masked tokens (LM head).

    A tail of the last layer computed at some of the positions (`core.loss_window`) counts as that fraction
    of a tail."""

    grad_layers: float = 0.0
    grad_attentions: float = 0.0
    grad_tails: float = 0.0
    grad_lm_tokens: float = 0.0
    layers: float = 0.0
    attentions: float = 0.0
    tails: float = 0.0
    lm_tokens: float = 0.0

    @property
    def total(self) -> float:
        """Layer passes, a tail or an attention part counting as one (what the summary prints)."""
        return self.grad_layers + self.grad_attentions + self.grad_tails + self.layers + self.attentions + self.tails


def layer_passes(
    spec: ModelSpec, method: GateIGConfig, masked_per_variant: list[int], kept: float = 1.0
) -> LayerPasses:
    """Gate-IG's passes for one sample (module docstring); `masked_per_variant`: masked tokens of each;
    `kept`: the fraction of its positions at which the last layer's tail runs (`core.loss_window`)."""
    v, n, layers, k = len(masked_per_variant), method.base_nodes, spec.num_layers, float(sum(masked_per_variant))
    p = LayerPasses()
    stack = spec.backbone.resumable
    if method.scope == "joint" or not stack:
        paths = 1 if method.scope == "joint" else layers
        p.layers = v * layers * (1 + paths)  # J(1) and J(b) per path (all layers from the ids)
        p.grad_layers = v * n * layers * paths
        p.lm_tokens, p.grad_lm_tokens = k * (1 + paths), k * n * paths
        # every pass ends with the last layer
        return _narrow_last_layer(p, (v * (1 + paths), v * n * paths), (0, 0), kept) if stack else p
    deep = layers * (layers - 1) / 2  # layers after the gated one, summed over the paths
    p.layers = v * (layers - 1) + v + v * deep
    p.attentions, p.tails = v * layers, v * layers
    p.grad_layers, p.grad_tails = v * n * deep, v * n * layers
    p.lm_tokens, p.grad_lm_tokens = k * (1 + layers), k * n * layers
    # the last layer runs whole in J(1) and in the paths of the layers below it, as the gated tail in its own
    return _narrow_last_layer(p, (v * layers, v * n * (layers - 1)), (v, v * n), kept)


def _narrow_last_layer(
    p: LayerPasses, whole: tuple[float, float], tails: tuple[float, float], kept: float
) -> LayerPasses:
    """`p` with the last layer at the kept positions: of its `whole` passes (without, with gradients) each
    becomes an attention part and `kept` of a tail; its gated `tails` become `kept` of one."""
    if kept >= 1.0:  # every position: the layers run whole (`core.loss_positions` is None)
        return p
    p.layers -= whole[0]
    p.attentions += whole[0]
    p.tails += whole[0] * kept - tails[0] * (1 - kept)
    p.grad_layers -= whole[1]
    p.grad_attentions += whole[1]
    p.grad_tails += whole[1] * kept - tails[1] * (1 - kept)
    return p


def layer_weights(spec: ModelSpec) -> tuple[int, int]:
    """(P_attn, P_tail): weights of layer 0's q/k/v projections and of everything else in it."""
    if not spec.backbone.resumable:
        per_layer = (spec.num_parameters - 2 * spec.vocab_size * hidden_size(spec)) // spec.num_layers
        return per_layer // 4, per_layer - per_layer // 4  # q/k/v of a typical decoder: about a quarter
    layer = spec.backbone.layers[0]
    attn = sum(m.weight.numel() for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj))
    return attn, sum(p.numel() for p in layer.parameters()) - attn


def flops(spec: ModelSpec, passes: LayerPasses, tokens: int) -> float:
    """FLOPs of one sample's passes (module docstring's formula)."""
    d = hidden_size(spec)
    p_attn, p_tail = layer_weights(spec)
    attention = 2 * p_attn * tokens + 4 * tokens**2 * d
    tail = 2 * p_tail * tokens
    head = 2 * d * spec.vocab_size
    forward = (
        passes.layers * (attention + tail)
        + passes.attentions * attention
        + passes.tails * tail
        + passes.lm_tokens * head
    )
    grad = (
        passes.grad_layers * (attention + tail)
        + passes.grad_attentions * attention
        + passes.grad_tails * tail
        + passes.grad_lm_tokens * head
    )
    return float(forward + 3 * grad)  # backward ~ 2 x forward


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
    masked = [len(prepared.labels[int(v)]) for v in v_idx.tolist()]
    one = LayerPasses(grad_layers=rows * spec.num_layers, grad_lm_tokens=float(sum(masked)))
    return seconds, flops(spec, one, len(sample.input_ids))


def dry_run(
    spec: ModelSpec,
    samples: list[Sample],
    method: GateIGConfig,
    masking: MaskConfig,
    batch_size: int | str = "auto",
    max_memory: str | float | int | None = None,
    run_probe: bool = True,
) -> dict[str, Any]:
    """The plan of an attribution run (module docstring), as a JSON-ready dict; computes no attribution."""
    planner = BatchPlanner.create(spec, batch_size, max_memory)
    tokens = np.array([len(s.input_ids) for s in samples])
    per_sample, total_flops, batches = [], 0.0, []
    most = largest_pass(method, masking, spec.num_layers)
    # samples computed together (CPU) share their passes, which may then hold more rows: as the runner plans
    groups = merge_groups([core.merge_key(s) for s in samples], merge_limit(spec, method))
    companions = {i: len(group) for group in groups for i in group}
    for position, s in enumerate(samples):
        masked = [len(v.positions) for v in core.variants(spec, s, masking)]
        window = core.loss_window(spec, core.answer_span(spec, s), len(s.input_ids))
        kept = 1.0 if window is None else (window[1] - window[0]) / len(s.input_ids)
        passes = layer_passes(spec, method, masked, kept)
        f = flops(spec, passes, len(s.input_ids))
        size = planner.size_for(len(s.input_ids), s.answer_end - s.answer_start, companions[position] * most)
        batches.append(size)
        total_flops += f
        per_sample.append({"index": s.index, "tokens": len(s.input_ids), "layer_passes": passes.total, "flops": f})
    first = samples[0]
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
        "peak_memory_bytes": peak_memory(spec, planner, first, masking, batches[0]),
        "per_sample": per_sample,
    }
    if run_probe:
        seconds, probe_flops = probe(spec, first, masking, batches[0])
        rate = probe_flops / max(seconds, 1e-9)
        plan["probe"] = {"rows": batches[0], "seconds": seconds, "flops": probe_flops, "flop_per_s": rate}
        plan["estimated_seconds"] = total_flops / rate
    return plan


def peak_memory(spec: ModelSpec, planner: BatchPlanner, sample: Sample, masking: MaskConfig, batch: int) -> int:
    """Bytes at the peak of the first sample: weights + cached layer inputs + `batch` rows' activations."""
    e = torch.finfo(spec.dtype).bits // 8
    weights = sum(p.numel() * p.element_size() for p in spec.model.parameters())
    tokens = len(sample.input_ids)
    cache = masking.num_variants * spec.num_layers * tokens * hidden_size(spec) * e
    rows = batch * planner.row_bytes(tokens, sample.answer_end - sample.answer_start)
    return int(weights + cache + rows)


def describe(plan: dict[str, Any], spec: ModelSpec, method: GateIGConfig) -> list[str]:
    """The lines `attribute --dry-run` prints."""
    t, b = plan["tokens"], plan["batch_size"]
    passes = plan["layer_passes_per_sample"]
    lines = [
        f"dry run: {plan['samples']} samples; tokens min {t['min']}, median {t['median']:g}, max {t['max']}",
        f"rows: {plan['rows_per_path']} per path (variants x {method.base_nodes} nodes) x {plan['paths']} paths "
        f"(scope {method.scope}) = {plan['rows_per_sample']} per sample",
        f"layer passes per sample (row x layer): min {min(passes):,.0f}, max {max(passes):,.0f} "
        + (
            "[V(L-1) + V + VL attention + (Vn + V)(L tails + L(L-1)/2 layers); last layer's tail at the "
            "answer positions only]"
            if method.scope == "layer" and spec.backbone.resumable
            else "[(V n + V) L per path + V L]"
        ),
        f"FLOPs: {plan['flops']:.3g} [forward 2 P T + 4 T^2 d per layer, LM head 2 d V per masked token; "
        "backward 2x forward]",
        f"batch size {b['requested']}: {b['min']}"
        + (f"..{b['max']}" if b["max"] != b["min"] else "")
        + f" rows per pass; peak memory about {plan['peak_memory_bytes'] / 2**30:.2f} GiB (first sample)",
    ]
    if method.adaptive:  # the nodes a path spends depend on its integrand: only bounds are known beforehand
        lines.append(
            f"error-controlled quadrature (--ig-tol {method.ig_tol:g}): the counts are the base rule's "
            f"{method.base_nodes} nodes per path; refinement can raise a path to {method.ig_max_steps} nodes, so the "
            f"gradient work is between 1x and {method.ig_max_steps / method.base_nodes:g}x the above "
            "(run.json diagnostics.nodes records what each path used)"
        )
    if "probe" in plan:
        p = plan["probe"]
        lines.append(
            f"probe: {p['rows']} rows of the first sample, forward + backward, in {p['seconds']:.3g} s "
            f"({p['flop_per_s'] / 1e12:.3g} TFLOP/s); estimated time {format_seconds(plan['estimated_seconds'])} "
            "on this process"
        )
    return lines


def format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
