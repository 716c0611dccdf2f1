"""Gate-IG: integrated gradients of the masked-reconstruction objective over head gates (docs/gate-ig.md).

    A[l, h] = (1 - b) * sum_k w_k * dJ/dg[l, h] (at g = b + a_k (1 - b)),   J = -loss(masked answer tokens)

Design, for speed without changing the numbers:

- every (masked variant, quadrature node) pair is one row of a batch with its own gates, so one forward and
  one backward pass serve many rows (`batch_size` caps the rows; results do not depend on it);
- scope `layer`: gating layer l re-runs only layers l..L-1 from the cached input of layer l (about (L+1)/2
  layer passes per layer on average instead of L), where the backbone can resume;
- the LM head is applied only at the positions that predict a masked token (the core's objective).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core import Rows
from ..errors import HeadattrError
from ..models import ModelSpec
from ..quadrature import RULES, nodes_and_weights
from ..settings import at_least, choice
from .base import MethodConfig, SampleAttribution, register
from .common import all_variants, evaluate_j, gate_gradients, path_gates

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
        all_v = all_variants(spec, rows)
        paths = self.paths(spec.num_layers)
        with torch.no_grad():  # all gates 1: start from the deepest cached layer input
            j_full = evaluate_j(spec, rows, all_v, {}, rows.deepest_cached, batch_size)
        attributions = np.zeros((n_var, spec.num_layers, n_heads))
        j_base = np.zeros((n_var, len(paths)))
        for p, layers in enumerate(paths):
            start = spec.backbone.entry_layer(layers[0])
            # rows ordered (variant, node); each row's gates sit at its node's alpha on every layer of the path
            v_idx = all_v.repeat_interleave(len(alphas))
            a = alphas.repeat(n_var).to(spec.device)
            values = a[:, None, None].expand(-1, len(layers), n_heads)
            _, grads = gate_gradients(spec, rows, v_idx, values, layers, start, batch_size, where)
            grads = grads.reshape(n_var, len(alphas), len(layers), n_heads)
            attributions[:, layers] = (1.0 - b) * np.einsum("k,vklh->vlh", weights, grads)
            with torch.no_grad():
                base = torch.full((n_var, len(layers), n_heads), b, device=spec.device)
                j_base[:, p] = evaluate_j(spec, rows, all_v, path_gates(layers, base), start, batch_size)
        sums = np.stack([attributions[:, layers].sum(axis=(1, 2)) for layers in paths], axis=1)
        error = sums - (j_full[:, None] - j_base)
        diagnostics = {"j_full": j_full, "j_baseline": j_base, "completeness_error": error}
        return SampleAttribution(attributions, diagnostics)

    def summarize(self, diagnostics: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"completeness": completeness_summary(diagnostics)}

    def summary_lines(self, summary: dict[str, Any]) -> list[str]:
        return completeness_lines(summary)


def completeness_lines(summary: dict[str, Any]) -> list[str]:
    """The line `headattr attribute` prints about a path method's completeness summary."""
    c = summary["completeness"]
    return [
        f"completeness error: median {c['median_abs']:.3g}, max {c['max_abs']:.3g} "
        f"(max relative {c['max_relative']:.3g})"
    ]


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
