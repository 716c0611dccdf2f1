"""What a pruning experiment measured (`PruneResult`) and its JSON forms: pruning.json and head_mask.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headattr.engine.masking import MaskConfig
from headattr.pruning.evaluation import Metrics, measured_metrics
from headattr.pruning.verdicts import mean_interval, pruning_verdicts, verdict_rng
from headattr.runs.headmask import HEAD_MASK_FORMAT
from headattr.stats.intervals import wilson_interval

PRUNING_FORMAT = "headattr-pruning"


@dataclass
class PruneResult:
    """Everything `prune` measured. Arrays: [F] per ordered order, [R, F] for random, [L, H] per head."""

    fractions: list[float]
    orders: list[str]
    per_layer: bool
    seed: int
    num_removed: list[int]  # heads removed at each fraction (in all)
    baseline: Metrics
    curves: dict[str, dict[str, np.ndarray]]  # order -> metric -> [F] (most/least) or [R, F] (random)
    removed: dict[str, list[list[list[tuple[int, int]]]]]  # order -> repetition -> fraction -> heads
    config: MaskConfig
    decode: bool
    scores: np.ndarray
    rank_by: str = "score"
    single_head: dict[str, Any] | None = None
    eval_info: dict[str, Any] = field(default_factory=dict)
    run_info: dict[str, Any] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    task_eval: dict[str, Any] | None = None  # GenerationEval.describe(), when answers were generated

    @property
    def display_orders(self) -> list[str]:
        """The measured orders in the order tables and figures show them: most, random, least."""
        return [o for o in ("most", "random", "least") if o in self.orders]

    @property
    def metrics(self) -> list[str]:
        task = [f"task_{m}" for m in self.task_eval["metrics"]] if self.task_eval else []
        return measured_metrics(self.decode) + task

    def interval(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """95% Wilson interval (low, high) of task accuracies `values` (any shape) over the evaluated samples."""
        n = int(self.eval_info["samples"])
        flat = [wilson_interval(int(round(v * n)), n) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
        bounds = np.array(flat).reshape(*np.shape(values), 2)
        return bounds[..., 0], bounds[..., 1]

    def task_summary(self) -> dict[str, Any] | None:
        """JSON-ready task accuracies with their 95% intervals: baseline and per order (random: per order run)."""
        if not self.task_eval:
            return None
        out: dict[str, Any] = {**self.task_eval, "baseline": {}, "curves": {}}
        for metric in self.metrics[-len(self.task_eval["metrics"]) :]:
            base = self.baseline.value(metric)
            low, high = self.interval(np.array(base))
            out["baseline"][metric] = {"accuracy": base, "low": float(low), "high": float(high)}
            for order in self.orders:
                values = self.curves[order][metric]
                low, high = self.interval(values)
                entry = {"accuracy": values.tolist(), "low": low.tolist(), "high": high.tolist()}
                out["curves"].setdefault(order, {})[metric] = entry
        return out

    def random_summary(self, metric: str) -> dict[str, np.ndarray]:
        """Mean, standard deviation (population), minimum and maximum over the random orders, per fraction."""
        runs = self.curves["random"][metric]
        return {"mean": runs.mean(0), "std": runs.std(0), "min": runs.min(0), "max": runs.max(0)}

    def random_interval(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """[F] bounds of the 95% bootstrap interval of the random orders' mean (the verdicts' interval)."""
        _, low, high = mean_interval(self.curves["random"][metric], verdict_rng(self.seed, self.metrics.index(metric)))
        return low, high

    def verdicts(self) -> dict[str, Any]:
        """Per metric: is `most` worse than random removal and `least` better, beyond the random mean's 95%
        interval? See `pruning_verdicts` (empty when `most`, `least` or `random` was not measured)."""
        if not {"most", "least", "random"} <= set(self.orders):
            return {}
        return pruning_verdicts(self.fractions, self.metrics, self.baseline, self.curves, self.seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready `pruning.json` (NaN never appears: unmeasured values are null)."""
        curves: dict[str, Any] = {}
        for order in self.orders:
            entry: dict[str, Any] = {"num_removed": self.num_removed}
            for metric in self.metrics:
                if order == "random":
                    summary = {k: _floats(v) for k, v in self.random_summary(metric).items()}
                    entry[metric] = {**summary, "runs": [_floats(r) for r in self.curves[order][metric]]}
                else:
                    entry[metric] = _floats(self.curves[order][metric])
            curves[order] = entry
        return {
            "format": PRUNING_FORMAT,
            "version": 1,
            "model": self.model_info,
            "run": self.run_info,
            "settings": {
                "fractions": self.fractions,
                "orders": self.orders,
                "random_orders": len(self.removed.get("random", [])),
                "seed": self.seed,
                "per_layer": self.per_layer,
                "rank_by": self.rank_by,
                "rounding": "heads removed = round(fraction * count), halves up; count = L*H, or H per layer",
                "ties": "equal scores are removed in (layer, head) order, for most and least alike",
                "loss": "mean-masked cross-entropy of the masked answer tokens (the attribution objective, -J)",
                "mask_probs": list(self.config.mask_probs),
                "mask_samples_per_prob": self.config.mask_samples_per_prob,
                "mask_seed": self.config.mask_seed,
                "exact_match": self.decode,
            },
            "eval": self.eval_info,
            "baseline": self.baseline.to_dict(),
            "curves": curves,
            "verdicts": self.verdicts(),
            "single_head": self.single_head,
            "task": self.task_summary(),
            "timings": self.timings,
        }

    def head_mask(self) -> dict[str, Any]:
        """JSON-ready `head_mask.json`: the (layer, head) pairs removed per order and fraction."""
        orders: dict[str, Any] = {}
        for order, reps in self.removed.items():
            per_rep = [
                {f"{frac:g}": [list(h) for h in heads] for frac, heads in zip(self.fractions, rep, strict=True)}
                for rep in reps
            ]
            orders[order] = per_rep if order == "random" else per_rep[0]
        return {
            "format": HEAD_MASK_FORMAT,
            "version": 1,
            "model": self.model_info,
            "run": self.run_info,
            "per_layer": self.per_layer,
            "rank_by": self.rank_by,
            "seed": self.seed,
            "num_layers": int(self.scores.shape[0]),
            "num_heads": int(self.scores.shape[1]),
            "note": "each list holds [layer, head] pairs to gate to 0; random holds one mapping per random order",
            "orders": orders,
        }


def _floats(x: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(x, dtype=np.float64).reshape(-1)]
