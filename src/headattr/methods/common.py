"""Small helpers the methods share: batched J, batched gate gradients, gate dicts, the finiteness check.

Every helper goes through the core (`core.objective` under `gates.gated`); rows of a batch never interact,
so results do not depend on `batch_size`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from headattr.engine.core import Join, Rows, chunks, joined_objective, objective
from headattr.engine.gates import gated
from headattr.errors import HeadattrError
from headattr.models import ModelSpec


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
    ((j, grads),) = joined_gate_gradients(
        spec, rows, [GatedRows(Join(start, v_idx, heads), layers, values)], batch_size, where
    )
    return j, grads


@dataclass(frozen=True)
class GatedRows:
    """Rows entering a pass at `join.start` with their own gates `values` [R, len(layers), H] on `layers`
    (each at or after `join.start`; every other layer at 1 for these rows)."""

    join: Join
    layers: list[int]
    values: torch.Tensor


def joined_gate_gradients(
    spec: ModelSpec, rows: Rows, groups: list[GatedRows], batch_size: int, where: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per group: J [R] and dJ/dg [R, len(layers), H] (float64), as `gate_gradients` gives for each group alone.

    Groups enter at strictly ascending layers. Each group's rows are cut into pieces of at most `batch_size`
    rows, exactly as `gate_gradients` cuts them; consecutive pieces share a pass (`core.joined_objective`)
    while it holds at most `batch_size` rows, so the paths of different layers share forward and backward
    passes and every row meets the same piece boundaries as in a pass of its own group.
    """
    out = [(np.zeros(len(g.join.v_idx)), np.zeros((len(g.join.v_idx), len(g.layers), spec.num_heads))) for g in groups]
    for pieces in _pack(groups, batch_size):
        parts = [(i, r, groups[i].values[r].clone().requires_grad_(True)) for i, r in pieces]
        joins = [Join(groups[i].join.start, groups[i].join.v_idx[r], groups[i].join.heads) for i, r, _ in parts]
        with gated(spec, _pass_gates(spec, groups, parts)):
            j = joined_objective(spec, rows, joins).j
            grad_list = torch.autograd.grad(j.sum(), [gv for _, _, gv in parts])
        at = 0
        for (i, r, gv), grad in zip(parts, grad_list, strict=True):
            j_part = j[at : at + len(gv)]
            check_finite(j_part, grad, where)
            out[i][0][r] = j_part.detach().double().cpu().numpy()
            out[i][1][r] = grad.double().cpu().numpy()
            at += len(gv)
    return out


def _pack(groups: list[GatedRows], batch_size: int) -> list[list[tuple[int, slice]]]:
    """Passes of (group index, its rows): each group's `chunks`, consecutive ones packed up to `batch_size` rows
    (a group's pieces before its last are full, so no pass holds two pieces of one group)."""
    passes: list[list[tuple[int, slice]]] = []
    size = batch_size
    for i, g in enumerate(groups):
        for sl in chunks(len(g.join.v_idx), batch_size):
            rows = sl.stop - sl.start
            if size + rows > batch_size:
                passes.append([])
                size = 0
            passes[-1].append((i, sl))
            size += rows
    return passes


def _pass_gates(
    spec: ModelSpec, groups: list[GatedRows], parts: list[tuple[int, slice, torch.Tensor]]
) -> dict[int, torch.Tensor]:
    """Gates [rows inside the pass at l, H] per gated layer l: each part's own where it gates l, 1 where it
    does not; parts that have not joined yet at l are not inside the pass there."""
    gates: dict[int, torch.Tensor] = {}
    for layer in sorted({layer for i, _, _ in parts for layer in groups[i].layers}):
        pieces = []
        for i, _, gv in parts:
            g = groups[i]
            if g.join.start > layer:
                break
            pieces.append(gv[:, g.layers.index(layer)] if layer in g.layers else torch.ones_like(gv[:, 0]))
        gates[layer] = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    return gates


def check_finite(j: torch.Tensor, grad: torch.Tensor, where: str) -> None:
    """Raise a one-line error when a loss or gradient is NaN or infinite."""
    if not (torch.isfinite(j).all() and torch.isfinite(grad).all()):
        raise HeadattrError(
            f"non-finite loss or gradient on {where}; try --dtype float32, or drop the sample from the dataset"
        )


def all_variants(spec: ModelSpec, rows: Rows) -> torch.Tensor:
    """[V] the index of every variant of `rows`, on the model's device."""
    return torch.arange(rows.num_variants, device=spec.device)
