"""Computing samples' attributions: samples of one shape grouped, rows per pass planned, the method called.

The runner (`runs.attribution`) hands each group of samples to `attribute_samples`; everything here depends
only on the model, the samples, their group and the settings, never on the process count or resume point.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable

import torch
from tqdm.auto import tqdm

from headattr.data.tokens import Sample
from headattr.engine import core
from headattr.engine.batching import MAX_ROWS as BATCH_LIMIT
from headattr.engine.batching import BatchPlanner, cache_bytes, hidden_size
from headattr.engine.masking import MaskConfig
from headattr.engine.shapes import objective_tokens
from headattr.methods import GateIGConfig, MethodConfig, SampleAttribution
from headattr.models import ModelSpec
from headattr.models.backbone import attributing

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
    with attributing():
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
    where = "samples " + ", ".join(f"{s.index} (uid {s.uid})" for s in samples)
    with attributing():
        rows, counts = core.prepare_merged(spec, samples, masking, batch_size, cache_layers=method.cache_layers)
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


def sample_runner(spec: ModelSpec, method: MethodConfig, masking: MaskConfig, planner: BatchPlanner, log: bool):
    """samples of one shape -> their SampleAttributions, with this run's settings (what the loop calls).

    The planner picks the rows per pass (and, under auto, halves them on an out-of-memory error and computes
    the samples again); the size is printed when it is first chosen and whenever it changes.
    """
    last: list[int] = []

    def compute(group: list[Sample]) -> list[SampleAttribution]:
        first = group[0]
        tokens, answer = len(first.input_ids), max(s.answer_end - s.answer_start for s in group)
        with attributing():  # the probe measures the passes the method will run
            planner.calibrate(lambda: core.prepare(spec, first, masking, 1, cache_layers=False), tokens)
        results = planner.run(
            first.index,
            tokens,
            answer,
            lambda size: attribute_samples(spec, group, method, masking, size),
            most_rows=len(group) * largest_pass(method, masking, spec.num_layers),
            held=cache_bytes(
                spec, len(group) * masking.num_variants, objective_tokens(spec, tokens), cached_width(spec, method)
            ),
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
