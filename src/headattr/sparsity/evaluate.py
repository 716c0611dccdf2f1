"""Generate every held-out item dense and under each allocation, score it, time it, and read the budget used.

The model is reached through one injected function, `generate_fn` (a `GenerateFn`):

    generate_fn(spec, prompt_ids, *, sparse, seed, on_usage, **settings) -> ids [B, P + N]

with `prompt_ids` a list of B prompts (left-padded by the callee), `sparse` a `SparseAttention` or None
(dense), and `on_usage` None or a callback given the budget each row used at each mask build (one per
generation, or by default per LLaDA generation block: `engine.sparse_schedule.row_densities`). The default,
`sampling_generate`, is `headattr.generate` under `generation.sparse.recording_usage`; the tests pass a
deterministic fake.

Per configuration: correctness per item and metric (`task.score` of the completion cut at EOS against the
decoded answer tokens), seconds per generated token (wall time of its `generate_fn` calls over B * N
generated positions), and the budget used: the mean over the generated rows (every `on_usage` call's) of
`row_densities`, the fraction of attended key blocks per layer, head and query block of a row's own blocks
(None when nothing reported masks).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from headattr.data.tokens import Sample
from headattr.engine.sparse_schedule import SparseAttention
from headattr.errors import HeadattrError
from headattr.generation.sampling import completion_text
from headattr.generation.scoring import Task
from headattr.models import ModelSpec
from headattr.sparsity.allocations import Configuration, configurations
from headattr.sparsity.settings import SparseEvalSettings


class GenerateFn(Protocol):
    """How the evaluation generates (see the module docstring)."""

    def __call__(
        self,
        spec: ModelSpec,
        prompt_ids: list[list[int]],
        *,
        sparse: SparseAttention | None,
        seed: int,
        on_usage: Callable[[list[float]], None] | None,
        **settings: Any,
    ) -> Any: ...


def sampling_generate(spec, prompt_ids, *, sparse, seed, on_usage, **settings):
    """`headattr.generate(spec, prompt_ids, sparse=..., seed=..., **settings)`, the budget each row used passed to
    `on_usage` (`generation.sparse.recording_usage`)."""
    from headattr.generation.sampling import generate
    from headattr.generation.sparse import recording_usage

    with recording_usage() as usage:
        out = generate(spec, prompt_ids, sparse=sparse, seed=seed, **settings)
    if on_usage is not None and sparse is not None:
        on_usage(usage)
    return out


@dataclass
class ConfigOutcome:
    """What one configuration measured: correct [N] per metric, seconds, generated positions, densities (one
    per row of each mask build)."""

    configuration: Configuration
    correct: dict[str, np.ndarray]
    seconds: float
    generated: int
    densities: list[float] = field(default_factory=list)

    @property
    def seconds_per_token(self) -> float:
        return self.seconds / self.generated if self.generated else float("nan")

    @property
    def budget_used(self) -> float | None:
        """The mean density over the rows of the mask builds, 1.0 for dense, None when no build was reported."""
        if self.configuration.allocation == "dense":
            return 1.0
        return float(np.mean(self.densities)) if self.densities else None


def sparse_attention(config: Configuration, settings: SparseEvalSettings) -> SparseAttention | None:
    """The `SparseAttention` of a configuration (None: dense)."""
    if config.keep is None:
        return None
    return SparseAttention(
        keep=config.keep,
        skip=settings.skip,
        block_size=settings.block_size,
        select=config.select,
        min_keep=settings.min_keep,
        gqa=settings.gqa,
        compat=settings.compat,
        kernel=settings.kernel,
    )


@dataclass(frozen=True)
class EvalContext:
    """What every configuration shares: the settings, the scoring task, how to generate (the function, the
    sampler settings, the sampler seed) and prompts per call."""

    settings: SparseEvalSettings
    task: Task
    generate_fn: GenerateFn
    generation: dict[str, Any]
    seed: int
    batch_size: int


def run_configuration(
    spec: ModelSpec, samples: Sequence[Sample], answers: Sequence[str], config: Configuration, context: EvalContext
) -> ConfigOutcome:
    """Generate and score every sample under one configuration, `context.batch_size` prompts per call."""
    prompts = [list(s.input_ids[: s.answer_start]) for s in samples]
    order = sorted(range(len(samples)), key=lambda i: -len(prompts[i]))  # similar lengths batch together
    outcome = ConfigOutcome(config, {m: np.zeros(len(samples), dtype=bool) for m in context.task.metrics}, 0.0, 0)
    sparse = sparse_attention(config, context.settings)
    on_usage = outcome.densities.extend if sparse is not None else None
    for start in range(0, len(order), context.batch_size):
        chunk = order[start : start + context.batch_size]
        began = time.perf_counter()
        out = context.generate_fn(
            spec, [prompts[i] for i in chunk], sparse=sparse, seed=context.seed, on_usage=on_usage,
            **context.generation,
        )  # fmt: skip
        outcome.seconds += time.perf_counter() - began
        width = max(len(prompts[i]) for i in chunk)
        for i, row in zip(chunk, out, strict=True):
            outcome.generated += len(row) - width
            for metric, ok in context.task.score(completion_text(spec, row[width:]), answers[i]).items():
                outcome.correct[metric][i] = ok
    return outcome


def evaluate_sparse(
    spec: ModelSpec,
    scores: np.ndarray,
    samples: Sequence[Sample],
    task: Task,
    settings: SparseEvalSettings | None = None,
    *,
    generation: dict[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    generate_fn: GenerateFn | None = None,
    progress: bool = False,
) -> list[ConfigOutcome]:
    """Every configuration of `settings` (dense first; `allocations.configurations`) on every sample.

    `scores` [L, H]: the head scores the allocations come from; `samples`: held-out items (their prompt is
    `input_ids[:answer_start]`, their answer the decoded answer tokens); `generation`: the family's sampler
    settings; `seed`: the sampler's seed (the same for every configuration, so differences are the attention's).
    """
    settings = settings or SparseEvalSettings()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (spec.num_layers, spec.num_heads):
        raise HeadattrError(f"scores have shape {scores.shape}; the model has {spec.num_layers} x {spec.num_heads}")
    if not samples:
        raise HeadattrError("no evaluation samples to generate")
    if batch_size < 1:
        raise HeadattrError(f"--batch-size must be at least 1, got {batch_size}")
    answers = [spec.tokenizer.decode(list(s.input_ids[s.answer_start : s.answer_end])) for s in samples]
    context = EvalContext(settings, task, generate_fn or sampling_generate, dict(generation or {}), seed, batch_size)
    configs = configurations(settings, scores, spec.num_kv_heads)
    return [
        run_configuration(spec, samples, answers, c, context)
        for c in tqdm(configs, desc="sparse", disable=not progress, leave=False)
    ]
