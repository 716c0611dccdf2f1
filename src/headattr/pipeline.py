"""`headattr.attribute`: Gate-IG over a set of samples, with per-sample checkpoints and a run directory.

Each sample's result depends only on the model, the sample and the configuration, so samples are
checkpointed as they finish and a resumed run ends with the same scores as an uninterrupted one.

The same property splits a run across processes or machines (`shard=(i, n)`, `--shard i/n`): each process
computes the samples at positions `i, i + n, i + 2n, ...` into the shared run directory's checkpoints, and the
process that finds every checkpoint present when it finishes writes the run, byte-identical to a one-process run.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import rundir
from .aggregate import final_scores
from .data import Sample
from .engine import GateIGConfig, SampleAttribution, attribute_sample
from .errors import HeadattrError
from .models import ModelSpec


@dataclass
class Attribution:
    """Scores, raw per-variant attributions and diagnostics of an attribution run."""

    scores: np.ndarray  # [L, H] float32: mean over samples of postprocess(mean over variants)
    attributions: np.ndarray  # [N, V, L, H] float32, raw signed
    j_full: np.ndarray  # [N, V]
    j_baseline: np.ndarray  # [N, V, S]
    completeness_error: np.ndarray  # [N, V, S]
    samples: list[Sample]
    config: GateIGConfig
    timings: dict[str, float] = field(default_factory=dict)

    def diagnostics(self) -> dict[str, Any]:
        """Per-variant J and completeness errors, with a summary that says whether `ig_steps` suffices."""
        err = np.abs(self.completeness_error)
        gap = np.abs(self.j_full[..., None] - self.j_baseline)
        rel = err / np.maximum(gap, 1e-12)
        return {
            "j_full": self.j_full.tolist(),
            "j_baseline": self.j_baseline.tolist(),
            "completeness_error": self.completeness_error.tolist(),
            "completeness": {
                "max_abs": float(err.max()),
                "mean_abs": float(err.mean()),
                "median_abs": float(np.median(err)),
                "max_relative": float(rel.max()),
                "median_relative": float(np.median(rel)),
            },
        }


def attribute(
    spec: ModelSpec,
    samples: list[Sample],
    config: GateIGConfig | None = None,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    run_info: dict[str, Any] | None = None,
) -> Attribution | None:
    """Gate-IG head scores of `spec` over `samples`.

    With `out`, writes the run directory (see `headattr.rundir`): per-sample checkpoints while running,
    then `scores.safetensors`, `run.json`, `heads.csv`, `heatmap.png`. `resume` continues a run in `out`
    that was interrupted; the checkpoints must come from the same model, samples and configuration.
    `shard=(i, n)` computes only this process's share into `out` (module docstring) and returns None while
    other shards' samples are still missing. `run_info` adds entries (data report, CLI configuration) to
    run.json.
    """
    config = config or GateIGConfig()
    if not samples:
        raise HeadattrError("no samples to attribute; check the dataset and --samples")
    check_shard(shard, out, overwrite)
    fingerprint = _fingerprint(spec, samples, config)
    ckpt_dir = None
    started = time.perf_counter()
    meta = _meta(spec, samples, config, run_info or {}, status="running")
    if out is not None:
        out, ckpt_dir = _open_run_dir(Path(out), fingerprint, meta, overwrite, resume, sharded=shard is not None)
    mine = [i for i in range(len(samples)) if shard is None or i % shard[1] == shard[0]]
    results, computed = _attribute_samples(spec, samples, mine, config, ckpt_dir, progress)
    if shard is not None:
        others = _collect_other_shards(ckpt_dir, samples, results)
        if others is None:
            return None
        results.update(others)
    elapsed = time.perf_counter() - started
    result = _combine([results[i] for i in range(len(samples))], samples, config)
    result.timings = {
        "total_s": elapsed,
        "computed_samples": computed,
        "resumed_samples": len(mine) - computed,  # this process's share, read back from its checkpoints
        "other_shards_samples": len(samples) - len(mine),
        "per_sample_s": elapsed / max(computed, 1),
    }
    if out is not None:
        meta.update(status="complete", timings=result.timings, diagnostics=result.diagnostics())
        rundir.write_run(out, result.scores, result.attributions, meta)
        _remove_checkpoints(ckpt_dir)
    return result


def _open_run_dir(
    out: Path, fingerprint: str, meta: dict[str, Any], overwrite: bool, resume: bool, sharded: bool
) -> tuple[Path, Path]:
    """Prepare `out` for this run and return it with its checkpoint folder.

    `--overwrite` drops only stale checkpoints: a finished run already in `out` stays readable until this one
    has finished and replaces its files, so a failed or interrupted overwrite loses nothing. Shards join a
    directory the others may have started, like a resume.
    """
    out = rundir.prepare_output_dir(out, overwrite=overwrite, resume=resume or sharded, owned=(rundir.CHECKPOINT_DIR,))
    ckpt_dir = out / rundir.CHECKPOINT_DIR
    _check_resume(ckpt_dir, fingerprint, resume)
    if not _holds_finished_run(out):
        rundir.atomic_write_json(out / rundir.META_FILE, {"format": rundir.RUN_FORMAT, **meta})
    return out, ckpt_dir


def _attribute_samples(
    spec: ModelSpec,
    samples: list[Sample],
    indices: list[int],
    config: GateIGConfig,
    ckpt_dir: Path | None,
    progress: bool,
) -> tuple[dict[int, SampleAttribution], int]:
    """Results of `samples[i]` for i in `indices`, from a checkpoint when one exists; and how many were computed."""
    results: dict[int, SampleAttribution] = {}
    computed = 0
    for i in tqdm(indices, desc="attribute", unit="sample", disable=not progress, dynamic_ncols=True):
        sample = samples[i]
        result = _load_checkpoint(ckpt_dir, i, sample) if ckpt_dir is not None else None
        if result is None:
            result = attribute_sample(
                spec,
                sample.input_ids,
                sample.answer_start,
                sample.answer_end,
                sample.uid,
                config,
                name=f"sample {sample.index} (uid {sample.uid})",
            )
            computed += 1
            if ckpt_dir is not None:
                _save_checkpoint(ckpt_dir, i, sample, result)
        results[i] = result
    return results, computed


def check_shard(shard: tuple[int, int] | None, out: str | Path | None, overwrite: bool) -> None:
    """Raise unless `shard` (index, count) can run: a valid index, a shared `out`, no `overwrite`."""
    if shard is None:
        return
    index, count = shard
    if not 0 <= index < count:
        raise HeadattrError(f"--shard {index}/{count}: give I/N with 0 <= I < N, e.g. 0/4 ... 3/4")
    if out is None:
        raise HeadattrError("sharded runs meet in a run directory; pass --out (the same one to every shard)")
    if overwrite:
        raise HeadattrError(
            "--overwrite with --shard would delete the other shards' checkpoints; "
            "empty the directory once before starting the shards, or choose another --out"
        )


def _collect_other_shards(
    ckpt_dir: Path, samples: list[Sample], done: dict[int, SampleAttribution]
) -> dict[int, SampleAttribution] | None:
    """The other shards' results, when every one is checkpointed and this process wins the right to finish.

    The claim is a file created exclusively, so of two shards finishing together exactly one writes the run;
    None otherwise (results missing, or another shard is finishing).
    """
    others: dict[int, SampleAttribution] = {}
    for i, sample in enumerate(samples):
        if i not in done:
            try:
                result = _load_checkpoint(ckpt_dir, i, sample)
            except OSError:  # removed meanwhile: another shard has just written the run
                result = None
            if result is None:
                return None
            others[i] = result
    try:
        (ckpt_dir / FINISH_CLAIM).open("x").close()
    except FileExistsError:
        return None
    return others


def _holds_finished_run(out: Path) -> bool:
    """Whether `out` holds the run.json of a completed run (which an `--overwrite` keeps until it is done)."""
    try:
        return json.loads((out / rundir.META_FILE).read_text()).get("status") == "complete"
    except (OSError, ValueError, AttributeError):
        return False


def _combine(results: list[SampleAttribution], samples: list[Sample], config: GateIGConfig) -> Attribution:
    attributions = np.stack([r.attributions for r in results]).astype(np.float32)
    return Attribution(
        scores=final_scores(attributions, config.postprocess),
        attributions=attributions,
        j_full=np.stack([r.j_full for r in results]),
        j_baseline=np.stack([r.j_baseline for r in results]),
        completeness_error=np.stack([r.completeness_error for r in results]),
        samples=list(samples),
        config=config,
    )


# ---------------------------------------------------------------- run.json


def sample_record(sample: Sample) -> dict[str, Any]:
    return {
        "index": sample.index,
        "hash": sample.uid,
        "group": sample.group,
        "tokens": len(sample.input_ids),
        "prompt_tokens": sample.answer_start,
        "answer_tokens": sample.answer_end - sample.answer_start,
        "prompt_truncated": sample.prompt_truncated,
        "answer_truncated": sample.answer_truncated,
    }


def library_versions() -> dict[str, str]:
    import scipy
    import tokenizers
    import torch
    import transformers

    from . import __version__

    return {
        "headattr": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def _meta(
    spec: ModelSpec, samples: list[Sample], config: GateIGConfig, run_info: dict[str, Any], status: str
) -> dict[str, Any]:
    import torch

    device = spec.device
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    )
    tok = spec.tokenizer
    return {
        "status": status,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {**asdict(config), "mask_probs": list(config.mask_probs), **run_info.get("config", {})},
        "model": spec.describe(),
        "tokenizer": {
            "name_or_path": getattr(tok, "name_or_path", None),
            "class": type(tok).__name__,
            "vocab_size": len(tok) if tok is not None else None,
        },
        "samples": [sample_record(s) for s in samples],
        "variants": [
            {"prob": p, "draw": r} for p in config.mask_probs for r in range(config.mask_samples_per_prob)
        ],
        **{k: v for k, v in run_info.items() if k != "config"},
        "device": {"type": device.type, "name": device_name},
        "versions": library_versions(),
    }


# ---------------------------------------------------------------- checkpoints (resume)


def _fingerprint(spec: ModelSpec, samples: list[Sample], config: GateIGConfig) -> str:
    """What a checkpoint must match to be reused. `batch_size` is left out: it cannot change results."""
    cfg = {k: v for k, v in asdict(config).items() if k != "batch_size"}
    cfg["mask_probs"] = list(config.mask_probs)
    key = {
        "model": spec.config_hash,
        "mask_token_id": spec.mask_token_id,
        "shift": spec.logit_shift,
        "dtype": str(spec.dtype),
        "config": cfg,
        "samples": [[s.uid, list(s.input_ids), s.answer_start, s.answer_end] for s in samples],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


FINISH_CLAIM = "finishing"  # created by the shard that writes the run; a single-process --resume ignores it


def _check_resume(ckpt_dir: Path, fingerprint: str, resume: bool) -> None:
    stamp = ckpt_dir / "fingerprint.txt"
    if stamp.is_file():
        if stamp.read_text().strip() != fingerprint:
            raise HeadattrError(
                f"the checkpoints in {ckpt_dir} come from a different model, data or configuration; "
                "rerun with the original flags, or start over with --overwrite (without --shard: run it once, "
                "then start the shards)"
            )
        return
    if resume and not (ckpt_dir.parent / rundir.META_FILE).is_file():
        raise HeadattrError(f"nothing to resume in {ckpt_dir.parent}; drop --resume to start a new run")
    rundir.atomic_write_text(stamp, fingerprint + "\n")


def _checkpoint_path(ckpt_dir: Path, i: int, sample: Sample) -> Path:
    return ckpt_dir / f"{i:06d}-{sample.uid}.safetensors"


def _save_checkpoint(ckpt_dir: Path, i: int, sample: Sample, r: SampleAttribution) -> None:
    rundir.atomic_save_tensors(
        _checkpoint_path(ckpt_dir, i, sample),
        {
            "attributions": r.attributions,
            "j_full": r.j_full,
            "j_baseline": r.j_baseline,
            "completeness_error": r.completeness_error,
        },
    )


def _load_checkpoint(ckpt_dir: Path, i: int, sample: Sample) -> SampleAttribution | None:
    from safetensors.numpy import load_file

    path = _checkpoint_path(ckpt_dir, i, sample)
    if not path.is_file():
        return None
    t = load_file(str(path))
    return SampleAttribution(t["attributions"], t["j_full"], t["j_baseline"], t["completeness_error"])


def _remove_checkpoints(ckpt_dir: Path | None) -> None:
    """Drop the per-sample checkpoints once the final files are in place (they duplicate `attributions`)."""
    if ckpt_dir is not None and ckpt_dir.is_dir():
        shutil.rmtree(ckpt_dir)
