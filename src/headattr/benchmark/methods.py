"""`headattr methods`: every attribution method on the same model, data and seeds, measured three ways.

For each method and seed a normal run directory is written to OUT/runs/<method>-s<seed> (a finished run
with the same settings found there is reused). Then, per method (definitions: docs/methods.md):

- consistency between seeds: `analysis.comparison.compare` of the method's runs (the `headattr compare` code):
  mean per-layer Pearson and Spearman, global Pearson and Spearman, global top-K overlap and its chance K/N,
  with K = round(N / 5) of the N heads (at least 1);
- faithfulness on held-out samples (disjoint from every run's samples, `pruning.samples.select_eval_samples`), with
  `pruning.prune`: the area A of the pruning curve (loss increase over the unpruned model, trapezoid over
  removed fractions 0..0.3) for the `most` and `least` orders of the method's scores, against random orders
  and against the oracle order, which ranks heads by their measured single-head ablation effect (the loss
  increase when that head alone is removed, on the same held-out samples):

      F      = (A_most - A_least) / (A_oracle_most - A_oracle_least)        random ranking: 0 in expectation
      F_most = (A_most - A_random) / (A_oracle_most - A_random)
      F_least = (A_random - A_least) / (A_random - A_oracle_least)

  The oracle is the best order that per-head measurements can give; F > 1 means the method's order
  removes heads that matter more together than their single-head effects say (interactions). Also the
  Spearman correlation of the scores with the single-head effects (`pruning.single_head_effects`).
  Faithfulness numbers are means over the seeds' runs.
- cost: wall time per sample and forward / backward passes per sample, as recorded in each run's
  run.json (counted by the core: a pass is one masked variant through every layer; a pass started at
  layer l counts (L - l) / L), means over seeds;
- agreement: the global Spearman correlation of two methods' scores, mean over seeds (same seed: same
  samples and masks); the diagonal holds a method's own between-seed global Spearman.

Ranking rule (applied to the numbers, `rank_methods`): by F, highest first (ties: higher consistency
first); a method is Pareto-optimal when no other method has at least its consistency (global Spearman
between seeds) and F and at most its passes per sample (forward + backward), and is better in one.

Outputs: methods.md (English, or Chinese with lang="zh"), methods.json (every number in methods.md), and
methods.png (consistency vs faithfulness, one point per method; the agreement matrix).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from headattr.analysis.comparison import compare
from headattr.benchmark.report import render_markdown
from headattr.data.samples import DataConfig
from headattr.engine.attention import attention_modules
from headattr.engine.masking import MaskConfig
from headattr.errors import HeadattrError
from headattr.figures import plot_methods
from headattr.methods import METHODS, NAMES, MethodConfig
from headattr.models import ModelSpec
from headattr.pruning.faithfulness import single_head_effects
from headattr.pruning.results import PruneResult
from headattr.pruning.runner import prune
from headattr.pruning.samples import select_eval_samples
from headattr.runs.attribution import attribute
from headattr.runs.rundir import Run, atomic_write_bytes, atomic_write_json, atomic_write_text, read_run
from headattr.stats.correlations import spearman
from headattr.stats.curves import curve_area

MAX_FRACTION = 0.3
METHODS_MD, METHODS_JSON, METHODS_PNG = "methods.md", "methods.json", "methods.png"


@dataclass(frozen=True)
class BenchmarkSize:
    """How much work `headattr methods` does; FULL fits a few minutes on 2 CPU cores for the built-in model."""

    samples: int = 12
    quick: bool = False  # the methods' reduced settings (`MethodConfig.benchmark_config`)
    eval_samples: int = 24
    random_orders: int = 20
    fractions: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


FULL = BenchmarkSize()
QUICK = BenchmarkSize(samples=4, quick=True, eval_samples=8, random_orders=5)


def method_for(name: str, size: BenchmarkSize, seed: int) -> MethodConfig:
    """The settings method `name` runs with at `size` (`MethodConfig.benchmark_config`)."""
    return METHODS[name].benchmark_config(size.quick, seed)


def parse_methods(text: str) -> list[str]:
    """'gate-ig,stp' -> ['gate-ig', 'stp']; unknown or repeated names are a one-line error."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise HeadattrError(f"--methods {text!r}: choose from {', '.join(NAMES)}")
    if len(set(names)) != len(names):
        raise HeadattrError(f"--methods {text!r} names a method twice")
    return names


