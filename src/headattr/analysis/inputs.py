"""The runs a comparison reads: loading, labels, configuration differences, shared samples, per-run summaries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headattr.analysis.options import Applied
from headattr.analysis.reliability import split_half
from headattr.analysis.results import RunSummary, jsonable
from headattr.errors import HeadattrError
from headattr.methods.diagnostics import completeness_from_diagnostics
from headattr.runs.rundir import Run, read_run, run_method, run_sign

SEED_KEYS = ("seed", "data_seed", "mask_seed")
# Settings that by the spec ("What must not change the numbers") cannot change the scores.
NO_EFFECT_KEYS = ("batch_size", "grad_checkpoint", "attn_implementation")


def load_runs(runs: Sequence[Run | str | Path]) -> list[Run]:
    """`Run` objects for run directories (given runs pass through); at least two are required."""
    if len(runs) < 2:
        raise HeadattrError(f"need at least two run directories to compare (got {len(runs)})")
    return [r if isinstance(r, Run) else read_run(r) for r in runs]


def run_labels(runs: Sequence[Run]) -> list[str]:
    """`seed 47` when the seeds tell runs apart, else directory names, else `run 1`, `run 2`..."""
    seeds = [json.dumps(r.meta.get("config", {}).get("seed"), sort_keys=True) for r in runs]
    if "null" not in seeds and len(set(seeds)) == len(runs):
        return [f"seed {json.loads(s)}" for s in seeds]
    names = [Path(r.path).name for r in runs]
    if all(names) and len(set(names)) == len(runs):
        return names
    return [f"run {i + 1}" for i in range(len(runs))]


def config_differences(configs: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(keys equal in every run, [{key, values, kind}] for keys that differ).

    `kind` is `seed` for the seeds (differing seeds is the point of a comparison), `no_effect` for settings
    the spec guarantees do not change the numbers (batch size, checkpointing, attention kernel), and
    `flagged` for everything else.
    """
    keys = sorted(set().union(*configs))
    common, diffs = {}, []
    for key in keys:
        values = [c.get(key) for c in configs]
        if len({json.dumps(v, sort_keys=True) for v in values}) == 1:
            common[key] = values[0]
        else:
            kind = "seed" if key in SEED_KEYS else "no_effect" if key in NO_EFFECT_KEYS else "flagged"
            diffs.append({"key": key, "values": values, "kind": kind})
    return common, diffs


def shared_samples(a: Run, b: Run) -> int | None:
    """How many samples (by hash) two runs share; None when either run lacks sample hashes."""
    ha = [s.get("hash") for s in a.meta.get("samples", [])]
    hb = [s.get("hash") for s in b.meta.get("samples", [])]
    if not ha or not hb or None in ha or None in hb:
        return None
    return len(set(ha) & set(hb))


def completeness_summary(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The run's completeness summary (`diagnostics.completeness_summary`), recomputed from run.json's
    per-variant diagnostics so that every run is summarised by the same rule, whatever version wrote it;
    run.json's stored summary only when the per-variant values are absent; None when neither exists."""
    diag = meta.get("diagnostics") or {}
    summary = completeness_from_diagnostics(diag)
    if summary is None and diag.get("completeness"):
        summary = {**diag["completeness"]}
        summary.setdefault("relative_total", None)
    return None if summary is None else {k: jsonable(v) for k, v in summary.items()}


def _distribution(scores: np.ndarray) -> dict[str, float]:
    """Mean, median, std, min and max of a run's head scores."""
    s = scores.astype(np.float64).ravel()
    return {
        "mean": float(s.mean()),
        "median": float(np.median(s)),
        "std": float(s.std()),
        "min": float(s.min()),
        "max": float(s.max()),
    }


def summarize_run(run: Run, label: str, per_sample: np.ndarray | None, settings: Applied, index: int) -> RunSummary:
    """What the comparison keeps of run number `index`: settings, distribution, completeness, reliability."""
    config = dict(run.meta.get("config", {}))
    rng = np.random.default_rng([settings.seed, 0, index])
    scores_only = per_sample is None
    return RunSummary(
        label=label,
        path=str(run.path),
        model_name=run.meta.get("model", {}).get("name"),
        config=config,
        num_samples=0 if scores_only else int(run.attributions.shape[0]),
        num_variants=0 if scores_only else int(run.attributions.shape[1]),
        postprocess=str(config.get("postprocess", "signed")),
        method=run_method(run.meta),
        sign=run_sign(run.meta),
        scores_only=scores_only,
        imported_from=(run.meta.get("imported") or {}).get("source"),
        distribution=_distribution(run.scores),
        completeness=completeness_summary(run.meta),
        reliability=split_half(per_sample, settings.splits, rng, settings.target, num_layers=run.num_layers),
        scores=np.asarray(run.scores, dtype=np.float64),
    )
