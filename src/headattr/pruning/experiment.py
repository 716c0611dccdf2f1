"""Head-masking validation: do the heads Gate-IG ranks highest matter most when they are removed?

`prune` removes heads (gate 0, which removes a head exactly) in three orders of a run's scores and measures
the model on held-out samples:

- `most`: highest score first; `least`: lowest score first; `random`: `random_orders` seeded random orders,
  summarised by their mean (with a 95% bootstrap interval over orders), standard deviation, minimum and
  maximum. Heads are ranked by the signed score
  (default: a negative score says removing the head helps) or, with `rank_by="abs"`, by its magnitude.
- At each fraction of heads, over all heads at once or, with `per_layer`, the same number in every layer.
- Metrics (`evaluate`): the masked-reconstruction loss, which is exactly the attribution objective (the core's
  `objective` with `mean-masked`, at the run's mask probabilities, draws and mask seed; loss = -J), averaged
  over a sample's masked variants and then over samples; masked-token accuracy (argmax of the very logits
  the loss used, with the model's logit shift), averaged the same way; optionally exact-match of the answer
  decoded from a fully masked answer by `headattr.decode.unmask_decode` under the same gates.
- Verdicts (`pruning_verdicts`): per metric and fraction, and for the area under the curve from fraction 0
  (the unpruned model) to 0.3 (trapezoid), `most` must be worse than random removal and `least` better,
  beyond the 95% interval of the random orders' mean (a bootstrap over orders, seeded); the empirical
  percentiles of `most` and `least` among the random orders are given beside it. The mean, not one order's
  spread, is the reference: a single random pair of heads out of 48 is a lottery whose spread says nothing
  about whether the scores rank heads better than chance.
- `single_head`: each head's own ablation effect (loss increase with only that head removed), and its
  Spearman rank correlation with the scores (faithfulness).

Every gate configuration of every sample is evaluated in the same batched passes: the rows of a batch are
(configuration, masked variant) pairs with their own gates, and a configuration whose first removed head is
in layer l starts from the cached input of layer l (unchanged by gates of later layers), as attribution does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from headattr.data.samples import DataConfig, Sample, load_records, select_records, tokenize_record
from headattr.engine import core
from headattr.engine.gates import gated, row_gates
from headattr.engine.masking import MaskConfig
from headattr.errors import HeadattrError
from headattr.generation.decode import unmask_decode
from headattr.generation.taskeval import GenerationEval, generation_curves
from headattr.models import ModelSpec
from headattr.runs.headmask import HEAD_MASK_FORMAT, ORDERS, heads_to_remove, num_to_remove, random_rng
from headattr.runs.rundir import Run

RANK_BY = ("score", "abs")
DEFAULT_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)
METRICS = ("loss", "accuracy", "exact_match")
PRUNING_FORMAT = "headattr-pruning"


def gate_matrix(num_layers: int, num_heads: int, removed: Sequence[tuple[int, int]]) -> np.ndarray:
    """[L, H] gates: 0 for the removed heads, 1 for every other."""
    gates = np.ones((num_layers, num_heads))
    for layer, head in removed:
        gates[layer, head] = 0.0
    return gates


# ---------------------------------------------------------------- evaluation


@dataclass
class Metrics:
    """Model quality on a set of samples under one gate configuration."""

    loss: float  # masked-token cross-entropy (mean over masked tokens, variants, samples)
    accuracy: float  # masked-token argmax accuracy (same averaging)
    exact_match: float | None = None  # fraction of answers decoded exactly, if measured
    task: dict[str, float] = field(default_factory=dict)  # task_<metric> -> accuracy of generated answers

    def value(self, metric: str) -> float | None:
        """The value of `metric`: a fixed one (loss, accuracy, exact_match) or a task one (task_<name>)."""
        return self.task[metric] if metric in self.task else getattr(self, metric)

    def to_dict(self) -> dict[str, float]:
        """The measured values (`exact_match` only when the known-span decoder ran)."""
        known = {} if self.exact_match is None else {"exact_match": self.exact_match}
        return {"loss": self.loss, "accuracy": self.accuracy, **known, **self.task}


def eval_masking(run: Run) -> MaskConfig:
    """The masking of the run (probabilities, draws, mask seed) with the `mean-masked` loss, for evaluation."""
    return MaskConfig.from_meta(run.meta.get("config", {})).replace(loss_normalize="mean-masked")


def _first_gated_layer(gates: torch.Tensor) -> torch.Tensor:
    """[C] the first layer whose gates differ from 1 in each [C, L, H] configuration (L - 1 if none).

    A configuration that removes nothing starts at the last layer: its cached input is the exact model's.
    """
    touched = (gates != 1).any(dim=2)  # [C, L]
    num_layers = gates.shape[1]
    first = torch.where(touched.any(dim=1), touched.float().argmax(dim=1), torch.tensor(num_layers - 1))
    return first.clamp(max=num_layers - 1)


def _variant_metrics(
    spec: ModelSpec, rows: core.Rows, v_idx: torch.Tensor, gates: torch.Tensor, start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, accuracy) of each row: row r is variant `v_idx[r]` under gates `gates[r]` ([B, L, H])."""
    with torch.no_grad(), gated(spec, row_gates(gates, start)):
        out = core.objective(spec, rows, v_idx, start, with_logits=True)
    correct = (out.logits.argmax(dim=-1) == out.labels).double().cpu()
    owner, n = out.owner.cpu(), len(v_idx)
    hits = torch.zeros(n, dtype=torch.float64).index_add(0, owner, correct)
    counts = torch.zeros(n, dtype=torch.float64).index_add(0, owner, torch.ones_like(correct))
    return -out.j.double().cpu(), hits / counts


