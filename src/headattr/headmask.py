"""Reading the heads to remove from `head_mask.json`, the file `headattr prune` writes.

Its `orders` map `most` and `least` to {fraction: [[layer, head], ...]} and `random` to a list of such
mappings, one per random order. `generate --head-mask` and the lm-eval model pick one (order, fraction).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import HeadattrError
from .models import ModelSpec
from .pruning import HEAD_MASK_FORMAT


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
