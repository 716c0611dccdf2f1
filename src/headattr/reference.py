"""A deliberately straightforward Gate-IG, the yardstick for the engine.

One layer, one quadrature node, one masked variant at a time; a whole forward pass of the model each time;
logits at every position. It shares only the definition (masks, quadrature, gates) with `engine`, none of its
batching, layer reuse or LM-head selection, so agreement between the two checks those optimisations.
Used by the tests and by `benchmarks/bench_attribution.py`.
"""

from __future__ import annotations

import numpy as np
import torch

from .engine import GateIGConfig
from .gates import gated
from .masking import make_variants
from .models import ModelSpec
from .quadrature import nodes_and_weights


def reference_objective(spec: ModelSpec, input_ids: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor,
                        normalize: str = "mean-masked") -> torch.Tensor:
    """J = -cross-entropy of the masked tokens from a full forward pass of one sequence."""
    logits = spec.full_logits(input_ids[None].to(spec.device))[0]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if spec.logit_shift:  # Dream: position j is predicted by the logits at j-1
        logits = torch.cat([logits[:1], logits[:-1]], dim=0)
    nll = torch.nn.functional.cross_entropy(logits[positions], labels.to(logits.device), reduction="none")
    return -(nll.mean() if normalize == "mean-masked" else nll.sum())


def reference_attribution(spec: ModelSpec, input_ids, answer_start: int, answer_end: int, uid: str,
                          cfg: GateIGConfig) -> np.ndarray:
    """Attributions [V, L, H] of one sample, computed the slow, obvious way."""
    variants = make_variants(input_ids, answer_start, answer_end, uid, list(cfg.mask_probs),
                             cfg.mask_samples_per_prob, cfg.mask_seed, spec.mask_token_id)
    nodes, weights = nodes_and_weights(cfg.rule, cfg.ig_steps)
    b = cfg.baseline
    paths = [[layer] for layer in range(spec.num_layers)] if cfg.scope == "layer" else [list(range(spec.num_layers))]
    out = np.zeros((len(variants), spec.num_layers, spec.num_heads))
    for v, variant in enumerate(variants):
        for layers in paths:
            for a, w in zip(nodes, weights, strict=True):
                gates = {
                    layer: torch.full((spec.num_heads,), b + a * (1 - b), device=spec.device, requires_grad=True)
                    for layer in layers
                }
                with gated(spec, gates):
                    j = reference_objective(spec, variant.input_ids, variant.positions, variant.labels,
                                            cfg.loss_normalize)
                grads = torch.autograd.grad(j, [gates[layer] for layer in layers])
                for layer, g in zip(layers, grads, strict=True):
                    out[v, layer] += (1 - b) * w * g.double().cpu().numpy()
    return out
