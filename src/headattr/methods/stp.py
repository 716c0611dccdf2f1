"""STP: integrated gradients along a stochastic threshold path over all heads jointly (docs/methods.md).

For a path sample, each head h draws a threshold u_h ~ U(0, 1) and its gate follows

    g_h(t) = b + (1 - b) * clip((t - u_h) / (1 - u_h), 0, 1),    t in [0, 1],

so heads switch on one after another in random order (a Shapley-like path). Head h's attribution is the path
integral of dJ/dg_h * dg_h/dt; summed over heads it is J(1) - J(b) exactly (completeness), per path sample.

Quadrature: g(t) is linear in t between consecutive sorted thresholds, so J(g(t)) is smooth on each piece
and only kinks at the u_h. The integral is split at the kinks and each piece integrated with `rule` at
`ig_steps` nodes (Gauss-Legendre by default: exact for polynomials of degree 2 * ig_steps - 1 on the piece);
before the smallest threshold every gate is b and nothing moves, so that span contributes nothing. Every
node of every piece of every path sample is one row of a batch, with its own gates. The completeness error
of each (variant, path sample) is recorded; raise `--ig-steps` when it is large.

Thresholds are keyed by (path seed, sample uid, path-sample index), never by batch, process or resume point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from headattr.engine.core import Rows
from headattr.errors import HeadattrError
from headattr.methods.base import MethodConfig, SampleAttribution, register
from headattr.methods.common import all_variants, evaluate_j, gate_gradients, path_gates
from headattr.methods.diagnostics import completeness_from_diagnostics, completeness_lines
from headattr.methods.quadrature import RULES, nodes_and_weights
from headattr.models import ModelSpec
from headattr.settings import at_least, choice

STREAM_TAG = 0x535450  # "STP": keeps the threshold streams apart from the mask streams of the same seed


@register
@dataclass(frozen=True)
class STPConfig(MethodConfig):
    """STP's settings: quadrature nodes per piece, rule, baseline gate, path samples and their seed."""

    ig_steps: int = 2
    rule: str = "gauss-legendre"
    baseline: float = 0.0
    path_samples: int = 4
    path_seed: int = 47
    scope: str = "joint"

    name = "stp"
    label = "STP"
    cache_layers = False  # every row gates layer 0, so every pass starts there
    checks_completeness = True

    def largest_pass(self, num_variants: int, num_layers: int) -> int:
        """Variants x the `ig_steps` nodes of a piece: one pass evaluates them together."""
        return num_variants * self.ig_steps

    @classmethod
    def benchmark_config(cls, quick: bool, seed: int) -> STPConfig:
        """One node per piece and 2 path samples (`quick`: 1), the paths seeded by the run's seed."""
        return cls(ig_steps=1, path_samples=1 if quick else 2, path_seed=seed)

    TEXT = {
        "en": {
            "describe": "STP (stochastic threshold path): integrated gradients of J = -loss with every head's gate "
            "rising from the baseline {baseline:g} to 1 after its own random threshold (heads switch on in random "
            "order, all layers jointly), mean over {path_samples} path samples (path seed {path_seed}); "
            "quadrature: fixed {rule} rule with {ig_steps} nodes on each piece between consecutive thresholds",
            "sign": "positive = the head raises J = -loss (lowers the loss of the masked answer tokens) as its gate "
            "goes from the baseline b to 1; on every path sample the heads' attributions sum to J(1) - J(b)",
        },
        "zh": {
            "describe": "STP（随机阈值路径）：J = -loss 的积分梯度，每个头的门控在各自的随机阈值之后从基线 "
            "{baseline:g} 升到 1（各头按随机顺序开启，所有层联合），对 {path_samples} 条路径样本取平均"
            "（路径种子 {path_seed}）；积分：相邻阈值之间的每一段用固定的 {rule} 规则、{ig_steps} 个节点",
            "sign": "为正表示该头的门控从基线 b 升到 1 时提高 J = -loss（降低被 mask 的答案 token 的损失）；"
            "每条路径样本上所有头的归因之和等于 J(1) - J(b)",
        },
    }

    def validate(self) -> None:
        choice("--rule", self.rule, RULES)
        at_least("--ig-steps", self.ig_steps, 1)
        at_least("--path-samples", self.path_samples, 1)
        if self.scope != "joint":
            raise HeadattrError(
                f"--method stp moves all heads jointly; --scope {self.scope} is Gate-IG's (use --method gate-ig)"
            )
        if not 0.0 <= self.baseline < 1.0:
            raise HeadattrError(f"--baseline must be in [0, 1), got {self.baseline}")

    def thresholds(self, uid: str, index: int, shape: tuple[int, int]) -> np.ndarray:
        """u [L, H] of path sample `index` of the sample `uid`, from its own keyed stream."""
        seq = np.random.SeedSequence([STREAM_TAG, self.path_seed, int(uid, 16), index])
        return np.random.default_rng(seq).random(shape)

    def attribute(self, spec: ModelSpec, rows: Rows, batch_size: int, where: str) -> SampleAttribution:
        """Attributions [V, L, H] (mean over path samples) and, per variant and path sample, completeness."""
        shape = (spec.num_layers, spec.num_heads)
        u = np.stack([self.thresholds(rows.uid, p, shape) for p in range(self.path_samples)])
        return threshold_path_attribution(spec, rows, u, self.baseline, self.rule, self.ig_steps, batch_size, where)

    def summarize(self, diagnostics: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"completeness": completeness_from_diagnostics(diagnostics)}

    def summary_lines(self, summary: dict[str, Any]) -> list[str]:
        return completeness_lines(summary)


