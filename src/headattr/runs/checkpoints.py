"""A run's checkpoints: one file per finished sample, so that a killed run resumes and shards share work.

Each sample's result is checkpointed as it finishes, under a fingerprint of everything that decides it; a
resumed run, or a shard finding the others' checkpoints, reuses them only when the fingerprint matches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from headattr.data.tokens import Sample
from headattr.engine.masking import MaskConfig
from headattr.errors import HeadattrError
from headattr.methods import MethodConfig, SampleAttribution
from headattr.models import ModelSpec
from headattr.runs import rundir


def open_rank_checkpoints(out: Path, fingerprint: str, overwrite: bool) -> tuple[Path, Path]:
    """A non-zero rank's `--out/checkpoints`: on a shared filesystem rank 0's folder (stamped with the same
    fingerprint), otherwise created on this node; stale checkpoints of another run are an error unless
    `--overwrite` (which drops them)."""
    ckpt_dir = out / rundir.CHECKPOINT_DIR
    stamp = ckpt_dir / "fingerprint.txt"
    if stamp.is_file() and stamp.read_text().strip() != fingerprint:
        if not overwrite:
            raise HeadattrError(
                f"the checkpoints in {ckpt_dir} (this node) come from a different model, data or configuration; "
                "rerun with the original flags, or start over with --overwrite"
            )
        shutil.rmtree(ckpt_dir)
    if not stamp.is_file():
        rundir.atomic_write_text(stamp, fingerprint + "\n")
    return out, ckpt_dir


def remove_rank_checkpoints(out: Path | None, ckpt_dir: Path | None) -> None:
    """A non-zero rank's cleanup once rank 0 has written the run: its checkpoints, and `out` if left empty
    (a node that holds only them)."""
    if ckpt_dir is None or out is None:
        return
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # on a shared filesystem rank 0 removed it already
    with contextlib.suppress(OSError):
        out.rmdir()  # only if empty


def open_run_dir(
    out: Path, fingerprint: str, meta: dict[str, Any], overwrite: bool, resume: bool, sharded: bool
) -> tuple[Path, Path]:
    """Prepare `out` for this run and return it with its checkpoint folder.

    `--overwrite` drops only stale checkpoints: a finished run already in `out` stays readable until this one
    has finished and replaces its files, so a failed or interrupted overwrite loses nothing. Shards join a
    directory the others may have started, like a resume.
    """
    out = rundir.prepare_output_dir(out, overwrite=overwrite, resume=resume or sharded, owned=(rundir.CHECKPOINT_DIR,))
    ckpt_dir = out / rundir.CHECKPOINT_DIR
    check_resume(ckpt_dir, fingerprint, resume)
    if not holds_finished_run(out):
        rundir.atomic_write_json(out / rundir.META_FILE, {"format": rundir.RUN_FORMAT, **meta})
    return out, ckpt_dir


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


def collect_other_shards(
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
                result = load_checkpoint(ckpt_dir, i, sample)
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


def holds_finished_run(out: Path) -> bool:
    """Whether `out` holds the run.json of a completed run (which an `--overwrite` keeps until it is done)."""
    try:
        return json.loads((out / rundir.META_FILE).read_text()).get("status") == "complete"
    except (OSError, ValueError, AttributeError):
        return False


def fingerprint(
    spec: ModelSpec, samples: list[Sample], method: MethodConfig, masking: MaskConfig, postprocess: str
) -> str:
    """What a checkpoint must match to be reused. The batch size is left out: it cannot change results."""
    key = {
        "model": spec.config_hash,
        "mask_token_id": spec.mask_token_id,
        "shift": spec.logit_shift,
        "dtype": str(spec.dtype),
        "config": {**method.to_meta(), **masking.to_meta(), "postprocess": postprocess},
        "samples": [[s.uid, list(s.input_ids), s.answer_start, s.answer_end] for s in samples],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


FINISH_CLAIM = "finishing"  # created by the shard that writes the run; a single-process --resume ignores it


def check_resume(ckpt_dir: Path, fingerprint: str, resume: bool) -> None:
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


def checkpoint_path(ckpt_dir: Path, i: int, sample: Sample) -> Path:
    return ckpt_dir / f"{i:06d}-{sample.uid}.safetensors"


def save_checkpoint(ckpt_dir: Path, i: int, sample: Sample, r: SampleAttribution) -> None:
    tensors = {"attributions": r.attributions, **{f"diagnostics.{k}": v for k, v in r.diagnostics.items()}}
    rundir.atomic_save_tensors(checkpoint_path(ckpt_dir, i, sample), tensors)


def load_checkpoint(ckpt_dir: Path, i: int, sample: Sample) -> SampleAttribution | None:
    from safetensors.numpy import load_file

    path = checkpoint_path(ckpt_dir, i, sample)
    if not path.is_file():
        return None
    t = load_file(str(path))
    diagnostics = {k.removeprefix("diagnostics."): v for k, v in t.items() if k.startswith("diagnostics.")}
    return SampleAttribution(t["attributions"], diagnostics)


def remove_checkpoints(ckpt_dir: Path | None) -> None:
    """Drop the per-sample checkpoints once the final files are in place (they duplicate `attributions`)."""
    if ckpt_dir is not None and ckpt_dir.is_dir():
        shutil.rmtree(ckpt_dir)
