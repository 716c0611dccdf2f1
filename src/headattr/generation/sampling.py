"""`headattr.generate`: a model family's official sampler on the native layer stack, with head gates.

`generate(spec, prompt_ids, **settings)` fills `N` masked positions after each prompt by iterative unmasking,
the way the model's own project does it, with the sampler the model's family names (`Family.sampler`, looked up
in `generation.sampler.SAMPLERS`): Dream's (`generation.dream`) or LLaDA's (`generation.llada`), each with its
settings, defaults and length setting.

At temperature 0 (and `alg_temp` 0) the result is token for token the official sampler's on one prompt; every
rule (schedule, confidence, ties, blocks, the mask token as the argmax, padding) is written down in
`docs/generation.md`. The forward pass is batched over prompts; the per-step choice of positions is made row
by row on each row's unpadded view, so a prompt gives the same tokens in any batch as alone. Randomness
(`origin`, temperature > 0, `alg_temp` > 0, `random` remasking) comes from one generator per row seeded with
`seed`, drawn in the order the official code draws from torch's global generator.

The model is reached through one function, `_logits`: the core's `forward_logits` on the native layer stack
(padding hidden from every query, RoPE positions counted over real tokens; block-causal for a block-diffusion
family, blocks counted from each row's first real token) under `gates.gated`; the samplers receive
`_predictions` on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from headattr.engine.batching import attempt, release_memory
from headattr.engine.core import forward_logits
from headattr.engine.gates import batch_gates, gated, removal_gates
from headattr.engine.sparse_schedule import SparseAttention
from headattr.errors import HeadattrError
from headattr.generation import dream, llada, llada2, sdar  # noqa: F401  (registers the samplers)
from headattr.generation.blockattn import BlockAttention, block_logits
from headattr.generation.sampler import SAMPLERS, Sampler
from headattr.generation.sparse import resolve_sparse, sparse_sample
from headattr.models import ModelSpec
from headattr.models.registry import Family, family_named, registered
from headattr.settings import Settings

# family name -> its sampler's length setting (the command line's --length), for the families registered here


# ---------------------------------------------------------------- settings


def sampler_for(spec: ModelSpec) -> Sampler:
    """The sampler of `spec`'s family; a one-line `HeadattrError` when the model cannot generate."""
    return _generating(spec)[1]


def _generating(spec: ModelSpec) -> tuple[Family, Sampler]:
    family = family_named(spec.family)
    if family is None or family.sampler is None or not spec.backbone.resumable:
        names = " or ".join(f.display_name for f in registered() if f.sampler)
        raise HeadattrError(f"generation needs a {names} checkpoint (native layer stack); {spec.name} is {spec.family}")
    if family.sampler not in SAMPLERS:
        raise HeadattrError(f"{family.display_name} names sampler {family.sampler!r}, which is not registered")
    if spec.mask_token_id is None:
        raise HeadattrError("no mask token known for this model; pass --mask-token-id")
    return family, SAMPLERS[family.sampler]


def resolve_settings(spec: ModelSpec, settings: dict[str, Any], config: Settings | None = None) -> dict[str, Any]:
    """The family's defaults updated by `config` (the family's settings class), then by `settings` (None values
    keep what is below), checked.

    A setting of another family, or an unknown one, is a one-line `HeadattrError`.
    """
    family, sampler = _generating(spec)
    if config is not None:
        if sampler.settings is None or not isinstance(config, sampler.settings):
            wanted = sampler.settings.__name__ if sampler.settings else "keyword settings"
            raise HeadattrError(
                f"{spec.name} is a {family.display_name} model: pass {wanted}, not {type(config).__name__}"
            )
        settings = {**dataclasses.asdict(config), **{k: v for k, v in settings.items() if v is not None}}
    defaults = sampler.defaults
    unknown = [k for k in settings if k not in defaults]
    if unknown:
        name = unknown[0]
        owner = next((f for f in registered() if f.sampler != sampler.name and name in _defaults_of(f)), None)
        what = f"a {owner.display_name} setting" if owner else "not a generation setting"
        raise HeadattrError(
            f"{name!r} is {what}; {spec.name} is a {family.display_name} model, whose generation settings are "
            f"{', '.join(defaults)}"
        )
    out = {**defaults, **{k: v for k, v in settings.items() if v is not None}}
    sampler.check(out)
    return out


def _defaults_of(family: Family) -> dict[str, Any]:
    return SAMPLERS[family.sampler].defaults if family.sampler in SAMPLERS else {}