def parse_seeds(text: str) -> list[int]:
    """'47,1234' -> [47, 1234]; at least two distinct non-negative seeds (consistency needs a pair)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise HeadattrError(f"--seeds must be comma-separated integers, e.g. 47,1234; got {text!r}") from None
    if len(set(seeds)) < 2 or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise HeadattrError(f"--seeds {text!r}: give at least two distinct seeds >= 0")
    return seeds


# ---------------------------------------------------------------- runs


def _reusable(path: Path, method: MethodConfig, seed: int, samples: int) -> bool:
    """Whether `path` holds a finished run of `method` with this seed and sample count."""
    try:
        meta = read_run(path).meta
    except (HeadattrError, OSError, ValueError):
        return False
    config = meta.get("config", {})
    wanted = {**method.to_meta(), "seed": seed, "samples": samples}
    return meta.get("status") == "complete" and all(config.get(k) == v for k, v in wanted.items())


def method_run(
    spec: ModelSpec, name: str, seed: int, data: DataConfig, size: BenchmarkSize, out: Path, progress: bool
) -> Run:
    """The run of method `name` with `seed` in OUT/runs/<name>-s<seed>, computed unless it is there."""
    method = method_for(name, size, seed)
    path = out / "runs" / f"{name}-s{seed}"
    if not _reusable(path, method, seed, data.samples):
        samples, report = data.replace(seed=seed).build(spec.tokenizer)
        attribute(
            spec,
            samples,
            method,
            MaskConfig(mask_seed=seed),
            batch_size=256,
            seed=seed,
            out=path,
            overwrite=True,
            progress=progress,
            data_report=report,
        )
    return read_run(path)


# ---------------------------------------------------------------- measures


def consistency_of(runs: Sequence[Run]) -> dict[str, Any]:
    """The `compare` metrics of one method's runs (first pair for the global numbers; means over pairs)."""
    n = runs[0].scores.size
    k = max(1, round(n / 5))
    comparison = compare(list(runs), top_k=[k], bootstrap=0)
    pairs = comparison.pairs
    return {
        "mean_layer_pearson": comparison.verdict.pearson_mean,
        "mean_layer_spearman": comparison.verdict.spearman_mean,
        "global_pearson": float(np.mean([p.global_metrics.pearson for p in pairs])),
        "global_spearman": float(np.mean([p.global_metrics.spearman for p in pairs])),
        "top_k": k,
        "top_k_overlap": float(np.mean([p.global_metrics.overlap[k] for p in pairs])),
        "top_k_chance": float(pairs[0].global_metrics.chance[k]),
    }


def excess_area(fractions: Sequence[float], losses: np.ndarray, baseline: float) -> float:
    """Trapezoid area of (loss - baseline) over [0] + fractions: `curve_area` (the verdicts' area) less the
    baseline's rectangle."""
    upto = float(max(fractions))
    return float(curve_area(fractions, losses, baseline, upto)) - baseline * upto


def order_areas(result: PruneResult) -> dict[str, float]:
    """Areas of the `most` / `least` loss curves of a pruning result."""
    base = result.baseline.loss
    return {o: excess_area(result.fractions, result.curves[o]["loss"], base) for o in ("most", "least")}


def ratio(num: float, den: float) -> float | None:
    """num / den; None when the reference span is zero (no head matters on the held-out samples)."""
    return num / den if den != 0 else None


def faithfulness(areas: dict[str, float], random_area: float, oracle: dict[str, float]) -> dict[str, float]:
    """F, F_most and F_least (module docstring) from the areas of a method, random orders and the oracle."""
    return {
        "F": ratio(areas["most"] - areas["least"], oracle["most"] - oracle["least"]),
        "F_most": ratio(areas["most"] - random_area, oracle["most"] - random_area),
        "F_least": ratio(random_area - areas["least"], random_area - oracle["least"]),
        "area_most": areas["most"],
        "area_least": areas["least"],
    }


