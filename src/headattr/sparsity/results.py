"""The result of `headattr sparse` and sparse.json: per configuration accuracy, budget used and speed; paired
comparisons of adaptive against uniform and against dense at every budget and metric."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headattr.errors import HeadattrError
from headattr.generation.scoring import accuracy
from headattr.sparsity.evaluate import ConfigOutcome
from headattr.sparsity.settings import SparseEvalSettings
from headattr.stats.paired import A_BETTER, B_BETTER, compare_paired

FORMAT = "headattr-sparse/1"
PAIRS = (("adaptive", "uniform"), ("adaptive", "dense"))  # (A, B) of the paired comparisons


@dataclass
class ConfigRecord:
    """One configuration's measurements. `keep` [L, H] (None: dense); `correct` metric -> bool [N]."""

    allocation: str
    select: float | None
    draw: int | None
    keep: np.ndarray | None
    budget_used: float | None
    seconds: float
    generated_tokens: int
    correct: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        if self.allocation == "dense":
            return "dense"
        return f"{self.allocation}{'' if self.draw is None else f'#{self.draw}'}@{self.select:g}"

    @property
    def keep_mean(self) -> float | None:
        return None if self.keep is None else float(np.mean(self.keep))

    @property
    def seconds_per_token(self) -> float | None:
        return self.seconds / self.generated_tokens if self.generated_tokens else None

    @classmethod
    def from_outcome(cls, o: ConfigOutcome) -> ConfigRecord:
        c = o.configuration
        return cls(c.allocation, c.select, c.draw, c.keep, o.budget_used, o.seconds, o.generated, dict(o.correct))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "allocation": self.allocation,
            "select": self.select,
            "draw": self.draw,
            "keep_mean": self.keep_mean,
            "budget_used": self.budget_used,
            "seconds": self.seconds,
            "generated_tokens": self.generated_tokens,
            "seconds_per_token": self.seconds_per_token,
            "accuracy": {m: accuracy(list(v)) for m, v in self.correct.items()},
            "correct": {m: [int(x) for x in v] for m, v in self.correct.items()},
            "keep": None if self.keep is None else self.keep.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConfigRecord:
        keep = None if d["keep"] is None else np.asarray(d["keep"], dtype=np.float64)
        correct = {m: np.asarray(v, dtype=bool) for m, v in d["correct"].items()}
        return cls(
            d["allocation"],
            d["select"],
            d["draw"],
            keep,
            d["budget_used"],
            d["seconds"],
            d["generated_tokens"],
            correct,
        )


@dataclass
class SparseResult:
    """Everything sparse.json holds; `comparisons()` are recomputed from the per-item outcomes (seeded)."""

    settings: SparseEvalSettings
    task: str
    metrics: tuple[str, ...]
    records: list[ConfigRecord]
    info: dict[str, Any] = field(default_factory=dict)  # model, run, eval items, generation settings and seed

    def record(self, allocation: str, select: float | None = None) -> ConfigRecord | None:
        """The first record of `allocation` at `select` (dense: any select); None when it was not run."""
        for r in self.records:
            if r.allocation == allocation and (allocation == "dense" or r.select == select):
                return r
        return None

    def comparisons(self) -> list[dict[str, Any]]:
        """Per metric, select and pair of `PAIRS` that was run: the paired comparison of A against B."""
        out = []
        for metric in self.metrics:
            for select in self.settings.selects:
                for name_a, name_b in PAIRS:
                    a, b = self.record(name_a, select), self.record(name_b, select)
                    if a is None or b is None:
                        continue
                    c = compare_paired(
                        a.correct[metric],
                        b.correct[metric],
                        seed=self.settings.bootstrap_seed,
                        resamples=self.settings.resamples,
                    )
                    out.append({"metric": metric, "select": select, "a": a.name, "b": b.name, **c.to_dict()})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "settings": self.settings.to_meta(),
            "task": {"name": self.task, "metrics": list(self.metrics), "interval": "Wilson score interval, 95%"},
            **self.info,
            "configurations": [r.to_dict() for r in self.records],
            "comparisons": self.comparisons(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SparseResult:
        if d.get("format") != FORMAT:
            raise HeadattrError(f"not a sparse.json of this headattr (format {d.get('format')!r}, expected {FORMAT})")
        skip = {"format", "settings", "task", "configurations", "comparisons"}
        return cls(
            SparseEvalSettings.from_meta(d["settings"]),
            d["task"]["name"],
            tuple(d["task"]["metrics"]),
            [ConfigRecord.from_dict(c) for c in d["configurations"]],
            {k: v for k, v in d.items() if k not in skip},
        )


def build_result(
    outcomes: list[ConfigOutcome], settings: SparseEvalSettings, task_name: str, info: dict[str, Any]
) -> SparseResult:
    """The result of `evaluate_sparse`'s outcomes (`info`: model, run, eval and generation descriptions)."""
    metrics = tuple(outcomes[0].correct) if outcomes else ()
    return SparseResult(settings, task_name, metrics, [ConfigRecord.from_outcome(o) for o in outcomes], dict(info))


def named_verdict(comparison: dict[str, Any]) -> str:
    """A `sparse.json` comparison's verdict with the better configuration named ("B better" -> "uniform@0.3
    better"); "not distinguishable at this n" as it is."""
    a, b, verdict = comparison["a"], comparison["b"], comparison["verdict"]
    return {A_BETTER: f"{a} better", B_BETTER: f"{b} better"}.get(verdict, verdict)