def sample_metrics(
    spec: ModelSpec, sample: Sample, gates: torch.Tensor, masking: MaskConfig, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy [C] of one sample under each of the [C, L, H] gate configurations.

    Each is the mean over the sample's masked variants (the run's masks, keyed by its uid). Rows are
    (configuration, variant) pairs, grouped by the layer their pass starts at (the configuration's first gated
    layer, where the backbone can resume) so that a pass starts there from the cached hidden states;
    `batch_size` rows per pass.
    """
    rows = core.prepare(spec, sample, masking, batch_size, cache_layers=True)
    n_conf, n_var = gates.shape[0], rows.num_variants
    first = torch.tensor([spec.backbone.entry_layer(int(f)) for f in _first_gated_layer(gates)])
    gates = gates.to(spec.device)
    loss = torch.zeros(n_conf, n_var, dtype=torch.float64)
    acc = torch.zeros(n_conf, n_var, dtype=torch.float64)
    for start in sorted(set(first.tolist())):
        conf = torch.nonzero(first == start).squeeze(1)
        c_idx = conf.repeat_interleave(n_var)
        v_idx = torch.arange(n_var).repeat(len(conf))
        for sl in core.chunks(len(c_idx), batch_size):
            c, v = c_idx[sl], v_idx[sl]
            row_loss, row_acc = _variant_metrics(spec, rows, v.to(spec.device), gates[c.to(spec.device)], start)
            loss[c, v], acc[c, v] = row_loss, row_acc
    return loss.mean(dim=1).numpy(), acc.mean(dim=1).numpy()


def sample_exact_match(spec: ModelSpec, sample: Sample, gates: torch.Tensor, batch_size: int) -> np.ndarray:
    """[C] whether the answer decoded from a fully masked answer is exact, under each configuration."""
    start, end = core.answer_span(spec, sample)
    ids = torch.tensor(sample.input_ids, dtype=torch.long, device=spec.device)
    positions = torch.arange(start, end)
    gates = gates.to(spec.device)
    exact = np.zeros(gates.shape[0], dtype=bool)
    for sl in core.chunks(gates.shape[0], batch_size):
        chunk = gates[sl]

        def logits_fn(batch_ids: torch.Tensor, keep: slice, chunk: torch.Tensor = chunk) -> torch.Tensor:
            with gated(spec, row_gates(chunk)):
                return core.forward_logits(spec, batch_ids, keep=keep)

        batch = ids.expand(len(chunk), -1)
        decoded = unmask_decode(logits_fn, batch, positions, spec.mask_token_id, shift=spec.logit_shift, narrow=True)
        exact[sl] = (decoded == batch).all(dim=1).cpu().numpy()
    return exact


def evaluate_many(
    spec: ModelSpec,
    samples: Sequence[Sample],
    gates: np.ndarray | torch.Tensor,
    masking: MaskConfig,
    *,
    batch_size: int = 64,
    decode: np.ndarray | bool = False,
    progress: bool = False,
    desc: str = "evaluate",
) -> dict[str, np.ndarray]:
    """Metrics of C gate configurations ([C, L, H]) over `samples`, each a [C] array (mean over samples).

    `decode` (bool, or [C] booleans) says for which configurations exact-match is measured; elsewhere
    `exact_match` is NaN.
    """
    if spec.mask_token_id is None:
        raise HeadattrError("no mask token known for this model; pass --mask-token-id")
    if not samples:
        raise HeadattrError("no evaluation samples; check --eval-data and --eval-samples")
    gates = torch.as_tensor(np.asarray(gates, dtype=np.float32))
    if gates.dim() != 3 or tuple(gates.shape[1:]) != (spec.num_layers, spec.num_heads):
        raise ValueError(f"gates must be [C, {spec.num_layers}, {spec.num_heads}], got {tuple(gates.shape)}")
    n_conf = gates.shape[0]
    want = np.array(np.broadcast_to(np.asarray(decode, dtype=bool), (n_conf,)))
    loss, acc, exact = np.zeros(n_conf), np.zeros(n_conf), np.zeros(n_conf)
    for sample in tqdm(samples, desc=desc, unit="sample", disable=not progress, dynamic_ncols=True, leave=False):
        s_loss, s_acc = sample_metrics(spec, sample, gates, masking, batch_size)
        loss += s_loss
        acc += s_acc
        if want.any():
            exact[want] += sample_exact_match(spec, sample, gates[torch.from_numpy(want)], batch_size)
    n = len(samples)
    return {"loss": loss / n, "accuracy": acc / n, "exact_match": np.where(want, exact / n, np.nan)}


def evaluate(
    spec: ModelSpec,
    samples: Sequence[Sample],
    gates: np.ndarray | None,
    masking: MaskConfig,
    *,
    batch_size: int = 64,
    decode: bool = False,
    progress: bool = False,
) -> Metrics:
    """Loss, masked-token accuracy and (with `decode`) exact-match of the model under one [L, H] gate setting
    (None: the unpruned model)."""
    matrix = np.ones((spec.num_layers, spec.num_heads)) if gates is None else np.asarray(gates, dtype=np.float64)
    out = evaluate_many(spec, samples, matrix[None], masking, batch_size=batch_size, decode=decode, progress=progress)
    return Metrics(float(out["loss"][0]), float(out["accuracy"][0]), float(out["exact_match"][0]) if decode else None)


# ---------------------------------------------------------------- evaluation samples


@dataclass
class EvalSelection:
    """Held-out evaluation samples and where they came from."""

    samples: list[Sample]
    source: str
    rows: int  # rows in the source file
    excluded: int  # rows dropped because their uid is one of the runs' samples
    skipped: int  # chosen rows whose answer has no tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows": self.rows,
            "excluded_attribution_rows": self.excluded,
            "skipped": self.skipped,
            "samples": len(self.samples),
            "uids": [s.uid for s in self.samples],
            "indices": [s.index for s in self.samples],
        }


def run_uids(run: Run) -> set[str]:
    """The identities (content hashes) of the samples a run was computed on."""
    return {str(s["hash"]) for s in run.meta.get("samples", [])}


def select_eval_samples(
    spec: ModelSpec,
    run: Run,
    *,
    data: str | Path | None = None,
    eval_data: str | Path | None = None,
    n: int = 100,
    seed: int = 0,
    exclude_runs: Sequence[Run] = (),
) -> EvalSelection:
    """`n` samples (fewer if fewer remain) disjoint from the run's own samples, tokenized as the run's were.

    They come from `eval_data` if given, else from `data`, else from the run's dataset file (run.json
    `config.data`), read with the run's format and fields; every row whose uid (a hash of its prompt and
    answer) is a sample of `run` or of `exclude_runs` is dropped first, so the sets are disjoint by
    construction. The choice is `select_records(remaining, n, seed)`.
    """
    recorded = DataConfig.from_meta(run.meta.get("config", {}))
    path = eval_data or data or recorded.path
    if path is None:
        raise HeadattrError(f"run {run.path} does not record its dataset; pass --data or --eval-data")
    path = Path(path)
    if not path.is_file():
        flag = "--eval-data" if eval_data else "--data"
        raise HeadattrError(f"dataset file {path} does not exist; pass an existing file to {flag}")
    if n < 1:
        raise HeadattrError(f"--eval-samples must be at least 1, got {n}")
    records = load_records(path, recorded.format, recorded.prompt_field, recorded.answer_field)
    used = run_uids(run).union(*(run_uids(r) for r in exclude_runs))
    remaining = [r for r in records if r.uid not in used]
    if not remaining:
        raise HeadattrError(
            f"no evaluation samples remain: all {len(records)} rows of {path} were used by the attribution run; "
            "pass --eval-data with other rows"
        )
    chosen = select_records(remaining, min(n, len(remaining)), seed)
    samples = [
        s
        for r in chosen
        if (s := tokenize_record(r, spec.tokenizer, recorded.max_length, recorded.chat_template)) is not None
    ]
    if not samples:
        raise HeadattrError(f"none of the chosen evaluation rows of {path} has an answer with tokens")
    return EvalSelection(samples, str(path), len(records), len(records) - len(remaining), len(chosen) - len(samples))


def check_run_matches(spec: ModelSpec, run: Run) -> None:
    """Raise unless the run was computed on this model (same config hash and shape)."""
    run_hash = run.meta.get("model", {}).get("config_hash")
    if run_hash is None and "imported" in run.meta:
        raise HeadattrError(f"run {run.path} was imported without a model identity; import it again with --model MODEL")
    if run_hash != spec.config_hash:
        raise HeadattrError(
            f"run {run.path} was computed on another model (config hash {str(run_hash)[:12]}, "
            f"this model {spec.config_hash[:12]}); pass the run's model"
        )
    if run.scores.shape != (spec.num_layers, spec.num_heads):
        raise HeadattrError(
            f"run {run.path} has {run.scores.shape} scores, the model {spec.num_layers} x {spec.num_heads} heads"
        )


# ---------------------------------------------------------------- prune


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
        from headattr.generation.scoring import wilson_interval

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
        return pruning_verdicts(self, self.seed)

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


# ---------------------------------------------------------------- verdicts

VERDICT_LEVEL = 0.95
VERDICT_RESAMPLES = 2000
AREA_MAX_FRACTION = 0.3
VERDICT_RULE = (
    "most is worse than random removal and least is better, where the 95% interval of the random orders' mean "
    "(bootstrap over orders) excludes both; per fraction and for the area under the curve over fractions "
    "0 to 0.3 (trapezoid, from the unpruned model at 0)"
)


def verdict_rng(seed: int, metric_index: int) -> np.random.Generator:
    """The bootstrap stream of a metric's verdicts, keyed by (seed, metric) only, so figure and JSON agree."""
    return np.random.default_rng(np.random.SeedSequence([seed, 7919, metric_index]))


