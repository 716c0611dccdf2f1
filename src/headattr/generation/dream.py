"""Dream's sampler (`diffusion_generate` of DreamLM/Dream) with head gates, its settings and its evaluation.

Settings: `max_new_tokens` (the length), `steps`, `alg` (`origin`, `maskgit_plus`, `topk_margin`, `entropy`),
`temperature`, `top_p`, `top_k`, `alg_temp`, `eps`; logits are shifted (position j is predicted at j - 1).
Every rule is written down in `docs/generation.md` (Dream). The log-likelihood estimate of Dream's evaluation
masks each continuation token with a stratified probability and appends EOS to the continuation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from headattr.engine.sparse_hook import denoising_step
from headattr.errors import HeadattrError
from headattr.generation.rows import first_masked, row_span, start
from headattr.generation.sampler import Predict, Sampler, positive_int, register
from headattr.models import ModelSpec
from headattr.settings import Settings

DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
LIKELIHOOD_EPS = 1e-3  # Dream's evaluation: masking probability (1 - eps) t + eps


def check(s: dict[str, Any]) -> None:
    """Refuse a bad resolved Dream setting in one line."""
    positive_int(s, "max_new_tokens", 0)
    positive_int(s, "steps")
    if s["alg"] not in DREAM_ALGS:
        raise HeadattrError(f"unknown alg {s['alg']!r}; choose one of {', '.join(DREAM_ALGS)}")
    if s["temperature"] < 0:
        raise HeadattrError(f"temperature must be >= 0, got {s['temperature']}")
    if s["top_p"] is not None and not 0 < s["top_p"] <= 1:
        raise HeadattrError(f"top_p must be in (0, 1], got {s['top_p']}")
    if s["top_k"] is not None:
        positive_int(s, "top_k")
    if s["alg_temp"] is not None and s["alg_temp"] < 0:
        raise HeadattrError(f"alg_temp must be >= 0, got {s['alg_temp']}")
    if not 0 < s["eps"] <= 1:
        raise HeadattrError(f"eps must be in (0, 1], got {s['eps']}")


@dataclass(frozen=True)
class DreamSettings(Settings):
    """Dream's generation settings, with the defaults DreamGenerationConfig documents (its `max_new_tokens` None
    means its model-agnostic max_length of 20 tokens beyond the prompt). `headattr.generate(spec, ids,
    DreamSettings(...))`, or the same names as keyword arguments; checked on construction (`check`)."""

    max_new_tokens: int = 20
    steps: int = 512
    alg: str = "origin"
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    alg_temp: float | None = None
    eps: float = 1e-3

    def validate(self) -> None:
        check(dataclasses.asdict(self))


DREAM_DEFAULTS: dict[str, Any] = dataclasses.asdict(DreamSettings())  # the names a caller may pass


def with_length(settings: dict[str, Any], n: int) -> dict[str, Any]:
    """`settings` generating `n` tokens."""
    return {**settings, "max_new_tokens": n}


# ---------------------------------------------------------------- one step


def _cumsum(x: torch.Tensor) -> torch.Tensor:
    """Cumulative sum over the last axis. CUDA's cumsum has no deterministic kernel, so under
    `--deterministic` (torch.use_deterministic_algorithms) it is taken on the CPU, which is deterministic."""
    if x.device.type == "cuda" and torch.are_deterministic_algorithms_enabled():
        return torch.cumsum(x.cpu(), dim=-1).to(x.device)
    return torch.cumsum(x, dim=-1)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches `top_p` (the first always)."""
    ordered, order = torch.sort(logits, descending=True)
    cum = _cumsum(F.softmax(ordered, dim=-1))
    drop = cum > top_p
    drop[..., 1:] = drop[..., :-1].clone()  # shift right: the token that crosses top_p is kept
    drop[..., 0] = False
    remove = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, drop)
    return logits.masked_fill(remove, torch.finfo(logits.dtype).min)


def _top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    kth = torch.topk(logits, min(top_k, logits.shape[-1]))[0][..., -1, None]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def _tokens(
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


def _confidence(probs: torch.Tensor, chosen: torch.Tensor, alg: str) -> torch.Tensor:
    """Per-position confidence of the algorithm: chosen-token probability, top-2 margin, or -entropy."""
    if alg == "topk_margin":
        top2 = torch.sort(probs, dim=-1, descending=True)[0]
        return top2[:, 0] - top2[:, 1]
    if alg == "entropy":
        return torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return chosen


def _step_row(
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
        proposal[move] = _tokens(mask_logits[move], s, gen)[1]
        x[pos] = proposal
        return
    probs, tokens, chosen = _tokens(mask_logits, s, gen)
    confidence = _confidence(probs, chosen, s["alg"])
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


# ---------------------------------------------------------------- the sampler


def sample(
    spec: ModelSpec,
    predict: Predict,
    ids: torch.Tensor,
    valid: torch.Tensor,
    gates: dict[int, torch.Tensor],
    seed: int,
    s: dict[str, Any],
) -> torch.Tensor:
    """Dream's `diffusion_generate` on every row of `ids` [B, P] (see `docs/generation.md`, Dream): [B, P + N]."""
    mask_id = spec.mask_token_id
    x, valid, offsets, gens = start(ids, valid, s["max_new_tokens"], mask_id, seed)
    timesteps = torch.linspace(1, s["eps"], s["steps"] + 1, device=x.device)
    for i in range(s["steps"]):
        lo = first_masked(x, valid, mask_id)
        denoising_step(i, s["steps"])  # sparse attention's schedule (nothing when dense)
        logits = predict(x, valid, gates, lo, True)  # Dream's shift: j is predicted at j - 1
        for b, off in enumerate(offsets):
            row_logits, row_lo = row_span(logits, b, off, lo)
            last = i == s["steps"] - 1
            _step_row(x[b, off:], row_logits, s, timesteps[i], timesteps[i + 1], last, mask_id, gens[b], row_lo)
    return x


def likelihood_masks(
    seq: torch.Tensor, n_prompt: int, mask_id: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's draw: row i masks each target token with p_i = (1 - eps) t_i + eps, t_i = (u + i / b) mod 1.

    The last position (the EOS Dream appends to the continuation) is never masked, as in Dream's evaluation.
    """
    b, total = seq.shape
    t = (torch.rand(1, generator=gen) + torch.arange(b) / b) % 1
    p = ((1 - LIKELIHOOD_EPS) * t + LIKELIHOOD_EPS)[:, None].expand(b, total).double()
    masked = torch.rand(b, total, generator=gen) < p
    masked[:, :n_prompt] = False
    masked[:, -1] = False
    return torch.where(masked, mask_id, seq), p


SAMPLER = register(
    Sampler(
        "dream",
        DREAM_DEFAULTS,
        "max_new_tokens",
        check,
        with_length,
        sample,
        likelihood_masks,
        likelihood_eos=True,  # Dream's evaluation appends EOS to the continuation
        settings=DreamSettings,
        sparse=True,
    )
)
