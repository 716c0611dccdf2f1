"""How a forward pass runs: from token ids through the layers to logits, starting at any layer it can.

Two backbones share one interface, so no caller asks which kind it has:

- `LayerStack` (Dream, LLaDA, any native family): transformers' embedding, decoder layers, final norm and LM
  head, called directly. A pass may start at any layer from that layer's input, and the LM head runs only on
  the hidden states the caller selects.
- `WholeModel` (generic checkpoints): the model's own forward. A pass always starts at layer 0 (its "hidden
  states" are the token ids), and `run` returns every position's logits.

    h = backbone.embed(ids)                    # [B, T, d] (WholeModel: the ids)
    ctx = backbone.context(h)                  # rotary embeddings, attention mask
    h = backbone.run(h, start, stop, ctx)      # layers start..stop-1 (WholeModel: 0..L, giving logits)
    logits = backbone.logits(h[rows, pos])     # [K, V]

`LayerStack` also splits a layer at its head gates, so that a caller varying only layer l's gates computes
layer l's attention once (`splits_attention`):

    heads = backbone.head_input(h, l, ctx)     # [B, T, H * head_dim]: the input of layer l's o_proj
    h = backbone.run_from_heads(h, heads, l, stop, ctx)   # o_proj (gated) onward, then layers l+1..stop-1

and runs rows that join one pass at different layers (each with its own gated layer), so that the paths of
every layer share a pass:

    h = backbone.run_joined([(0, h0, heads0), (3, h3, heads3)], stop, ctx)   # rows of h0, then of h3
    h = backbone.run_joined(joins, L, ctx, keep=slice(a, b))   # [B, b - a, d]: the last layer only at a..b-1
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from headattr.errors import HeadattrError


@dataclass
class LayerContext:
    """What every layer of one batch needs besides its input: rotary embeddings and the attention mask.

    `attention_mask` is None (every token attends to every token: bidirectional, unpadded) or a mask in the
    form the attention kernel takes, built by `LayerStack.context` from a [B, T] key-padding mask, or a float
    additive [1, 1, T, T] mask shared by every row (block diffusion: `models.block_masks`).
    """

    position_embeddings: Any = None
    attention_mask: torch.Tensor | None = None

    def rows(self, index: torch.Tensor | slice) -> LayerContext:
        """The context of a subset of the batch's rows (rotary embeddings and a mask with batch axis 1 are shared
        by every row)."""
        rope = self.position_embeddings
        if rope is not None and rope[0].shape[0] > 1:
            rope = tuple(r[index] for r in rope)
        mask = self.attention_mask
        if mask is not None and mask.shape[0] > 1:
            mask = mask[index]
        return LayerContext(rope, mask)


_ATTRIBUTING = [0]  # depth of `attributing()`: a plain global, so the autograd engine's threads see it too


@contextlib.contextmanager
def attributing() -> Iterator[None]:
    """Inside, the attention blocks `float32_attention` prepared compute in float32 under bf16 autocast; outside
    (generation, lm-eval, pruning's evaluations) they run the family's own bf16 arithmetic. Attribution needs
    the float32 block for an unbiased gradient; the samplers should compute what the official code computes."""
    _ATTRIBUTING[0] += 1
    try:
        yield
    finally:
        _ATTRIBUTING[0] -= 1


def float32_attention(layers: nn.ModuleList) -> None:
    """Make every layer's attention block (q/k/v projections, attention kernel and o_proj, where the head gates
    act) compute in float32 from the bf16 weights whenever it runs under bf16 autocast while attributing
    (`attributing`); the MLP and the LM head stay under autocast, and outside autocast nothing changes.

    The gradient through bf16 attention is biased, not merely noisy: the integral of Gate-IG's bf16 integrand
    misses J(1) - J(b) however many nodes it gets, where a float32 attention block does not (docs/gate-ig.md,
    "Precision"). Installed on the modules, not around a pass, so that a layer recomputed during the backward
    pass (gradient checkpointing) runs the same arithmetic as its forward pass, and a layer run whole and one
    entered at its o_proj (`_layer_tail`) the same o_proj.
    """
    for layer in layers:
        attn = layer.self_attn
        if getattr(attn, "float32_under_autocast", False):  # already made so: wrap once
            continue
        attn.float32_under_autocast = True
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            projection = getattr(attn, name)
            projection.forward = _float32_linear(projection)
        attn.forward = _without_autocast(attn.forward)


def _bf16_autocast(device: str) -> bool:
    """Whether a float32 attention block should switch autocast off here: bf16 autocast, while attributing."""
    attributing_now = _ATTRIBUTING[0] > 0
    return attributing_now and torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16


def _float32_linear(module: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    """`module.forward`, except that under bf16 autocast, or inside the attention block that switched it off
    (a float32 input for bf16 weights), it computes in float32 from its bf16 weights."""
    forward = module.forward

    def run(x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        inside = _ATTRIBUTING[0] > 0 and x.dtype == torch.float32 and module.weight.dtype == torch.bfloat16
        if not (_bf16_autocast(device) or inside):
            return forward(x)
        bias = None if module.bias is None else module.bias.float()
        with torch.autocast(device, enabled=False):
            return nn.functional.linear(x.float(), module.weight.float(), bias)

    return run


def _without_autocast(forward: Callable[..., Any]) -> Callable[..., Any]:
    """An attention module's `forward(hidden_states, ...)` with bf16 autocast switched off (and a float32
    input) while it runs, when it was on: the float32 attention block (`float32_attention`)."""

    def run(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        device = hidden_states.device.type
        if not _bf16_autocast(device):
            return forward(hidden_states, *args, **kwargs)
        with torch.autocast(device, enabled=False):
            return forward(hidden_states.float(), *args, **kwargs)

    return run


class _Captured(Exception):
    """Raised by `LayerStack.head_input`'s hook once o_proj's input is captured: the rest is not needed."""


@dataclass
class LayerStack:
    """The pieces of a native decoder, so that a pass can start at any layer (see the module docstring)."""

    embed_tokens: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    lm_head: nn.Module
    rotary_emb: nn.Module
    attn_implementation: str = "sdpa"
    grad_checkpoint: bool = False

    resumable = True
    splits_attention = True

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T] ids -> [B, T, d] embeddings."""
        return self.embed_tokens(input_ids)

    def context(
        self,
        h: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> LayerContext:
        """Rotary embeddings for positions 0..T-1 (or `position_ids` [B, T]) and, with `key_mask` [B, T]
        (True = a real token), the mask that keeps every query from attending to padding."""
        if position_ids is None:
            position_ids = torch.arange(h.shape[1], device=h.device)[None]
        rope = self.rotary_emb(h, position_ids)
        mask = None
        if key_mask is not None:
            keep = key_mask.to(device=h.device, dtype=torch.bool)[:, None, None, :]  # [B, 1, 1, T]
            if self.attn_implementation == "eager":  # eager adds the mask to the scores
                mask = torch.zeros(keep.shape, dtype=h.dtype, device=h.device).masked_fill(
                    ~keep, torch.finfo(h.dtype).min
                )
            else:  # sdpa takes a boolean "may attend" mask
                mask = keep
        return LayerContext(rope, mask)

    def run(self, h: torch.Tensor, start: int, stop: int, ctx: LayerContext) -> torch.Tensor:
        """Apply layers `start..stop-1` to [B, T, d] hidden states; attention as `ctx.attention_mask` allows
        (None: bidirectional)."""
        kwargs = {"attention_mask": ctx.attention_mask, "position_embeddings": ctx.position_embeddings}
        for layer in self.layers[start:stop]:
            if self.grad_checkpoint and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(layer, h, use_reentrant=False, is_causal=False, **kwargs)
            else:
                h = layer(h, is_causal=False, **kwargs)
        return h

    def head_input(self, h: torch.Tensor, layer: int, ctx: LayerContext) -> torch.Tensor:
        """The input of layer `layer`'s o_proj (the concatenated head outputs) [B, T, H * head_dim] from the
        layer's input `h` [B, T, d].

        The attention module's own forward runs (its projections, rotary embeddings and attention kernel), so
        the numbers are exactly those of a whole-layer pass; o_proj's input is captured by a hook that then
        stops the forward, so neither o_proj nor any gate hook on it runs (what this returns is ungated, and
        the caller may be inside `gates.gated` for other rows).
        """
        layer_module = self.layers[layer]
        captured: list[torch.Tensor] = []

        def capture(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            captured.append(args[0])
            raise _Captured

        handle = layer_module.self_attn.o_proj.register_forward_pre_hook(capture, prepend=True)
        try:
            layer_module.self_attn(
                hidden_states=layer_module.input_layernorm(h),
                attention_mask=ctx.attention_mask,
                position_embeddings=ctx.position_embeddings,
                is_causal=False,
            )
        except _Captured:
            pass
        finally:
            handle.remove()
        return captured[0]

    def run_from_heads(
        self, h: torch.Tensor, heads: torch.Tensor, layer: int, stop: int, ctx: LayerContext
    ) -> torch.Tensor:
        """Layer `layer` from its input `h` [B, T, d] and its head outputs `heads` [B, T, H * head_dim]
        (`head_input`): o_proj (where the gate hooks act), the residual, the MLP block; then layers
        `layer + 1..stop-1`. The same operations as the decoder layer's forward, in the same order."""
        return self.run_joined([(layer, h, heads)], stop, ctx)

    def run_joined(
        self,
        joins: list[tuple[int, torch.Tensor, torch.Tensor | None]],
        stop: int,
        ctx: LayerContext,
        keep: slice | None = None,
    ) -> torch.Tensor:
        """One pass whose rows join at different layers: `joins[i] = (layer, h, heads)` adds the rows `h`
        [B_i, T, d] (their input of `layer`) at `layer`, with that layer's head outputs `heads`
        [B_i, T, H * head_dim] (`head_input`) or None (the whole layer runs on them). Layers ascend strictly;
        `ctx` is the context of all rows in join order. Returns [sum B_i, T, d] after layer `stop - 1`, or
        with `keep` (a slice of P positions) only those positions' hidden states [sum B_i, P, d].

        Rows already in the pass run each layer whole (their attention computed here); rows joining with
        `heads` enter at the layer's o_proj. One pass instead of one per join: fewer, larger operations, and
        each row's numbers are those of a pass of its own (rows never interact).

        With `keep`, layer `stop - 1` still attends over every position (its keys and values need them) but
        runs o_proj and the MLP only at `keep`: no later layer reads the other positions. When the loss is
        taken at the masked answer tokens, that is most of the last layer's work, forward and backward.
        """
        h: torch.Tensor | None = None
        for i, (layer, h_join, heads) in enumerate(joins):
            if i and layer <= joins[i - 1][0]:
                raise ValueError(f"joins must be at ascending layers, got {[j[0] for j in joins]}")
            inside = 0 if h is None else h.shape[0]
            rows = slice(0, inside + h_join.shape[0])
            nxt = joins[i + 1][0] if i + 1 < len(joins) else stop
            ends = keep if nxt == stop else None  # the pass's last layer is in this stretch
            if heads is None:
                h = h_join if h is None else torch.cat([h, h_join])
                h = self._run_keeping(h, layer, nxt, ctx.rows(rows), ends)
            else:
                at_join = ends if layer == stop - 1 else None
                h = self._checkpointed(self._join_layer, h, h_join, heads, layer, ctx.rows(slice(0, inside)), at_join)
                h = self._run_keeping(h, layer + 1, nxt, ctx.rows(rows), None if at_join is not None else ends)
        assert h is not None, "run_joined needs at least one join"
        return h

    def _run_keeping(
        self, h: torch.Tensor, start: int, stop: int, ctx: LayerContext, keep: slice | None
    ) -> torch.Tensor:
        """`run`, except that with `keep` the last layer's output is computed only at those positions."""
        if keep is None or start >= stop:
            return self.run(h, start, stop, ctx)
        h = self.run(h, start, stop - 1, ctx)
        return self._checkpointed(self._layer_keeping, h, stop - 1, ctx, keep)

    def _layer_keeping(self, h: torch.Tensor, layer: int, ctx: LayerContext, keep: slice) -> torch.Tensor:
        """Decoder layer `layer` on [B, T, d], its output only at the P positions `keep`: [B, P, d]."""
        return self._layer_tail(h[:, keep], self.head_input(h, layer, ctx)[:, keep], layer)

    def _checkpointed(self, fn: Any, *args: Any) -> torch.Tensor:
        """`fn(*args)`, recomputed during backward when gradient checkpointing is on."""
        if self.grad_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _join_layer(
        self,
        h: torch.Tensor | None,
        h_join: torch.Tensor,
        heads_join: torch.Tensor,
        layer: int,
        ctx_inside: LayerContext,
        keep: slice | None = None,
    ) -> torch.Tensor:
        """Layer `layer` on the rows inside the pass (`h`, attention computed here) followed by rows that join
        with their head outputs (`h_join`, `heads_join`): one o_proj and MLP for all of them (only at
        positions `keep` when given)."""
        residual, heads = h_join, heads_join
        if h is not None:
            residual = torch.cat([h, h_join])
            heads = torch.cat([self.head_input(h, layer, ctx_inside), heads_join])
        if keep is not None:
            residual, heads = residual[:, keep], heads[:, keep]
        return self._layer_tail(residual, heads, layer)

    def _layer_tail(self, residual: torch.Tensor, heads: torch.Tensor, layer: int) -> torch.Tensor:
        """Decoder layer `layer` after its attention kernel (transformers' Qwen2/Llama decoder layer order)."""
        m = self.layers[layer]
        h = residual + m.self_attn.o_proj(heads)
        return h + m.mlp(m.post_attention_layernorm(h))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head on selected hidden states [..., d] -> [..., V]."""
        return self.lm_head(self.norm(h))

    def entry_layer(self, layer: int) -> int:
        """The layer a pass that changes `layer` starts from: that layer itself."""
        return layer

    def set_grad_checkpoint(self, on: bool) -> None:
        self.grad_checkpoint = on


@dataclass
class WholeModel:
    """A model run only as a whole (generic checkpoints): layer 0 in, every position's logits out."""

    model: nn.Module

    resumable = False
    splits_attention = False

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids

    def context(
        self,
        h: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> LayerContext:
        if position_ids is not None:
            raise HeadattrError("this model runs only as a whole; it cannot take explicit position ids")
        return LayerContext(attention_mask=None if key_mask is None else key_mask.long())

    def run(self, h: torch.Tensor, start: int, stop: int, ctx: LayerContext) -> torch.Tensor:
        """The whole forward pass of [B, T] ids: [B, T, V] logits (no shift applied)."""
        if start != 0:
            raise ValueError("a WholeModel pass starts at layer 0; ask entry_layer() where to start")
        return self.model(input_ids=h, attention_mask=ctx.attention_mask).logits

    def run_joined(
        self,
        joins: list[tuple[int, torch.Tensor, torch.Tensor | None]],
        stop: int,
        ctx: LayerContext,
        keep: slice | None = None,
    ) -> torch.Tensor:
        """`LayerStack.run_joined` for a model run as a whole: only one join, at layer 0, without head outputs;
        every position is computed, and `keep` selects from the logits."""
        if len(joins) != 1 or joins[0][0] != 0 or joins[0][2] is not None:
            raise ValueError("a WholeModel pass starts at layer 0 with every row; ask entry_layer() where to start")
        logits = self.run(joins[0][1], 0, stop, ctx)
        return logits if keep is None else logits[:, keep]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """`run` already produced logits: selected rows pass through."""
        return h

    def entry_layer(self, layer: int) -> int:
        return 0

    def set_grad_checkpoint(self, on: bool) -> None:
        if on:  # transformers checkpoints only in training mode, which would also switch dropout on
            raise HeadattrError(
                "--grad-checkpoint needs a native family (Dream, LLaDA); this model runs as a whole, without it"
            )
