"""`headattr demo`: the whole tour on the built-in model, in one command and a few minutes on a CPU.

Steps, each through the public API, with the seed report's configuration (50 samples, 8 IG steps, mask
probabilities 0.15/0.3/0.5/0.7/0.9, 2 masked draws per probability):

1. Gate-IG attribution with seed 47 and with seed 1234 (each seed chooses the samples and the masks, as
   `headattr attribute --seed` does); samples are drawn evenly from the demo tasks (`--stratify-by task`).
2. `compare` of the two runs: report.md (English), report.zh.md (Chinese), metrics.json, layer_metrics.csv,
   consistency_analysis.png.
3. `prune` with the seed-47 scores on held-out samples (disjoint from both runs' samples): most / least /
   random orders, single-head ablations and exact match. A model trained to end its answers with EOS
   (`training_args.json` with `eos_window` > 0, as the built-in model, trained with a 12-token window) is
   judged on generated answers (`prune --eval generate --task exact`: N tokens with Dream's sampler, cut at
   EOS); a model without one (`python -m headattr.demo.train --eos-window 0`, the built-in model before
   issue 12) on answers decoded into the known answer span (`headattr.decode`), since its generations never
   end.
4. `headattr sparse` with the seed-47 scores (`demo.sparse_step`), for a model that ends its answers.

Outputs under OUT: `run-seed47/`, `run-seed1234/`, `compare/`, `prune/`, `sparse/`, and `summary.json` (the
numbers printed at the end).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from headattr.analysis.comparison import compare
from headattr.analysis.results import Comparison
from headattr.data.samples import DataConfig
from headattr.demo import DATA_FILE, MODEL_DIR
from headattr.demo.sparse_step import sparse_step
from headattr.engine.masking import MaskConfig
from headattr.generation.taskeval import GenerationEval
from headattr.methods import GateIGConfig
from headattr.models import ModelSpec, load_model
from headattr.pruning.outputs import write_outputs as write_prune_outputs
from headattr.pruning.results import PruneResult
from headattr.pruning.runner import prune
from headattr.pruning.samples import select_eval_samples
from headattr.pruning.settings import DEFAULT_FRACTIONS
from headattr.reports.markdown.report import render_report
from headattr.reports.outputs import write_outputs
from headattr.runs.attribution import attribute
from headattr.runs.rundir import Run, atomic_write_json, atomic_write_text, check_output_dir, read_run
from headattr.sparsity.results import named_verdict

SEEDS = (47, 1234)
STRATIFY_BY = "task"
SUMMARY_FILE = "summary.json"
REPORT_ZH_FILE = "report.zh.md"
ACCEPTANCE_MAX_FRACTION = 0.3  # the summary covers the fractions up to this one (and the area up to it)
# The demo runs on the CPU in float32 even where there is a GPU: its model is tiny (a GPU gains nothing), and its
# outputs are then the same on every host as the numbers the README quotes.
DEMO_DEVICE = "cpu"


@dataclass(frozen=True)
class DemoSize:
    """How much work the demo does; `FULL` is the seed report's configuration, `QUICK` a smoke test."""

    samples: int = 50
    ig_steps: int | None = None  # None: Gate-IG's default (the error-controlled rule from 3 nodes)
    ig_tol: float | None = None  # None: Gate-IG's default tolerance
    prune_eval_samples: int = 50
    # 50, not prune's default 10: at 5% of 48 heads random removal is heavy-tailed (a pair hits one of the few
    # individually needed heads about a third of the time), and 10 draws leave the verdict to chance
    random_orders: int = 50
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS


FULL = DemoSize()
QUICK = DemoSize(samples=8, ig_steps=2, ig_tol=0.0, prune_eval_samples=12, random_orders=3)


@dataclass
class DemoResult:
    """Where every output is, the numbers of the summary, and the objects they come from."""

    paths: dict[str, Path]
    summary: dict[str, Any]
    comparison: Comparison
    pruning: PruneResult
    timings: dict[str, float] = field(default_factory=dict)


def gate_ig_config(size: DemoSize) -> GateIGConfig:
    """Gate-IG with the size's node count and tolerance, Gate-IG's defaults where the size leaves them open."""
    settings = {"ig_steps": size.ig_steps, "ig_tol": size.ig_tol}
    return GateIGConfig(**{k: v for k, v in settings.items() if v is not None})


def _quadrature(method: GateIGConfig) -> dict[str, Any]:
    """The quadrature a Gate-IG configuration runs: base nodes and tolerance (0: the fixed rule)."""
    return {"ig_steps": method.ig_steps, "ig_tol": method.ig_tol if method.adaptive else 0.0}


