"""A deliberately straightforward Gate-IG, the yardstick for the core and the Gate-IG method.

One layer, one quadrature node, one masked variant at a time; a whole forward pass of the model each time;
logits at every position. It shares only the definition (masks, quadrature, gates) with the method, none of
its batching, layer reuse or LM-head selection, so agreement between the two checks those optimisations.
Used by the tests and by `benchmarks/bench_attribution.py`.
"""

from __future__ import annotations

import numpy as np
import torch

from headattr.data.tokens import Sample
from headattr.engine.core import variants
from headattr.engine.gates import gated
from headattr.engine.masking import MaskConfig
from headattr.methods import GateIGConfig
from headattr.methods.quadrature import nodes_and_weights
from headattr.models import ModelSpec


def full_logits(spec: ModelSpec, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] of the model's own whole forward pass (no shift applied)."""
    return spec.model(input_ids=input_ids).logits


def reference_objective(
    spec: ModelSpec,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    labels: torch.Tensor,
    normalize: str = "mean-masked",
) -> torch.Tensor:
    """J = -cross-entropy of the masked tokens from a full forward pass of one sequence."""
    logits = full_logits(spec, input_ids[None].to(spec.device))[0]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if spec.logit_shift:  # Dream: position j is predicted by the logits at j-1
        logits = torch.cat([logits[:1], logits[:-1]], dim=0)
    nll = torch.nn.functional.cross_entropy(logits[positions], labels.to(logits.device), reduction="none")
    return -(nll.mean() if normalize == "mean-masked" else nll.sum())


def reference_attribution(spec: ModelSpec, sample: Sample, method: GateIGConfig, masking: MaskConfig) -> np.ndarray:
    """Attributions [V, L, H] of one sample, computed the slow, obvious way."""
    b = method.baseline
    nodes, weights = nodes_and_weights(method.rule, method.ig_steps)
    masked = variants(spec, sample, masking)
    out = np.zeros((len(masked), spec.num_layers, spec.num_heads))
    for v, variant in enumerate(masked):
        for layers in method.paths(spec.num_layers):
            for a, w in zip(nodes, weights, strict=True):
                gates = {
                    layer: torch.full((spec.num_heads,), b + a * (1 - b), device=spec.device, requires_grad=True)
                    for layer in layers
                }
                with gated(spec, gates):
                    j = reference_objective(
                        spec, variant.input_ids, variant.positions, variant.labels, masking.loss_normalize
                    )
                grads = torch.autograd.grad(j, [gates[layer] for layer in layers])
                for layer, g in zip(layers, grads, strict=True):
                    out[v, layer] += (1 - b) * w * g.double().cpu().numpy()
    return out
