"""What a family's sampler is: the `Sampler` record `headattr.generate` dispatches through, and its registry.

A model family names its sampler by key (`models.registry.Family.sampler`); a sampler module
(`generation.dream`, `generation.llada`) registers a `Sampler` under that key, and `generation.sampling` imports
the sampler modules (its one registration line). A sampler never drives the model itself: it receives a
`Predict` function (the gated forward pass of `generation.sampling`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from headattr.errors import HeadattrError

# (x [B, T], valid [B, T], gates {layer: [B, H]}, lo, shift[, attention]) -> logits [B, T - lo, V] predicting
# positions lo..T-1; `attention` (a `generation.blockattn.BlockAttention`, block-diffusion samplers only) makes the
# pass block-causal and may continue a KV cache
Predict = Callable[..., torch.Tensor]
# (spec, predict, ids [B, P], valid [B, P], gates {layer: [B, H]}, seed, settings) -> ids [B, P + N]
SampleFn = Callable[..., torch.Tensor]
# (seq [b, T], n_prompt, mask_id, generator) -> (noisy ids [b, T], masking probability [b, T])
MaskDraw = Callable[[torch.Tensor, int, int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
# (spec, noisy ids [b, T], clean ids [b, T], gates {layer: [b, H]}, lo) -> logits [b, T - lo, V] predicting the
# noisy ids' positions lo..T-1
LikelihoodLogits = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Sampler:
    """A family's official sampler and what its evaluations fix.

    `defaults`: every generation setting and its default (the names a caller may pass); `check(settings)`
    raises a one-line `HeadattrError` for a bad resolved setting; `length_setting`: the setting that is N, the
    number of generated tokens; `with_length(settings, n)`: the settings of an lm-eval request whose length
    the harness gives; `sample`: the sampler itself (see `SampleFn`). The log-likelihood estimate (the family's
    own evaluation's, or for block-diffusion families the Monte-Carlo ELBO of their training loss):
    `likelihood_masks` draws a batch of masked copies (see `MaskDraw`), `likelihood_eos` says whether an EOS is
    appended to the continuation, and `likelihood_logits` (see `LikelihoodLogits`) scores the masked copies: None
    for the model's plain pass over them (Dream, LLaDA), the [x_t | x_0] pass for block-diffusion families
    (`generation.blocklikelihood`). `settings`: the same defaults and checks as a settings class
    (`DreamSettings`, `LLaDASettings`), which callers may pass to `generate`.
    `sparse`: the sampler calls `engine.sparse_hook.denoising_step(step, steps, block, blocks)` before every
    forward pass, so `generate(sparse=...)` can run it with block-sparse attention.
    """

    name: str
    defaults: dict[str, Any]
    length_setting: str
    check: Callable[[dict[str, Any]], None]
    with_length: Callable[[dict[str, Any], int], dict[str, Any]]
    sample: SampleFn
    likelihood_masks: MaskDraw
    likelihood_eos: bool = False
    settings: type | None = None  # the family's settings class (`Settings`): defaults and checks as a dataclass
    sparse: bool = False  # whether `sample` reports its steps to sparse attention (`sparse_hook.denoising_step`)
    likelihood_logits: LikelihoodLogits | None = None  # None: the plain pass (`generation.lmeval`)


SAMPLERS: dict[str, Sampler] = {}


def register(sampler: Sampler) -> Sampler:
    """Make `sampler` the one families name by `sampler.name`."""
    SAMPLERS[sampler.name] = sampler
    return sampler


def positive_int(settings: dict[str, Any], name: str, minimum: int = 1) -> None:
    """Refuse `settings[name]` unless it is an integer (not a bool) >= `minimum`."""
    value = settings[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise HeadattrError(f"generation setting {name} must be an integer >= {minimum}, got {value!r}")