def _attribute_seed(
    spec: ModelSpec, seed: int, size: DemoSize, data_file: Path, out: Path, overwrite: bool, progress: bool
) -> Run:
    """One attribution run (as `headattr attribute --seed SEED` makes it), read back as every command reads it."""
    data = DataConfig(path=str(data_file), samples=size.samples, seed=seed, stratify_by=STRATIFY_BY)
    samples, report = data.build(spec.tokenizer)
    attribute(
        spec,
        samples,
        gate_ig_config(size),
        MaskConfig(mask_seed=seed),
        batch_size=256,
        seed=seed,
        out=out,
        overwrite=overwrite,
        progress=progress,
        data_report=report,
        extra_meta={"demo": True},
    )
    return read_run(out)


def _write_comparison(comparison: Comparison, out: Path, overwrite: bool) -> dict[str, Path]:
    """The English report and its companions via `report.write_outputs`, then the Chinese report beside them."""
    paths = write_outputs(comparison, out, lang="en", overwrite=overwrite)
    paths[REPORT_ZH_FILE] = out / REPORT_ZH_FILE
    atomic_write_text(paths[REPORT_ZH_FILE], render_report(comparison, "zh"))
    return paths


def demo_generation(model_dir: str | Path) -> GenerationEval | None:
    """Exact match of generated answers for a model trained with an EOS window (see the module docstring)."""
    args_file = Path(model_dir) / "training_args.json"
    window = int(json.loads(args_file.read_text()).get("eos_window", 0)) if args_file.is_file() else 0
    if window <= 0:
        return None
    settings = {"max_new_tokens": window, "steps": window, "alg": "maskgit_plus"}
    return GenerationEval.from_text("exact", settings, batch_size=256)


def _judged(fraction: float) -> bool:
    """Whether the acceptance covers `fraction` (up to ACCEPTANCE_MAX_FRACTION, within float rounding)."""
    return fraction <= ACCEPTANCE_MAX_FRACTION + 1e-9


ROW_KEYS = ("most", "random_mean", "random_low", "random_high", "least", "most_percentile", "least_percentile")


def _pruning_verdicts(result: PruneResult) -> dict[str, Any]:
    """Per metric (loss, accuracy): the verdict rows up to ACCEPTANCE_MAX_FRACTION and the area row."""
    out: dict[str, Any] = {}
    verdicts = result.verdicts()["metrics"]
    for metric in ("loss", "accuracy"):
        rows = [r for r in verdicts[metric]["fractions"] if _judged(r["fraction"])]
        out[metric] = {"rows": rows, "area": verdicts[metric]["area"]}
    return out


def summarize(comparison: Comparison, result: PruneResult) -> dict[str, Any]:
    """The measured numbers the demo prints: consistency of the two runs, pruning up to 0.3 of the heads.

    Pruning uses the verdicts of `prune` (`PruneResult.verdicts`): at each fraction and for the area up to
    0.3, most worse than random and least better, beyond the 95% interval of the random orders' mean.
    """
    pair = comparison.pairs[0]
    verdicts = _pruning_verdicts(result)
    at_fraction: dict[str, dict[str, dict[str, float]]] = {}
    for metric, v in verdicts.items():
        std = result.random_summary(metric)["std"]
        at_fraction[metric] = {
            f"{r['fraction']:g}": {
                **{k: r[k] for k in ROW_KEYS},
                "random_std": float(std[result.fractions.index(r["fraction"])]),
            }
            for r in v["rows"]
        }
    holds = {
        metric: {
            "fractions": {f"{r['fraction']:g}": r["holds"] for r in v["rows"]},
            "area": None if v["area"] is None else v["area"]["holds"],
        }
        for metric, v in verdicts.items()
    }
    area = {
        metric: None if v["area"] is None else {k: v["area"][k] for k in ("upto", *ROW_KEYS)}
        for metric, v in verdicts.items()
    }
    sh = result.single_head or {}
    return {
        "consistency": {
            "verdict": comparison.verdict.level,
            "mean_per_layer_pearson": comparison.verdict.pearson_mean,
            "mean_per_layer_spearman": comparison.verdict.spearman_mean,
            "global_pearson": pair.global_metrics.pearson,
            "global_spearman": pair.global_metrics.spearman,
        },
        "pruning": {
            "baseline": result.baseline.to_dict(),
            "at_fraction": at_fraction,
            "area": area,
            "verdict": holds,
            "verdict_rule": result.verdicts()["rule"],
            "rank_by": result.rank_by,
            "single_head_spearman": sh.get("spearman"),
            "single_head_spearman_per_layer_mean": sh.get("spearman_per_layer_mean"),
            "single_head_spearman_abs": sh.get("abs", {}).get("spearman"),
            "single_head_spearman_abs_per_layer_mean": sh.get("abs", {}).get("spearman_per_layer_mean"),
            "eval_samples": len(result.eval_info.get("uids", [])),
        },
    }