def worse_sign(metric: str) -> float:
    """+1 where a larger value is worse (loss), -1 where a smaller one is (accuracy, exact match)."""
    return 1.0 if metric == "loss" else -1.0


def mean_interval(
    values: np.ndarray, rng: np.random.Generator, level: float = VERDICT_LEVEL, resamples: int = VERDICT_RESAMPLES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over the rows of [R, K] `values` and its percentile bootstrap interval (rows resampled), each [K]."""
    values = np.asarray(values, dtype=np.float64)
    idx = rng.integers(0, values.shape[0], size=(resamples, values.shape[0]))
    means = values[idx].mean(axis=1)  # [resamples, K]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail], axis=0)
    return values.mean(axis=0), low, high


def empirical_percentile(x: float, values: np.ndarray) -> float:
    """Percent of `values` below `x`, ties counted half (0: below every value, 100: above every value)."""
    values = np.asarray(values, dtype=np.float64)
    return float(100 * ((values < x).sum() + 0.5 * (values == x).sum()) / values.size)


def curve_area(fractions: Sequence[float], baseline: float, values: np.ndarray, upto: float) -> np.ndarray | None:
    """Trapezoid area under `values` ([..., F] at `fractions`) from fraction 0 (`baseline`) to `upto`.

    Only measured fractions in (0, upto] count (within 1e-9); None when there is none.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    keep = (fr > 0) & (fr <= upto + 1e-9)
    if not keep.any():
        return None
    order = np.argsort(fr[keep])
    x = np.concatenate([[0.0], fr[keep][order]])
    v = np.asarray(values, dtype=np.float64)[..., keep][..., order]
    y = np.concatenate([np.full(v.shape[:-1] + (1,), baseline), v], axis=-1)
    return ((x[1:] - x[:-1]) * (y[..., 1:] + y[..., :-1]) / 2).sum(axis=-1)


def _verdict_row(
    most: float, least: float, random: np.ndarray, mean: float, low: float, high: float, sign: float
) -> dict[str, Any]:
    """One verdict: the three numbers, the percentiles of most and least among the random orders, the test."""
    # on the "worse" scale (sign * value), the interval is [sign*low, sign*high] or, reversed, [-high, -low]
    worse_low, worse_high = sorted((sign * low, sign * high))
    most_worse = bool(sign * most > worse_high)
    least_better = bool(sign * least < worse_low)
    return {
        "most": float(most),
        "random_mean": float(mean),
        "random_low": float(low),
        "random_high": float(high),
        "least": float(least),
        "most_percentile": empirical_percentile(most, random),
        "least_percentile": empirical_percentile(least, random),
        "most_worse": most_worse,
        "least_better": least_better,
        "holds": most_worse and least_better,
    }


def pruning_verdicts(result: PruneResult, seed: int) -> dict[str, Any]:
    """The pruning verdicts of `result` (VERDICT_RULE), per metric and fraction and for the area.

    Numbers are in the metric's own units; a percentile is the percent of random orders whose value is
    below that of `most` (or `least`). The bootstrap over random orders is seeded by (seed, metric), so the
    verdicts are deterministic; fractions and area share its resamples.
    """
    out: dict[str, Any] = {
        "rule": VERDICT_RULE,
        "level": VERDICT_LEVEL,
        "resamples": VERDICT_RESAMPLES,
        "area_max_fraction": AREA_MAX_FRACTION,
        "random_orders": int(result.curves["random"][result.metrics[0]].shape[0]),
        "metrics": {},
    }
    for m_index, metric in enumerate(result.metrics):
        sign = worse_sign(metric)
        random = np.asarray(result.curves["random"][metric], dtype=np.float64)  # [R, F]
        most = np.asarray(result.curves["most"][metric], dtype=np.float64)
        least = np.asarray(result.curves["least"][metric], dtype=np.float64)
        base = float(result.baseline.value(metric))
        area = curve_area(result.fractions, base, random, AREA_MAX_FRACTION)  # [R] or None
        table = random if area is None else np.concatenate([random, area[:, None]], axis=1)
        mean, low, high = mean_interval(table, verdict_rng(seed, m_index))
        rows = [
            {"fraction": f, **_verdict_row(most[i], least[i], random[:, i], mean[i], low[i], high[i], sign)}
            for i, f in enumerate(result.fractions)
        ]
        area_row = None
        if area is not None:
            a_most = float(curve_area(result.fractions, base, most, AREA_MAX_FRACTION))
            a_least = float(curve_area(result.fractions, base, least, AREA_MAX_FRACTION))
            upto = max(f for f in result.fractions if 0 < f <= AREA_MAX_FRACTION + 1e-9)
            area_row = {"upto": upto, **_verdict_row(a_most, a_least, area, mean[-1], low[-1], high[-1], sign)}
        out["metrics"][metric] = {"fractions": rows, "area": area_row}
    return out


def ranking_scores(scores: np.ndarray, rank_by: str) -> np.ndarray:
    """What heads are ranked by: the scores as they are (`score`) or their magnitude (`abs`)."""
    if rank_by == "score":
        return scores
    if rank_by == "abs":
        return np.abs(scores)
    raise HeadattrError(f"unknown --rank-by {rank_by!r}; choose one of {', '.join(RANK_BY)}")


def _removal_plan(
    scores: np.ndarray,
    orders: Sequence[str],
    fractions: Sequence[float],
    random_orders: int,
    seed: int,
    per_layer: bool,
) -> dict[str, list[list[list[tuple[int, int]]]]]:
    """order -> repetition -> fraction -> removed heads (one repetition for `most` and `least`)."""
    plan: dict[str, list[list[list[tuple[int, int]]]]] = {}
    for order in orders:
        reps = range(random_orders) if order == "random" else range(1)
        plan[order] = [
            [
                heads_to_remove(scores, order, f, per_layer, random_rng(seed, r) if order == "random" else None)
                for f in fractions
            ]
            for r in reps
        ]
    return plan


def measured_metrics(decode: bool) -> list[str]:
    """The metrics a pruning run measures: exact match only when it decodes."""
    return [m for m in METRICS if m != "exact_match" or decode]


def check_orders(orders: Sequence[str]) -> None:
    """Raise unless `orders` is a non-empty list of known orders."""
    if not orders:
        raise HeadattrError("--orders is empty; choose from most, least, random")
    for order in orders:
        if order not in ORDERS:
            raise HeadattrError(f"unknown pruning order {order!r} in --orders; choose from {', '.join(ORDERS)}")


def _check_options(fractions: Sequence[float], orders: Sequence[str], random_orders: int) -> None:
    if not fractions:
        raise HeadattrError("--fractions is empty; give at least one fraction, e.g. 0.1")
    for f in fractions:
        num_to_remove(f, 1)  # range check
    check_orders(orders)
    if "random" in orders and random_orders < 1:
        raise HeadattrError(f"--random-orders must be at least 1, got {random_orders}")


def _spearman(scores: np.ndarray, effect: np.ndarray) -> dict[str, Any]:
    """Spearman correlation over all heads (with its p-value) and per layer (None for a constant layer)."""
    from scipy.stats import spearmanr

    rho, p = spearmanr(scores.reshape(-1), effect.reshape(-1))
    per_layer = [
        None if np.ptp(s) == 0 or np.ptp(d) == 0 else float(spearmanr(s, d)[0])
        for s, d in zip(scores, effect, strict=True)
    ]
    valid = [r for r in per_layer if r is not None]
    return {
        "spearman": float(rho) if np.isfinite(rho) else None,
        "spearman_p": float(p) if np.isfinite(p) else None,
        "spearman_per_layer": per_layer,
        "spearman_per_layer_mean": float(np.mean(valid)) if valid else None,
    }


def single_head_effects(scores: np.ndarray, delta_loss: np.ndarray, delta_accuracy: np.ndarray) -> dict[str, Any]:
    """Faithfulness: Spearman correlation of the scores with each head's own ablation effect (loss increase).

    Over all heads, and per layer (a layer whose scores or effects are constant has none; the mean is over
    the others); `abs` holds the same for |score|, which ranks heads by magnitude whatever their sign.
    """
    scores = np.asarray(scores, dtype=np.float64)
    return {
        "delta_loss": delta_loss.tolist(),
        "delta_accuracy": delta_accuracy.tolist(),
        **_spearman(scores, delta_loss),
        "abs": _spearman(np.abs(scores), delta_loss),
    }


def prune(
    spec: ModelSpec,
    run: Run,
    eval_samples: Sequence[Sample],
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    orders: Sequence[str] = ORDERS,
    random_orders: int = 10,
    seed: int = 0,
    per_layer: bool = False,
    rank_by: str = "score",
    single_head: bool = False,
    decode: bool = False,
    batch_size: int = 64,
    progress: bool = True,
    generation: GenerationEval | None = None,
) -> PruneResult:
    """Remove heads in the orders of `run.scores` at each fraction and measure the model on `eval_samples`.

    Heads are ranked by their score (`rank_by="score"`: `least` removes the most negative first) or by its
    magnitude (`"abs"`: `least` removes the scores nearest zero first; see `ranking_scores`).
    Masking follows the run (probabilities, draws, mask seed; `eval_masking`). The unpruned model is the
    fraction-0 baseline. With `decode`, exact-match is measured for every pruned configuration; with
    `single_head`, every head is also removed on its own (see `single_head_effects`). All configurations
    are evaluated together, sample by sample (see `evaluate_many`). With `generation`, every configuration but
    the single-head ones also generates the answers and scores them (`taskeval.generation_curves`).
    """
    started = time.perf_counter()
    check_run_matches(spec, run)
    overlap = run_uids(run) & {s.uid for s in eval_samples}
    if overlap:
        raise HeadattrError(
            f"{len(overlap)} evaluation samples were also attribution samples of run {run.path}; "
            "evaluate on held-out samples (see select_eval_samples)"
        )
    fractions, orders = [float(f) for f in fractions], list(orders)
    _check_options(fractions, orders, random_orders)
    scores = np.asarray(run.scores, dtype=np.float64)
    num_layers, num_heads = scores.shape
    config = eval_masking(run)
    plan = _removal_plan(ranking_scores(scores, rank_by), orders, fractions, random_orders, seed, per_layer)
    # configurations: baseline, then every (order, repetition, fraction), then every single head
    pruned = [heads for order in orders for rep in plan[order] for heads in rep]
    singles = [[(layer, head)] for layer in range(num_layers) for head in range(num_heads)] if single_head else []
    gates = np.stack([gate_matrix(num_layers, num_heads, r) for r in [[], *pruned, *singles]])
    want_decode = np.array([decode] * (1 + len(pruned)) + [False] * len(singles))
    out = evaluate_many(
        spec, eval_samples, gates, config, batch_size=batch_size, decode=want_decode, progress=progress, desc="prune"
    )
    metrics = measured_metrics(decode)
    if generation is not None:
        task = generation_curves(spec, eval_samples, gates[: 1 + len(pruned)], generation, progress=progress)
        for m, values in task.items():  # NaN for the single-head configurations, which generate nothing
            out[f"task_{m}"] = np.concatenate([values["accuracy"], np.full(len(singles), np.nan)])
            metrics.append(f"task_{m}")
    baseline = Metrics(
        float(out["loss"][0]),
        float(out["accuracy"][0]),
        float(out["exact_match"][0]) if decode else None,
        task={m: float(out[m][0]) for m in metrics if m.startswith("task_")},
    )
    curves: dict[str, dict[str, np.ndarray]] = {}
    at = 1
    for order in orders:
        n_rep = len(plan[order])
        block = slice(at, at + n_rep * len(fractions))
        curves[order] = {m: out[m][block].reshape(n_rep, len(fractions)) for m in metrics}
        if order != "random":
            curves[order] = {m: v[0] for m, v in curves[order].items()}
        at = block.stop
    effects = None
    if single_head:
        d_loss = (out["loss"][at:] - baseline.loss).reshape(num_layers, num_heads)
        d_acc = (out["accuracy"][at:] - baseline.accuracy).reshape(num_layers, num_heads)
        effects = single_head_effects(scores, d_loss, d_acc)
    count = num_heads if per_layer else num_layers * num_heads
    elapsed = time.perf_counter() - started
    return PruneResult(
        fractions=fractions,
        orders=orders,
        per_layer=per_layer,
        rank_by=rank_by,
        seed=seed,
        num_removed=[num_to_remove(f, count) * (num_layers if per_layer else 1) for f in fractions],
        baseline=baseline,
        curves=curves,
        removed=plan,
        config=config,
        decode=decode,
        scores=scores,
        single_head=effects,
        eval_info={
            "samples": len(eval_samples),
            "uids": [s.uid for s in eval_samples],
            "indices": [s.index for s in eval_samples],
        },
        run_info={"path": str(run.path), "config_hash": run.meta.get("model", {}).get("config_hash")},
        model_info={"name": spec.name, "path": spec.path, "config_hash": spec.config_hash},
        timings={"total_s": elapsed, "configurations": int(len(gates)), "samples": len(eval_samples)},
        task_eval=generation.describe(spec) if generation is not None else None,
    )


# ---------------------------------------------------------------- outputs

PRUNING_FILE = "pruning.json"
CURVE_FILE = "pruning_curve.png"
HEAD_MASK_FILE = "head_mask.json"
PRUNE_FILES = (PRUNING_FILE, CURVE_FILE, HEAD_MASK_FILE)


def write_outputs(result: PruneResult, out: str | Path) -> dict[str, Path]:
    """Write pruning.json, pruning_curve.png and head_mask.json into `out` (each atomically)."""
    from headattr.figures import plot_pruning_curve
    from headattr.runs.rundir import atomic_write_bytes, atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in PRUNE_FILES}
    atomic_write_json(paths[PRUNING_FILE], result.to_dict())
    atomic_write_json(paths[HEAD_MASK_FILE], result.head_mask())
    atomic_write_bytes(paths[CURVE_FILE], plot_pruning_curve(result))
    return paths


