"""Per-head keep ratios for block-sparse attention from head scores: `headattr budget`.

The allocation rule of the adaptive sparse-attention system for diffusion LMs that consumes head scores,
restated (every constant is a parameter):

1. Normalise globally: s = (x - P_low) / (P_high - P_low), clipped to [0, 1], where P_low and P_high are the
   `low_percentile` (5) and `high_percentile` (95) percentiles of all L*H scores (numpy's linear
   interpolation). If P_high == P_low the scale is a step: s = 0 below, 1 above, 0.5 at that value.
2. Weight: w = 1 + slope * 2 * (s - 0.5) (slope 2/3: w in [1/3, 5/3]); clamped to [min_weight, max_weight]
   ([0.1, 10]) and divided by the global mean of the weights, so the weights average exactly 1.
3. With `gqa="kv"`, the weights of the query heads that share a KV head (query heads j*g .. (j+1)*g - 1 for
   KV head j, g = H / KV, as `repeat_kv` lays them out) are averaged: one weight per KV head. Averaging
   equal-sized groups keeps the mean at 1, so it commutes with step 2's division.
4. Keep ratio = clamp(w * select, min_keep, 1): with no clamp active the mean keep ratio is `select`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from headattr.engine.sparse_mask import GQA, BudgetRule, group_kv, head_weights
from headattr.errors import HeadattrError
from headattr.runs.rundir import Run, atomic_write_json, read_run, run_sign


def allocation(scores: np.ndarray, rule: BudgetRule, gqa: str = "q", num_kv_heads: int | None = None) -> dict:
    """Weights and keep ratios ([L, H], or [L, KV] with gqa="kv") of `scores` under `rule`."""
    rule.check()
    if gqa not in GQA:
        raise HeadattrError(f"unknown --gqa {gqa!r}; choose q (per query head) or kv (per KV head)")
    weights = head_weights(scores, rule)
    if gqa == "kv":
        if num_kv_heads is None:
            raise HeadattrError("--gqa kv needs the number of KV heads: the run does not record it; pass --kv-heads")
        weights = group_kv(weights, int(num_kv_heads))
    keep = np.clip(weights * rule.select, rule.min_keep, 1.0)
    return {"weights": weights, "keep_ratios": keep}


def attention_budget(
    run: Run | str | Path,
    *,
    rule: BudgetRule | None = None,
    gqa: str = "q",
    num_kv_heads: int | None = None,
) -> dict[str, Any]:
    """The budget document (`headattr budget`'s JSON) of a run's scores."""
    run = run if isinstance(run, Run) else read_run(run)
    rule = rule or BudgetRule()
    model = run.meta.get("model") or {}
    kv = num_kv_heads if num_kv_heads is not None else model.get("num_kv_heads")
    result = allocation(run.scores, rule, gqa, kv if gqa == "kv" else None)
    keep = result["keep_ratios"]
    return {
        "format": "headattr-budget",
        "version": 1,
        "run": str(Path(run.path).resolve()),
        "model": model.get("name"),
        "config_hash": model.get("config_hash"),
        "sign_convention": run_sign(run.meta),
        "rule": {**asdict(rule), "gqa": gqa, "num_kv_heads": int(kv) if gqa == "kv" else None},
        "description": __doc__.split("\n\n", 1)[1].strip(),
        "heads": "kv" if gqa == "kv" else "query",
        "shape": list(keep.shape),
        "weights": result["weights"].tolist(),
        "keep_ratios": keep.tolist(),
        "mean_keep_ratio": float(keep.mean()),
        "clamped_low": int((keep <= rule.min_keep).sum()),
        "clamped_high": int((keep >= 1.0).sum()),
    }


def write_budget(doc: dict[str, Any], out: str | Path, overwrite: bool = False) -> Path:
    """Write a budget document atomically; refuses to replace a file without `overwrite`."""
    out = Path(out)
    if out.exists() and (out.is_dir() or not overwrite):
        raise HeadattrError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")
    atomic_write_json(out, doc)
    return out
