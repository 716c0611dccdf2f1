"""What one token meets in each decoder layer: the weights of its matrix products and the MLP width it passes
through, as the plan (`runs.plan`: FLOPs) and the activation model (`engine.batching`: memory) count them.

A dense layer's weights all meet every token. A mixture-of-experts layer (a spec with `num_experts` E routed
experts of which `active_experts` k are chosen per token; transformers' expert modules hold a layer's routed
experts in 3-D tensors [E, ., .]) has a router and shared experts that meet every token, and routed experts of
which each token meets exactly k: over T tokens the routed experts' products cost exactly k / E of what all E
would (no estimate: every token is routed to k distinct experts). FLOPs and activations therefore count the
active experts, memory for weights counts all of them (`ModelSpec.num_parameters`, the plan's peak memory).

Experts are SwiGLU MLPs (three matrices: gate, up [I, d] and down [d, I]), as in every MoE family headattr
reads, so an MLP of width I holds 3 d I weights: `mlp_width` is derived from that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

# q/k/v projections under the names transformers' decoders give them
QKV_NAMES = {"q_proj", "k_proj", "v_proj", "qkv_proj", "query", "key", "value", "query_key_value", "c_attn"}


@dataclass(frozen=True)
class LayerShape:
    """One decoder layer as one token meets it, in matrix elements (norm weights and biases add no products).

    `attention`: the q/k/v projections' weights. `tail`: the others a token meets: o_proj and the MLP (dense),
    or o_proj, the router, the shared experts and k / E of the routed experts (MoE). `routed`: all E routed
    experts' weights (0: dense). `router`: the router's weights. `mlp_width`: the width of the MLPs a token
    passes through (dense: the MLP's; MoE: k x the expert width + the shared experts' width; 0 where unknown)."""

    attention: int
    tail: int
    routed: int = 0
    router: int = 0
    mlp_width: int = 0


def hidden_size(spec: Any) -> int:
    """d of the model, under the names transformers configs use for it, else the embeddings' width."""
    cfg = spec.model.config
    for name in ("hidden_size", "d_model", "n_embd"):
        if isinstance(getattr(cfg, name, None), int):
            return int(getattr(cfg, name))
    embeddings = getattr(spec.model, "get_input_embeddings", lambda: None)()
    if embeddings is not None and hasattr(embeddings, "embedding_dim"):
        return int(embeddings.embedding_dim)
    return spec.num_heads * spec.head_dim


def objective_tokens(spec: Any, tokens: int) -> int:
    """The tokens the objective runs per row for a sample of `tokens` tokens: `tokens` itself, or what the spec
    says through `ModelSpec.objective_tokens(T)` where it has one (the hook for an objective that lays out more
    than the sample, e.g. a block-diffusion loss on [x_t | x_0], 2T). Every spec today runs the sample as is."""
    hook = getattr(spec, "objective_tokens", None)
    return int(hook(tokens)) if callable(hook) else tokens


def dense_mlp_width(spec: Any) -> int:
    """A dense layer's MLP width: the config's `intermediate_size`, else 4 d (a GPT-style MLP)."""
    return getattr(spec.model.config, "intermediate_size", None) or 4 * hidden_size(spec)


def is_moe(spec: Any) -> bool:
    """Whether the spec is a mixture-of-experts model headattr reads natively (`num_experts` set)."""
    return bool(getattr(spec, "num_experts", None))


def decoder_layers(spec: Any) -> list[nn.Module] | None:
    """The L decoder layers: the layer stack's, or the first list of L modules of a model run whole; None when
    there is none."""
    if spec.backbone.resumable:
        return list(spec.backbone.layers)
    for module in spec.model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == spec.num_layers:
            return list(module)
    return None


def layer_shape(spec: Any, layer: nn.Module) -> LayerShape:
    """`LayerShape` of one decoder layer from its parameters. Without q/k/v under a known name, a quarter of its
    matrices count as attention (a typical decoder's share)."""
    d = hidden_size(spec)
    experts, chosen = getattr(spec, "num_experts", None) or 0, getattr(spec, "active_experts", None) or 0
    matrices = [(name, p) for name, p in layer.named_parameters() if p.ndim == 2]
    total = sum(p.numel() for _, p in matrices)
    attention = sum(p.numel() for name, p in matrices if name.split(".")[-2] in QKV_NAMES) or total // 4
    routed = sum(p.numel() for _, p in layer.named_parameters() if experts and p.ndim == 3 and p.shape[0] == experts)
    if not routed:
        return LayerShape(attention, total - attention, mlp_width=dense_mlp_width(spec))
    router = sum(p.numel() for n, p in matrices if n.endswith("gate.weight") and tuple(p.shape) == (experts, d))
    shared = sum(p.numel() for n, p in matrices if n.startswith("mlp.")) - router
    active = routed * chosen // experts  # exact: 3 E I d weights, of which a token meets 3 k I d
    return LayerShape(attention, total - attention + active, routed, router, (active + shared) // (3 * d))


def layer_shapes(spec: Any) -> list[LayerShape]:
    """`LayerShape` of each of the L layers. A model whose layers cannot be found splits its parameters per
    layer (less the embeddings and the LM head) as a typical decoder's: q/k/v a quarter."""
    layers = decoder_layers(spec)
    if layers is None:
        per_layer = (spec.num_parameters - 2 * spec.vocab_size * hidden_size(spec)) // spec.num_layers
        shape = LayerShape(per_layer // 4, per_layer - per_layer // 4, mlp_width=dense_mlp_width(spec))
        return [shape] * spec.num_layers
    return [layer_shape(spec, layer) for layer in layers]


def mlp_widths(spec: Any) -> list[tuple[int, int]]:
    """(MLP width, router's experts E or 0) of each layer, for the activation model: a dense model's from its
    config alone (no modules read), a mixture of experts' from its layers (`layer_shape`)."""
    if not is_moe(spec):
        return [(dense_mlp_width(spec), 0)] * spec.num_layers
    return [(s.mlp_width, spec.num_experts if s.routed else 0) for s in layer_shapes(spec)]
