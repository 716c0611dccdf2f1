"""`headattr ensemble`: average runs of one model into a new run directory.

The ensemble is an ordinary run directory (`scores.safetensors`, `run.json`, `heads.csv`, `heatmap.png`),
so `compare`, and anything else that reads a run, takes it as input:

- `scores`: the mean of the input runs' scores, each run weighted equally.
- `attributions`: the input runs' attributions concatenated along samples ([sum N, V, L, H]), so jackknife
  and split-half analyses of the ensemble use the pooled samples. When every run has the same number
  of samples, `aggregate.final_scores(attributions)` equals `scores` (up to float32 rounding); otherwise
  the pooled samples weight runs by their sample counts, and `run.json` says so (`ensemble.equal_weights`).
- `run.json`: `config` holds the settings the runs share, and for a setting that differs, the list of the
  runs' values (in input order); `config.samples` is the pooled sample count. `samples` lists every input
  sample with `run` (its input's position); `diagnostics` are concatenated and summarised again; and
  `ensemble.inputs` records the provenance of every input run (path, creation time, sha256 of its scores
  file, configuration, data report, device, versions, and its own `ensemble` section when it is one).

A scores-only input (an imported run, no per-sample attributions) makes a scores-only ensemble: the mean of
the scores, no attributions, `ensemble.scores_only: true`; `sign` is the inputs' common convention or `mixed`.

Only runs that can be pooled are accepted: the same model (config hash and score shape), the same masked
variants (probabilities and draws, so that attributions line up along V), the same method and the same
post-processing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headattr.errors import HeadattrError
from headattr.methods.diagnostics import completeness_from_diagnostics
from headattr.runs.rundir import (
    SCORES_FILE,
    Run,
    check_output_dir,
    check_same_model,
    prepare_output_dir,
    read_run,
    run_meta,
    run_sign,
    write_run,
)

DIAGNOSTIC_ARRAYS = ("j_full", "j_baseline", "completeness_error")


def ensemble(run_paths: Sequence[str | Path | Run], out: str | Path, overwrite: bool = False) -> Path:
    """Average the runs at `run_paths` into a new run directory `out`; returns `out`.

    Raises `HeadattrError` for fewer than two runs, runs that cannot be pooled, an `out` that is one of the
    inputs, or an `out` that exists and is not empty without `overwrite`.
    """
    if len(run_paths) < 2:
        raise HeadattrError(f"need at least two run directories to ensemble (got {len(run_paths)})")
    out = Path(out)
    inputs = [Path(r.path if isinstance(r, Run) else r).resolve() for r in run_paths]
    if out.resolve() in inputs:
        raise HeadattrError(f"--out {out} is one of the input runs; write the ensemble to a new directory")
    check_output_dir(out, overwrite)
    runs = [r if isinstance(r, Run) else read_run(r) for r in run_paths]
    check_poolable(runs)
    scores = np.mean([r.scores.astype(np.float64) for r in runs], axis=0).astype(np.float32)
    if all(r.has_samples for r in runs):
        attributions = np.concatenate([r.attributions for r in runs], axis=0)
    else:  # a scores-only input (imported): the ensemble is scores-only too, its scores still the mean
        attributions = np.zeros((0, 0, *scores.shape), dtype=np.float32)
    meta = ensemble_meta(runs)
    prepare_output_dir(out, overwrite=overwrite)
    write_run(out, scores, attributions, meta)
    return out


def check_poolable(runs: Sequence[Run]) -> None:
    """Raise unless the runs share model, score shape, masked variants and post-processing."""
    check_same_model(runs)
    first = runs[0]
    scores_only = not all(r.has_samples for r in runs)  # then only the scores are pooled
    for run in runs[1:]:
        if not scores_only and (
            run.meta.get("variants") != first.meta.get("variants")
            or run.attributions.shape[1:] != (first.attributions.shape[1:])
        ):
            raise HeadattrError(
                f"runs {first.path} and {run.path} have different masked variants "
                "(--mask-probs / --mask-samples-per-prob); only runs with the same variants can be pooled"
            )
        ma, mb = _method(first), _method(run)
        if ma != mb:
            raise HeadattrError(
                f"runs {first.path} ({ma}) and {run.path} ({mb}) come from different --method; "
                "their scores are on different scales and cannot be averaged"
            )
        pa, pb = _postprocess(first), _postprocess(run)
        if pa != pb:
            raise HeadattrError(
                f"runs {first.path} ({pa}) and {run.path} ({pb}) use different --postprocess; "
                "their scores cannot be averaged"
            )


def _method(run: Run) -> str:
    return str(run.meta.get("config", {}).get("method", "gate-ig"))


def _postprocess(run: Run) -> str:
    return str(run.meta.get("config", {}).get("postprocess", "signed"))


def merged_config(configs: Sequence[dict[str, Any]], total_samples: int) -> dict[str, Any]:
    """Shared settings as they are; a differing setting becomes the list of the runs' values."""
    merged: dict[str, Any] = {}
    for key in sorted(set().union(*configs)):
        values = [c.get(key) for c in configs]
        same = len({json.dumps(v, sort_keys=True) for v in values}) == 1
        merged[key] = values[0] if same else values
    merged["samples"] = total_samples
    return merged


