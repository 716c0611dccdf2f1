"""The gated-evaluation core: every consumer (attribution methods, pruning, generation) runs the model here.

One sample becomes a `Rows` object: its masked variants as a batch, where each variant's loss is taken, and
(for backbones that can start at any layer) the input of every layer computed once with all gates at 1. A
batch is a set of rows, each a variant with its own gates; a pass starts at any cached layer and returns J per
row and, when asked, the logits at the positions that predict a masked token:

    rows = core.prepare(spec, sample, masking, batch_size, cache_layers=True)
    with gated(spec, {layer: g}):                                # g: [R, H], one row of gates per row
        out = core.objective(spec, rows, v_idx, start, with_logits=True)
    out.j                                                        # [R] J of each row
    out.logits, out.labels, out.owner                            # [K, V], [K], [K]: row of each masked token

A caller that varies only layer l's gates can compute layer l's attention once (the gates act after it):

    heads = core.head_inputs(spec, rows, l, batch_size)          # [V, T, H * head_dim], ungated
    out = core.objective(spec, rows, v_idx, l, heads=heads)      # o_proj of layer l onward

Rows that vary different layers can share one pass, each entering at its own layer:

    out = core.joined_objective(spec, rows, [Join(0, v0, heads0), Join(3, v3, heads3)])

Only the answer span's hidden states reach the loss, so the last layer computes its output only there.

A family declaring the block-diffusion objective (`spec.objective`, SDAR and LLaDA 2) is attributed on its own
training loss: each row is [x_t | x_0] (the masked variant, then the clean sample, both at positions 0..T-1)
of 2T tokens under the block mask of `models.block_masks.noisy_clean_mask`, and the loss is taken at the
masked positions of the noisy copy, divided by p x the answer's token count (`block_rows`, docs/gate-ig.md).
Everything above then holds for the 2T-token rows unchanged.

Gradients, when a caller wants them, flow only to the gates: the weights are frozen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from headattr.data.tokens import Sample
from headattr.engine.masking import MaskConfig, Variant, make_variants
from headattr.errors import HeadattrError
from headattr.models import LayerContext, ModelSpec
from headattr.models.block_masks import block_causal_mask, noisy_clean_mask, padded_block_causal_mask
from headattr.models.spec import BLOCK_DIFFUSION

AUTOCAST_DEVICES = ("cuda", "cpu")  # where bf16 weights run under bf16 autocast (torch supports both)


def autocasts(spec: ModelSpec) -> bool:
    """Whether the model runs under bf16 autocast: bf16 weights on CUDA or the CPU."""
    return spec.device.type in AUTOCAST_DEVICES and spec.dtype == torch.bfloat16


def autocast_for(spec: ModelSpec) -> contextlib.AbstractContextManager:
    """bf16 autocast when the weights are bf16 (`autocasts`); plain precision otherwise."""
    if autocasts(spec):
        return torch.autocast(spec.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def residual_dtype(spec: ModelSpec) -> torch.dtype:
    """The dtype of the hidden states between layers in the core's passes: float32 under autocast, else the
    weights'.

    Under autocast the MLP's products run in bf16 whatever this is, but a bf16 residual stream rounds every
    layer's sum, so that J(g) is a rough function of the gates whose differences, J(1) - J(b), the integral of
    its gradient does not reproduce: the quadrature chased that mismatch to its node cap (docs/gate-ig.md,
    "Precision"). With float32 hidden states the norms and residual sums are float32 (the layers' own code
    keeps its input's dtype) and only the MLP's and LM head's products round (the attention block is float32:
    `models.backbone.float32_attention`).
    """
    return torch.float32 if autocasts(spec) else spec.dtype


def answer_span(spec: ModelSpec, sample: Sample) -> tuple[int, int]:
    """[start, end) of the answer tokens the model can predict.

    With shifted logits (Dream) position j is predicted from j-1, so position 0 has no predictor.
    """
    start = 1 if spec.logit_shift and sample.answer_start == 0 else sample.answer_start
    if sample.answer_end <= start:
        raise HeadattrError(
            f"sample {sample.index} (uid {sample.uid}) has no answer token that can be predicted; check the dataset row"
        )
    return start, sample.answer_end


def variants(spec: ModelSpec, sample: Sample, masking: MaskConfig) -> list[Variant]:
    """The masked variants of `sample` (V = probabilities x draws), keyed by its uid."""
    if spec.mask_token_id is None:
        raise HeadattrError("no mask token known for this model; pass --mask-token-id")
    start, end = answer_span(spec, sample)
    return make_variants(sample.input_ids, start, end, sample.uid, masking, spec.mask_token_id)


@dataclass
class Rows:
    """The variants of one sample as batched tensors, where each variant's loss is taken and how it is pooled."""

    ids: torch.Tensor  # [V, T] (block diffusion: [V, 2T], the noisy copy then the clean one)
    normalize: str  # how J pools the masked tokens' losses (MaskConfig.loss_normalize; `row_objective`)
    predict_at: list[torch.Tensor]  # per variant: positions whose logits predict a masked token
    labels: list[torch.Tensor]  # per variant: the original tokens there
    hidden_in: list[torch.Tensor] = field(default_factory=list)  # per layer l: input of layer l, [V, T, d]
    ctx: LayerContext = field(default_factory=LayerContext)
    answer: tuple[int, int] | None = None  # [start, end) of the predictable answer tokens (`answer_span`)
    uid: str = ""  # the sample's identity: methods key their own random streams by it, as masks are
    scale: torch.Tensor | None = None  # [V] float64: a factor of each variant's summed loss (`row_objective`)

    @property
    def num_variants(self) -> int:
        return int(self.ids.shape[0])

    @property
    def deepest_cached(self) -> int:
        """The deepest layer whose input is cached (0 when only the embeddings are)."""
        return len(self.hidden_in) - 1

    def gather(self, v_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flattened (row, position, label) of the masked tokens of the rows whose variants are `v_idx`."""
        rows, pos, lab = [], [], []
        for r, v in enumerate(v_idx.tolist()):
            rows.append(torch.full_like(self.predict_at[v], r))
            pos.append(self.predict_at[v])
            lab.append(self.labels[v])
        return torch.cat(rows), torch.cat(pos), torch.cat(lab)


def chunks(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most `size` covering range(n)."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def prepare(spec: ModelSpec, sample: Sample, masking: MaskConfig, batch_size: int, cache_layers: bool) -> Rows:
    """The sample's masked variants as `Rows`; when the backbone can resume and `cache_layers`, with every
    layer's input (all gates 1) cached, computed `batch_size` rows at a time."""
    drawn, answer = variants(spec, sample, masking), answer_span(spec, sample)
    rows = stack_variants(spec, drawn, masking.loss_normalize, batch_size, cache_layers, answer)
    rows.uid = sample.uid
    return rows


def prepare_merged(
    spec: ModelSpec, samples: list[Sample], masking: MaskConfig, batch_size: int, cache_layers: bool
) -> tuple[Rows, list[int]]:
    """The masked variants of several samples of one shape (`merge_key`) as one `Rows` (sample 0's, then
    sample 1's, ...), and each sample's variant count. Rows never interact, so every variant's numbers are
    those of `prepare` on its own sample; the merged rows have no single `uid`, so only methods that
    `merges_samples` take them."""
    keys = {merge_key(s) for s in samples}
    if len(keys) != 1:
        raise ValueError(f"merged samples must have one token length and answer span, got {sorted(keys)}")
    drawn, answer = [variants(spec, s, masking) for s in samples], answer_span(spec, samples[0])
    flat = [v for vs in drawn for v in vs]
    rows = stack_variants(spec, flat, masking.loss_normalize, batch_size, cache_layers, answer)
    return rows, [len(vs) for vs in drawn]


def merge_key(sample: Sample) -> tuple[int, int, int]:
    """Samples with equal keys (token length, answer span) may share passes (`prepare_merged`)."""
    return len(sample.input_ids), sample.answer_start, sample.answer_end


def stack_variants(
    spec: ModelSpec,
    variants: list[Variant],
    normalize: str,
    batch_size: int,
    cache_layers: bool,
    answer: tuple[int, int] | None = None,
) -> Rows:
    """`prepare` for variants already drawn (of samples whose predictable answer span is `answer`)."""
    block = spec.objective == BLOCK_DIFFUSION
    rows = block_rows(spec, variants, normalize, answer) if block else plain_rows(spec, variants, normalize)
    rows.answer = answer
    backbone, n = spec.backbone, len(variants)
    with torch.no_grad(), autocast_for(spec):
        h = torch.cat([backbone.embed(rows.ids[sl]) for sl in chunks(n, batch_size)])
        if backbone.resumable:  # the layer stack's hidden states (a whole model's are the token ids)
            h = h.to(residual_dtype(spec))
        rows.ctx = block_context(spec, h) if block else backbone.context(h)
        rows.hidden_in = [h]
        if cache_layers and backbone.resumable:
            for layer in range(spec.num_layers - 1):
                h = torch.cat([backbone.run(h[sl], layer, layer + 1, rows.ctx) for sl in chunks(n, batch_size)])
                rows.hidden_in.append(h)
            _count(spec, n, spec.num_layers - 1, backward=False)
    return rows


def plain_rows(spec: ModelSpec, variants: list[Variant], normalize: str) -> Rows:
    """The masked-diffusion rows: each variant's ids [T], its loss at its masked positions (shifted with the
    logits), pooled as `normalize` says."""
    shift = 1 if spec.logit_shift else 0
    return Rows(
        ids=torch.stack([v.input_ids for v in variants]).to(spec.device),
        normalize=normalize,
        predict_at=[v.positions - shift for v in variants],
        labels=[v.labels for v in variants],
    )


def block_rows(spec: ModelSpec, variants: list[Variant], normalize: str, answer: tuple[int, int] | None) -> Rows:
    """The block-diffusion rows: [x_t | x_0] ids [2T] per variant (its masked ids, then the clean sample), the
    loss at the masked positions of the noisy copy (no logit shift: these families have none).

    With `mean-masked` (the default) J is the family's own normalisation: the summed cross-entropy divided by
    p (the variant's masking rate) and by the number of answer tokens, whatever the number masked (`scale`);
    with `sum` the plain sum, as for every family (docs/gate-ig.md, "Block diffusion").
    """
    if not spec.backbone.resumable or answer is None:
        raise HeadattrError(f"the block-diffusion objective needs a native family and an answer span ({spec.name})")
    if spec.logit_shift:
        raise HeadattrError(f"{spec.name}: block diffusion with shifted logits is not supported; use --logit-shift off")
    ids = []
    for v in variants:
        clean = v.input_ids.clone()
        clean[v.positions] = v.labels
        ids.append(torch.cat([v.input_ids, clean]))
    rows = Rows(
        ids=torch.stack(ids).to(spec.device),
        normalize="sum",
        predict_at=[v.positions for v in variants],
        labels=[v.labels for v in variants],
    )
    if normalize == "mean-masked":
        tokens = answer[1] - answer[0]
        rows.scale = torch.tensor([1.0 / (v.prob * tokens) for v in variants], dtype=torch.float64, device=spec.device)
    return rows


def block_context(spec: ModelSpec, h: torch.Tensor) -> LayerContext:
    """The context of [x_t | x_0] rows h [V, 2T, d]: both copies at RoPE positions 0..T-1 and the float additive
    mask [1, 1, 2T, 2T] of `noisy_clean_mask` (in the hidden states' dtype), shared by every row."""
    tokens = h.shape[1] // 2
    positions = torch.arange(tokens, device=h.device).repeat(2)[None]
    ctx = spec.backbone.context(h, position_ids=positions)
    mask = noisy_clean_mask(tokens, spec.block_size, h.dtype, h.device)
    return LayerContext(ctx.position_embeddings, mask)


@dataclass
class Objective:
    """J per row and, when asked, the logits of the masked tokens (`owner[k]`: the row of token k)."""

    j: torch.Tensor  # [R]
    logits: torch.Tensor | None = None  # [K, V]
    labels: torch.Tensor | None = None  # [K]
    owner: torch.Tensor | None = None  # [K]


def row_objective(
    logits: torch.Tensor,
    labels: torch.Tensor,
    owner: torch.Tensor,
    n_rows: int,
    normalize: str,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """J per row: minus the cross-entropy of its masked tokens, averaged (`mean-masked`) or summed, the sum
    multiplied by `scale` [R] when given (block diffusion's 1 / (p x answer tokens))."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits: loss in float32
    nll = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    loss = torch.zeros(n_rows, dtype=nll.dtype, device=nll.device).index_add(0, owner, nll)
    if normalize == "mean-masked":
        count = torch.zeros(n_rows, dtype=nll.dtype, device=nll.device).index_add(0, owner, torch.ones_like(nll))
        loss = loss / count
    if scale is not None:
        loss = loss * scale.to(loss.dtype)
    return -loss


def head_inputs(spec: ModelSpec, rows: Rows, layer: int, batch_size: int) -> torch.Tensor:
    """Every variant's input of layer `layer`'s o_proj [V, T, H * head_dim], all gates 1, `batch_size` rows
    at a time (needs `backbone.splits_attention` and the layer's cached input)."""
    backbone, n = spec.backbone, rows.num_variants
    with torch.no_grad(), autocast_for(spec):
        return torch.cat(
            [backbone.head_input(rows.hidden_in[layer][sl], layer, rows.ctx.rows(sl)) for sl in chunks(n, batch_size)]
        )


@dataclass(frozen=True)
class Join:
    """Rows that enter a pass at layer `start`: the variants `v_idx` [R], and, when the pass may start at that
    layer's o_proj, its head outputs `heads` [V, T, H * head_dim] (`head_inputs(..., start, ...)`)."""

    start: int
    v_idx: torch.Tensor
    heads: torch.Tensor | None = None


MIN_LOSS_POSITIONS = 16  # `loss_window` keeps at least this many positions (or all of a shorter sample)


def loss_window(spec: ModelSpec, answer: tuple[int, int], tokens: int) -> tuple[int, int] | None:
    """[lo, hi): the positions whose logits can predict an answer token of a sample of `tokens` tokens whose
    predictable answer is `answer` (`answer_span`), shifted with the logits; None when that is every position.

    Widened to MIN_LOSS_POSITIONS: with fewer, a pass of few rows is a product of fewer than 16 rows, which
    the CPU matrix kernels may sum in another order (docs/gate-ig.md), and the numbers would depend on the
    batch.
    """
    shift = 1 if spec.logit_shift else 0
    lo, hi = answer[0] - shift, answer[1] - shift
    short = max(0, min(MIN_LOSS_POSITIONS, tokens) - (hi - lo))
    hi_wide = min(tokens, hi + short)
    lo_wide = lo - (short - (hi_wide - hi))
    return None if hi_wide - lo_wide == tokens else (lo_wide, hi_wide)


def loss_positions(spec: ModelSpec, rows: Rows) -> slice | None:
    """The positions of `loss_window` for `rows` as a slice, or None (every position: a short sample, or rows
    without a single answer span). A slice, so that selecting them is a view, not a copy (a model run whole
    has every position's logits, [B, T, V], to select from).

    Only these reach the loss, so the last layer computes its output only there (`run_joined(keep=)`). The
    window is the sample's, never the batch's masked positions: a pass's numbers must not depend on which rows
    share it (the last layer's gate gradients sum over these positions).
    """
    window = None if rows.answer is None else loss_window(spec, rows.answer, rows.ids.shape[1])
    return None if window is None else slice(*window)


def objective(
    spec: ModelSpec,
    rows: Rows,
    v_idx: torch.Tensor,
    start: int,
    with_logits: bool = False,
    heads: torch.Tensor | None = None,
) -> Objective:
    """J for each row (row r is variant `v_idx[r]`), starting at layer `start`, under the caller's gates.

    `start` must be a layer the backbone can start at (`backbone.entry_layer`) whose input is cached. With
    `heads` ([V, T, H * head_dim], `head_inputs(..., start, ...)`), layer `start`'s attention is not
    recomputed: the pass starts at its o_proj, so only gates of layer `start` and deeper may differ from 1.
    Callers apply gates with `gates.gated` around this call *and* any backward pass: with gradient
    checkpointing the layers are recomputed during backward and must see the same gates.
    """
    return joined_objective(spec, rows, [Join(start, v_idx, heads)], with_logits)


def joined_objective(spec: ModelSpec, rows: Rows, joins: list[Join], with_logits: bool = False) -> Objective:
    """`objective` for rows that enter one pass at different layers (`joins`, at strictly ascending layers).

    The rows are those of `joins[0]`, then `joins[1]`, ...; the gates the caller applies to layer l cover the
    rows inside the pass at l, in that order (rows that joined earlier run layer l whole). One pass for the
    paths of many layers instead of one each: the same numbers per row, fewer and larger operations.
    """
    v_idx = torch.cat([j.v_idx for j in joins])
    owner, pos, labels = (t.to(spec.device) for t in rows.gather(v_idx))
    backbone = spec.backbone
    entries = [
        (j.start, rows.hidden_in[j.start][j.v_idx], None if j.heads is None else j.heads[j.v_idx]) for j in joins
    ]
    keep = loss_positions(spec, rows)
    at = pos if keep is None else pos - keep.start  # where each masked token's predictor is among `keep`
    with autocast_for(spec):
        h = backbone.run_joined(entries, spec.num_layers, rows.ctx.rows(v_idx), keep=keep)
        logits = backbone.logits(h[owner, at])
    scale = None if rows.scale is None else rows.scale[v_idx]
    j = row_objective(logits, labels, owner, len(v_idx), rows.normalize, scale)
    # a J that carries gradients is what the caller differentiates: one backward pass over the same layers
    for join in joins:
        _count(spec, len(join.v_idx), spec.num_layers - join.start, backward=j.requires_grad)
    if not with_logits:
        return Objective(j)
    return Objective(j, logits, labels, owner)


def forward_logits(
    spec: ModelSpec,
    ids: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    keep: slice | None = None,
) -> torch.Tensor:
    """Logits [B, T, V] at every position of [B, T] `ids` (no shift applied), under the caller's gates; with
    `keep` (a slice of P positions) only there, [B, P, V].

    `key_mask` [B, T] (True = real token) keeps every query from attending to padding; `position_ids` [B, T]
    (default 0..T-1) are the RoPE positions, e.g. counted over real tokens for left-padded prompts. With
    `keep` the last layer's output and the LM head are computed only at those positions (`run_joined(keep=)`,
    as for the attribution's loss): a sampler that reads the generated positions of a long prompt does not
    hold B x T x V logits.

    A family that declares the block-diffusion objective (`spec.objective`) attends block-causally here, as it
    does at inference (`inference_context`); every other family bidirectionally.
    """
    backbone = spec.backbone
    _count(spec, ids.shape[0], spec.num_layers, backward=False)
    with autocast_for(spec):
        h = backbone.embed(ids)
        ctx = inference_context(spec, h, key_mask, position_ids)
        if keep is None:
            return backbone.logits(backbone.run(h, 0, spec.num_layers, ctx))
        return backbone.logits(backbone.run_joined([(0, h, None)], spec.num_layers, ctx, keep=keep))


def inference_context(
    spec: ModelSpec, h: torch.Tensor, key_mask: torch.Tensor | None, position_ids: torch.Tensor | None
) -> LayerContext:
    """The context of a plain forward pass over h [B, T, d] (`forward_logits`): the backbone's (bidirectional,
    padding keys hidden by `key_mask` [B, T]), or for a block-diffusion family the float additive block-causal
    mask in h's dtype: [1, 1, T, T] (`block_causal_mask`) without `key_mask`, else one per row with blocks
    counted from the row's first real token (`padded_block_causal_mask`). RoPE positions as `position_ids`."""
    if spec.objective != BLOCK_DIFFUSION:
        return spec.backbone.context(h, key_mask, position_ids)
    if not spec.backbone.resumable:
        raise HeadattrError(f"block-causal attention needs a native family's layer stack ({spec.name})")
    rope = spec.backbone.context(h, position_ids=position_ids).position_embeddings
    if key_mask is None:
        mask = block_causal_mask(h.shape[1], spec.block_size, h.dtype, h.device)
    else:
        mask = padded_block_causal_mask(key_mask.to(h.device), spec.block_size, h.dtype)
    return LayerContext(rope, mask)


# ---------------------------------------------------------------- cost accounting


@dataclass
class PassCount:
    """Model work done inside a `counting()` block, in row-layers: one row (a masked variant with its gates)
    through one decoder layer. `passes` converts to full-model passes (L row-layers each), so a pass started
    at layer l counts (L - l) / L; embedding and LM head are not counted."""

    num_layers: int = 0
    forward_row_layers: int = 0
    backward_row_layers: int = 0

    def passes(self) -> dict[str, float]:
        """{"forward": F, "backward": B}: full-model equivalents (0 when nothing ran)."""
        n = max(self.num_layers, 1)
        return {"forward": self.forward_row_layers / n, "backward": self.backward_row_layers / n}


_COUNTERS: list[PassCount] = []


@contextlib.contextmanager
def counting() -> Iterator[PassCount]:
    """Count the core's forward and backward row-layers inside the block (nested blocks each count)."""
    counter = PassCount()
    _COUNTERS.append(counter)
    try:
        yield counter
    finally:
        _COUNTERS.remove(counter)


def _count(spec: ModelSpec, rows: int, layers: int, backward: bool) -> None:
    """Record `rows` rows through `layers` layers (and as many backward when `backward`)."""
    for counter in _COUNTERS:
        counter.num_layers = spec.num_layers
        counter.forward_row_layers += rows * layers
        if backward:
            counter.backward_row_layers += rows * layers
