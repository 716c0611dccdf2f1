"""Small helpers the methods share: batched J, batched gate gradients, gate dicts, the finiteness check.

Every helper goes through the core (`core.objective` under `gates.gated`); rows of a batch never interact,
so results do not depend on `batch_size`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core import Rows, chunks, objective
from ..errors import HeadattrError
from ..gates import gated
from ..models import ModelSpec


def path_gates(layers: list[int], values: torch.Tensor) -> dict[int, torch.Tensor]:
    """Gate dict for `layers` from a [rows, len(layers), H] tensor."""
    return {layer: values[:, i] for i, layer in enumerate(layers)}


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
    (`heads`: layer `start`'s head outputs, see `core.objective`).

    Callers disable gradients; this only batches.
    """
    out = []
    for sl in chunks(len(v_idx), batch_size):
        with gated(spec, {layer: g[sl] for layer, g in gates.items()}):
            out.append(objective(spec, rows, v_idx[sl], start, heads=heads).j.double().cpu())
    return torch.cat(out).numpy()


def gate_gradients(
    spec: ModelSpec,
    rows: Rows,
    v_idx: torch.Tensor,
    values: torch.Tensor,
    layers: list[int],
    start: int,
    batch_size: int,
    where: str,
    heads: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """J [R] and dJ/dg [R, len(layers), H] (float64) of row r = variant `v_idx[r]` at gates `values[r]`.

    `values` [R, len(layers), H] are the gates of `layers` (other layers stay at 1); every pass starts at
    `start` (a layer whose input is cached and which precedes every gated layer; with `heads`, that layer's
    head outputs, the pass starts at its o_proj). One forward and one backward pass per chunk of `batch_size`
    rows.
    """
    j_out = np.zeros(len(v_idx))
    grads = np.zeros((len(v_idx), len(layers), spec.num_heads))
    for sl in chunks(len(v_idx), batch_size):
        g = values[sl].clone().requires_grad_(True)
        with gated(spec, path_gates(layers, g)):
            j = objective(spec, rows, v_idx[sl], start, heads=heads).j
            (grad,) = torch.autograd.grad(j.sum(), g)
        check_finite(j, grad, where)
        j_out[sl] = j.detach().double().cpu().numpy()
        grads[sl] = grad.double().cpu().numpy()
    return j_out, grads


def check_finite(j: torch.Tensor, grad: torch.Tensor, where: str) -> None:
    """Raise a one-line error when a loss or gradient is NaN or infinite."""
    if not (torch.isfinite(j).all() and torch.isfinite(grad).all()):
        raise HeadattrError(
            f"non-finite loss or gradient on {where}; try --dtype float32, or drop the sample from the dataset"
        )


def all_variants(spec: ModelSpec, rows: Rows) -> torch.Tensor:
    """[V] the index of every variant of `rows`, on the model's device."""
    return torch.arange(rows.num_variants, device=spec.device)
