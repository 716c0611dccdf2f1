"""`headattr.attribute`: run an attribution method over a dataset's samples into a run directory.

Generic over methods (`headattr.methods`): the method attributes one sample at a time through the core (on
CPU, a method that `merges_samples` takes groups of samples of one shape at once, `merge_limit`); this module
checkpoints each sample's result, combines them, and writes the run. Each sample's result depends only on the
model, the sample, its group and the settings, and the groups are fixed by the whole run (`_my_groups`), so
samples are checkpointed as they finish and a resumed run ends with the same scores as an uninterrupted one.

The same property splits a run across processes or machines (`shard=(i, n)`, `--shard i/n`): each process
computes its share of the groups, balanced by token count (`distributed.assign`), into the shared run
directory's checkpoints, and the process that finds every checkpoint present when it finishes writes the run,
byte-identical to a one-process run. Under torchrun (`world`, see `headattr.distributed`) the ranks share the
groups out the same way, checkpoint into their own `out/checkpoints`, and rank 0 gathers the results with
`torch.distributed` and writes the run.

Rows per pass come from a `batching.BatchPlanner` (`batch_size="auto"`: free memory less the sample's cached
tensors, over a row's cost; halved on an out-of-memory error, the same sample computed again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import shutil
import sys
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from headattr.data.samples import DataConfig, Sample
from headattr.engine import core
from headattr.engine.batching import MAX_ROWS as BATCH_LIMIT
from headattr.engine.batching import BatchPlanner, cache_bytes, hidden_size
from headattr.engine.masking import MaskConfig
from headattr.errors import HeadattrError
from headattr.methods import GateIGConfig, MethodConfig, SampleAttribution
from headattr.methods.aggregate import POSTPROCESS, final_scores
from headattr.models import ModelSpec
from headattr.runs import distributed, rundir
from headattr.runs.distributed import World
from headattr.settings import choice


@dataclass
class Attribution:
    """Scores, raw per-variant attributions and diagnostics of an attribution run."""

    scores: np.ndarray  # [L, H] float32: mean over samples of postprocess(mean over variants)
    attributions: np.ndarray  # [N, V, L, H] float32, raw signed
    per_variant: dict[str, np.ndarray]  # the method's diagnostics, [N, V, ...] each
    samples: list[Sample]
    method: MethodConfig
    masking: MaskConfig
    postprocess: str = "signed"
    timings: dict[str, float] = field(default_factory=dict)

    def diagnostics(self) -> dict[str, Any]:
        """run.json's `diagnostics`: every per-variant array, and the method's summary of them."""
        return {**{k: v.tolist() for k, v in self.per_variant.items()}, **self.method.summarize(self.per_variant)}


def attribute(
    spec: ModelSpec,
    samples: list[Sample],
    method: MethodConfig | None = None,
    masking: MaskConfig | None = None,
    *,
    postprocess: str = "signed",
    batch_size: int | str = "auto",
    max_memory: str | float | int | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    world: World | None = None,
    progress: bool = True,
    data_report: Any = None,
    extra_meta: dict[str, Any] | None = None,
) -> Attribution | None:
    """Head scores of `spec` over `samples` by `method` (default: Gate-IG with the seed report's settings).

    `masking` defines the objective J (default `MaskConfig()`); `postprocess` (signed, abs, relu) is applied
    per sample before the mean over samples; `batch_size` caps the rows of one forward pass (results do not
    depend on it): an integer, or "auto" (rows from the free memory, capped by `max_memory`; see
    `headattr.batching`), whose sizes used are recorded in `timings`. With `out`, writes the run directory
    (see `headattr.rundir`): per-sample checkpoints while running, then `scores.safetensors`, `run.json`,
    `heads.csv`, `heatmap.png`; run.json's `config` records
    the method, masking, the samples' `DataConfig` and the model's `ModelConfig`, so that `prune` can draw
    held-out rows without being told the data again. `resume` continues an interrupted run in `out` (same
    model, samples and settings). `shard=(i, n)` computes only this process's share into `out` (module
    docstring) and returns None while other shards' samples are still missing. `data_report` (a
    `DataReport`) and `extra_meta` (top-level entries) are added to run.json; `seed` records the seed the
    caller derived the data and mask seeds from.
    """
    method = method or GateIGConfig()
    masking = masking or MaskConfig()
    choice("--postprocess", postprocess, POSTPROCESS)
    planner = BatchPlanner.create(spec, batch_size, max_memory)
    if not samples:
        raise HeadattrError("no samples to attribute; check the dataset and --samples")
    check_shard(shard, out, overwrite)
    if shard is not None and world is not None:
        raise HeadattrError("--shard splits a run across separate jobs; under torchrun the ranks split it already")
    fingerprint = _fingerprint(spec, samples, method, masking, postprocess)
    ckpt_dir = None
    started = time.perf_counter()
    config = run_config(spec, samples, method, masking, postprocess, planner.fixed or "auto", seed)
    meta = _meta(spec, samples, config, masking, data_report, extra_meta or {}, status="running")
    if out is not None:
        out, ckpt_dir = _open_dirs(Path(out), fingerprint, meta, overwrite, resume, shard is not None, world)
    groups = _my_groups(samples, shard, world, merge_limit(spec, method))
    mine = [i for group in groups for i in group]
    main_process = world is None or world.is_main
    compute = _sample_runner(spec, method, masking, planner, progress and main_process)
    with core.counting() as count:  # model work of the samples this process computes (not the resumed ones)
        results, computed = _attribute_samples(samples, groups, compute, ckpt_dir, progress and main_process)
    if shard is not None:
        others = _collect_other_shards(ckpt_dir, samples, results)
        if others is None:
            return None
        results.update(others)
    own = len(mine)
    if world is not None:
        gathered = _gather_ranks(world, results, computed, planner, count)
        if gathered is None:  # not rank 0: wait until rank 0 has written the run, then drop own checkpoints
            distributed.barrier()
            _remove_rank_checkpoints(out, ckpt_dir)
            return None
        results, computed, count = gathered
        own = len(samples)
    # model work per sample computed (under torchrun: every rank's, summed)
    passes = {f"{kind}_passes_per_sample": n / max(computed, 1) for kind, n in count.passes().items()}
    elapsed = time.perf_counter() - started
    result = _combine([results[i] for i in range(len(samples))], samples, method, masking, postprocess)
    result.timings = {
        "total_s": elapsed,
        "computed_samples": computed,
        "resumed_samples": own - computed,  # this process's share (every rank's, under torchrun), read back
        "other_shards_samples": len(samples) - own,
        "per_sample_s": elapsed / max(computed, 1),
        **passes,
        **planner.record(),
        **({"ranks": world.size} if world is not None else {}),
    }
    if out is not None:
        meta.update(status="complete", timings=result.timings, diagnostics=result.diagnostics())
        rundir.write_run(out, result.scores, result.attributions, meta)
        _remove_checkpoints(ckpt_dir)
    if world is not None:
        distributed.barrier()
    return result


def _my_groups(
    samples: list[Sample], shard: tuple[int, int] | None, world: World | None, merge: int
) -> list[list[int]]:
    """The groups of sample indices this process computes (every group, or its `--shard`'s or rank's share,
    balanced by token count), each group computed together (`merge_groups`, at most `merge` samples).

    The groups are formed over the whole run before it is shared out, so a sample is computed with the same
    companions whatever the process count or resume point: its numbers cannot depend on either. (With
    merging on, CPU only, a run of few samples may leave a shard or rank with nothing to compute.)
    """
    groups = merge_groups([core.merge_key(s) for s in samples], merge)
    share = (world.rank, world.size) if world is not None else shard
    if share is None:
        return groups
    tokens = [sum(len(samples[i].input_ids) for i in group) for group in groups]
    return [groups[g] for g in distributed.assign(tokens, share[1])[share[0]]]


def _open_dirs(
    out: Path,
    fingerprint: str,
    meta: dict[str, Any],
    overwrite: bool,
    resume: bool,
    sharded: bool,
    world: World | None,
) -> tuple[Path, Path]:
    """`_open_run_dir`; under torchrun rank 0 opens the run directory first (its error, if any, becomes every
    rank's, so that all exit alike), then the other ranks open their own checkpoint folders."""
    if world is None:
        return _open_run_dir(out, fingerprint, meta, overwrite, resume, sharded)
    error, opened = None, None
    if world.is_main:
        try:
            opened = _open_run_dir(out, fingerprint, meta, overwrite, resume, sharded=False)
        except HeadattrError as exc:
            error = str(exc)
    error = distributed.broadcast_from_main(error)
    if error is not None:
        raise HeadattrError(error)
    return opened or _open_rank_checkpoints(out, fingerprint, overwrite)


def _open_rank_checkpoints(out: Path, fingerprint: str, overwrite: bool) -> tuple[Path, Path]:
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


def _gather_ranks(
    world: World,
    results: dict[int, SampleAttribution],
    computed: int,
    planner: BatchPlanner,
    count: core.PassCount,
) -> tuple[dict[int, SampleAttribution], int, core.PassCount] | None:
    """Every rank's results, sample counts and model work on rank 0 (merged; the planner learns every rank's
    batch sizes)."""
    work = (count.num_layers, count.forward_row_layers, count.backward_row_layers)
    payloads = distributed.gather_to_main(
        {"results": results, "computed": computed, "batch": planner.used, "work": work}, world
    )
    if payloads is None:
        return None
    merged: dict[int, SampleAttribution] = {}
    total = core.PassCount()
    for p in payloads:
        merged.update(p["results"])
        planner.used.update(p["batch"])
        layers, forward, backward = p["work"]
        total.num_layers = max(total.num_layers, layers)
        total.forward_row_layers += forward
        total.backward_row_layers += backward
    return merged, sum(p["computed"] for p in payloads), total


def _remove_rank_checkpoints(out: Path | None, ckpt_dir: Path | None) -> None:
    """A non-zero rank's cleanup once rank 0 has written the run: its checkpoints, and `out` if left empty
    (a node that holds only them)."""
    if ckpt_dir is None or out is None:
        return
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # on a shared filesystem rank 0 removed it already
    with contextlib.suppress(OSError):
        out.rmdir()  # only if empty


# Samples of one shape (token length and answer span) computed together on CPU (`merge_limit`): enough to
# fill the refinement's later rounds on the built-in model; more would only hold more layer caches at once.
MERGE_SAMPLES = 8


def attribute_sample(
    spec: ModelSpec,
    sample: Sample,
    method: MethodConfig | None = None,
    masking: MaskConfig | None = None,
    batch_size: int = 64,
) -> SampleAttribution:
    """One sample's per-variant attributions and diagnostics: its rows through the core, then the method."""
    method, masking = method or GateIGConfig(), masking or MaskConfig()
    rows = core.prepare(spec, sample, masking, batch_size, cache_layers=method.cache_layers)
    return method.attribute(spec, rows, batch_size, where=f"sample {sample.index} (uid {sample.uid})")


def attribute_samples(
    spec: ModelSpec,
    samples: list[Sample],
    method: MethodConfig | None = None,
    masking: MaskConfig | None = None,
    batch_size: int = 64,
) -> list[SampleAttribution]:
    """`attribute_sample` of each of `samples` (of one shape, `core.merge_key`); where the method
    `merges_samples`, their variants are one `Rows`, so they share every pass (the same numbers: rows never
    interact)."""
    method, masking = method or GateIGConfig(), masking or MaskConfig()
    if len(samples) == 1 or not method.merges_samples:
        return [attribute_sample(spec, sample, method, masking, batch_size) for sample in samples]
    rows, counts = core.prepare_merged(spec, samples, masking, batch_size, cache_layers=method.cache_layers)
    where = "samples " + ", ".join(f"{s.index} (uid {s.uid})" for s in samples)
    return method.attribute(spec, rows, batch_size, where).split(counts)


def merge_limit(spec: ModelSpec, method: MethodConfig) -> int:
    """How many samples of one shape (`core.merge_key`) the runner computes together (1: each on its own).

    On CPU a small model's passes cost mostly per-operation overhead, and the refinement's later rounds hold
    few rows: samples of one shape share them. On CUDA a real model's passes are compute-bound and each sample's
    layer cache is large, so samples are not merged there (docs/gate-ig.md, "Cost").
    """
    return MERGE_SAMPLES if method.merges_samples and spec.device.type == "cpu" else 1


def merge_groups(keys: list[Hashable], limit: int) -> list[list[int]]:
    """Positions 0..n-1 grouped by equal `keys[i]` (`core.merge_key`), at most `limit` per group, groups in the
    order of their first position (deterministic; results do not depend on it)."""
    groups: list[list[int]] = []
    filling: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        group = filling.get(key)
        if group is None or len(group) >= limit:
            group = filling[key] = []
            groups.append(group)
        group.append(i)
    return groups


def _sample_runner(spec: ModelSpec, method: MethodConfig, masking: MaskConfig, planner: BatchPlanner, log: bool):
    """samples of one shape -> their SampleAttributions, with this run's settings (what the loop calls).

    The planner picks the rows per pass (and, under auto, halves them on an out-of-memory error and computes
    the samples again); the size is printed when it is first chosen and whenever it changes.
    """
    last: list[int] = []

    def compute(group: list[Sample]) -> list[SampleAttribution]:
        first = group[0]
        tokens, answer = len(first.input_ids), max(s.answer_end - s.answer_start for s in group)
        planner.calibrate(lambda: core.prepare(spec, first, masking, 1, cache_layers=False), tokens)
        results = planner.run(
            first.index,
            tokens,
            answer,
            lambda size: attribute_samples(spec, group, method, masking, size),
            most_rows=len(group) * largest_pass(method, masking, spec.num_layers),
            held=cache_bytes(spec, len(group) * masking.num_variants, tokens, cached_width(spec, method)),
        )
        size = planner.used[first.index]
        planner.used.update({s.index: size for s in group})
        if log and planner.auto and last != [size]:
            tqdm.write(f"batch size auto: {size} rows per pass (sample of {tokens} tokens)", file=sys.stderr)
            last[:] = [size]
        return results

    return compute


def largest_pass(method: MethodConfig, masking: MaskConfig, num_layers: int) -> int:
    """The most rows one pass of a sample's first round holds (`MethodConfig.largest_pass`, else the planner's
    limit). Later rounds that hold more are cut into passes of this size."""
    rows = method.largest_pass(masking.num_variants, num_layers)
    return BATCH_LIMIT if rows is None else rows


def cached_width(spec: ModelSpec, method: MethodConfig) -> int:
    """Elements per variant and token of what a sample holds beside its passes (`batching.cache_bytes`), on a
    layer stack: the embeddings and, where the method caches layers, every other layer's input (d each); for
    what the method keeps besides (`MethodConfig.cached_outputs_width`).
    The layer inputs are in the residual stream's dtype (`core.residual_dtype`: float32 under bf16 autocast),
    counted as that many model-dtype elements. A whole-model backbone keeps only the token ids."""
    backbone = spec.backbone
    if not backbone.resumable:
        return 0
    floating = spec.dtype.is_floating_point
    wider = torch.finfo(core.residual_dtype(spec)).bits // torch.finfo(spec.dtype).bits if floating else 1
    width = (spec.num_layers if method.cache_layers else 1) * hidden_size(spec) * max(wider, 1)
    return width + method.cached_outputs_width(spec)


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
    samples: list[Sample],
    groups: list[list[int]],
    compute,
    ckpt_dir: Path | None,
    progress: bool,
) -> tuple[dict[int, SampleAttribution], int]:
    """Results of the samples in `groups`, from a checkpoint when one exists; and how many were computed.

    A group with any sample missing is computed whole (its members share passes, `_my_groups`) and each of
    its missing samples checkpointed as soon as the group is done.
    """
    results: dict[int, SampleAttribution] = {}
    pending: list[list[int]] = []
    for group in groups:
        missing = []
        for i in group:
            result = _load_checkpoint(ckpt_dir, i, samples[i]) if ckpt_dir is not None else None
            if result is None:
                missing.append(i)
            else:
                results[i] = result
        if missing:
            pending.append(group)
    total = sum(len(group) for group in groups)
    bar = tqdm(
        total=total, initial=len(results), desc="attribute", unit="sample", disable=not progress, dynamic_ncols=True
    )
    computed = 0
    with bar:
        for group in pending:
            for i, result in zip(group, compute([samples[i] for i in group]), strict=True):
                if i in results:  # read back; computed again only as the group's companion
                    continue
                if ckpt_dir is not None:
                    _save_checkpoint(ckpt_dir, i, samples[i], result)
                results[i] = result
                computed += 1
                bar.update(1)
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


