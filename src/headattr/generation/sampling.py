"""Generation with the official samplers of Dream and LLaDA, on the native layer stack, with head gates.

`generate(spec, prompt_ids, **settings)` fills `N` masked positions after each prompt by iterative unmasking,
the way the model's own project does it:

- Dream (`diffusion_generate` of DreamLM/Dream): `max_new_tokens`, `steps`, `alg` (`origin`, `maskgit_plus`,
  `topk_margin`, `entropy`), `temperature`, `top_p`, `top_k`, `alg_temp`, `eps`; logits are shifted.
- LLaDA (`generate()` of ML-GSAI/LLaDA): `gen_length`, `steps`, `block_length`, `temperature`, `cfg_scale`,
  `remasking` (`low_confidence`, `random`); logits are not shifted.

At temperature 0 (and `alg_temp` 0) the result is token for token the official sampler's on one prompt; every
rule (schedule, confidence, ties, blocks, the mask token as the argmax, padding) is written down in
`docs/generation.md`. The forward pass is batched over prompts; the per-step choice of positions is made row
by row on each row's unpadded view, so a prompt gives the same tokens in any batch as alone. Randomness
(`origin`, temperature > 0, `alg_temp` > 0, `random` remasking) comes from one generator per row seeded with
`seed`, drawn in the order the official code draws from torch's global generator.

The model is reached through one function, `_logits`: the core's `forward_logits` on the native layer stack
(padding hidden from every query, RoPE positions counted over real tokens) under `gates.gated`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from headattr.engine.batching import attempt, release_memory
from headattr.engine.core import forward_logits
from headattr.engine.gates import gated, removal_gates
from headattr.errors import HeadattrError
from headattr.models import ModelSpec

DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
LLADA_REMASKING = ("low_confidence", "random")
# The defaults each official sampler documents: DreamGenerationConfig's (max_new_tokens None there means
# its model-agnostic max_length of 20 tokens beyond the prompt) and the keyword defaults of LLaDA's generate().
DREAM_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 20,
    "steps": 512,
    "alg": "origin",
    "temperature": 0.0,
    "top_p": None,
    "top_k": None,
    "alg_temp": None,
    "eps": 1e-3,
}
LLADA_DEFAULTS: dict[str, Any] = {
    "gen_length": 128,
    "steps": 128,
    "block_length": 128,
    "temperature": 0.0,
    "cfg_scale": 0.0,
    "remasking": "low_confidence",
}
DEFAULTS = {"dream": DREAM_DEFAULTS, "llada": LLADA_DEFAULTS}
LENGTH_SETTING = {"dream": "max_new_tokens", "llada": "gen_length"}
FAMILY_NAMES = {"dream": "Dream", "llada": "LLaDA"}


# ---------------------------------------------------------------- settings


def resolve_settings(spec: ModelSpec, settings: dict[str, Any]) -> dict[str, Any]:
    """The family's defaults updated by `settings` (None values keep the default), checked.

    A setting of the other family, or an unknown one, is a one-line `HeadattrError`.
    """
    family = _family(spec)
    defaults = DEFAULTS[family]
    unknown = [k for k in settings if k not in defaults]
    if unknown:
        name = unknown[0]
        owner = next((f for f in DEFAULTS if f != family and name in DEFAULTS[f]), None)
        what = f"a {FAMILY_NAMES[owner]} setting" if owner else "not a generation setting"
        raise HeadattrError(
            f"{name!r} is {what}; {spec.name} is a {FAMILY_NAMES[family]} model, whose generation settings are "
            f"{', '.join(defaults)}"
        )
    out = {**defaults, **{k: v for k, v in settings.items() if v is not None}}
    (_check_dream if family == "dream" else _check_llada)(out)
    return out


def _family(spec: ModelSpec) -> str:
    if spec.family not in DEFAULTS or not spec.backbone.resumable:
        raise HeadattrError(
            f"generation needs a Dream or LLaDA checkpoint (native layer stack); {spec.name} is {spec.family}"
        )
    if spec.mask_token_id is None:
        raise HeadattrError("no mask token known for this model; pass --mask-token-id")
    return spec.family


def _positive_int(settings: dict[str, Any], name: str, minimum: int = 1) -> None:
    value = settings[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise HeadattrError(f"generation setting {name} must be an integer >= {minimum}, got {value!r}")


def _check_dream(s: dict[str, Any]) -> None:
    _positive_int(s, "max_new_tokens", 0)
    _positive_int(s, "steps")
    if s["alg"] not in DREAM_ALGS:
        raise HeadattrError(f"unknown alg {s['alg']!r}; choose one of {', '.join(DREAM_ALGS)}")
    if s["temperature"] < 0:
        raise HeadattrError(f"temperature must be >= 0, got {s['temperature']}")
    if s["top_p"] is not None and not 0 < s["top_p"] <= 1:
        raise HeadattrError(f"top_p must be in (0, 1], got {s['top_p']}")
    if s["top_k"] is not None:
        _positive_int(s, "top_k")
    if s["alg_temp"] is not None and s["alg_temp"] < 0:
        raise HeadattrError(f"alg_temp must be >= 0, got {s['alg_temp']}")
    if not 0 < s["eps"] <= 1:
        raise HeadattrError(f"eps must be in (0, 1], got {s['eps']}")


def _check_llada(s: dict[str, Any]) -> None:
    for name in ("gen_length", "steps", "block_length"):
        _positive_int(s, name)
    if s["gen_length"] % s["block_length"]:
        raise HeadattrError(
            f"gen_length {s['gen_length']} must be a multiple of block_length {s['block_length']} (as in LLaDA)"
        )
    blocks = s["gen_length"] // s["block_length"]
    if s["steps"] % blocks:
        raise HeadattrError(f"steps {s['steps']} must be a multiple of the number of blocks {blocks} (as in LLaDA)")
    if s["temperature"] < 0 or s["cfg_scale"] < 0:
        raise HeadattrError("temperature and cfg_scale must be >= 0")
    if s["remasking"] not in LLADA_REMASKING:
        raise HeadattrError(f"unknown remasking {s['remasking']!r}; choose one of {', '.join(LLADA_REMASKING)}")


def generation_length(spec: ModelSpec, settings: dict[str, Any]) -> int:
    """N, the number of generated positions of these (resolved or partial) settings."""
    return int(resolve_settings(spec, settings)[LENGTH_SETTING[spec.family]])


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
    alone) and pad keys are hidden. This is the only place that drives the model.
    """
    with gated(spec, gates):
        if valid is None or bool(valid.all()):
            return forward_logits(spec, ids, keep=keep)
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        return forward_logits(spec, ids, key_mask=valid, position_ids=positions, keep=keep)