def length_setting(spec: ModelSpec) -> str:
    """The name of the setting that is N, the number of generated tokens, for `spec`'s family."""
    return sampler_for(spec).length_setting


def generation_length(spec: ModelSpec, settings: dict[str, Any]) -> int:
    """N, the number of generated positions of these (resolved or partial) settings."""
    return int(resolve_settings(spec, settings)[length_setting(spec)])


# ---------------------------------------------------------------- prompts


def pad_id(spec: ModelSpec) -> int:
    """The id left padding is written with (never the mask token: padded positions must not look masked)."""
    for cand in (getattr(spec.tokenizer, "pad_token_id", None), getattr(spec.tokenizer, "eos_token_id", None), 0, 1):
        if cand is not None and cand != spec.mask_token_id:
            return int(cand)
    raise AssertionError("unreachable: 0 and 1 cannot both be the mask token")


def batch_prompts(
    spec: ModelSpec,
    prompt_ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]],
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as left-padded ids [B, P] and a bool attention mask [B, P] (True = real token).

    Accepts one 1-D sequence, a list of sequences of different lengths (padded here), or a [B, P] tensor
    with an optional `attention_mask` whose zeros must precede the ones in every row (left padding).
    """
    if isinstance(prompt_ids, torch.Tensor) and prompt_ids.dim() == 2:
        ids = prompt_ids.long()
        mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if mask.shape != ids.shape:
            raise HeadattrError(f"attention_mask {tuple(mask.shape)} does not match prompt_ids {tuple(ids.shape)}")
        if bool((mask[:, 1:] < mask[:, :-1]).any()):
            raise HeadattrError("prompts must be left-padded (attention_mask zeros before ones); or pass a list")
        return ids.to(spec.device), mask.to(spec.device)
    if attention_mask is not None:
        raise HeadattrError("attention_mask goes with a [B, P] tensor of prompt ids, not with a list of prompts")
    rows = [prompt_ids] if _is_flat(prompt_ids) else list(prompt_ids)
    rows = [torch.as_tensor(r, dtype=torch.long).reshape(-1) for r in rows]
    if not rows:
        raise HeadattrError("no prompts given")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id(spec), dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, r in enumerate(rows):
        if len(r):
            ids[b, width - len(r) :] = r
            mask[b, width - len(r) :] = True
    return ids.to(spec.device), mask.to(spec.device)


def _is_flat(prompt_ids: Any) -> bool:
    if isinstance(prompt_ids, torch.Tensor):
        return prompt_ids.dim() <= 1
    return len(prompt_ids) == 0 or not isinstance(prompt_ids[0], Sequence | torch.Tensor)


# ---------------------------------------------------------------- the model


@torch.no_grad()
def _logits(
    spec: ModelSpec,
    ids: torch.Tensor,
    valid: torch.Tensor | None,
    gates: dict[int, torch.Tensor],
    keep: slice | None = None,
) -> torch.Tensor:
    """Unshifted logits [B, T, V] of `ids` [B, T] under `gates`, or only at the positions `keep` [B, P, V];
    `valid` [B, T] (None: no padding).

    With padding, positions count real tokens only (a left-padded prompt keeps the RoPE positions it has
    alone) and pad keys are hidden. A block-diffusion family attends block-causally, each row's blocks counted
    from its first real token (`core.inference_context`). This is the only place that drives the model.
    """
    with gated(spec, gates):
        if valid is None or bool(valid.all()):
            return forward_logits(spec, ids, keep=keep)
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        return forward_logits(spec, ids, key_mask=valid, position_ids=positions, keep=keep)


def _predictions(
    spec: ModelSpec,
    x: torch.Tensor,
    valid: torch.Tensor,
    gates: dict[int, torch.Tensor],
    lo: int,
    shift: bool,
    attention: BlockAttention | None = None,
) -> torch.Tensor:
    """The logits [B, T - lo, V] that predict positions lo..T-1 of `x` [B, T]: with `shift` (Dream) position
    j's from the output at j - 1 and position 0's from its own, else each position's own.

    The model's last layer and LM head run only at the outputs read (`_logits(keep=)`), not at all T. With
    `attention` (block-diffusion samplers; no shift) the pass is block-causal, optionally continuing a KV cache
    (`generation.blockattn.block_logits`).
    """
    if attention is not None:
        return block_logits(spec, x, valid, gates, lo, attention)
    t = x.shape[1]
    if not shift:
        return _logits(spec, x, valid, gates, slice(lo, t))
    if lo > 0:
        return _logits(spec, x, valid, gates, slice(lo - 1, t - 1))
    logits = _logits(spec, x, valid, gates, slice(0, max(t - 1, 1)))
    return torch.cat([logits[:, :1], logits], dim=1)[:, :t]


# ---------------------------------------------------------------- public entry point


@torch.no_grad()
def generate(
    spec: ModelSpec,
    prompt_ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]],
    config: Settings | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    gates: dict[int, torch.Tensor] | None = None,
    head_mask: Sequence[tuple[int, int]] | None = None,
    seed: int = 0,
    sparse: SparseAttention | None = None,
    **settings: Any,
) -> torch.LongTensor:
    """Generate after each prompt with the model family's official sampler; returns ids [B, P + N].

    `prompt_ids`: a 1-D sequence, a list of sequences (left-padded here), or [B, P] with `attention_mask`
    (left padding). `gates` ({layer: [H] or [B, H]}) or `head_mask` ((layer, head) pairs to remove) apply
    during generation. `config` (`DreamSettings`, `LLaDASettings`) and keyword `settings` of the same names (which
    override it): the family's generation settings, defaults where neither gives one. The first
    P columns are the (padded) prompts; generated positions whose prediction stayed the mask token keep it.
    `sparse` (`SparseAttention`): block-sparse attention after the dense steps (`generation.sparse`; the rules
    in `docs/generation.md`, Sparse attention).
    """
    resolved = resolve_settings(spec, settings, config)
    if gates is not None and head_mask is not None:
        raise HeadattrError("pass gates or head_mask, not both")
    if head_mask is not None:
        gates = removal_gates(spec, [tuple(h) for h in head_mask])
    ids, valid = batch_prompts(spec, prompt_ids, attention_mask)
    row_gates = batch_gates({k: v.to(spec.device) for k, v in (gates or {}).items()}, ids.shape[0])
    sampler = sampler_for(spec)
    sample = partial(sampler.sample, spec, partial(_predictions, spec))
    if sparse is not None:
        if not sampler.sparse:
            raise HeadattrError(f"the {sampler.name} sampler does not support sparse attention yet; drop sparse=")
        length = int(resolved[sampler.length_setting])
        sample = partial(sparse_sample, sample, spec, resolve_sparse(spec, sparse), length)
    return _sample_halving(sample, ids, valid, row_gates, seed, resolved)


def _sample_halving(
    sample: Callable[..., torch.Tensor],
    ids: torch.Tensor,
    valid: torch.Tensor,
    gates: dict[int, torch.Tensor],
    seed: int,
    s: dict[str, Any],
) -> torch.Tensor:
    """`sample(ids, valid, gates, seed, s)` on the rows of `ids` [B, P]; when that runs out of memory, on each
    half of them in turn (and so on down to one row, which re-raises). The tokens are the same: rows never
    interact, each draws from its own generator, and a half keeps the batch's padding, which a row's tokens do
    not depend on."""
    if ids.shape[0] == 1:  # nothing to split: an out-of-memory error reaches the caller
        return sample(ids, valid, gates, seed, s)
    ok, out = attempt(lambda: sample(ids, valid, gates, seed, s))
    if ok:
        return out
    release_memory(ids.device)  # outside the except block: the failed attempt's tensors are gone
    halves = (slice(0, (ids.shape[0] + 1) // 2), slice((ids.shape[0] + 1) // 2, None))
    return torch.cat(
        [_sample_halving(sample, ids[h], valid[h], {k: g[h] for k, g in gates.items()}, seed, s) for h in halves]
    )


# ---------------------------------------------------------------- completions


def completion_ids(spec: ModelSpec, generated: torch.Tensor | Sequence[int]) -> list[int]:
    """The generated ids of one row [N] up to (not including) the first EOS."""
    stop = spec.eos_ids()
    out = []
    for t in generated.tolist() if isinstance(generated, torch.Tensor) else list(generated):
        if t in stop:
            break
        out.append(int(t))
    return out


def completion_text(spec: ModelSpec, generated: torch.Tensor | Sequence[int]) -> str:
    """A row's completion [N] cut at the first EOS, decoded without special tokens (left-over masks vanish)."""
    return spec.tokenizer.decode(completion_ids(spec, generated), skip_special_tokens=True)
