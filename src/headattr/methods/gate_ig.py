"""Gate-IG: integrated gradients of the masked-reconstruction objective over head gates (docs/gate-ig.md).

    A[l, h] = (1 - b) * sum_k w_k * dJ/dg[l, h] (at g = b + a_k (1 - b)),   J = -loss(masked answer tokens)

Design, for speed without changing the numbers:

- every (masked variant, quadrature node) pair is one row of a batch with its own gates, so one forward and
  one backward pass serve many rows (`batch_size` caps the rows; results do not depend on it);
- scope `layer`: gating layer l re-runs only layers l..L-1 from the cached input of layer l (about (L+1)/2
  layer passes per layer on average instead of L), where the backbone can resume; and layer l's own
  attention (q/k/v, the attention kernel) runs once per variant, not per quadrature node: its gates scale
  o_proj's input, so every node re-runs only o_proj onward (`core.head_inputs`);
- the LM head is applied only at the positions that predict a masked token (the core's objective).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core import Rows, chunks, head_inputs, objective
from ..errors import HeadattrError
from ..gates import gated
from ..models import ModelSpec
from ..quadrature import RULES, nodes_and_weights
from ..settings import at_least, choice
from .base import MethodConfig, SampleAttribution, register

SCOPES = ("layer", "joint")


@register
@dataclass(frozen=True)
class GateIGConfig(MethodConfig):
    """Gate-IG's own settings; defaults reproduce the seed report's configuration except the rule (README)."""

    ig_steps: int = 8
    rule: str = "gauss-legendre"
    scope: str = "layer"
    baseline: float = 0.0

    name = "gate-ig"

    def validate(self) -> None:
        choice("--rule", self.rule, RULES)
        choice("--scope", self.scope, SCOPES)
        at_least("--ig-steps", self.ig_steps, 1)
        if not 0.0 <= self.baseline < 1.0:
            raise HeadattrError(f"--baseline must be in [0, 1), got {self.baseline}")

    @property
    def cache_layers(self) -> bool:  # type: ignore[override]
        return self.scope == "layer"

    def paths(self, num_layers: int) -> list[list[int]]:
        """The layers whose gates move together along one IG path."""
        if self.scope == "layer":
            return [[layer] for layer in range(num_layers)]
        return [list(range(num_layers))]

    def attribute(self, spec: ModelSpec, rows: Rows, batch_size: int, where: str) -> SampleAttribution:
        """Attributions [V, L, H] and, per variant, J(1), J at each path's baseline, and completeness errors."""
        n_var, n_heads = rows.num_variants, spec.num_heads
        nodes, weights = nodes_and_weights(self.rule, self.ig_steps)
        b = self.baseline
        alphas = torch.tensor(b + nodes * (1.0 - b), dtype=torch.float32)
        all_v = torch.arange(n_var, device=spec.device)
        paths = self.paths(spec.num_layers)
        with torch.no_grad():  # all gates 1: start from the deepest cached layer input
            j_full = evaluate_j(spec, rows, all_v, {}, rows.deepest_cached, batch_size)
        attributions = np.zeros((n_var, spec.num_layers, n_heads))
        j_base = np.zeros((n_var, len(paths)))
        for p, layers in enumerate(paths):
            start = spec.backbone.entry_layer(layers[0])
            heads = path_heads(spec, rows, layers, start, batch_size)
            # rows ordered (variant, node); each row's gates sit at its node's alpha on every layer of the path
            v_idx = all_v.repeat_interleave(len(alphas))
            a = alphas.repeat(n_var).to(spec.device)
            grads = np.zeros((len(v_idx), len(layers), n_heads))
            for sl in chunks(len(v_idx), batch_size):
                g = a[sl, None, None].expand(-1, len(layers), n_heads).clone().requires_grad_(True)
                with gated(spec, path_gates(layers, g)):
                    j = objective(spec, rows, v_idx[sl], start, heads=heads).j
                    (grad,) = torch.autograd.grad(j.sum(), g)
                check_finite(j, grad, where)
                grads[sl] = grad.double().cpu().numpy()
            grads = grads.reshape(n_var, len(alphas), len(layers), n_heads)
            attributions[:, layers] = (1.0 - b) * np.einsum("k,vklh->vlh", weights, grads)
            with torch.no_grad():
                base = torch.full((n_var, len(layers), n_heads), b, device=spec.device)
                j_base[:, p] = evaluate_j(spec, rows, all_v, path_gates(layers, base), start, batch_size, heads)
        sums = np.stack([attributions[:, layers].sum(axis=(1, 2)) for layers in paths], axis=1)
        error = sums - (j_full[:, None] - j_base)
        diagnostics = {"j_full": j_full, "j_baseline": j_base, "completeness_error": error}
        return SampleAttribution(attributions, diagnostics)

    def summarize(self, diagnostics: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"completeness": completeness_summary(diagnostics)}


def completeness_summary(diagnostics: dict[str, np.ndarray]) -> dict[str, float]:
    """How far sum_h A is from J(1) - J(b), over every (sample, variant, path)."""
    err = np.abs(diagnostics["completeness_error"])
    gap = np.abs(diagnostics["j_full"][..., None] - diagnostics["j_baseline"])
    rel = err / np.maximum(gap, 1e-12)
    return {
        "max_abs": float(err.max()),
        "mean_abs": float(err.mean()),
        "median_abs": float(np.median(err)),
        "max_relative": float(rel.max()),
        "median_relative": float(np.median(rel)),
    }


def path_gates(layers: list[int], values: torch.Tensor) -> dict[int, torch.Tensor]:
    """Gate dict for `layers` from a [rows, len(layers), H] tensor."""
    return {layer: values[:, i] for i, layer in enumerate(layers)}


def path_heads(spec: ModelSpec, rows: Rows, layers: list[int], start: int, batch_size: int) -> torch.Tensor | None:
    """The head outputs [V, T, H * head_dim] of a one-layer path's layer, computed once for all its nodes and
    J(baseline); None where the pass cannot start at that layer's o_proj (several layers, or no layer stack)."""
    if len(layers) != 1 or start != layers[0] or not getattr(spec.backbone, "splits_attention", False):
        return None
    return head_inputs(spec, rows, start, batch_size)


def evaluate_j(
    spec: ModelSpec,
    rows: Rows,
    v_idx: torch.Tensor,
    gates: dict[int, torch.Tensor],
    start: int,
    batch_size: int,
    heads: torch.Tensor | None = None,
) -> np.ndarray:
    """J of the rows `v_idx` under `gates` ([R, H] per layer), in chunks of `batch_size`, as float64 numpy
    (`heads`: see `core.objective`).

    Callers disable gradients; this only batches.
    """
    out = []
    for sl in chunks(len(v_idx), batch_size):
        with gated(spec, {layer: g[sl] for layer, g in gates.items()}):
            out.append(objective(spec, rows, v_idx[sl], start, heads=heads).j.double().cpu())
    return torch.cat(out).numpy()


def check_finite(j: torch.Tensor, grad: torch.Tensor, where: str) -> None:
    if not (torch.isfinite(j).all() and torch.isfinite(grad).all()):
        raise HeadattrError(
            f"non-finite loss or gradient on {where}; try --dtype float32, or drop the sample from the dataset"
        )
