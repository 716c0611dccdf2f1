"""The demo model's settings and training objective: examples encoded into padded batches, answer tokens
masked at a drawn rate, the weighted masked-diffusion loss (docs/demo-model.md says why each choice)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase, Qwen2ForCausalLM

from headattr.demo import tasks as demo_tasks

T_MIN = 1e-3


EVAL_SEED = 777  # held-out evaluation examples (a different stream from training's and the dataset's)


EVAL_MASK_RATE = 0.5


BUCKET_POOL = 16  # training batches are formed from this many batches' worth of examples sorted by length


@dataclass
class TrainConfig:
    """Architecture and optimisation settings; the defaults produce the shipped model."""

    seed: int = 0
    steps: int = 12000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    hidden_size: int = 64  # narrow: at 128 a few heads carry everything and the rest are interchangeable
    num_layers: int = 6
    num_heads: int = 8
    num_kv_heads: int = 4
    head_dim: int | None = None  # None: hidden_size // num_heads (as in Dream); smaller heads share more work
    intermediate_size: int = 256
    rope_theta: float = 100.0  # sequences are < 40 tokens: a small base spreads RoPE's frequencies over them
    init_std: float = 0.02
    max_positions: int = 256
    log_every: int = 250
    eval_every: int = 1000  # log held-out accuracy every so many steps (0: never); training is unaffected
    threads: int = 1  # one: on a shared CPU two threads spin-wait and run ~10x slower; results are the same
    # > 0: a fraction `eos_fraction` of the answers is followed by EOS up to this many tokens, trained like
    # answer tokens (as Dream's and LLaDA's SFT pad with EOS), so that generation of that many tokens ends the
    # answer with EOS; the rest have none, as attribution's samples; 0: no EOS (the model before issue 12)
    eos_window: int = 12
    eos_fraction: float = 0.25


@dataclass
class Batch:
    """Token ids `[B, T]` padded at the end, where the answers are, and which positions are real."""

    ids: torch.Tensor
    answer: torch.Tensor  # bool [B, T]
    real: torch.Tensor  # bool [B, T]
    eos: torch.Tensor  # bool [B, T]: the EOS padding after an answer (a subset of `answer`)

    def attention_mask(self) -> torch.Tensor:
        """Float `[B, 1, T, T]` mask: 0 where the key is a real token, a large negative at pad keys."""
        blocked = ~self.real[:, None, None, :]
        mask = torch.zeros(blocked.shape[0], 1, self.ids.shape[1], self.ids.shape[1])
        return mask.masked_fill(blocked, torch.finfo(torch.float32).min)


def encode(
    example: demo_tasks.Example, tokenizer: PreTrainedTokenizerBase, eos_window: int = 0
) -> tuple[list[int], int]:
    """`[bos] + prompt + answer` ids (the answer EOS-padded to `eos_window` tokens) and the answer's start."""
    prompt = tokenizer(example["prompt"], add_special_tokens=False)["input_ids"]
    answer = tokenizer(example["answer"], add_special_tokens=False)["input_ids"]
    answer = answer + [tokenizer.eos_token_id] * max(0, eos_window - len(answer))
    return [tokenizer.bos_token_id, *prompt, *answer], 1 + len(prompt)


def make_batch(
    examples: Sequence[demo_tasks.Example],
    tokenizer: PreTrainedTokenizerBase,
    eos_window: int | Sequence[int] = 0,
) -> Batch:
    """Encode and pad examples at the end with the pad token; `eos_window` is one for all or one per example."""
    windows = [eos_window] * len(examples) if isinstance(eos_window, int) else list(eos_window)
    encoded = [encode(example, tokenizer, window) for example, window in zip(examples, windows, strict=True)]
    length = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), length), tokenizer.pad_token_id, dtype=torch.long)
    answer = torch.zeros(len(encoded), length, dtype=torch.bool)
    real = torch.zeros(len(encoded), length, dtype=torch.bool)
    for row, (tokens, start) in enumerate(encoded):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        answer[row, start : len(tokens)] = True
        real[row, : len(tokens)] = True
    # the answers are characters, never EOS: every EOS inside an answer span is padding
    return Batch(ids, answer, real, answer & (ids == tokenizer.eos_token_id))


def draw_masks(answer: torch.Tensor, rate: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mask each answer token with its row's `rate`; a row left with none masked gets one random one."""
    masked = (torch.rand(answer.shape, generator=generator) < rate[:, None]) & answer
    forced_scores = torch.rand(answer.shape, generator=generator).masked_fill(~answer, -1.0)
    forced = torch.zeros_like(answer).scatter_(1, forced_scores.argmax(dim=1, keepdim=True), True)
    empty = ~masked.any(dim=1, keepdim=True)
    return masked | (forced & empty)


def shifted_logits(
    model: Qwen2ForCausalLM, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits aligned with the tokens they predict: entry j is the model's output at j-1 (Dream's shift)."""
    logits = model(input_ids=ids, attention_mask=attention_mask).logits
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def diffusion_loss(
    model: Qwen2ForCausalLM, batch: Batch, mask_token_id: int, generator: torch.Generator
) -> torch.Tensor:
    """Masked-diffusion loss on the answers of a batch (see the module docstring)."""
    rate = torch.rand(batch.ids.shape[0], generator=generator).clamp(T_MIN, 1.0)
    masked = draw_masks(batch.answer, rate, generator)
    inputs = batch.ids.masked_fill(masked, mask_token_id)
    logits = shifted_logits(model, inputs, batch.attention_mask())
    token_loss = F.cross_entropy(logits.transpose(1, 2), batch.ids, reduction="none")  # [B, T]
    return weighted_loss(token_loss, masked, rate, batch).mean()


def weighted_loss(token_loss: torch.Tensor, masked: torch.Tensor, rate: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Per example [B]: masked tokens' losses [B, T] weighted 1 / t, divided by the real answer's length.

    EOS padding adds its own terms but is not counted in the divisor (see the module docstring).
    """
    answer_len = (batch.answer & ~batch.eos).sum(dim=1).float()
    weight = 1.0 / torch.maximum(rate, 1.0 / answer_len)
    return (token_loss * masked).sum(dim=1) * weight / answer_len


def batches(
    seed: int, batch_size: int, pool: int = BUCKET_POOL, eos_window: int = 0, eos_fraction: float = 0.0
) -> Iterator[list[tuple[demo_tasks.Example, int]]]:
    """Endless training batches of (example, EOS window) from the training split, of similar lengths.

    Each example is EOS-padded to `eos_window` with probability `eos_fraction` (window 0 otherwise: no EOS).
    `pool` batches' worth of examples are drawn, sorted by encoded length (stably), cut into batches, and the
    batches are yielded in a seeded random order; tasks of similar length still share batches.
    """
    examples = demo_tasks.stream(seed, heldout=False, weights=demo_tasks.TRAIN_WEIGHTS)
    order_rng = random.Random(seed + 2)
    eos_rng = random.Random(seed + 3)

    def length(item: tuple[demo_tasks.Example, int]) -> int:
        example, window = item
        return len(example["prompt"]) + max(len(example["answer"]), window)

    while True:
        drawn = [next(examples) for _ in range(pool * batch_size)]
        if eos_window > 0 and eos_fraction > 0:
            windows = [eos_window if eos_rng.random() < eos_fraction else 0 for _ in drawn]
        else:
            windows = [0] * len(drawn)
        items = sorted(zip(drawn, windows, strict=True), key=length)
        chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        order_rng.shuffle(chunks)
        yield from chunks
