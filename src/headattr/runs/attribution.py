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

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from headattr.data.tokens import Sample
from headattr.engine import core
from headattr.engine.batching import BatchPlanner
from headattr.engine.masking import MaskConfig
from headattr.errors import HeadattrError
from headattr.methods import GateIGConfig, MethodConfig, SampleAttribution
from headattr.methods.aggregate import POSTPROCESS, final_scores
from headattr.models import ModelSpec
from headattr.runs import checkpoints, compute, distributed, records, rundir
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
    _check_inputs(samples, postprocess, out, overwrite, shard, world)
    planner = BatchPlanner.create(spec, batch_size, max_memory)
    key = checkpoints.fingerprint(spec, samples, method, masking, postprocess)
    ckpt_dir = None
    started = time.perf_counter()
    config = records.run_config(spec, samples, method, masking, postprocess, planner.fixed or "auto", seed)
    meta = records.attribution_meta(spec, samples, config, masking, data_report, extra_meta or {}, status="running")
    if out is not None:
        out, ckpt_dir = _open_dirs(Path(out), key, meta, overwrite, resume, shard is not None, world)
    groups = _my_groups(samples, shard, world, compute.merge_limit(spec, method))
    mine = [i for group in groups for i in group]
    main_process = world is None or world.is_main
    run_group = compute.sample_runner(spec, method, masking, planner, progress and main_process)
    with core.counting() as count:  # model work of the samples this process computes (not the resumed ones)
        results, computed = _attribute_samples(samples, groups, run_group, ckpt_dir, progress and main_process)
    if shard is not None:
        others = checkpoints.collect_other_shards(ckpt_dir, samples, results)
        if others is None:
            return None
        results.update(others)
    own = len(mine)
    if world is not None:
        gathered = _gather_ranks(world, results, computed, planner, count)
        if gathered is None:  # not rank 0: wait until rank 0 has written the run, then drop own checkpoints
            distributed.barrier()
            checkpoints.remove_rank_checkpoints(out, ckpt_dir)
            return None
        results, computed, count = gathered
        own = len(samples)
    elapsed = time.perf_counter() - started
    result = _combine([results[i] for i in range(len(samples))], samples, method, masking, postprocess)
    result.timings = _timings(elapsed, computed, own, len(samples), count, planner, world)
    if out is not None:
        meta.update(status="complete", timings=result.timings, diagnostics=result.diagnostics())
        rundir.write_run(out, result.scores, result.attributions, meta)
        checkpoints.remove_checkpoints(ckpt_dir)
    if world is not None:
        distributed.barrier()
    return result


def _check_inputs(
    samples: list[Sample], postprocess: str, out: str | Path | None, overwrite: bool, shard, world: World | None
) -> None:
    """One-line errors for settings `attribute` cannot run with, before any work."""
    choice("--postprocess", postprocess, POSTPROCESS)
    if not samples:
        raise HeadattrError("no samples to attribute; check the dataset and --samples")
    checkpoints.check_shard(shard, out, overwrite)
    if shard is not None and world is not None:
        raise HeadattrError("--shard splits a run across separate jobs; under torchrun the ranks split it already")


def _timings(
    elapsed: float, computed: int, own: int, total: int, count, planner: BatchPlanner, world: World | None
) -> dict[str, Any]:
    """run.json's `timings`: time, samples computed / read back / left to other shards, model work per sample
    computed (under torchrun: every rank's, summed) and the batch sizes used."""
    passes = {f"{kind}_passes_per_sample": n / max(computed, 1) for kind, n in count.passes().items()}
    return {
        "total_s": elapsed,
        "computed_samples": computed,
        "resumed_samples": own - computed,  # this process's share (every rank's, under torchrun), read back
        "other_shards_samples": total - own,
        "per_sample_s": elapsed / max(computed, 1),
        **passes,
        **planner.record(),
        **({"ranks": world.size} if world is not None else {}),
    }


def _my_groups(
    samples: list[Sample], shard: tuple[int, int] | None, world: World | None, merge: int
) -> list[list[int]]:
    """The groups of sample indices this process computes (every group, or its `--shard`'s or rank's share,
    balanced by token count), each group computed together (`merge_groups`, at most `merge` samples).

    The groups are formed over the whole run before it is shared out, so a sample is computed with the same
    companions whatever the process count or resume point: its numbers cannot depend on either. (With
    merging on, CPU only, a run of few samples may leave a shard or rank with nothing to compute.)
    """
    groups = compute.merge_groups([core.merge_key(s) for s in samples], merge)
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
    """`open_run_dir`; under torchrun rank 0 opens the run directory first (its error, if any, becomes every
    rank's, so that all exit alike), then the other ranks open their own checkpoint folders."""
    if world is None:
        return checkpoints.open_run_dir(out, fingerprint, meta, overwrite, resume, sharded)
    error, opened = None, None
    if world.is_main:
        try:
            opened = checkpoints.open_run_dir(out, fingerprint, meta, overwrite, resume, sharded=False)
        except HeadattrError as exc:
            error = str(exc)
    error = distributed.broadcast_from_main(error)
    if error is not None:
        raise HeadattrError(error)
    return opened or checkpoints.open_rank_checkpoints(out, fingerprint, overwrite)


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


def _attribute_samples(
    samples: list[Sample],
    groups: list[list[int]],
    run_group,
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
            result = checkpoints.load_checkpoint(ckpt_dir, i, samples[i]) if ckpt_dir is not None else None
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
            for i, result in zip(group, run_group([samples[i] for i in group]), strict=True):
                if i in results:  # read back; computed again only as the group's companion
                    continue
                if ckpt_dir is not None:
                    checkpoints.save_checkpoint(ckpt_dir, i, samples[i], result)
                results[i] = result
                computed += 1
                bar.update(1)
    return results, computed


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
