"""The exact token ids the core sees: `[bos] + tok(prompt) + tok(answer)`, truncated to `max_length`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from headattr.data.records import Record
from headattr.errors import HeadattrError

if TYPE_CHECKING:
    from headattr.data.samples import DataConfig


@dataclass(frozen=True)
class Sample:
    """One tokenized sample, ready for the core.

    `input_ids = [bos] + prompt tokens + answer tokens` after truncation; the answer span is
    `input_ids[answer_start:answer_end]` (here `answer_end == len(input_ids)`).
    """

    index: int
    uid: str
    group: str | None
    input_ids: tuple[int, ...]
    answer_start: int
    answer_end: int
    prompt_truncated: int
    answer_truncated: int
    source: DataConfig | None = field(default=None, compare=False, repr=False)  # where it was drawn from


def tokenize_record(record: Record, tokenizer: Any, max_length: int, chat_template: bool = False) -> Sample | None:
    """Tokenize `record` as the definition's "Tokens" section says; `None` if the answer has no tokens.

    Each part is tokenized with `add_special_tokens=False`. `bos` is prepended only when the tokenizer
    has one and no chat template is applied. Over `max_length`, prompt tokens are dropped from the left;
    the answer's end is cut only when the answer (with `bos`) alone does not fit. With a chat template,
    the truncated prompt tokens are those of the templated prompt.
    """
    prefix = bos_ids(tokenizer, chat_template)
    budget = max_length - len(prefix)
    if budget < 1:
        raise HeadattrError(
            f"--max-length {max_length} leaves no room for an answer token; give at least {len(prefix) + 1}"
        )
    answer = tokenizer.encode(record.answer, add_special_tokens=False)
    if not answer:
        return None
    prompt = tokenizer.encode(prompt_text(record, tokenizer, chat_template), add_special_tokens=False)
    answer_cut = max(0, len(answer) - budget)
    answer = answer[: len(answer) - answer_cut]
    prompt_keep = min(len(prompt), budget - len(answer))
    prompt_cut = len(prompt) - prompt_keep
    prompt = prompt[prompt_cut:]
    ids = tuple(prefix + prompt + answer)
    start = len(prefix) + len(prompt)
    return Sample(record.index, record.uid, record.group, ids, start, len(ids), prompt_cut, answer_cut)


def bos_ids(tokenizer: Any, chat_template: bool) -> list[int]:
    """Return `[bos]` when the tokenizer defines one and no chat template is applied, else `[]`."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return [] if chat_template or bos is None else [int(bos)]


def prompt_text(record: Record, tokenizer: Any, chat_template: bool) -> str:
    """The prompt text to tokenize: the raw prompt, or the chat template applied to the user turn."""
    if not chat_template:
        return record.prompt
    if not getattr(tokenizer, "chat_template", None):
        raise HeadattrError(
            "--chat-template was given but the tokenizer has no chat template; drop --chat-template "
            "or use a model whose tokenizer defines one"
        )
    user_turn = record.chat_prompt if record.chat_prompt is not None else record.prompt
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_turn}], tokenize=False, add_generation_prompt=True
    )