def _exact(baseline: dict[str, Any]) -> float | None:
    """Exact match of generated answers when measured, else of answers decoded into the known span."""
    return baseline.get("task_exact", baseline.get("exact_match"))


def format_summary(summary: dict[str, Any]) -> list[str]:
    """The summary as short lines of text (every number from `summarize`)."""

    def f(x: float | None, spec: str = ".4f") -> str:
        return "N/A" if x is None else format(x, spec)

    def row_text(r: dict[str, float]) -> str:
        return (
            f"most {f(r['most'])} (pct {f(r['most_percentile'], '.0f')})  random {f(r['random_mean'])} "
            f"[{f(r['random_low'])}, {f(r['random_high'])}]  least {f(r['least'])} "
            f"(pct {f(r['least_percentile'], '.0f')})"
        )

    c, p = summary["consistency"], summary["pruning"]
    lines = [
        f"consistency (seed 47 vs 1234): {c['verdict'].replace('_', ' ')}; mean per-layer Pearson "
        f"{f(c['mean_per_layer_pearson'])}, mean per-layer Spearman {f(c['mean_per_layer_spearman'])}, "
        f"global Spearman {f(c['global_spearman'])}",
        f"pruning (heads ranked by {p['rank_by']}) on {p['eval_samples']} held-out samples; "
        f"unpruned loss {f(p['baseline']['loss'])}, "
        f"accuracy {f(p['baseline']['accuracy'])}, exact match {f(_exact(p['baseline']))}",
        "random = mean of the random orders [95% interval]; pct = percentile among the random orders",
    ]
    for metric, rows in p["at_fraction"].items():
        for frac, r in rows.items():
            ok = "yes" if p["verdict"][metric]["fractions"][frac] else "no"
            lines.append(f"  {metric} with {frac} of heads removed: {row_text(r)}: {ok}")
        a = p["area"][metric]
        if a is not None:
            ok = "yes" if p["verdict"][metric]["area"] else "no"
            lines.append(f"  {metric} area over fractions 0-{a['upto']:g}: {row_text(a)}: {ok}")
    parts = []
    for metric, v in p["verdict"].items():
        failing = [frac for frac, ok in v["fractions"].items() if not ok]
        text = "every fraction" if not failing else "fails at " + ", ".join(failing)
        area = "N/A" if v["area"] is None else ("yes" if v["area"] else "no")
        parts.append(f"{metric}: {text}; area {area}")
    lines.append(
        f"most worse than random and least better, beyond the random mean's 95% interval, at fractions <= "
        f"{ACCEPTANCE_MAX_FRACTION:g}: " + "; ".join(parts)
    )
    lines.append(
        f"single-head ablation vs scores: Spearman {f(p['single_head_spearman'])}, "
        f"mean per layer {f(p['single_head_spearman_per_layer_mean'])}; vs |scores|: "
        f"{f(p['single_head_spearman_abs'])}, mean per layer {f(p['single_head_spearman_abs_per_layer_mean'])}"
    )
    return lines + _sparse_lines(summary.get("sparse") or [])


def _sparse_lines(comparisons: list[dict[str, Any]]) -> list[str]:
    """One line per paired comparison of `headattr sparse` (step 5), the verdict naming the better one."""
    lines = ["sparse attention, paired on the same items (difference [95% paired bootstrap], exact McNemar p):"]
    for c in comparisons:
        lines.append(
            f"  {c['a']} vs {c['b']} ({c['metric']}): {c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}], "
            f"p {c['p_value']:.3g}: {named_verdict(c)}"
        )
    return lines if comparisons else []


def demo_model(model_dir: str | Path = MODEL_DIR) -> ModelSpec:
    """The demo's model, on DEMO_DEVICE (float32 there)."""
    return load_model(model_dir, device=DEMO_DEVICE)


def _size(quick: bool, samples: int | None, ig_steps: int | None, prune_eval_samples: int | None) -> DemoSize:
    """`FULL` (or `QUICK`) with the caller's overrides."""
    base = QUICK if quick else FULL
    return DemoSize(
        samples=samples or base.samples,
        ig_steps=ig_steps or base.ig_steps,
        ig_tol=base.ig_tol,
        prune_eval_samples=prune_eval_samples or base.prune_eval_samples,
        random_orders=base.random_orders,
        fractions=base.fractions,
    )