def _first_masked(x: torch.Tensor, valid: torch.Tensor, mask_id: int) -> int:
    """The first position of [B, T] `x` holding a real mask token in any row (T when none does): the samplers
    read predictions from there on (the generated span, or earlier where a prompt holds the mask token)."""
    anywhere = ((x == mask_id) & valid).any(dim=0).nonzero()
    return int(anywhere[0]) if len(anywhere) else x.shape[1]


def _predictions(
    spec: ModelSpec, x: torch.Tensor, valid: torch.Tensor, gates: dict[int, torch.Tensor], lo: int, shift: bool
) -> torch.Tensor:
    """The logits [B, T - lo, V] that predict positions lo..T-1 of `x` [B, T]: with `shift` (Dream) position
    j's from the output at j - 1 and position 0's from its own, else each position's own.

    The model's last layer and LM head run only at the outputs read (`_logits(keep=)`), not at all T.
    """
    t = x.shape[1]
    if not shift:
        return _logits(spec, x, valid, gates, slice(lo, t))
    if lo > 0:
        return _logits(spec, x, valid, gates, slice(lo - 1, t - 1))
    logits = _logits(spec, x, valid, gates, slice(0, max(t - 1, 1)))
    return torch.cat([logits[:, :1], logits], dim=1)[:, :t]


def _row_span(logits: torch.Tensor, b: int, off: int, lo: int) -> tuple[torch.Tensor, int]:
    """Row b's predictions from `_predictions` (positions lo..T-1) for its unpadded view (positions off..T-1):
    ([T - max(lo, off), V], the view's index of their first position)."""
    return logits[b, max(off - lo, 0) :], max(lo - off, 0)


def _row_gates(gates: dict[int, torch.Tensor], batch: int, repeat: int = 1) -> dict[int, torch.Tensor]:
    """Gates for a batch of `batch` rows, repeated `repeat` times along the batch (LLaDA's guidance rows)."""
    out = {}
    for layer, g in gates.items():
        g = g.expand(batch, -1) if g.dim() == 1 else g
        out[layer] = g.repeat(repeat, 1)
    return out


# ---------------------------------------------------------------- public entry point


