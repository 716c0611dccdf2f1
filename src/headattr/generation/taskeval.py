"""Task accuracy of generated answers under head-gate configurations (`headattr prune --eval generate`).

For every (gate configuration, sample) pair the sample's prompt (`input_ids[:answer_start]`) is completed by
`headattr.generate` with the given settings, cut at EOS and decoded, then scored against the sample's answer
(its answer tokens decoded) by a `scoring.Task`. Pairs are batched with one gate row each; generation gives a
prompt the same tokens in any batch, so the grouping does not change the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from headattr.data.tokens import Sample
from headattr.engine.gates import row_gates
from headattr.engine.sparse_schedule import SparseAttention
from headattr.generation.sampling import completion_text, generate, resolve_settings
from headattr.generation.scoring import Task, parse_task
from headattr.generation.sparse import resolve_sparse
from headattr.models import ModelSpec
from headattr.stats.intervals import wilson_interval


@dataclass(frozen=True)
class GenerationEval:
    """What `--eval generate` runs: the scoring task, the generation settings, rows per batch, the seed, and
    block-sparse attention (`sparse`, None: dense)."""

    task: Task
    settings: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    seed: int = 0
    sparse: SparseAttention | None = None

    @classmethod
    def from_text(
        cls,
        task: str,
        settings: dict[str, Any],
        batch_size: int = 64,
        seed: int = 0,
        sparse: SparseAttention | None = None,
    ) -> GenerationEval:
        return cls(parse_task(task), dict(settings), batch_size, seed, sparse)

    def describe(self, spec: ModelSpec) -> dict[str, Any]:
        """JSON-ready description, with the settings resolved against the model's family defaults (and the
        sparse settings as given, when sparse)."""
        out = {
            "task": self.task.name,
            "metrics": list(self.task.metrics),
            "settings": resolve_settings(spec, self.settings),
            "seed": self.seed,
            "interval": "Wilson score interval, 95%",
            "completion": "generated tokens up to the first EOS, decoded without special tokens",
        }
        if self.sparse is not None:
            out["sparse"] = self.sparse.to_meta()
        return out


def generation_correct(
    spec: ModelSpec,
    samples: Sequence[Sample],
    gates: np.ndarray | torch.Tensor,
    evaluation: GenerationEval,
    *,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Per metric, bool [C, N]: whether configuration c ([C, L, H] gates) answers sample n correctly."""
    gates = torch.as_tensor(np.asarray(gates, dtype=np.float32))
    n_conf, n_samp = gates.shape[0], len(samples)
    prompts = [list(s.input_ids[: s.answer_start]) for s in samples]
    answers = [spec.tokenizer.decode(list(s.input_ids[s.answer_start : s.answer_end])) for s in samples]
    # longest prompts first, so that a batch holds prompts of similar length (less padding)
    pairs = sorted(((c, n) for c in range(n_conf) for n in range(n_samp)), key=lambda p: -len(prompts[p[1]]))
    correct = {m: np.zeros((n_conf, n_samp), dtype=bool) for m in evaluation.task.metrics}
    sparse = None if evaluation.sparse is None else resolve_sparse(spec, evaluation.sparse)
    size = max(1, evaluation.batch_size)
    for i in tqdm(range(0, len(pairs), size), desc="generate", disable=not progress, leave=False):
        chunk = pairs[i : i + size]
        rows = gates[[c for c, _ in chunk]].to(device=spec.device, dtype=spec.dtype)
        out = generate(
            spec,
            [prompts[n] for _, n in chunk],
            gates=row_gates(rows),
            seed=evaluation.seed,
            sparse=sparse,
            **evaluation.settings,
        )
        width = max(len(prompts[n]) for _, n in chunk)
        for (c, n), row in zip(chunk, out, strict=True):
            scored = evaluation.task.score(completion_text(spec, row[width:]), answers[n])
            for metric, ok in scored.items():
                correct[metric][c, n] = ok
    return correct


def generation_curves(
    spec: ModelSpec,
    samples: Sequence[Sample],
    gates: np.ndarray | torch.Tensor,
    evaluation: GenerationEval,
    *,
    progress: bool = False,
) -> dict[str, dict[str, np.ndarray]]:
    """Per metric: `accuracy`, `low`, `high` (95% Wilson) and `correct` counts, each [C], for [C, L, H] gates."""
    correct = generation_correct(spec, samples, gates, evaluation, progress=progress)
    out = {}
    for metric, hits in correct.items():
        k = hits.sum(axis=1)
        bounds = np.array([wilson_interval(int(x), len(samples)) for x in k]).reshape(-1, 2)
        out[metric] = {"accuracy": k / len(samples), "low": bounds[:, 0], "high": bounds[:, 1], "correct": k}
    return out
