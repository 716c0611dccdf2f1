"""Head masks: which heads to remove given scores, and reading them back from `head_mask.json`.

`headattr prune` writes `head_mask.json`; `export --format head-mask` writes one from a run's scores.

Its `orders` map `most` and `least` to {fraction: [[layer, head], ...]} and `random` to a list of such
mappings, one per random order. `generate --head-mask` and the lm-eval model pick one (order, fraction).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from headattr.errors import HeadattrError
from headattr.models import ModelSpec

ORDERS = ("most", "least", "random")
HEAD_MASK_FORMAT = "headattr-head-mask"


def read_head_mask(
    path: str | Path, fraction: float, order: str = "most", random_index: int = 0, spec: ModelSpec | None = None
) -> list[tuple[int, int]]:
    """The (layer, head) pairs removed at `fraction` in `order` (random: order number `random_index`).

    With `spec`, the file must be for a model of the same shape and config hash.
    """
    data = _load(Path(path))
    orders = data.get("orders", {})
    if order not in orders:
        raise HeadattrError(f"{path} has no order {order!r}; it holds {', '.join(orders) or 'none'}")
    table = orders[order]
    if order == "random":
        if not 0 <= random_index < len(table):
            raise HeadattrError(f"{path} holds random orders 0..{len(table) - 1}; got --random-order {random_index}")
        table = table[random_index]
    matches = [key for key in table if abs(float(key) - fraction) < 1e-9]
    if not matches:
        raise HeadattrError(f"{path} has no fraction {fraction:g} for order {order}; it holds {', '.join(table)}")
    if spec is not None:
        _check_model(data, spec, path)
    return [(int(layer), int(head)) for layer, head in table[matches[0]]]


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise HeadattrError(f"head mask {path} does not exist; pass the head_mask.json that headattr prune wrote")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise HeadattrError(f"cannot read head mask {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != HEAD_MASK_FORMAT:
        raise HeadattrError(f"{path} is not a headattr head mask (format {HEAD_MASK_FORMAT!r})")
    return data


def _check_model(data: dict[str, Any], spec: ModelSpec, path: str | Path) -> None:
    shape = (data.get("num_layers"), data.get("num_heads"))
    if shape != (spec.num_layers, spec.num_heads):
        raise HeadattrError(
            f"head mask {path} is for {shape[0]} x {shape[1]} heads; "
            f"{spec.name} has {spec.num_layers} x {spec.num_heads}"
        )
    recorded = data.get("model", {}).get("config_hash")
    if recorded is not None and recorded != spec.config_hash:
        raise HeadattrError(f"head mask {path} was computed for another model (config hash {recorded[:12]})")


def head_order(scores: np.ndarray, how: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices into `scores` (flattened) in the order heads are removed.

    `most`: descending score; `least`: ascending score; in both, equal scores are removed in ascending index
    order (for [L, H] scores: by layer, then head), so the order is deterministic. `random`: a permutation
    drawn from `rng`, ignoring the scores.
    """
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.isfinite(flat).all():
        raise HeadattrError("the run's scores contain NaN or infinity; recompute the run")
    index = np.arange(flat.size)
    if how == "most":
        return np.lexsort((index, -flat))
    if how == "least":
        return np.lexsort((index, flat))
    if how == "random":
        if rng is None:
            raise ValueError("order 'random' needs a random generator")
        return rng.permutation(flat.size)
    raise ValueError(f"unknown pruning order {how!r}; choose one of {', '.join(ORDERS)}")


def num_to_remove(fraction: float, count: int) -> int:
    """round(fraction * count), halves rounded up (0.5 * 5 -> 3); the product is first rounded to 9 decimals
    so that decimal fractions behave as written (0.35 * 10 is 3.5, not 3.4999999999999996)."""
    if not 0.0 <= fraction <= 1.0:
        raise HeadattrError(f"pruning fraction {fraction} is outside [0, 1]; fix --fractions")
    return int(math.floor(round(fraction * count, 9) + 0.5))


def random_rng(seed: int, repetition: int) -> np.random.Generator:
    """The random stream of random order `repetition`, keyed by (seed, repetition) only.

    A fresh generator per call gives the same permutation at every fraction, so removals are nested.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, repetition]))


def heads_to_remove(
    scores: np.ndarray,
    order: str,
    fraction: float,
    per_layer: bool = False,
    rng: np.random.Generator | None = None,
) -> list[tuple[int, int]]:
    """The (layer, head) pairs removed at `fraction` in `order` (see `head_order`), sorted by (layer, head).

    Over all heads, `num_to_remove(fraction, L * H)` heads are removed; with `per_layer`,
    `num_to_remove(fraction, H)` heads in every layer, each layer ranked on its own (random: one permutation
    per layer, drawn in layer order). A larger fraction removes a superset of a smaller one's heads (for
    `random`, given a generator in the same state, e.g. a fresh `random_rng(seed, repetition)`).
    """
    scores = np.asarray(scores, dtype=np.float64)
    num_layers, num_heads = scores.shape
    if per_layer:
        k = num_to_remove(fraction, num_heads)
        removed = [(layer, int(h)) for layer in range(num_layers) for h in head_order(scores[layer], order, rng)[:k]]
    else:
        k = num_to_remove(fraction, scores.size)
        removed = [divmod(int(i), num_heads) for i in head_order(scores, order, rng)[:k]]
    return sorted(removed)