def merged_diagnostics(runs: Sequence[Run]) -> dict[str, Any]:
    """Per-variant diagnostics concatenated along samples, and their completeness summary recomputed."""
    diags = [r.meta.get("diagnostics") or {} for r in runs]
    if not all(all(k in d for k in DIAGNOSTIC_ARRAYS) for d in diags):
        return {"completeness": None}
    merged = {k: [row for d in diags for row in d[k]] for k in DIAGNOSTIC_ARRAYS}
    if all("nodes" in d for d in diags):  # the nodes each path used, where every run recorded them
        merged["nodes"] = [row for d in diags for row in d["nodes"]]
    merged["completeness"] = completeness_from_diagnostics(merged)  # None when ragged (runs of other scopes)
    return merged


def provenance(run: Run) -> dict[str, Any]:
    """What identifies an input run: where it was, when it was made, a hash of its scores, how it was made."""
    scores_file = Path(run.path) / SCORES_FILE
    digest = hashlib.sha256(scores_file.read_bytes()).hexdigest() if scores_file.is_file() else None
    meta = run.meta
    record = {
        "path": str(Path(run.path).resolve()),
        "created": meta.get("created"),
        "num_samples": int(run.attributions.shape[0]),
        "scores_sha256": digest,
        "config": meta.get("config"),
        "model_name": meta.get("model", {}).get("name"),
        "data_report": meta.get("data_report"),
        "device": meta.get("device"),
        "versions": meta.get("versions"),
    }
    if "ensemble" in meta:
        record["ensemble"] = meta["ensemble"]
    return record


def ensemble_meta(runs: Sequence[Run]) -> dict[str, Any]:
    """run.json of the ensemble (see the module docstring)."""
    from headattr.version import __version__

    counts = [int(r.attributions.shape[0]) for r in runs]
    total = sum(counts)
    first = runs[0].meta
    signs = {run_sign(r.meta) for r in runs}
    scores_only = not all(r.has_samples for r in runs)
    return run_meta(
        config=merged_config([r.meta.get("config", {}) for r in runs], total),
        model=first.get("model"),
        tokenizer=first.get("tokenizer"),
        samples=[{**s, "run": i} for i, r in enumerate(runs) for s in r.meta.get("samples", [])],
        variants=[] if scores_only else first.get("variants"),
        diagnostics=merged_diagnostics(runs),
        versions={"headattr": __version__, "numpy": np.__version__},
        sign=signs.pop() if len(signs) == 1 else "mixed",
        ensemble={
            "rule": "scores: mean of the input runs' scores, each run weighted equally; "
            "attributions: the input runs' attributions concatenated along samples",
            "equal_weights": len(set(counts)) == 1,
            "scores_only": scores_only,
            "inputs": [provenance(r) for r in runs],
        },
    )