def format_table(result: PruneResult) -> str:
    """The results as a compact text table: one row per fraction (0 = unpruned), one column per order.

    Random orders show their mean and standard deviation.
    """
    short = {"loss": "loss", "accuracy": "acc", "exact_match": "exact"}
    header = ["frac", "heads"]
    for metric in result.metrics:
        name = short.get(metric, metric)
        header += [f"{name} {o}" + ("(±std)" if o == "random" else "") for o in result.display_orders]
    lines = [header]
    base = ["0", "0"]
    for metric in result.metrics:
        base += [f"{result.baseline.value(metric):.4f}"] * len(result.display_orders)
    lines.append(base)
    for i, frac in enumerate(result.fractions):
        row = [f"{frac:g}", str(result.num_removed[i])]
        for metric in result.metrics:
            for order in result.display_orders:
                if order == "random":
                    s = result.random_summary(metric)
                    row.append(f"{s['mean'][i]:.4f}±{s['std'][i]:.4f}")
                else:
                    row.append(f"{result.curves[order][metric][i]:.4f}")
        lines.append(row)
    widths = [max(len(r[c]) for r in lines) for c in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in lines)


def format_verdict_row(row: dict[str, Any]) -> str:
    """`yes`/`no` with the numbers behind it: most, random mean [95% interval], least, and the percentiles."""
    return (
        f"{'yes' if row['holds'] else 'no'} (most {row['most']:.4f} [pct {row['most_percentile']:.0f}], random "
        f"{row['random_mean']:.4f} [{row['random_low']:.4f}, {row['random_high']:.4f}], least {row['least']:.4f} "
        f"[pct {row['least_percentile']:.0f}])"
    )