@torch.no_grad()
def generate(
    spec: ModelSpec,
    prompt_ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]],
    *,
    attention_mask: torch.Tensor | None = None,
    gates: dict[int, torch.Tensor] | None = None,
    head_mask: Sequence[tuple[int, int]] | None = None,
    seed: int = 0,
    **settings: Any,
) -> torch.LongTensor:
    """Generate after each prompt with the model family's official sampler; returns ids [B, P + N].

    `prompt_ids`: a 1-D sequence, a list of sequences (left-padded here), or [B, P] with `attention_mask`
    (left padding). `gates` ({layer: [H] or [B, H]}) or `head_mask` ((layer, head) pairs to remove) apply
    during generation. `settings`: the family's (see `DREAM_DEFAULTS`, `LLADA_DEFAULTS`). The first P columns
    are the (padded) prompts; generated positions whose prediction stayed the mask token keep it.
    """
    resolved = resolve_settings(spec, settings)
    if gates is not None and head_mask is not None:
        raise HeadattrError("pass gates or head_mask, not both")
    if head_mask is not None:
        gates = removal_gates(spec, [tuple(h) for h in head_mask])
    ids, valid = batch_prompts(spec, prompt_ids, attention_mask)
    row_gates = _row_gates({k: v.to(spec.device) for k, v in (gates or {}).items()}, ids.shape[0])
    sampler = _dream_sample if spec.family == "dream" else _llada_sample
    return _sample_halving(sampler, spec, ids, valid, row_gates, seed, resolved)


