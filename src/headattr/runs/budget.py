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

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headattr.errors import HeadattrError
from headattr.runs.rundir import Run, atomic_write_json, read_run, run_sign

GQA = ("q", "kv")


@dataclass(frozen=True)
class BudgetRule:
    """The parameters of the allocation rule (module docstring)."""

    select: float = 0.3
    min_keep: float = 0.1
    low_percentile: float = 5.0
    high_percentile: float = 95.0
    slope: float = 2.0 / 3.0
    min_weight: float = 0.1
    max_weight: float = 10.0

    def check(self) -> None:
        """Raise HeadattrError for parameters outside their meaningful ranges."""
        if not all(math.isfinite(v) for v in asdict(self).values()):
            raise HeadattrError("budget parameters must be finite numbers")
        if not 0.0 < self.select <= 1.0:
            raise HeadattrError(f"--select {self.select}: give the mean keep ratio in (0, 1]")
        if not 0.0 <= self.min_keep <= 1.0:
            raise HeadattrError(f"--min-keep {self.min_keep}: give a keep ratio in [0, 1]")
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise HeadattrError(
                f"--low-percentile {self.low_percentile} / --high-percentile {self.high_percentile}: "
                "need 0 <= low < high <= 100"
            )
        if not 0.0 < self.min_weight <= self.max_weight:
            raise HeadattrError(f"--min-weight {self.min_weight} / --max-weight {self.max_weight}: need 0 < min <= max")


def normalised_scores(scores: np.ndarray, low_percentile: float, high_percentile: float) -> np.ndarray:
    """Step 1: scores [L, H] mapped to [0, 1] between two global percentiles."""
    x = np.asarray(scores, dtype=np.float64)
    lo, hi = np.percentile(x, [low_percentile, high_percentile])
    if hi > lo:
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return np.where(x < lo, 0.0, np.where(x > hi, 1.0, 0.5))


def head_weights(scores: np.ndarray, rule: BudgetRule) -> np.ndarray:
    """Steps 1-2: [L, H] relative weights with global mean 1."""
    s = normalised_scores(scores, rule.low_percentile, rule.high_percentile)
    w = np.clip(1.0 + rule.slope * 2.0 * (s - 0.5), rule.min_weight, rule.max_weight)
    return w / w.mean()


def group_kv(weights: np.ndarray, num_kv_heads: int) -> np.ndarray:
    """Step 3: [L, H] -> [L, KV], the mean over each KV head's query heads."""
    num_layers, num_heads = weights.shape
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise HeadattrError(f"{num_heads} query heads cannot share {num_kv_heads} KV heads evenly; check --kv-heads")
    return weights.reshape(num_layers, num_kv_heads, num_heads // num_kv_heads).mean(axis=2)


def keep_ratios(scores: np.ndarray, rule: BudgetRule, gqa: str = "q", num_kv_heads: int | None = None) -> dict:
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
    result = keep_ratios(run.scores, rule, gqa, kv if gqa == "kv" else None)
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
