"""Held-out evaluation samples: rows disjoint from a run's own samples, tokenized as the run's were.

Also the checks that a run and its evaluation samples fit together: the run was computed on this model, and
no evaluation sample is one of its attribution samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headattr.data.records import load_records
from headattr.data.samples import DataConfig
from headattr.data.selection import select_records
from headattr.data.tokens import Sample, tokenize_record
from headattr.errors import HeadattrError
from headattr.models import ModelSpec
from headattr.runs.rundir import Run


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


def check_held_out(run: Run, samples: Sequence[Sample]) -> None:
    """Raise if any of `samples` is one of the run's own samples (by uid)."""
    overlap = run_uids(run) & {s.uid for s in samples}
    if overlap:
        raise HeadattrError(
            f"{len(overlap)} evaluation samples were also attribution samples of run {run.path}; "
            "evaluate on held-out samples (see select_eval_samples)"
        )