def piece_nodes(u: np.ndarray, rule: str, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes t [K], weights w [K] (piece length included) and each node's piece start [K].

    The pieces are the spans between consecutive distinct values of u (flattened) and 1; `steps` nodes of
    `rule` on each. With every u = 0 this is `rule` on [0, 1] itself.
    """
    kinks = np.unique(np.append(u.reshape(-1), 1.0))
    lo, width = kinks[:-1], np.diff(kinks)
    x, wx = nodes_and_weights(rule, steps)
    t = lo[:, None] + width[:, None] * x[None]
    return t.reshape(-1), (width[:, None] * wx[None]).reshape(-1), np.repeat(lo, steps)


def threshold_gates(u: np.ndarray, t: np.ndarray, b: float) -> np.ndarray:
    """g [K, L, H] at the nodes t [K] for thresholds u [L, H]."""
    return b + (1.0 - b) * np.clip((t[:, None, None] - u[None]) / (1.0 - u[None]), 0.0, 1.0)


def threshold_slopes(u: np.ndarray, piece_start: np.ndarray, b: float) -> np.ndarray:
    """dg/dt [K, L, H] on each node's piece: (1 - b) / (1 - u_h) once the head's threshold is passed.

    Decided by the piece's start, not the node, so a rule with nodes on a kink (Riemann) takes the slope of
    the piece the node stands for.
    """
    active = u[None] <= piece_start[:, None, None]
    return np.where(active, (1.0 - b) / (1.0 - u[None]), 0.0)


def threshold_path_attribution(
    spec: ModelSpec,
    rows: Rows,
    u: np.ndarray,
    b: float,
    rule: str,
    steps: int,
    batch_size: int,
    where: str,
) -> SampleAttribution:
    """STP for given thresholds u [P, L, H]: attributions [V, L, H] averaged over the P path samples.

    Diagnostics: j_full [V], j_baseline [V, P] (J with every gate at b, the same for every path sample) and
    completeness_error [V, P] = sum_h A_h(path p) - (J(1) - J(b)).
    """
    n_var, layers = rows.num_variants, list(range(spec.num_layers))
    all_v = all_variants(spec, rows)
    start = spec.backbone.entry_layer(0)
    with torch.no_grad():
        j_full = evaluate_j(spec, rows, all_v, {}, rows.deepest_cached, batch_size)
        base = torch.full((n_var, spec.num_layers, spec.num_heads), b, device=spec.device)
        j_base = evaluate_j(spec, rows, all_v, path_gates(layers, base), start, batch_size)
    per_path = []
    for u_p in u:
        t, w, piece_start = piece_nodes(u_p, rule, steps)
        gates = torch.tensor(threshold_gates(u_p, t, b), dtype=torch.float32, device=spec.device)
        # rows ordered (variant, node)
        v_idx = all_v.repeat_interleave(len(t))
        values = gates.repeat(n_var, 1, 1)
        _, grads = gate_gradients(spec, rows, v_idx, values, layers, start, batch_size, where)
        weighted = w[:, None, None] * threshold_slopes(u_p, piece_start, b)  # [K, L, H]
        per_path.append(np.einsum("klh,vklh->vlh", weighted, grads.reshape(n_var, len(t), *u_p.shape)))
    paths = np.stack(per_path, axis=1)  # [V, P, L, H]
    error = paths.sum(axis=(2, 3)) - (j_full - j_base)[:, None]
    diagnostics = {
        "j_full": j_full,
        "j_baseline": np.repeat(j_base[:, None], len(u), axis=1),
        "completeness_error": error,
    }
    return SampleAttribution(paths.mean(axis=1), diagnostics)