def format_verdicts(result: PruneResult) -> list[str]:
    """Per metric and fraction, and for the area up to 0.3: does most > random > least hold beyond the random
    mean's 95% interval (in the metric's worse direction), with the numbers it rests on."""
    verdicts = result.verdicts()
    if not verdicts:
        return []
    lines = [f"verdict: {verdicts['rule']}; pct = percentile among the {verdicts['random_orders']} random orders"]
    for metric, v in verdicts["metrics"].items():
        worse = "higher" if worse_sign(metric) > 0 else "lower"
        lines.append(f"{metric} ({worse} is worse):")
        for row in v["fractions"]:
            lines.append(f"  {row['fraction']:g}: {format_verdict_row(row)}")
        if v["area"] is not None:
            lines.append(f"  area 0-{v['area']['upto']:g}: {format_verdict_row(v['area'])}")
    return lines


def format_task(result: PruneResult) -> list[str]:
    """Task accuracy of generated answers with 95% Wilson intervals, per metric and fraction (if measured)."""
    summary = result.task_summary()
    if summary is None:
        return []
    lines = [f"generated answers, task {summary['task']} (accuracy [95% Wilson interval]):"]
    for metric, base in summary["baseline"].items():
        lines.append(f"  {metric} unpruned {base['accuracy']:.3f} [{base['low']:.3f}, {base['high']:.3f}]")
        for i, frac in enumerate(result.fractions):
            parts = []
            for order in result.display_orders:
                c = summary["curves"][order][metric]
                if order == "random":
                    runs = np.asarray(c["accuracy"])[:, i]
                    parts.append(f"random {runs.mean():.3f} (mean of {len(runs)})")
                else:
                    parts.append(f"{order} {c['accuracy'][i]:.3f} [{c['low'][i]:.3f}, {c['high'][i]:.3f}]")
            lines.append(f"  {metric} at {frac:g}: " + "  ".join(parts))
    return lines


def format_faithfulness(result: PruneResult) -> str | None:
    """One line on the single-head ablation correlation, if it was measured."""
    sh = result.single_head
    if sh is None:
        return None

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:+.3f}"

    p = "" if sh["spearman_p"] is None else f" (p={sh['spearman_p']:.2g})"
    return (
        f"single-head ablation vs scores: Spearman {fmt(sh['spearman'])} over all heads{p}, "
        f"mean per layer {fmt(sh['spearman_per_layer_mean'])}; vs |scores|: {fmt(sh['abs']['spearman'])}, "
        f"mean per layer {fmt(sh['abs']['spearman_per_layer_mean'])}"
    )