@dataclass
class Reference:
    """What every method's faithfulness is measured against: random orders, single-head effects, oracle."""

    random_area: float
    oracle: dict[str, float]
    delta_loss: np.ndarray  # [L, H]
    delta_accuracy: np.ndarray  # [L, H]
    baseline_loss: float
    eval_samples: int


def reference(spec: ModelSpec, run: Run, samples: list, size: BenchmarkSize, progress: bool) -> Reference:
    """Random orders and single heads (one pruning), then the oracle order of the single-head effects."""
    ref = prune(
        spec,
        run,
        samples,
        fractions=size.fractions,
        orders=("random",),
        random_orders=size.random_orders,
        single_head=True,
        batch_size=256,
        progress=progress,
    )
    d_loss = np.asarray(ref.single_head["delta_loss"])
    d_acc = np.asarray(ref.single_head["delta_accuracy"])
    base = ref.baseline.loss
    random_area = float(np.mean([excess_area(ref.fractions, r, base) for r in ref.curves["random"]["loss"]]))
    oracle_run = replace(run, scores=d_loss.astype(np.float32))
    oracle = prune(
        spec, oracle_run, samples, fractions=size.fractions, orders=("most", "least"), batch_size=256, progress=progress
    )
    return Reference(random_area, order_areas(oracle), d_loss, d_acc, base, len(samples))


def faithfulness_of(
    spec: ModelSpec, runs: Sequence[Run], samples: list, ref: Reference, size: BenchmarkSize, progress: bool
) -> dict[str, Any]:
    """Mean over a method's runs of F, F_most, F_least and the single-head Spearman."""
    per_run = []
    for run in runs:
        result = prune(
            spec, run, samples, fractions=size.fractions, orders=("most", "least"), batch_size=256, progress=progress
        )
        entry = faithfulness(order_areas(result), ref.random_area, ref.oracle)
        entry["single_head_spearman"] = single_head_effects(run.scores, ref.delta_loss, ref.delta_accuracy)["spearman"]
        per_run.append(entry)
    mean = {k: _mean_or_none([e[k] for e in per_run]) for k in per_run[0]}
    return {**mean, "per_seed": per_run}


