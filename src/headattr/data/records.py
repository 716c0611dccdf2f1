"""Rows turned into `Record`s (prompt, answer, optional group) according to a dataset format."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headattr.data.files import Row, read_rows
from headattr.errors import HeadattrError

FORMATS = ("prompt-answer", "gsm8k", "messages", "text")


_FIELD_HINT = "pass --prompt-field/--answer-field to name the fields, or choose another --format"


@dataclass(frozen=True)
class Record:
    """One dataset row before tokenization.

    `index` (0-based row number in the file) and `uid` (a hash of the content) together identify the
    sample: the mask random streams are keyed by them, so they must not depend on the selection.
    `chat_prompt` is set only for `messages` rows: the last user turn, used instead of `prompt` when a
    chat template is applied.
    """

    index: int
    prompt: str
    answer: str
    group: str | None
    uid: str
    chat_prompt: str | None = None


def content_uid(prompt: str, answer: str) -> str:
    """Return the first 16 hex digits of the sha256 of the canonical JSON of `[prompt, answer]`.

    Canonical: no whitespace between items and UTF-8 text, so the same pair always gives the same uid.
    """
    canonical = json.dumps([prompt, answer], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def load_records(
    path: str | Path,
    fmt: str = "prompt-answer",
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    stratify_by: str | None = None,
) -> list[Record]:
    """Read every row of `path` and return it as a `Record`, in file order.

    `fmt` is one of `FORMATS`; `prompt_field`/`answer_field` name the fields of the `prompt-answer`
    format. `stratify_by` names a field whose value becomes `Record.group`. Any unusable row raises a
    `HeadattrError` naming the file, the row and the fix.
    """
    if fmt not in FORMATS:
        raise HeadattrError(f"unknown data format {fmt!r}; use one of: {', '.join(FORMATS)}")
    rows = read_rows(Path(path))
    if not rows:
        raise HeadattrError(f"{path}: the file has no rows; give a dataset with at least one row")
    return [_to_record(row, fmt, prompt_field, answer_field, stratify_by) for row in rows]


def _to_record(row: Row, fmt: str, prompt_field: str, answer_field: str, stratify_by: str | None) -> Record:
    """Turn one raw row into a `Record` according to `fmt`."""
    chat_prompt = None
    if fmt == "prompt-answer":
        prompt = _string_field(row, prompt_field)
        answer = _string_field(row, answer_field)
    elif fmt == "gsm8k":
        prompt = _string_field(row, "question")
        answer = _string_field(row, "answer")
    elif fmt == "messages":
        prompt, chat_prompt, answer = _messages_fields(row)
    else:
        prompt = ""
        answer = _string_field(row, "text")
    if fmt != "text":
        _check_not_empty(row, "prompt", prompt)
    _check_not_empty(row, "answer", answer)
    group = _group_value(row, stratify_by) if stratify_by is not None else None
    return Record(row.index, prompt, answer, group, content_uid(prompt, answer), chat_prompt)


def _get_field(row: Row, name: str) -> Any:
    """Return `row.data[name]`, or raise an error listing the fields the row does have."""
    if name not in row.data:
        have = ", ".join(repr(key) for key in row.data) or "none"
        raise HeadattrError(f"{row.where}: no field {name!r}; the row has fields {have}; {_FIELD_HINT}")
    value = row.data[name]
    if value is None:
        raise HeadattrError(f"{row.where}: field {name!r} is null; fill it in or remove the row")
    return value


def _string_field(row: Row, name: str) -> str:
    """Return field `name` of `row`, which must be a string."""
    value = _get_field(row, name)
    if not isinstance(value, str):
        raise HeadattrError(
            f"{row.where}: field {name!r} is a {type(value).__name__}, expected a string; "
            "store the text as a JSON string"
        )
    return value


def _check_not_empty(row: Row, what: str, text: str) -> None:
    """Reject an empty or whitespace-only prompt or answer."""
    if not text.strip():
        raise HeadattrError(f"{row.where}: the {what} is empty; fill it in or remove the row")


def _group_value(row: Row, field_name: str) -> str:
    """Return the `--stratify-by` value of `row` as text."""
    if field_name not in row.data:
        have = ", ".join(repr(key) for key in row.data) or "none"
        raise HeadattrError(
            f"{row.where}: no field {field_name!r} to stratify by; the row has fields {have}; "
            "fix --stratify-by or add the field to every row"
        )
    value = _get_field(row, field_name)
    if not isinstance(value, (str, int, float, bool)):
        raise HeadattrError(
            f"{row.where}: field {field_name!r} is a {type(value).__name__}; --stratify-by needs a string or number"
        )
    return str(value)


def _messages_fields(row: Row) -> tuple[str, str, str]:
    """Return (joined prompt, last user turn, answer) of a `messages` row; see the module docstring."""
    messages = _get_field(row, "messages")
    if not isinstance(messages, list):
        raise HeadattrError(
            f"{row.where}: field 'messages' is a {type(messages).__name__}, expected a list of "
            "{role, content} objects (a .csv cell cannot hold one; use .jsonl, .json or .parquet)"
        )
    turns = [_turn(row, number, message) for number, message in enumerate(messages)]
    last_assistant = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=None)
    if last_assistant is None:
        raise HeadattrError(f"{row.where}: 'messages' has no assistant turn; the answer is the last one")
    earlier = turns[:last_assistant]
    users = [content for role, content in earlier if role == "user"]
    if not users:
        raise HeadattrError(
            f"{row.where}: 'messages' has no user turn before the last assistant turn; the prompt is taken from it"
        )
    prompt = "\n\n".join(content for _, content in earlier)
    return prompt, users[-1], turns[last_assistant][1]


def _turn(row: Row, number: int, message: Any) -> tuple[str, str]:
    """Validate one `{role, content}` message and return it as a pair."""
    where = f"{row.where}, message {number}"
    if not isinstance(message, dict):
        raise HeadattrError(f"{where}: a message must be an object with 'role' and 'content'")
    role, content = message.get("role"), message.get("content")
    if not isinstance(role, str) or not isinstance(content, str):
        raise HeadattrError(
            f"{where}: a message needs a string 'role' and a string 'content'; it has "
            f"{', '.join(repr(key) for key in message) or 'no fields'}"
        )
    return role, content
