"""The log-likelihood estimate of block-diffusion families (SDAR, LLaDA 2): the Monte-Carlo ELBO of their training loss.

Neither family publishes an estimate. lm-eval's `loglikelihood` scores a continuation on these models by the loss
they were trained on (`../shared/spec/model-formats.md`, SDAR's training loss): the sequence context +
continuation, a masked copy of it beside the clean one ([x_t | x_0], both at positions 0..T-1, the float additive
`noisy_clean_mask`), and minus the cross-entropy of the masked continuation tokens of the noisy copy, summed
(not divided by the number of tokens: the log-likelihood of the whole continuation) and weighted. The estimator,
and why it is a lower bound, are in `docs/generation.md` ("Likelihood of block-diffusion families").

    likelihood_masks(seq, n_prompt, mask_id, gen)    # the draws: (noisy ids [b, T], weight [b, T])
    noisy_clean_logits(spec, noisy, seq, gates, lo)  # the noisy copy's logits [b, T - lo, V] under [x_t | x_0]

The families' `Sampler` records name both (`likelihood_masks`, `likelihood_logits`), and
`generation.lmeval.mc_loglikelihood` averages minus the weighted cross-entropy over the draws.
"""

from __future__ import annotations

import torch

from headattr.engine.core import autocast_for
from headattr.engine.gates import gated
from headattr.errors import HeadattrError
from headattr.models import ModelSpec
from headattr.models.block_masks import noisy_clean_mask

LIKELIHOOD_EPS = 1e-3  # p = (1 - eps) t + eps, as in the families' training loss


def _row_mask(length: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """[length] each position masked with probability p, conditioned on at least one masked: the first masked
    position j is drawn with probability (1 - p)^j p / (1 - (1 - p)^length), the later ones with p each."""
    j = torch.arange(length, dtype=torch.float64)
    first = int(torch.multinomial((1 - p) ** j * p, 1, generator=gen))
    masked = (torch.rand(length, generator=gen, dtype=torch.float64) < p) & (j > first)
    masked[first] = True
    return masked


def likelihood_masks(
    seq: torch.Tensor, n_prompt: int, mask_id: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """b masked copies of `seq` [b, T] (the continuation after `n_prompt` context tokens) and the weight [b, T]
    each masked token's cross-entropy is divided by.

    Row i's rate is p_i = (1 - eps) t_i + eps with t_i = (u + i / b) mod 1 (stratified, as Dream's evaluation
    draws); each continuation token is masked with probability p_i, conditioned on at least one (`_row_mask`), and
    the weight is p_i / (1 - (1 - p_i)^L): the draws without a masked token, which would add nothing to the sum,
    are not run, and the expectation is that of the unconditioned CE / p_i estimate.
    """
    b, total = seq.shape
    length = total - n_prompt
    if length < 1:
        raise HeadattrError("loglikelihood: the continuation is empty (no token to score); give a continuation")
    t = (torch.rand(1, generator=gen, dtype=torch.float64) + torch.arange(b, dtype=torch.float64) / b) % 1
    p = (1 - LIKELIHOOD_EPS) * t + LIKELIHOOD_EPS
    masked = torch.zeros(b, total, dtype=torch.bool)
    for i in range(b):
        masked[i, n_prompt:] = _row_mask(length, float(p[i]), gen)
    hit = -torch.expm1(length * torch.log1p(-p))  # 1 - (1 - p)^L, the probability of at least one masked
    weight = (p / hit)[:, None].expand(b, total)
    return torch.where(masked, mask_id, seq), weight


@torch.no_grad()
def noisy_clean_logits(
    spec: ModelSpec, noisy: torch.Tensor, seq: torch.Tensor, gates: dict[int, torch.Tensor], lo: int
) -> torch.Tensor:
    """Logits [b, T - lo, V] of the noisy copy's positions lo..T-1, the rows laid out as [noisy | seq] ([b, 2T]):
    both copies at RoPE positions 0..T-1 under `noisy_clean_mask` (the family's block size), `gates`
    {layer: [b, H]} scaling the heads at every position of both copies. No logit shift (these families have none).
    """
    t = seq.shape[1]
    ids = torch.cat([noisy, seq], dim=1)
    positions = torch.arange(t, device=ids.device).repeat(2)[None].expand(ids.shape[0], -1)
    backbone = spec.backbone
    with gated(spec, gates), autocast_for(spec):
        h = backbone.embed(ids)
        rope = backbone.rotary_emb(h, positions)
        mask = noisy_clean_mask(t, spec.block_size, h.dtype, h.device)
        for layer in backbone.layers:
            h = layer(h, is_causal=False, attention_mask=mask, position_embeddings=rope)
        return backbone.logits(h[:, lo:t])