def _mean_or_none(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def cost_of(runs: Sequence[Run]) -> dict[str, float]:
    """Mean over runs of wall time, forward and backward passes per sample (run.json timings)."""
    keys = ("per_sample_s", "forward_passes_per_sample", "backward_passes_per_sample")
    return {k: float(np.mean([r.meta["timings"][k] for r in runs])) for k in keys}


def agreement(runs: dict[str, list[Run]], consistency: dict[str, dict[str, Any]]) -> list[list[float]]:
    """[M, M] global Spearman between methods (mean over seeds); diagonal: between-seed global Spearman."""
    names = list(runs)
    grid = [[0.0] * len(names) for _ in names]
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i == j:
                grid[i][j] = consistency[a]["global_spearman"]
            else:
                grid[i][j] = float(
                    np.mean([spearman(ra.scores, rb.scores) for ra, rb in zip(runs[a], runs[b], strict=True)])
                )
    return grid


def _or_low(x: float | None) -> float:
    return -np.inf if x is None else x


def rank_methods(table: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(names by F then consistency, highest first; the Pareto-optimal names), see the module docstring."""

    def key(n: str) -> tuple[float, float]:
        f, c = table[n]["faithfulness"]["F"], table[n]["consistency"]["global_spearman"]
        return (-f if f is not None else np.inf, -c if c is not None else np.inf)  # undefined ranks last

    ranking = sorted(table, key=key)

    def point(n: str) -> tuple[float, float, float]:
        c = table[n]["cost"]
        return (
            _or_low(table[n]["consistency"]["global_spearman"]),
            _or_low(table[n]["faithfulness"]["F"]),
            -(c["forward_passes_per_sample"] + c["backward_passes_per_sample"]),
        )

    def dominated(n: str) -> bool:
        p = point(n)
        return any(all(q >= x for q, x in zip(point(m), p, strict=True)) and point(m) != p for m in table if m != n)

    return ranking, [n for n in ranking if not dominated(n)]


# ---------------------------------------------------------------- the command


@dataclass
class BenchmarkResult:
    summary: dict[str, Any]
    paths: dict[str, Path]


def run_benchmark(
    out: str | Path,
    *,
    spec: ModelSpec,
    data: DataConfig,
    methods: Sequence[str] = NAMES,
    seeds: Sequence[int] = (47, 1234),
    size: BenchmarkSize = FULL,
    lang: str = "en",
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """Run every method x seed, measure them (module docstring) and write methods.md/.json/.png into `out`."""
    echo = echo or ((lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda line: None))
    out = Path(out)
    if "dispersion" in methods:  # a whole-model checkpoint cannot give attention weights: say so before any run
        attention_modules(spec)
    started = time.perf_counter()
    runs: dict[str, list[Run]] = {}
    for name in methods:
        echo(f"{name}: {len(seeds)} runs of {data.samples} samples")
        runs[name] = [method_run(spec, name, s, data, size, out, progress) for s in seeds]
    everything = [r for rs in runs.values() for r in rs]
    first = everything[0]
    selection = select_eval_samples(spec, first, n=size.eval_samples, seed=0, exclude_runs=everything[1:])
    echo(f"faithfulness on {len(selection.samples)} held-out samples")
    ref = reference(spec, first, selection.samples, size, progress)
    table: dict[str, dict[str, Any]] = {}
    for name in methods:
        table[name] = {
            "settings": method_for(name, size, seeds[0]).to_meta(),
            "consistency": consistency_of(runs[name]),
            "faithfulness": faithfulness_of(spec, runs[name], selection.samples, ref, size, progress),
            "cost": cost_of(runs[name]),
        }
    summary = _summary(spec, data, seeds, size, ref, table, runs)
    summary["total_s"] = time.perf_counter() - started
    return BenchmarkResult(summary, _write(out, summary, lang))


def _summary(
    spec: ModelSpec,
    data: DataConfig,
    seeds: Sequence[int],
    size: BenchmarkSize,
    ref: Reference,
    table: dict[str, dict[str, Any]],
    runs: dict[str, list[Run]],
) -> dict[str, Any]:
    """methods.json: the model, data and size, the reference ends of the F scale, each method's measures with
    its rank, the methods' agreement, the ranking and the Pareto front (`total_s` is added by the caller)."""
    methods = list(table)
    ranking, pareto = rank_methods(table)
    for rank, name in enumerate(ranking, start=1):
        table[name]["rank"] = rank
    return {
        "format": "headattr-methods",
        "version": 1,
        "model": {
            "name": spec.name,
            "path": spec.path,
            "num_layers": spec.num_layers,
            "num_heads": spec.num_heads,
            "config_hash": spec.config_hash,
        },
        "data": data.to_meta() | {"path": str(data.path)},
        "seeds": list(seeds),
        "size": {**asdict(size), "fractions": list(size.fractions), "max_fraction": MAX_FRACTION},
        "eval_samples": ref.eval_samples,
        "num_methods": len(methods),
        "reference": {
            "random_F": 0,  # the two ends of the F scale, by definition
            "oracle_F": 1,
            "random_area": ref.random_area,
            "oracle_area_most": ref.oracle["most"],
            "oracle_area_least": ref.oracle["least"],
            "baseline_loss": ref.baseline_loss,
        },
        "methods": table,
        "agreement": {
            "methods": methods,
            "global_spearman": agreement(runs, {n: table[n]["consistency"] for n in methods}),
        },
        "ranking": ranking,
        "pareto": pareto,
    }


def _write(out: Path, summary: dict[str, Any], lang: str) -> dict[str, Path]:
    """methods.json, methods.md (in `lang`) and methods.png, each written atomically."""
    paths = {name: out / name for name in (METHODS_MD, METHODS_JSON, METHODS_PNG)}
    atomic_write_json(paths[METHODS_JSON], summary)
    atomic_write_text(paths[METHODS_MD], render_markdown(summary, lang))
    atomic_write_bytes(paths[METHODS_PNG], plot_methods(summary))
    return paths
