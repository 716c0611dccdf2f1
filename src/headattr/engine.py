"""Gate-IG: integrated gradients of the masked-reconstruction objective over head gates.

The definition is `shared/spec/gate-ig.md`; this module computes it for one sample at a time:

    A[l, h] = (1 - b) * sum_k w_k * dJ/dg[l, h] (at g = b + a_k (1 - b)),   J = -loss(masked answer tokens)

Design, for speed without changing the numbers:

- weights are frozen; the only tensors requiring gradients are the gates;
- every (masked variant, quadrature node) pair is one row of a batch with its own gates, so one forward and
  one backward pass serve many rows (`batch_size` caps the rows; results do not depend on it);
- for models with a `Stack` (Dream, LLaDA), the hidden states entering every layer are computed once per
  variant with all gates at 1; gating layer l then re-runs only layers l..L-1 from the cached input of layer l
  (about (L+1)/2 layer-passes per layer on average instead of L);
- the LM head is applied only at the positions that predict a masked token.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

from .aggregate import POSTPROCESS
from .errors import HeadattrError
from .gates import gated
from .masking import Variant, make_variants
from .models import ModelSpec
from .quadrature import RULES, nodes_and_weights

SCOPES = ("layer", "joint")
LOSS_NORMALIZE = ("mean-masked", "sum")


@dataclass
class GateIGConfig:
    """Options of the attribution; defaults reproduce the seed report's configuration."""

    ig_steps: int = 8
    rule: str = "gauss-legendre"
    scope: str = "layer"
    baseline: float = 0.0
    mask_probs: tuple[float, ...] = (0.15, 0.3, 0.5, 0.7, 0.9)
    mask_samples_per_prob: int = 2
    mask_seed: int = 47
    loss_normalize: str = "mean-masked"
    postprocess: str = "signed"
    batch_size: int = 64

    def __post_init__(self) -> None:
        self.mask_probs = tuple(float(p) for p in self.mask_probs)
        self.validate()

    def validate(self) -> None:
        """Raise `HeadattrError` naming the first invalid option and its valid range."""
        _choice("--rule", self.rule, RULES)
        _choice("--scope", self.scope, SCOPES)
        _choice("--loss-normalize", self.loss_normalize, LOSS_NORMALIZE)
        _choice("--postprocess", self.postprocess, POSTPROCESS)
        if self.ig_steps < 1:
            raise HeadattrError(f"--ig-steps must be at least 1, got {self.ig_steps}")
        if not 0.0 <= self.baseline < 1.0:
            raise HeadattrError(f"--baseline must be in [0, 1), got {self.baseline}")
        if not self.mask_probs:
            raise HeadattrError("--mask-probs is empty; give at least one probability, e.g. 0.5")
        for p in self.mask_probs:
            if not 0.0 < p <= 1.0:
                raise HeadattrError(f"mask probability {p} is outside (0, 1]; fix --mask-probs")
        if self.mask_samples_per_prob < 1:
            raise HeadattrError(
                f"--mask-samples-per-prob must be at least 1, got {self.mask_samples_per_prob}"
            )
        if self.batch_size < 1:
            raise HeadattrError(f"--batch-size must be at least 1, got {self.batch_size}")

    @property
    def num_variants(self) -> int:
        return len(self.mask_probs) * self.mask_samples_per_prob


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise HeadattrError(f"unknown {flag} {value!r}; choose one of {', '.join(allowed)}")


@dataclass
class SampleAttribution:
    """Gate-IG of one sample. S is L for scope `layer` (one path per layer) and 1 for scope `joint`."""

    attributions: np.ndarray  # [V, L, H] float64, raw signed
    j_full: np.ndarray  # [V]: J with every gate at 1
    j_baseline: np.ndarray  # [V, S]: J with the path's gates at the baseline
    completeness_error: np.ndarray  # [V, S]: sum of A over the path's heads - (J(1) - J(b))