def _attribute_runs(
    spec: ModelSpec,
    size: DemoSize,
    data_file: Path,
    out: Path,
    overwrite: bool,
    progress: bool,
    echo: Callable[[str], None],
    timings: dict[str, float],
) -> list[Run]:
    """Steps 1 and 2: a Gate-IG run per seed of `SEEDS`, each timed into `timings`."""
    runs: list[Run] = []
    for step, seed in enumerate(SEEDS, start=1):
        method = gate_ig_config(size)
        rule = (
            f"{method.ig_steps} nodes refined to tol {method.ig_tol:g}"
            if method.adaptive
            else f"{method.ig_steps} IG steps"
        )
        echo(f"[{step}/5] Gate-IG attribution, seed {seed}: {size.samples} samples, {rule}")
        t = time.perf_counter()
        runs.append(_attribute_seed(spec, seed, size, data_file, out / f"run-seed{seed}", overwrite, progress))
        timings[f"attribute_seed{seed}_s"] = time.perf_counter() - t
    return runs


def _prune_step(
    spec: ModelSpec,
    runs: list[Run],
    size: DemoSize,
    rank_by: str,
    model_dir: str | Path,
    progress: bool,
    echo: Callable[[str], None],
) -> PruneResult:
    """Step 4: prune by the first seed's scores on held-out samples the runs did not use."""
    selection = select_eval_samples(spec, runs[0], n=size.prune_eval_samples, seed=0, exclude_runs=runs[1:])
    echo(
        f"[4/5] prune by the seed-{SEEDS[0]} scores on {len(selection.samples)} held-out samples "
        f"(single heads, exact match)"
    )
    generation = demo_generation(model_dir)
    result = prune(
        spec,
        runs[0],
        selection.samples,
        fractions=size.fractions,
        random_orders=size.random_orders,
        rank_by=rank_by,
        single_head=True,
        decode=generation is None,
        batch_size=256,
        progress=progress,
        generation=generation,
    )
    result.eval_info.update(selection.to_dict(), eval_seed=0)
    return result


def _sparse(spec, runs, size, model_dir, out: Path, progress: bool, echo, paths: dict) -> dict[str, Any] | None:
    """Step 5 (`demo.sparse_step`) for a model that ends its answers (it generates); its summary, or None."""
    generation = demo_generation(model_dir)
    if generation is None:
        echo("[5/5] sparse attention: skipped (the model does not end its answers, so it cannot generate them)")
        return None
    result, written = sparse_step(spec, runs, generation, size.prune_eval_samples, out / "sparse", progress, echo)
    paths.update({f"sparse/{name}": path for name, path in written.items()})
    return result.to_dict()["comparisons"]


def run_demo(
    out: str | Path = "headattr-demo",
    *,
    samples: int | None = None,
    ig_steps: int | None = None,
    prune_eval_samples: int | None = None,
    rank_by: str = "score",
    quick: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    model_dir: str | Path = MODEL_DIR,
    data_file: str | Path = DATA_FILE,
    echo: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the demo into `out` and return where everything is (see the module docstring).

    `samples`, `ig_steps` and `prune_eval_samples` override the size (`FULL`, or `QUICK` with `quick`);
    `rank_by` is how `prune` ranks heads (`score` or `abs`).
    `model_dir`/`data_file` default to the built-in model and data. `echo` receives one line per step
    (default: standard error when `progress`, else nothing).
    """
    if echo is None:
        echo = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda line: None)
    size = _size(quick, samples, ig_steps, prune_eval_samples)
    out, data_file = Path(out), Path(data_file)
    check_output_dir(out, overwrite)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    spec = demo_model(model_dir)
    echo(
        f"model {spec.name} ({spec.family} format): {spec.num_layers} layers x {spec.num_heads} heads, "
        f"{spec.num_parameters:,} parameters; "
        f"data {data_file}"
    )
    runs = _attribute_runs(spec, size, data_file, out, overwrite, progress, echo, timings)
    echo("[3/5] compare the two runs (report in English and Chinese)")
    t = time.perf_counter()
    comparison = compare(runs)
    paths: dict[str, Path] = {f"run-seed{seed}": out / f"run-seed{seed}" for seed in SEEDS}
    paths.update(_write_comparison(comparison, out / "compare", overwrite))
    timings["compare_s"] = time.perf_counter() - t
    t = time.perf_counter()
    result = _prune_step(spec, runs, size, rank_by, model_dir, progress, echo)
    paths.update(write_prune_outputs(result, out / "prune"))
    timings["prune_s"] = time.perf_counter() - t
    t = time.perf_counter()
    sparse = _sparse(spec, runs, size, model_dir, out, progress, echo, paths)
    timings["sparse_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    summary = {
        **summarize(comparison, result),
        **({"sparse": sparse} if sparse is not None else {}),
        # the Gate-IG settings the runs used, with the method's defaults filled in where the size left them open
        "size": {**asdict(size), **_quadrature(gate_ig_config(size)), "fractions": list(size.fractions)},
        "timings": timings,
    }
    paths[SUMMARY_FILE] = out / SUMMARY_FILE
    atomic_write_json(paths[SUMMARY_FILE], summary)
    return DemoResult(paths, summary, comparison, result, timings)
