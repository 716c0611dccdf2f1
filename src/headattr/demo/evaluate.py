"""How well the demo model learned its tasks: held-out masked-token accuracy, exact match by unmasking and by
generation, and a check that attention is bidirectional."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, Qwen2ForCausalLM

from headattr.demo import tasks as demo_tasks
from headattr.demo.objective import EVAL_MASK_RATE, EVAL_SEED, draw_masks, encode, make_batch, shifted_logits
from headattr.generation.decode import unmask_decode


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