def _sample_halving(
    sampler: Any,
    spec: ModelSpec,
    ids: torch.Tensor,
    valid: torch.Tensor,
    gates: dict[int, torch.Tensor],
    seed: int,
    s: dict[str, Any],
) -> torch.Tensor:
    """`sampler` on the rows of `ids` [B, P]; when that runs out of memory, on each half of them in turn (and so
    on down to one row, which re-raises). The tokens are the same: rows never interact, each draws from its own
    generator, and a half keeps the batch's padding, which a row's tokens do not depend on."""
    if ids.shape[0] == 1:  # nothing to split: an out-of-memory error reaches the caller
        return sampler(spec, ids, valid, gates, seed, s)
    ok, out = attempt(lambda: sampler(spec, ids, valid, gates, seed, s))
    if ok:
        return out
    release_memory(spec.device)  # outside the except block: the failed attempt's tensors are gone
    halves = (slice(0, (ids.shape[0] + 1) // 2), slice((ids.shape[0] + 1) // 2, None))
    return torch.cat(
        [_sample_halving(sampler, spec, ids[h], valid[h], {k: g[h] for k, g in gates.items()}, seed, s) for h in halves]
    )


def _generators(device: torch.device, batch: int, seed: int) -> list[torch.Generator]:
    """One generator per row, each seeded with `seed`: a prompt draws the same numbers in any batch."""
    return [torch.Generator(device=device).manual_seed(seed) for _ in range(batch)]


def _extend(ids: torch.Tensor, valid: torch.Tensor, n: int, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Append `n` mask tokens to every row; the appended positions are real (valid)."""
    x = F.pad(ids, (0, n), value=mask_id)
    return x, F.pad(valid, (0, n), value=True)


# ---------------------------------------------------------------- Dream


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches `top_p` (the first always)."""
    ordered, order = torch.sort(logits, descending=True)
    cum = torch.cumsum(F.softmax(ordered, dim=-1), dim=-1)
    drop = cum > top_p
    drop[..., 1:] = drop[..., :-1].clone()  # shift right: the token that crosses top_p is kept
    drop[..., 0] = False
    remove = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, drop)
    return logits.masked_fill(remove, torch.finfo(logits.dtype).min)


def _top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    kth = torch.topk(logits, min(top_k, logits.shape[-1]))[0][..., -1, None]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def _dream_tokens(
    logits: torch.Tensor, s: dict[str, Any], gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probs [n, V], tokens [n], probability of each token [n]) for masked positions' logits [n, V].

    Temperature 0: the argmax (the mask token included) and its probability; otherwise one categorical draw.
    top_p / top_k filter the logits at any temperature, so they change the probabilities (confidences) even
    when the argmax is taken.
    """
    if s["temperature"] > 0:
        logits = logits / s["temperature"]
    if s["top_p"] is not None and s["top_p"] < 1:
        logits = _top_p_filter(logits, s["top_p"])
    if s["top_k"] is not None:
        logits = _top_k_filter(logits, s["top_k"])
    probs = torch.softmax(logits, dim=-1)
    if s["temperature"] > 0 and probs.shape[0]:
        normalised = probs / probs.sum(-1, keepdim=True)  # torch.distributions.Categorical's normalisation
        tokens = torch.multinomial(normalised, 1, True, generator=gen)[:, 0]
        return probs, tokens, torch.gather(probs, -1, tokens[:, None])[:, 0]
    confidence, tokens = probs.max(dim=-1)
    return probs, tokens, confidence


def _dream_confidence(probs: torch.Tensor, chosen: torch.Tensor, alg: str) -> torch.Tensor:
    """Per-position confidence of the algorithm: chosen-token probability, top-2 margin, or -entropy."""
    if alg == "topk_margin":
        top2 = torch.sort(probs, dim=-1, descending=True)[0]
        return top2[:, 0] - top2[:, 1]
    if alg == "entropy":
        return torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return chosen


def _dream_step_row(
    x: torch.Tensor,
    logits: torch.Tensor,
    s: dict[str, Any],
    t: torch.Tensor,
    t_next: torch.Tensor,
    last: bool,
    mask_id: int,
    gen: torch.Generator,
    lo: int = 0,
) -> None:
    """One step on one row's unpadded view `x` [T] in place; `logits` [T - lo, V] are the (already shifted)
    predictions of positions lo..T-1, where every masked position is."""
    masked = x == mask_id
    pos = torch.nonzero(masked).squeeze(1)
    mask_logits = logits[pos - lo]
    if s["alg"] == "origin":
        p_transfer = 1 - t_next / t if not last else 1
        proposal = torch.full_like(pos, mask_id)
        move = torch.rand(pos.shape, device=x.device, generator=gen) < p_transfer
        proposal[move] = _dream_tokens(mask_logits[move], s, gen)[1]
        x[pos] = proposal
        return
    probs, tokens, chosen = _dream_tokens(mask_logits, s, gen)
    confidence = _dream_confidence(probs, chosen, s["alg"])
    n_masked = masked.sum() / 1  # a float tensor, as the official per-batch mean is for one row
    count = int(n_masked * (1 - t_next / t)) if not last else int(n_masked)
    if count <= 0:
        return
    full = torch.full((1, x.shape[0]), -torch.inf, dtype=logits.dtype, device=x.device)
    full[0, pos] = confidence.to(logits.dtype)
    if s["alg_temp"] is None or s["alg_temp"] == 0:
        chosen_pos = torch.topk(full, count)[1][0]
    else:
        weights = F.softmax(full / s["alg_temp"], dim=-1)
        chosen_pos = torch.multinomial(weights, num_samples=count, generator=gen)[0]
    proposal = torch.full_like(x, mask_id)
    proposal[pos] = tokens
    x[chosen_pos] = proposal[chosen_pos]


def _start(
    ids: torch.Tensor, valid: torch.Tensor, new_tokens: int, mask_id: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, list[int], list[torch.Generator]]:
    """What both samplers start from: the ids extended by `new_tokens` masks (`_extend`), their validity, each
    row's left padding, and each row's random generator."""
    x, valid = _extend(ids, valid, new_tokens, mask_id)
    return x, valid, (~valid).sum(dim=1).tolist(), _generators(x.device, x.shape[0], seed)


def _dream_sample(
    spec: ModelSpec,
    ids: torch.Tensor,
    valid: torch.Tensor,
    gates: dict[int, torch.Tensor],
    seed: int,
    s: dict[str, Any],
) -> torch.Tensor:
    """Dream's `diffusion_generate` on every row (see `docs/generation.md`, Dream)."""
    mask_id = spec.mask_token_id
    x, valid, offsets, gens = _start(ids, valid, s["max_new_tokens"], mask_id, seed)
    timesteps = torch.linspace(1, s["eps"], s["steps"] + 1, device=x.device)
    for i in range(s["steps"]):
        lo = _first_masked(x, valid, mask_id)
        logits = _predictions(spec, x, valid, gates, lo, shift=True)  # Dream's shift: j is predicted at j - 1
        for b, off in enumerate(offsets):
            row_logits, row_lo = _row_span(logits, b, off, lo)
            last = i == s["steps"] - 1
            _dream_step_row(x[b, off:], row_logits, s, timesteps[i], timesteps[i + 1], last, mask_id, gens[b], row_lo)
    return x


# ---------------------------------------------------------------- LLaDA


def _transfer_schedule(n_masked: int, steps: int) -> list[int]:
    """Tokens committed at each step of a block: equal shares, the first `n % steps` steps one more."""
    base, extra = divmod(n_masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _llada_step_row(
    x: torch.Tensor,
    logits: torch.Tensor,
    s: dict[str, Any],
    block_end: int,
    count: int,
    mask_id: int,
    gen: torch.Generator,
    lo: int = 0,
) -> None:
    """One step on one row's unpadded view `x` [T] in place; `logits` [T - lo, V] predict positions lo..T-1,
    where every masked position is; `block_end` ends the block."""
    masked = x == mask_id
    if s["temperature"] > 0:
        # Gumbel-max in float64: exp(logits) / (-log u) ** temperature, as LLaDA's add_gumbel_noise; the noise
        # is drawn for every position, as the official code draws it, so that the generator gives the same draws
        shape = (1, x.shape[0], logits.shape[-1])
        noise = torch.rand(shape, dtype=torch.float64, device=x.device, generator=gen)[0, lo:]
        noisy = logits.to(torch.float64).exp() / (-torch.log(noise)) ** s["temperature"]
    else:
        noisy = logits
    tokens = x.clone()
    tokens[lo:] = torch.argmax(noisy, dim=-1)  # may be the mask token: then the position stays masked
    if s["remasking"] == "low_confidence":
        p = F.softmax(logits, dim=-1)
        score = torch.full(x.shape, -torch.inf, dtype=p.dtype, device=x.device)
        score[lo:] = torch.gather(p, -1, tokens[lo:, None])[:, 0]
    else:
        score = torch.rand((1, x.shape[0]), device=x.device, generator=gen)[0]
    score[block_end:] = -torch.inf
    tokens = torch.where(masked, tokens, x)
    confidence = torch.where(masked, score, -torch.inf)
    chosen = torch.topk(confidence, k=count)[1]
    x[chosen] = tokens[chosen]


def _llada_sample(
    spec: ModelSpec,
    ids: torch.Tensor,
    valid: torch.Tensor,
    gates: dict[int, torch.Tensor],
    seed: int,
    s: dict[str, Any],
) -> torch.Tensor:
    """LLaDA's `generate` on every row (see `docs/generation.md`, LLaDA)."""
    mask_id, width = spec.mask_token_id, ids.shape[1]
    x, valid, offsets, gens = _start(ids, valid, s["gen_length"], mask_id, seed)
    prompt = (x != mask_id) & valid  # guidance hides these; prompt mask tokens are not part of it
    n_blocks = s["gen_length"] // s["block_length"]
    steps = s["steps"] // n_blocks
    guided = s["cfg_scale"] > 0
    both_gates = _row_gates(gates, x.shape[0], 2) if guided else gates
    for blk in range(n_blocks):
        start = width + blk * s["block_length"]
        end = start + s["block_length"]
        schedules = [_transfer_schedule(int((x[b, start:end] == mask_id).sum()), steps) for b in range(x.shape[0])]
        for i in range(steps):
            lo = _first_masked(x, valid, mask_id)  # only x's masked positions are read, also under guidance
            if guided:
                un_x = x.masked_fill(prompt, mask_id)
                both = _predictions(spec, torch.cat([x, un_x]), torch.cat([valid, valid]), both_gates, lo, False)
                cond, uncond = torch.chunk(both, 2, dim=0)
                logits = uncond + (s["cfg_scale"] + 1) * (cond - uncond)
            else:
                logits = _predictions(spec, x, valid, gates, lo, shift=False)
            for b, off in enumerate(offsets):
                row_logits, row_lo = _row_span(logits, b, off, lo)
                _llada_step_row(x[b, off:], row_logits, s, end - off, schedules[b][i], mask_id, gens[b], row_lo)
    return x


# ---------------------------------------------------------------- completions


def eos_ids(spec: ModelSpec) -> set[int]:
    """Token ids that end a completion: the tokenizer's eos and the config's eos id(s)."""
    found: set[int] = set()
    tok_eos = getattr(spec.tokenizer, "eos_token_id", None)
    if tok_eos is not None:
        found.add(int(tok_eos))
    cfg_eos = getattr(spec.model.config, "eos_token_id", None)
    for e in cfg_eos if isinstance(cfg_eos, list | tuple) else [cfg_eos]:
        if e is not None:
            found.add(int(e))
    return found


def completion_ids(spec: ModelSpec, generated: torch.Tensor | Sequence[int]) -> list[int]:
    """The generated ids of one row [N] up to (not including) the first EOS."""
    stop = eos_ids(spec)
    out = []
    for t in generated.tolist() if isinstance(generated, torch.Tensor) else list(generated):
        if t in stop:
            break
        out.append(int(t))
    return out


def completion_text(spec: ModelSpec, generated: torch.Tensor | Sequence[int]) -> str:
    """A row's completion [N] cut at the first EOS, decoded without special tokens (left-over masks vanish)."""
    return spec.tokenizer.decode(completion_ids(spec, generated), skip_special_tokens=True)
