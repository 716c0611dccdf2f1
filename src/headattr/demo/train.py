"""Train the demo masked diffusion LM from scratch and write it as a Dream-format checkpoint.

    python -m headattr.demo.train [--out DIR] [--data FILE | --no-data] [--SETTING VALUE ...]

Every field of `TrainConfig` is a SETTING (`--seed`, `--steps`, `--head-dim`, ...; `--help` lists them).

Why: headattr needs a real, trained diffusion LM that runs on a CPU in seconds, ships inside the package
and has heads that matter, so that attribution and pruning can be demonstrated and tested without a
download. The model is transformers' Qwen2 run with bidirectional attention, exactly Dream's architecture,
and it keeps Dream's conventions: shifted logits (the token at position j is predicted from position j-1),
a `<|mask|>` token, `config.json` with `"model_type": "Dream"` and Qwen2 weight names.

Objective: masked diffusion on answer tokens. A sequence is `[bos] + prompt + answer` (characters), and a
fraction `eos_fraction` of the training examples have their answer followed by EOS up to `eos_window` tokens
(as Dream's and LLaDA's SFT data pad answers with EOS); the EOS tokens are masked and predicted like answer
tokens. Each example draws a mask rate t ~ U(0, 1) (clipped to [T_MIN, 1]), masks each answer or EOS token
with probability t (at least one), and the loss is the cross-entropy of the masked tokens weighted by 1 / t,
divided by the length of the *real* answer (EOS padding not counted): the usual masked-diffusion bound.
Since at least one token is always masked, t is floored at 1 / (real answer length) in the weight, so that
a rare near-zero t does not dominate a batch; the floor ignores the EOS padding too, so that an example's
weight is bounded as without EOS (at 1 / (answer + EOS) a two-digit answer padded to 12 could weigh 6 times
as much; that made no measured difference, but it keeps an example without EOS on exactly the former loss).

Why both kinds of example, and why that divisor: generation (Dream's sampler, `eos_window` new tokens, cut
at EOS) needs a model that fills the window with the answer and then EOS, while attribution, pruning's
loss and the held-out accuracy score answers *without* EOS (`demo.jsonl` as it is), so the model must stay
in distribution on both. A quarter of EOS-padded examples suffices for generation (exact match 1.0 on every
task) and leaves retrieval, the task learned last, enough of the budget: with half of them padded it was not
learned in 12000 steps (held-out masked-token accuracy 0.52 against 1.0 with a quarter; seed 0, either
floor). Dividing by the padded length instead (Dream's SFT convention) gives the real tokens of a two-digit
answer padded to 12 a sixth of their weight, and an EOS-only model trained so (each answer padded to 12)
solved retrieval 0.200 and addition 0.400 by generation against 0.865 and 1.000 for the answer-only model;
divided by the real length, an example without EOS has exactly the answer-only loss and the EOS tokens add
their own terms on top (EOS is easy: its loss soon falls to ~0) without diluting the rest.

Batches mix tasks and are padded at the end; a float attention mask hides pad keys from every query, so
real positions compute exactly what they would unpadded (RoPE positions are unchanged by end padding).
Everything is seeded (`--seed`): the same command on the same software reproduces the same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from headattr.demo import DATA_FILE, MODEL_DIR
from headattr.demo import tasks as demo_tasks
from headattr.demo.tokenizer import build_tokenizer
from headattr.generation.decode import unmask_decode
from headattr.runs.rundir import atomic_write_bytes

T_MIN = 1e-3
EVAL_SEED = 777  # held-out evaluation examples (a different stream from training's and the dataset's)
EVAL_MASK_RATE = 0.5
WEIGHTS_FILE = "model.safetensors"
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


# ---------------------------------------------------------------- model


def model_config(cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> Qwen2Config:
    """The Qwen2 configuration of the demo model (bidirectional, untied head, character vocabulary)."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim or cfg.hidden_size // cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        mask_token_id=tokenizer.mask_token_id,
        use_cache=False,
        initializer_range=cfg.init_std,
    )
    return config