def _combine(
    results: list[SampleAttribution],
    samples: list[Sample],
    method: MethodConfig,
    masking: MaskConfig,
    postprocess: str,
) -> Attribution:
    attributions = np.stack([r.attributions for r in results]).astype(np.float32)
    per_variant = {k: np.stack([r.diagnostics[k] for r in results]) for k in sorted(results[0].diagnostics)}
    return Attribution(
        scores=final_scores(attributions, postprocess),
        attributions=attributions,
        per_variant=per_variant,
        samples=list(samples),
        method=method,
        masking=masking,
        postprocess=postprocess,
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

    from headattr.version import __version__

    return {
        "headattr": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def data_config(samples: list[Sample]) -> DataConfig | None:
    """The `DataConfig` every sample was drawn with, or None (samples built by hand, or from several)."""
    sources = {s.source for s in samples}
    return sources.pop() if len(sources) == 1 else None


def run_config(
    spec: ModelSpec,
    samples: list[Sample],
    method: MethodConfig,
    masking: MaskConfig,
    postprocess: str,
    batch_size: int | str,
    seed: int | None = None,
) -> dict[str, Any]:
    """run.json's flat `config`: every settings object's fields under their run.json names."""
    config: dict[str, Any] = {} if seed is None else {"seed": seed}
    data = data_config(samples)
    if data is not None:
        config.update(data.to_meta())
    config.update(method.to_meta())
    config.update(masking.to_meta())
    config.update(postprocess=postprocess, batch_size=batch_size)
    if spec.load_config is not None:
        config.update(spec.load_config.to_meta())
    return config


def device_record(spec: ModelSpec) -> dict[str, str]:
    """run.json's `device`: its type and name."""
    import torch

    device = spec.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"type": device.type, "name": name}


def _meta(
    spec: ModelSpec,
    samples: list[Sample],
    config: dict[str, Any],
    masking: MaskConfig,
    data_report: Any,
    extra: dict[str, Any],
    status: str,
) -> dict[str, Any]:
    tok = spec.tokenizer
    return rundir.run_meta(
        status=status,
        config=config,
        model=spec.describe(),
        tokenizer={
            "name_or_path": getattr(tok, "name_or_path", None),
            "class": type(tok).__name__,
            "vocab_size": len(tok) if tok is not None else None,
        },
        samples=[sample_record(s) for s in samples],
        variants=masking.variant_keys(),
        data_report=data_report.to_dict() if hasattr(data_report, "to_dict") else data_report,
        device=device_record(spec),
        versions=library_versions(),
        **extra,
    )


# ---------------------------------------------------------------- checkpoints (resume)


def _fingerprint(
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
    tensors = {"attributions": r.attributions, **{f"diagnostics.{k}": v for k, v in r.diagnostics.items()}}
    rundir.atomic_save_tensors(_checkpoint_path(ckpt_dir, i, sample), tensors)


def _load_checkpoint(ckpt_dir: Path, i: int, sample: Sample) -> SampleAttribution | None:
    from safetensors.numpy import load_file

    path = _checkpoint_path(ckpt_dir, i, sample)
    if not path.is_file():
        return None
    t = load_file(str(path))
    diagnostics = {k.removeprefix("diagnostics."): v for k, v in t.items() if k.startswith("diagnostics.")}
    return SampleAttribution(t["attributions"], diagnostics)


def _remove_checkpoints(ckpt_dir: Path | None) -> None:
    """Drop the per-sample checkpoints once the final files are in place (they duplicate `attributions`)."""
    if ckpt_dir is not None and ckpt_dir.is_dir():
        shutil.rmtree(ckpt_dir)
