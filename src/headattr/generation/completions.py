"""Completions of prompts: prompt texts or dataset rows turned into ids, generated in batches, cut, and scored.

A prompt's ids are built as `headattr.data` builds a sample's prompt (`[bos] + tokens`, or the chat template's
text without bos), so a completion continues exactly the prompt an attribution run scored. `headattr generate`
is this module plus printing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headattr.data.records import Record, load_records
from headattr.data.samples import DataConfig
from headattr.data.selection import select_records
from headattr.data.tokens import bos_ids, prompt_text
from headattr.engine.sparse_schedule import SparseAttention
from headattr.errors import HeadattrError
from headattr.generation.sampling import completion_ids, completion_text, generate
from headattr.generation.scoring import Task, accuracy, parse_task
from headattr.generation.sparse import resolve_sparse
from headattr.models import ModelSpec


@dataclass(frozen=True)
class Completion:
    """One prompt and, once generated, its completion.

    `index`, `answer` and `group` are set for dataset rows only (`group` when grouped). `generated_ids` [N] are
    every generated position; `completion_ids` stop before the first EOS and `completion` is their text.
    `correct` (metric -> bool) is set by `score`.
    """

    prompt: str
    prompt_ids: list[int]
    index: int | None = None
    answer: str | None = None
    group: str | None = None
    generated_ids: list[int] | None = None
    completion_ids: list[int] | None = None
    completion: str | None = None
    correct: dict[str, bool] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON row of `headattr generate --out`: the fields that are set, dataset fields first."""
        row: dict[str, Any] = {}
        if self.index is not None:
            row["index"] = self.index
        row["prompt"] = self.prompt
        if self.index is not None:
            row["answer"] = self.answer
        row["prompt_ids"] = self.prompt_ids
        for name in ("group", "generated_ids", "completion_ids", "completion", "correct"):
            if getattr(self, name) is not None:
                row[name] = getattr(self, name)
        return row


def prompt_ids(spec: ModelSpec, record: Record, chat_template: bool = False) -> list[int]:
    """`[bos] + tokens` of `record`'s prompt as `headattr.data` builds prompts (no bos with a chat template)."""
    tokenizer = spec.tokenizer
    text = prompt_text(record, tokenizer, chat_template)
    return bos_ids(tokenizer, chat_template) + tokenizer.encode(text, add_special_tokens=False)


def text_prompts(spec: ModelSpec, texts: Sequence[str], chat_template: bool = False) -> list[Completion]:
    """Prompts given as text (`--prompt`), each tokenized as `prompt_ids` does."""
    return [Completion(t, prompt_ids(spec, Record(0, t, "", None, ""), chat_template)) for t in texts]


def dataset_prompts(
    spec: ModelSpec,
    path: str | Path,
    *,
    format: str = DataConfig.format,
    prompt_field: str = DataConfig.prompt_field,
    answer_field: str = DataConfig.answer_field,
    samples: int = 0,
    seed: int = 0,
    chat_template: bool = False,
    group_by: str | None = None,
) -> list[Completion]:
    """The prompts of a dataset's rows with their answers: `samples` rows drawn with `seed` (0: every row).

    `group_by` names the field whose value becomes each row's `group`; it labels rows, it does not stratify.
    """
    path = Path(path)
    if not path.is_file():
        raise HeadattrError(f"dataset file {path} does not exist; pass an existing file to --data")
    records = load_records(path, format, prompt_field, answer_field, group_by)
    if samples:
        records = sorted(select_records(records, min(samples, len(records)), seed), key=lambda r: r.index)
    return [
        Completion(
            prompt=r.chat_prompt if chat_template and r.chat_prompt is not None else r.prompt,
            prompt_ids=prompt_ids(spec, r, chat_template),
            index=r.index,
            answer=r.answer,
            group=r.group,
        )
        for r in records
    ]


def complete(
    spec: ModelSpec,
    prompts: Sequence[Completion],
    *,
    batch_size: int = 16,
    head_mask: Sequence[tuple[int, int]] | None = None,
    seed: int = 0,
    sparse: SparseAttention | None = None,
    **settings: Any,
) -> list[Completion]:
    """Generate after every prompt, `batch_size` prompts per `headattr.generate` call, cut at EOS.

    `head_mask` ((layer, head) pairs) removes heads; `seed` seeds every batch's sampler; `settings` are the
    family's sampler settings; `sparse` runs block-sparse attention (`headattr.generate`'s `sparse`, resolved
    once here). Returns copies of `prompts` with the generated fields set, in order.
    """
    if batch_size < 1:
        raise HeadattrError(f"--batch-size must be at least 1, got {batch_size}")
    sparse = None if sparse is None else resolve_sparse(spec, sparse)
    done = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        ids = generate(spec, [p.prompt_ids for p in chunk], head_mask=head_mask, seed=seed, sparse=sparse, **settings)
        width = max(len(p.prompt_ids) for p in chunk)  # prompts are left-padded to the longest
        for p, row in zip(chunk, ids, strict=True):
            generated = row[width:]
            done.append(
                dataclasses.replace(
                    p,
                    generated_ids=generated.tolist(),
                    completion_ids=completion_ids(spec, generated),
                    completion=completion_text(spec, generated),
                )
            )
    return done


def score(completions: Sequence[Completion], task: Task | str) -> list[Completion]:
    """Copies of `completions` with `correct` set by `task` (a `Task` or its name, e.g. gsm8k, regex:P)."""
    task = parse_task(task) if isinstance(task, str) else task
    for c in completions:
        if c.answer is None or c.completion is None:
            raise HeadattrError("scoring needs generated completions of dataset rows with answers")
    return [dataclasses.replace(c, correct=task.score(c.completion, c.answer)) for c in completions]


def accuracies(completions: Sequence[Completion], task: Task) -> list[tuple[str, str, dict[str, float | int]]]:
    """(metric, group, accuracy with its 95% Wilson interval) per metric, over "all" rows then per group."""
    groups = sorted({c.group for c in completions if c.group is not None})
    out = []
    for metric in task.metrics:
        for name, members in [("all", completions)] + [(g, [c for c in completions if c.group == g]) for g in groups]:
            out.append((metric, name, accuracy([c.correct[metric] for c in members])))
    return out