@dataclass
class VariantRows:
    """The variants of one sample as batched tensors, and where each variant's loss is taken."""

    ids: torch.Tensor  # [V, T]
    predict_at: list[torch.Tensor]  # per variant: positions whose logits predict a masked token
    labels: list[torch.Tensor]  # per variant: the original tokens there
    hidden_in: list[torch.Tensor] = field(default_factory=list)  # per layer l: input of layer l, [V, T, d]
    rope: tuple[torch.Tensor, torch.Tensor] | None = None

    def gather(self, v_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flattened (row, position, label) of the masked tokens of the rows whose variants are `v_idx`."""
        rows, pos, lab = [], [], []
        for r, v in enumerate(v_idx.tolist()):
            rows.append(torch.full_like(self.predict_at[v], r))
            pos.append(self.predict_at[v])
            lab.append(self.labels[v])
        return torch.cat(rows), torch.cat(pos), torch.cat(lab)


def autocast_for(spec: ModelSpec) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when the weights are bf16; plain precision otherwise."""
    if spec.device.type == "cuda" and spec.dtype == torch.bfloat16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _row_objective(
    logits: torch.Tensor, labels: torch.Tensor, owner: torch.Tensor, n_rows: int, normalize: str
) -> torch.Tensor:
    """J per row: minus the cross-entropy of its masked tokens, averaged (`mean-masked`) or summed."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits: loss in float32
    nll = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    loss = torch.zeros(n_rows, dtype=nll.dtype, device=nll.device).index_add(0, owner, nll)
    if normalize == "mean-masked":
        count = torch.zeros(n_rows, dtype=nll.dtype, device=nll.device).index_add(
            0, owner, torch.ones_like(nll)
        )
        loss = loss / count
    return -loss


def objective(spec: ModelSpec, rows: VariantRows, v_idx: torch.Tensor, start: int, normalize: str) -> torch.Tensor:
    """J for each row (row r is variant `v_idx[r]`), starting at layer `start`, under the caller's gates.

    Callers apply gates with `gates.gated` around this call *and* the backward pass: with gradient
    checkpointing the layers are recomputed during backward and must see the same gates.
    """
    owner, pos, labels = rows.gather(v_idx)
    owner, pos, labels = owner.to(spec.device), pos.to(spec.device), labels.to(spec.device)
    with autocast_for(spec):
        if spec.stack is not None:
            h = spec.stack.run(rows.hidden_in[start][v_idx], start, spec.num_layers, rows.rope)
            logits = spec.stack.logits(h[owner, pos])
        else:
            logits = spec.full_logits(rows.ids[v_idx])[owner, pos]
    return _row_objective(logits, labels, owner, len(v_idx), normalize)


def prepare_rows(spec: ModelSpec, variants: list[Variant], batch_size: int, cache_layers: bool) -> VariantRows:
    """Stack the variants; with a `Stack`, cache every layer's input (all gates 1) for reuse."""
    device = spec.device
    shift = 1 if spec.logit_shift else 0
    rows = VariantRows(
        ids=torch.stack([v.input_ids for v in variants]).to(device),
        predict_at=[v.positions - shift for v in variants],
        labels=[v.labels for v in variants],
    )
    if spec.stack is None:
        return rows
    stack = spec.stack
    with torch.no_grad(), autocast_for(spec):
        chunks = [stack.embed(rows.ids[i : i + batch_size]) for i in range(0, len(variants), batch_size)]
        h = torch.cat(chunks)
        rows.rope = stack.position_embeddings(h)
        rows.hidden_in = [h]
        if cache_layers:
            for layer in range(spec.num_layers - 1):
                h = torch.cat(
                    [
                        stack.run(h[i : i + batch_size], layer, layer + 1, rows.rope)
                        for i in range(0, len(variants), batch_size)
                    ]
                )
                rows.hidden_in.append(h)
    return rows


def _paths(spec: ModelSpec, scope: str) -> list[list[int]]:
    """The layers whose gates move together along one IG path."""
    if scope == "layer":
        return [[layer] for layer in range(spec.num_layers)]
    return [list(range(spec.num_layers))]


def _path_gates(layers: list[int], values: torch.Tensor) -> dict[int, torch.Tensor]:
    """Gate dict for `layers` from a [rows, len(layers), H] tensor."""
    return {layer: values[:, i] for i, layer in enumerate(layers)}


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def attribute_sample(
    spec: ModelSpec,
    input_ids: torch.Tensor | list[int] | tuple[int, ...],
    answer_start: int,
    answer_end: int,
    uid: str,
    cfg: GateIGConfig,
    name: str = "sample",
) -> SampleAttribution:
    """Gate-IG attributions of one sample's masked variants (`name` identifies it in error messages)."""
    if spec.mask_token_id is None:
        raise HeadattrError("no mask token known for this model; pass --mask-token-id")
    if spec.logit_shift and answer_start == 0:
        answer_start = 1  # with shifted logits, position 0 has no predictor
    if answer_end <= answer_start:
        raise HeadattrError(f"{name} has no answer token that can be predicted; check the dataset row")
    variants = make_variants(
        input_ids,
        answer_start,
        answer_end,
        uid,
        list(cfg.mask_probs),
        cfg.mask_samples_per_prob,
        cfg.mask_seed,
        spec.mask_token_id,
    )
    rows = prepare_rows(spec, variants, cfg.batch_size, cache_layers=cfg.scope == "layer")
    n_var, n_heads = len(variants), spec.num_heads
    nodes, weights = nodes_and_weights(cfg.rule, cfg.ig_steps)
    b = cfg.baseline
    alphas = torch.tensor(b + nodes * (1.0 - b), dtype=torch.float32)
    all_v = torch.arange(n_var, device=spec.device)
    paths = _paths(spec, cfg.scope)
    with torch.no_grad():
        # all gates 1: start from the deepest cached layer input (layer 0 when nothing beyond it is cached)
        j_full = _no_grad_objective(spec, rows, all_v, {}, max(len(rows.hidden_in) - 1, 0), cfg)
    attributions = np.zeros((n_var, spec.num_layers, n_heads))
    j_base = np.zeros((n_var, len(paths)))
    for p, layers in enumerate(paths):
        start = layers[0]
        # rows ordered (variant, node); each row's gates sit at its node's alpha on every layer of the path
        v_idx = all_v.repeat_interleave(len(alphas))
        a = alphas.repeat(n_var).to(spec.device)
        grads = np.zeros((len(v_idx), len(layers), n_heads))
        for sl in _chunks(len(v_idx), cfg.batch_size):
            g = a[sl, None, None].expand(-1, len(layers), n_heads).clone().requires_grad_(True)
            with gated(spec, _path_gates(layers, g)):
                j = objective(spec, rows, v_idx[sl], start, cfg.loss_normalize)
                (grad,) = torch.autograd.grad(j.sum(), g)
            _check_finite(j, grad, name)
            grads[sl] = grad.double().cpu().numpy()
        grads = grads.reshape(n_var, len(alphas), len(layers), n_heads)
        attributions[:, layers] = (1.0 - b) * np.einsum("k,vklh->vlh", weights, grads)
        with torch.no_grad():
            base = torch.full((n_var, len(layers), n_heads), b, device=spec.device)
            j_base[:, p] = _no_grad_objective(spec, rows, all_v, _path_gates(layers, base), start, cfg)
    sums = np.stack([attributions[:, layers].sum(axis=(1, 2)) for layers in paths], axis=1)
    error = sums - (j_full[:, None] - j_base)
    return SampleAttribution(attributions, j_full, j_base, error)


def _no_grad_objective(
    spec: ModelSpec,
    rows: VariantRows,
    v_idx: torch.Tensor,
    gates: dict[int, torch.Tensor],
    start: int,
    cfg: GateIGConfig,
) -> np.ndarray:
    """J of the rows `v_idx` in chunks of `batch_size`, as float64 numpy."""
    out = []
    for sl in _chunks(len(v_idx), cfg.batch_size):
        chunk_gates = {layer: g[sl] for layer, g in gates.items()}
        with gated(spec, chunk_gates):
            out.append(objective(spec, rows, v_idx[sl], start, cfg.loss_normalize).double().cpu())
    return torch.cat(out).numpy()


def _check_finite(j: torch.Tensor, grad: torch.Tensor, name: str) -> None:
    if not (torch.isfinite(j).all() and torch.isfinite(grad).all()):
        raise HeadattrError(
            f"non-finite loss or gradient on {name}; try --dtype float32, or drop the sample from the dataset"
        )