def make_bidirectional(model: Qwen2ForCausalLM) -> Qwen2ForCausalLM:
    """Turn off causal masking everywhere (the config flag drives mask creation, the module flag sdpa)."""
    model.config.is_causal = False
    for module in model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False
    return model


def build_model(config: Qwen2Config, attn_implementation: str = "sdpa") -> Qwen2ForCausalLM:
    """A freshly initialised bidirectional Qwen2 (seed torch before calling for reproducible weights)."""
    config.is_causal = False
    config._attn_implementation = attn_implementation
    return make_bidirectional(Qwen2ForCausalLM(config))


def dream_config_dict(config: Qwen2Config, dtype: str = "float32") -> dict:
    """config.json in Dream's format: Qwen2 field names, `model_type` Dream, a mask token id."""
    return {
        "architectures": ["DreamModel"],
        "model_type": "Dream",
        "attention_dropout": 0.0,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "mask_token_id": config.mask_token_id,
        "hidden_act": "silu",
        "hidden_size": config.hidden_size,
        "initializer_range": config.initializer_range,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "max_window_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_hidden_layers": config.num_hidden_layers,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_parameters["rope_theta"],
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "use_cache": False,
        "use_sliding_window": False,
        "vocab_size": config.vocab_size,
    }


def save_checkpoint(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    train_config: TrainConfig | None = None,
) -> Path:
    """Write config.json (Dream format), model.safetensors (float32, Qwen2 names) and the tokenizer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().float().contiguous() for name, tensor in model.state_dict().items()}
    # bytes, then an atomic write with the umask's mode (safetensors' own writer makes a 0600 file)
    atomic_write_bytes(out / WEIGHTS_FILE, safetensors_bytes(state, metadata={"format": "pt"}))
    config = dream_config_dict(model.config)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(str(out))
    if train_config is not None:
        (out / "training_args.json").write_text(json.dumps(asdict(train_config), indent=2) + "\n")
    return out


def load_checkpoint(
    model_dir: str | Path = MODEL_DIR, attn_implementation: str = "sdpa"
) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerBase]:
    """Load a demo checkpoint (float32, eval mode, bidirectional) and its tokenizer, offline."""
    root = Path(model_dir)
    fields = json.loads((root / "config.json").read_text())
    for key in ("model_type", "architectures", "auto_map", "torch_dtype"):
        fields.pop(key, None)
    config = Qwen2Config(**fields)
    model = build_model(config, attn_implementation)
    weights = load_file(str(root / WEIGHTS_FILE))
    model.load_state_dict({name: tensor.float() for name, tensor in weights.items()}, strict=True)
    # The tokenizer class is named directly: AutoTokenizer would also parse config.json and warn that it
    # does not know model_type "Dream" (harmless, but noise).
    return model.eval(), PreTrainedTokenizerFast.from_pretrained(str(root))


# ---------------------------------------------------------------- batches and the objective


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


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio` of the peak."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


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


def train(
    cfg: TrainConfig, out_dir: str | Path | None = None, log: bool = True
) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerBase]:
    """Train a demo model with `cfg`; write the checkpoint to `out_dir` when given."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tokenizer = build_tokenizer()
    model = build_model(model_config(cfg, tokenizer))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    model.train()
    start, running = time.time(), 0.0
    stream = batches(cfg.seed, cfg.batch_size, eos_window=cfg.eos_window, eos_fraction=cfg.eos_fraction)
    for step, items in zip(range(cfg.steps), stream, strict=False):
        batch = make_batch([example for example, _ in items], tokenizer, [window for _, window in items])
        loss = diffusion_loss(model, batch, tokenizer.mask_token_id, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        running += loss.item()
        if log and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
            count = (step % cfg.log_every) + 1
            print(
                f"step {step + 1:5d}  loss {running / count:.4f}  lr {scheduler.get_last_lr()[0]:.2e}  "
                f"elapsed {time.time() - start:6.1f}s",
                flush=True,
            )
            running = 0.0
        if log and cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            print(f"step {step + 1:5d}  held-out masked_acc@0.5  {progress_report(model, tokenizer)}", flush=True)
            model.train()
    model.eval()
    if out_dir is not None:
        save_checkpoint(model, tokenizer, out_dir, cfg)
    return model, tokenizer


# ---------------------------------------------------------------- evaluation


def _same_length_groups(
    examples: Sequence[demo_tasks.Example], tokenizer: PreTrainedTokenizerBase
) -> list[list[demo_tasks.Example]]:
    """Examples grouped by encoded length, so evaluation batches need no padding at all."""
    groups: dict[int, list[demo_tasks.Example]] = {}
    for example in examples:
        groups.setdefault(len(encode(example, tokenizer)[0]), []).append(example)
    return [groups[length] for length in sorted(groups)]


@torch.no_grad()
def masked_accuracy(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[demo_tasks.Example],
    rate: float = EVAL_MASK_RATE,
    seed: int = 0,
) -> float:
    """Fraction of masked answer tokens predicted exactly (argmax), masking each with probability `rate`."""
    generator = torch.Generator().manual_seed(seed)
    correct = total = 0
    for group in _same_length_groups(examples, tokenizer):
        batch = make_batch(group, tokenizer)
        masked = draw_masks(batch.answer, torch.full((len(group),), rate), generator)
        logits = shifted_logits(model, batch.ids.masked_fill(masked, tokenizer.mask_token_id))
        predicted = logits.argmax(dim=-1)
        correct += int(((predicted == batch.ids) & masked).sum())
        total += int(masked.sum())
    return correct / max(total, 1)


@torch.no_grad()
def exact_match(
    model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerBase, examples: Sequence[demo_tasks.Example]
) -> float:
    """Fraction of answers decoded exactly from fully masked answers by `unmask_decode`, a token a step."""

    def logits_fn(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids).logits

    correct = 0
    for group in _same_length_groups(examples, tokenizer):
        batch = make_batch(group, tokenizer)
        positions = batch.answer[0].nonzero().squeeze(1)
        decoded = unmask_decode(logits_fn, batch.ids, positions, tokenizer.mask_token_id, shift=True)
        correct += int((decoded == batch.ids).all(dim=1).sum())
    return correct / max(len(examples), 1)


def generated_exact_match(model_dir: str | Path, examples: Sequence[demo_tasks.Example], eos_window: int) -> float:
    """Fraction of answers generated exactly by Dream's sampler (`eos_window` tokens and steps, `maskgit_plus`,
    greedy), the completion cut at EOS: what `headattr generate --task exact` and the demo's pruning measure."""
    from headattr.generation.sampling import completion_text, generate
    from headattr.models import load_model

    spec = load_model(model_dir, device="cpu", dtype="float32")
    correct = 0
    for start in range(0, len(examples), 64):
        chunk = examples[start : start + 64]
        prompts = [encode({**example, "answer": ""}, spec.tokenizer)[0] for example in chunk]
        out = generate(spec, prompts, max_new_tokens=eos_window, steps=eos_window, alg="maskgit_plus")
        width = max(len(prompt) for prompt in prompts)
        correct += sum(
            completion_text(spec, row[width:]).strip() == example["answer"]
            for row, example in zip(out, chunk, strict=True)
        )
    return correct / max(len(examples), 1)


def evaluate(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    per_task: int = 200,
    seed: int = EVAL_SEED,
    model_dir: str | Path | None = None,
    eos_window: int = 0,
) -> dict[str, dict[str, float]]:
    """Held-out masked-token accuracy at rate 0.5 and exact-match decoding accuracy, per task; with `model_dir`
    and an `eos_window` > 0 also exact match of answers generated in that window and cut at EOS."""
    results = {}
    for task in demo_tasks.TASKS:
        examples = demo_tasks.heldout_examples(task, per_task, seed)
        results[task] = {
            "masked_acc@0.5": masked_accuracy(model, tokenizer, examples, seed=seed),
            "exact_match": exact_match(model, tokenizer, examples),
        }
        if model_dir is not None and eos_window > 0:
            results[task]["generated"] = generated_exact_match(model_dir, examples, eos_window)
    return results


def progress_report(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerBase, per_task: int = 64) -> str:
    """Held-out masked-token accuracy per task on one line, for the training log (own random streams)."""
    model.eval()
    parts = []
    for task in demo_tasks.TASKS:
        examples = demo_tasks.heldout_examples(task, per_task, EVAL_SEED + 1)
        parts.append(f"{task} {masked_accuracy(model, tokenizer, examples, seed=EVAL_SEED + 1):.3f}")
    return "  ".join(parts)


def check_bidirectional(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerBase) -> float:
    """Largest change of position 0's logits when only the last token changes (0 would mean causal)."""
    ids = torch.tensor([encode(demo_tasks.copy_example(random.Random(0)), tokenizer)[0]])
    changed = ids.clone()
    changed[0, -1] = tokenizer.mask_token_id
    with torch.no_grad():
        return float((model(input_ids=ids).logits[0, 0] - model(input_ids=changed).logits[0, 0]).abs().max())


# ---------------------------------------------------------------- command line

CLI_FIELDS = tuple(field.name for field in fields(TrainConfig))  # every setting, so any variant is one command


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m headattr.demo.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=MODEL_DIR, help="checkpoint directory (default: shipped)")
    parser.add_argument("--data", type=Path, default=DATA_FILE, help="where to write the demo dataset")
    parser.add_argument("--no-data", action="store_true", help="do not write the demo dataset")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate the checkpoint in --out")
    parser.add_argument("--eval-per-task", type=int, default=200, help="held-out examples per task")
    for name in CLI_FIELDS:
        value, flag = getattr(defaults, name), f"--{name.replace('_', '-')}"
        if value is None:  # head_dim
            parser.add_argument(flag, type=int, help="default: hidden size // heads")
        else:
            parser.add_argument(flag, type=type(value), default=value, help=f"default: {value}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    if args.eval_only:
        model, tokenizer = load_checkpoint(args.out)
    else:
        cfg = TrainConfig(**{name: getattr(args, name) for name in CLI_FIELDS})
        print(f"training {cfg}", flush=True)
        train(cfg, args.out)
        print(f"training time {time.time() - start:.1f}s; checkpoint written to {args.out}", flush=True)
        model, tokenizer = load_checkpoint(args.out)  # evaluate what was written, not what is in memory
    size = (Path(args.out) / WEIGHTS_FILE).stat().st_size
    params = sum(p.numel() for p in model.parameters())
    print(
        f"parameters {params}, {WEIGHTS_FILE} {size} bytes, "
        f"bidirectional check {check_bidirectional(model, tokenizer):.3g}"
    )
    args_file = Path(args.out) / "training_args.json"
    window = int(json.loads(args_file.read_text()).get("eos_window", 0)) if args_file.is_file() else 0
    header = f"{'task':<8} {'masked_acc@0.5':>15} {'exact_match':>12}" + (f" {'generated':>10}" if window else "")
    print(f"{header}   (held-out, {args.eval_per_task} per task)")
    for task, result in evaluate(model, tokenizer, args.eval_per_task, model_dir=args.out, eos_window=window).items():
        line = f"{task:<8} {result['masked_acc@0.5']:>15.4f} {result['exact_match']:>12.4f}"
        print(line + (f" {result['generated']:>10.4f}" if window else ""))
    if window:
        print(f"generated: {window} new tokens and steps, maskgit_plus, greedy, cut at EOS (exact match)")
    if not args.no_data and not args.eval_only:
        print(f"dataset written to {demo_tasks.write_dataset(args.data)}")
    print(f"total elapsed {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
