"""How a native model's attention layers run block-sparse during a generation: a transformers attention function.

`sparse_attention` is registered with transformers' `AttentionInterface` under `ATTENTION_NAME`; within
`sparse_generation(spec, state)` the model's config names it as its attention implementation, so every
layer's attention module (Qwen2 for Dream, Llama for LLaDA) calls it with its post-RoPE q [B, H, T, d], k and
v [B, H_kv, T, d] and the pass's mask. It reads the `SparseState` of the current context (a context variable,
so nothing is threaded through the sampler's calls):

    state = SparseState(settings, steps=steps, generation_length=gen_len)
    with sparse_generation(spec, state):
        for i in range(steps):
            denoising_step(i, steps)       # LLaDA: denoising_step(i, steps_per_block, block, blocks)
            logits = forward(...)          # dense, building masks at end_time, then sparse

Dense passes run transformers' own SDPA function, so their numbers are those of an ordinary pass. Key padding
is read from the pass's mask ([B, 1, 1, T] or [B, 1, T, T], boolean or additive).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch

from headattr.engine.sparse_attention import flex_attention_blocks, flex_block_mask, masked_sdpa
from headattr.engine.sparse_mask import block_masks
from headattr.engine.sparse_schedule import MaskStore, SparseAttention, phase
from headattr.errors import HeadattrError
from headattr.models import ModelSpec
from headattr.models.backbone import LayerStack

ATTENTION_NAME = "headattr_sparse"
_STATE: ContextVar[SparseState | None] = ContextVar("headattr_sparse_state", default=None)


@dataclass
class SparseState:
    """One generation's sparse attention: its settings, the step counter the sampler advances, and the masks.
    `compiled`: whether the flex kernel runs through torch.compile (False: eager, for short tests)."""

    settings: SparseAttention
    steps: int
    generation_length: int
    step: int = 0
    store: MaskStore = field(default_factory=MaskStore)
    compiled: bool = True

    def phase(self) -> str:
        return phase(self.step, self.steps, self.settings.skip)

    block: int | None = None
    on_reset: Callable[[MaskStore], None] | None = None  # sees the masks a restart is about to forget

    def restart(self, steps: int) -> None:
        """A new schedule of `steps` steps from step 0 with no stored masks (a new LLaDA generation block)."""
        if self.on_reset is not None:
            self.on_reset(self.store)
        self.steps, self.step = steps, 0
        self.store.reset()

    def advance(self, step: int, steps: int, block: int = 0, blocks: int = 1) -> None:
        """The next forward pass is denoising step `step` of `steps` within generation block `block` of
        `blocks` (a sampler without blocks: 0 of 1). By default a new block restarts the schedule with no masks;
        with compat "origin" the counter runs over the whole generation (step block * steps + step of
        steps * blocks) and the masks built once serve every later block."""
        if not self.settings.rebuild_per_block:
            self.steps, self.step = steps * blocks, block * steps + step
            return
        if self.block is not None and block != self.block:
            self.restart(steps)
        self.block, self.steps, self.step = block, steps, step


def denoising_step(step: int, steps: int, block: int = 0, blocks: int = 1) -> None:
    """What a sampler calls before each forward pass (`SparseState.advance` on the current context's state);
    nothing outside `sparse_generation`."""
    state = _STATE.get()
    if state is not None:
        state.advance(step, steps, block, blocks)


def key_validity(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, T] True for real keys from a pass's mask (None: no padding)."""
    if attention_mask is None:
        return None
    allowed = attention_mask[:, 0] if attention_mask.dtype == torch.bool else attention_mask[:, 0] == 0
    return allowed.any(dim=-2)


def _dense(module: torch.nn.Module, query, key, value, attention_mask, **kwargs: Any) -> torch.Tensor:
    """transformers' SDPA attention ([B, T, H, d])."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)[0]


def _restricted(state: SparseState, layer: int, query, key, value, valid, scale: float) -> torch.Tensor:
    """Attention under layer `layer`'s stored mask ([B, T, H, d])."""
    stored = state.store.get(layer)
    settings = state.settings
    if stored.blocks.shape[0] != query.shape[0]:
        raise HeadattrError(f"layer {layer}'s mask was built for {stored.blocks.shape[0]} rows, not {query.shape[0]}")
    if settings.kernel == "sdpa":
        out = masked_sdpa(query, key, value, stored.blocks, settings.block_size, valid, scale)
    else:
        if stored.prepared is None:
            stored.prepared = flex_block_mask(stored.blocks, settings.block_size, query.shape[2], valid)
        out = flex_attention_blocks(
            query, key, value, stored.prepared, settings.block_size, valid, scale, compiled=state.compiled
        )
    return out.transpose(1, 2).contiguous()


def sparse_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The attention function (transformers' interface): dense, dense and building this layer's mask, or
    restricted to the stored mask, by the current state's phase."""
    state = _STATE.get()
    current = "dense" if state is None else state.phase()
    if current == "sparse":
        valid = key_validity(attention_mask)
        return _restricted(state, module.layer_idx, query, key, value, valid, kwargs.get("scaling")), None
    if current == "build":
        keep = state.settings.layer_keep(module.layer_idx, query.shape[1]).to(query.device)
        valid = key_validity(attention_mask)
        blocks = block_masks(query, key, keep, state.settings.block_size, state.generation_length, valid)
        state.store.put(module.layer_idx, blocks, valid)
    return _dense(module, query, key, value, attention_mask, **kwargs), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, sparse_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)  # the whole-model forward's masks: SDPA's form


@contextmanager
def sparse_generation(spec: ModelSpec, state: SparseState) -> Iterator[SparseState]:
    """Within the block, `spec`'s attention layers follow `state` (module docstring); outside it they are as
    before. Needs a native family whose layer stack builds SDPA (boolean) masks."""
    if not isinstance(spec.backbone, LayerStack) or spec.backbone.attn_implementation != "sdpa":
        raise HeadattrError(f"sparse attention needs a native family loaded with sdpa attention; {spec.name} is not")
    _register()
    config = spec.model.config
    before = config._attn_implementation
    token = _STATE.set(state)
    config._attn_implementation = ATTENTION_NAME
    try:
        yield state
    finally:
        config._attn_implementation = before
        _STATE.reset(token)
