"""`prune`: do the heads a run ranks highest matter most when they are removed?

Heads are removed (gate 0, which removes a head exactly) in the orders of a run's scores and the model is
measured on held-out samples:

- `most`: highest score first; `least`: lowest score first; `random`: `random_orders` seeded random orders,
  summarised by their mean (with a 95% bootstrap interval over orders), standard deviation, minimum and
  maximum (`plan` says how heads are ranked);
- at each fraction of heads, over all heads at once or, with `per_layer`, the same number in every layer;
- metrics: masked-token loss and accuracy, optionally exact match (`evaluation`), optionally task accuracy of
  generated answers (`generation.taskeval`); verdicts in `verdicts`; with `single_head`, each head's own
  ablation effect and its correlation with the scores (`faithfulness`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from headattr.data.tokens import Sample
from headattr.engine.masking import MaskConfig
from headattr.generation.taskeval import GenerationEval, generation_curves
from headattr.models import ModelSpec
from headattr.pruning.evaluation import Metrics, eval_masking, evaluate_many, measured_metrics
from headattr.pruning.faithfulness import single_head_effects
from headattr.pruning.plan import Configurations, Plan, configurations, ranking_scores, removal_plan, split_curves
from headattr.pruning.results import PruneResult
from headattr.pruning.samples import check_held_out, check_run_matches
from headattr.pruning.settings import PruneSettings
from headattr.runs.headmask import num_to_remove
from headattr.runs.rundir import Run


def prune(
    spec: ModelSpec,
    run: Run,
    eval_samples: Sequence[Sample],
    settings: PruneSettings | None = None,
    *,
    fractions: Sequence[float] | None = None,
    orders: Sequence[str] | None = None,
    random_orders: int | None = None,
    seed: int | None = None,
    per_layer: bool | None = None,
    rank_by: str | None = None,
    single_head: bool | None = None,
    decode: bool | None = None,
    batch_size: int = 64,
    progress: bool = True,
    generation: GenerationEval | None = None,
) -> PruneResult:
    """Remove heads in the orders of `run.scores` at each fraction and measure the model on `eval_samples`.

    What is removed and measured is `settings` (default `PruneSettings()`); the keyword arguments of the same
    names, where given, override its fields. Heads are ranked by their score (`rank_by="score"`: `least`
    removes the most negative first) or by its magnitude (`"abs"`: `least` removes the scores nearest zero
    first; see `ranking_scores`). Masking follows the run (probabilities, draws, mask seed; `eval_masking`).
    The unpruned model is the fraction-0 baseline. With `decode`, exact-match is measured for every pruned
    configuration; with `single_head`, every head is also removed on its own (see `single_head_effects`). All
    configurations are evaluated together, sample by sample (see `evaluate_many`), `batch_size` rows per pass.
    With `generation`, every configuration but the single-head ones also generates the answers and scores
    them (`taskeval.generation_curves`).
    """
    started = time.perf_counter()
    check_run_matches(spec, run)
    check_held_out(run, eval_samples)
    settings = (settings or PruneSettings()).override(
        fractions=fractions,
        orders=orders,
        random_orders=random_orders,
        seed=seed,
        per_layer=per_layer,
        rank_by=rank_by,
        single_head=single_head,
        decode=decode,
    )
    scores = np.asarray(run.scores, dtype=np.float64)
    masking = eval_masking(run)
    plan = removal_plan(ranking_scores(scores, settings.rank_by), settings)
    configs = configurations(plan, settings.orders, *scores.shape, settings.single_head)
    values = _measure(spec, eval_samples, configs, masking, settings.decode, batch_size, progress, generation)
    result = _result(spec, run, eval_samples, settings, scores, plan, values, masking)
    result.task_eval = generation.describe(spec) if generation is not None else None
    result.timings = {
        "total_s": time.perf_counter() - started,
        "configurations": int(len(configs.gates)),
        "samples": len(eval_samples),
    }
    return result


def _measure(
    spec: ModelSpec,
    samples: Sequence[Sample],
    configs: Configurations,
    masking: MaskConfig,
    decode: bool,
    batch_size: int,
    progress: bool,
    generation: GenerationEval | None,
) -> dict[str, np.ndarray]:
    """Measured metric -> [C] values of every configuration (task metrics: NaN for the single heads)."""
    out = evaluate_many(
        spec,
        samples,
        configs.gates,
        masking,
        batch_size=batch_size,
        decode=configs.decode_rows(decode),
        progress=progress,
        desc="prune",
    )
    values = {m: out[m] for m in measured_metrics(decode)}
    if generation is not None:
        task = generation_curves(spec, samples, configs.gates[configs.generated], generation, progress=progress)
        for m, accuracy in task.items():  # the single-head configurations generate nothing
            values[f"task_{m}"] = np.concatenate([accuracy["accuracy"], np.full(configs.singles, np.nan)])
    return values


def _result(
    spec: ModelSpec,
    run: Run,
    samples: Sequence[Sample],
    settings: PruneSettings,
    scores: np.ndarray,
    plan: Plan,
    values: dict[str, np.ndarray],
    masking: MaskConfig,
) -> PruneResult:
    """The result of `prune` from the values of its configurations (timings and task description left out)."""
    num_layers, num_heads = scores.shape
    baseline = Metrics(
        float(values["loss"][0]),
        float(values["accuracy"][0]),
        float(values["exact_match"][0]) if settings.decode else None,
        task={m: float(v[0]) for m, v in values.items() if m.startswith("task_")},
    )
    curves, singles_at = split_curves(values, plan, settings.orders, len(settings.fractions))
    effects = None
    if settings.single_head:
        d_loss = (values["loss"][singles_at:] - baseline.loss).reshape(num_layers, num_heads)
        d_acc = (values["accuracy"][singles_at:] - baseline.accuracy).reshape(num_layers, num_heads)
        effects = single_head_effects(scores, d_loss, d_acc)
    count = num_heads if settings.per_layer else num_layers * num_heads
    per = num_layers if settings.per_layer else 1
    return PruneResult(
        fractions=list(settings.fractions),
        orders=list(settings.orders),
        per_layer=settings.per_layer,
        rank_by=settings.rank_by,
        seed=settings.seed,
        num_removed=[num_to_remove(f, count) * per for f in settings.fractions],
        baseline=baseline,
        curves=curves,
        removed=plan,
        config=masking,
        decode=settings.decode,
        scores=scores,
        single_head=effects,
        eval_info={"samples": len(samples), "uids": [s.uid for s in samples], "indices": [s.index for s in samples]},
        run_info={"path": str(run.path), "config_hash": run.meta.get("model", {}).get("config_hash")},
        model_info={"name": spec.name, "path": spec.path, "config_hash": spec.config_hash},
    )
