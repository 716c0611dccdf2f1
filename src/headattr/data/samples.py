"""Datasets of (prompt, answer) pairs: reading, sample selection and tokenization.

This module implements the "Inputs" and "Tokens" sections of the Gate-IG definition
(`docs/gate-ig.md`): which rows of a dataset become samples, and the exact token ids the core sees.

Three steps, each usable on its own:

1. `load_records` reads every row of a `.jsonl`, `.json`, `.csv` or `.parquet` file and turns it into a
   `Record` (prompt, answer, optional group) according to a format. Every problem with the file is a
   `HeadattrError` naming the file, the line or row, and how to fix it.
2. `select_records` chooses the samples. The choice depends only on the records and `seed`, never on
   tokenization or on how the run is split into processes.
3. `tokenize_record` builds `[bos] + tok(prompt) + tok(answer)` and truncates to `max_length`.

`build_samples` chains the three and returns a `DataReport` of everything that was dropped or cut, so
that nothing is lost silently. `DataConfig` holds every option of the three steps: it is what run.json
records (each `Sample` remembers the `DataConfig` it came from, so a run made from the Python API records its
data too) and what `prune` reads back to draw held-out rows the same way.

Rows are numbered from 0 in file order (`Record.index`), counting only rows that hold data (blank
`.jsonl` lines are not rows); line numbers in messages are 1-based lines of the file.

Choices made where the definition leaves freedom:

- `messages` format: the answer is the content of the last `assistant` turn. The prompt is the content of
  every turn before it (system, user and earlier assistant turns), joined in order with a blank line
  (`"\\n\\n"`), so that no context is dropped. With `--chat-template` the prompt is instead the content of
  the last `user` turn before the answer (kept in `Record.chat_prompt`), given to the chat template as a
  single user turn, as the definition says. Turns after the last assistant turn are ignored.
- `text` format: the field `text` is the answer and the prompt is empty.
- `samples` of `None` or `0` selects every row.
- `stratify_by` without `samples_per_group` splits `samples` as evenly as possible over the groups, in
  group-name order, the first `samples % groups` groups taking one more; with `samples_per_group` given,
  `samples` is ignored. Only `samples_per_group` guarantees that adding a group leaves the draw of every
  other group unchanged (an even split changes the per-group count).
- Group values may be strings, integers, floats or booleans; they are compared as their text (`str`), so
  a `.csv` file and a `.jsonl` file with the same content give the same groups.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headattr.errors import HeadattrError
from headattr.settings import Settings, at_least, choice

FORMATS = ("prompt-answer", "gsm8k", "messages", "text")
EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")

_FIELD_HINT = "pass --prompt-field/--answer-field to name the fields, or choose another --format"


# --------------------------------------------------------------------------------------------- records


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


@dataclass(frozen=True)
class _Row:
    """A raw row read from a file, with where it came from (for error messages)."""

    index: int
    data: dict[str, Any]
    where: str


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
    rows = _read_rows(Path(path))
    if not rows:
        raise HeadattrError(f"{path}: the file has no rows; give a dataset with at least one row")
    return [_to_record(row, fmt, prompt_field, answer_field, stratify_by) for row in rows]


def _to_record(row: _Row, fmt: str, prompt_field: str, answer_field: str, stratify_by: str | None) -> Record:
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


def _get_field(row: _Row, name: str) -> Any:
    """Return `row.data[name]`, or raise an error listing the fields the row does have."""
    if name not in row.data:
        have = ", ".join(repr(key) for key in row.data) or "none"
        raise HeadattrError(f"{row.where}: no field {name!r}; the row has fields {have}; {_FIELD_HINT}")
    value = row.data[name]
    if value is None:
        raise HeadattrError(f"{row.where}: field {name!r} is null; fill it in or remove the row")
    return value


def _string_field(row: _Row, name: str) -> str:
    """Return field `name` of `row`, which must be a string."""
    value = _get_field(row, name)
    if not isinstance(value, str):
        raise HeadattrError(
            f"{row.where}: field {name!r} is a {type(value).__name__}, expected a string; "
            "store the text as a JSON string"
        )
    return value


def _check_not_empty(row: _Row, what: str, text: str) -> None:
    """Reject an empty or whitespace-only prompt or answer."""
    if not text.strip():
        raise HeadattrError(f"{row.where}: the {what} is empty; fill it in or remove the row")


def _group_value(row: _Row, field_name: str) -> str:
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


def _messages_fields(row: _Row) -> tuple[str, str, str]:
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


def _turn(row: _Row, number: int, message: Any) -> tuple[str, str]:
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


# ------------------------------------------------------------------------------------------ file types


def _read_rows(path: Path) -> list[_Row]:
    """Read the raw rows of `path`, choosing the reader by the file extension."""
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
    if suffix not in readers:
        raise HeadattrError(
            f"{path}: unsupported file type {suffix or '(no extension)'!r}; use one of: {', '.join(EXTENSIONS)}"
        )
    if not path.exists():
        raise HeadattrError(f"{path}: data file not found; check the path")
    if path.is_dir():
        raise HeadattrError(f"{path}: is a directory; give the path of a data file")
    try:
        return readers[suffix](path)
    except OSError as exc:
        raise HeadattrError(f"{path}: cannot read the file ({exc.strerror or exc}); check its permissions") from exc
    except UnicodeDecodeError as exc:
        raise HeadattrError(f"{path}: not UTF-8 text ({exc.reason}); save the file as UTF-8") from exc


def _object_row(index: int, value: Any, where: str) -> _Row:
    """Check that a parsed row is a JSON object and wrap it."""
    if not isinstance(value, dict):
        raise HeadattrError(f"{where}: a row must be a JSON object, got a {type(value).__name__}")
    return _Row(index, value, where)


def _read_jsonl(path: Path) -> list[_Row]:
    """One JSON object per line; blank lines are skipped and are not rows."""
    rows: list[_Row] = []
    with path.open(encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path} line {line_number} (row {len(rows)})"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HeadattrError(
                    f"{path} line {line_number}: not valid JSON ({exc.msg}); each line must hold one JSON object"
                ) from exc
            rows.append(_object_row(len(rows), value, where))
    return rows


def _read_json(path: Path) -> list[_Row]:
    """A JSON list of objects, or an object whose single value is that list (e.g. `{"data": [...]}`)."""
    with path.open(encoding="utf-8-sig") as handle:
        try:
            value = json.load(handle)
        except json.JSONDecodeError as exc:
            raise HeadattrError(
                f"{path} line {exc.lineno}: not valid JSON ({exc.msg}); fix the file or convert it to .jsonl"
            ) from exc
    if isinstance(value, dict):
        lists = [item for item in value.values() if isinstance(item, list)]
        if len(value) != 1 or len(lists) != 1:
            raise HeadattrError(
                f"{path}: a .json dataset must be a list of objects or an object with a single list "
                f'value such as {{"data": [...]}}; this object has keys {", ".join(map(repr, value))}'
            )
        value = lists[0]
    if not isinstance(value, list):
        raise HeadattrError(f"{path}: a .json dataset must be a list of objects, got a {type(value).__name__}")
    return [_object_row(index, item, f"{path} row {index}") for index, item in enumerate(value)]


def _read_csv(path: Path) -> list[_Row]:
    """A CSV file with a header line; every value is a string.

    Entirely empty lines are skipped by `csv`. The line named in messages is the row's last line (the
    same as its first unless a quoted cell spans lines).
    """
    rows: list[_Row] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            for data in reader:
                where = f"{path} line {reader.line_num} (row {len(rows)})"
                if None in data or None in data.values():
                    raise HeadattrError(
                        f"{where}: the row has a different number of cells than the header "
                        f"({len(reader.fieldnames or [])} columns); fix the row"
                    )
                rows.append(_Row(len(rows), dict(data), where))
        except csv.Error as exc:
            raise HeadattrError(f"{path} line {reader.line_num}: not valid CSV ({exc}); fix the file") from exc
    return rows


def _read_parquet(path: Path) -> list[_Row]:
    """A Parquet table; each row becomes a dict of Python values."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except pa.ArrowException as exc:
        raise HeadattrError(f"{path}: not a readable Parquet file ({exc}); check the file") from exc
    return [_Row(index, data, f"{path} row {index}") for index, data in enumerate(table.to_pylist())]


# ------------------------------------------------------------------------------------------- selection


def select_records(
    records: Sequence[Record],
    samples: int | None,
    seed: int,
    stratify_by: str | None = None,
    samples_per_group: int | None = None,
) -> list[Record]:
    """Choose the samples, uniformly without replacement, and return them sorted by row index.

    The choice is a function of `records`, `samples`, `seed` (and the grouping) only. Unstratified, the
    rows are a random permutation's first `samples` entries, so a smaller `samples` with the same seed
    selects a subset of a larger one. Stratified (`stratify_by` given), every group draws from its own
    random stream, derived from `(seed, group name)`. See the module docstring for `None`/`0` and for
    `stratify_by` without `samples_per_group`.
    """
    _check_selection_args(samples, seed, stratify_by, samples_per_group)
    if stratify_by is None:
        return _draw(records, samples or len(records), np.random.default_rng(seed), None)
    groups = _groups(records, stratify_by)
    quotas = _quotas(groups, samples, samples_per_group)
    chosen: list[Record] = []
    for name, members in groups.items():
        chosen += _draw(members, quotas[name], _group_rng(seed, name), name)
    return sorted(chosen, key=lambda record: record.index)


def _check_selection_args(
    samples: int | None, seed: int, stratify_by: str | None, samples_per_group: int | None
) -> None:
    """Reject negative counts and seeds, and `samples_per_group` without a field to group by."""
    if samples is not None and samples < 0:
        raise HeadattrError(f"--samples {samples} is negative; give a positive number, or 0 for every row")
    if seed < 0:
        raise HeadattrError(f"--data-seed {seed} is negative; give a seed >= 0")
    if samples_per_group is not None:
        if stratify_by is None:
            raise HeadattrError("--samples-per-group needs --stratify-by FIELD to define the groups")
        if samples_per_group <= 0:
            raise HeadattrError(f"--samples-per-group {samples_per_group} must be at least 1")


def _groups(records: Iterable[Record], stratify_by: str) -> dict[str, list[Record]]:
    """Group records by `Record.group`, groups in name order, records in file order."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        if record.group is None:
            raise HeadattrError(
                f"row {record.index} has no {stratify_by!r} group; load the data with the same --stratify-by"
            )
        groups.setdefault(record.group, []).append(record)
    return dict(sorted(groups.items()))


def _quotas(groups: dict[str, list[Record]], samples: int | None, per_group: int | None) -> dict[str, int]:
    """Return how many rows each group contributes."""
    if per_group is not None:
        return {name: per_group for name in groups}
    if not samples:
        return {name: len(members) for name, members in groups.items()}
    base, extra = divmod(samples, len(groups))
    return {name: base + (rank < extra) for rank, name in enumerate(groups)}


def _group_rng(seed: int, name: str) -> np.random.Generator:
    """A random stream keyed by (seed, group name) only, so groups do not influence each other."""
    name_key = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest(), "big")
    return np.random.default_rng(np.random.SeedSequence([seed, name_key]))


def _draw(records: Sequence[Record], count: int, rng: np.random.Generator, group: str | None) -> list[Record]:
    """Draw `count` of `records` without replacement; sorted by row index."""
    if count > len(records):
        if group is None:
            raise HeadattrError(
                f"--samples {count} is more than the {len(records)} rows of the dataset; "
                f"lower --samples to at most {len(records)}"
            )
        raise HeadattrError(
            f"group {group!r} has {len(records)} rows, fewer than the {count} to draw from it; "
            "lower --samples-per-group (or --samples) or merge small groups"
        )
    order = rng.permutation(len(records))[:count]
    return [records[position] for position in sorted(order.tolist())]


# ---------------------------------------------------------------------------------------- tokenization


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


# -------------------------------------------------------------------------------------------- pipeline


@dataclass
class DataReport:
    """What happened to the data, written to run.json: rows read, chosen, truncated and skipped.

    `prompt_truncated`/`answer_truncated` count samples that lost tokens; `prompt_tokens_dropped` and
    `answer_tokens_dropped` count the tokens. `groups` maps each group to its number of selected rows
    when the selection was stratified.
    """

    path: str
    format: str
    rows: int
    selected: int
    prompt_truncated: int = 0
    answer_truncated: int = 0
    skipped: int = 0
    skipped_reasons: list[str] = field(default_factory=list)
    prompt_tokens_dropped: int = 0
    answer_tokens_dropped: int = 0
    groups: dict[str, int] | None = None

    def to_dict(self) -> dict:
        """A JSON-ready copy of the report."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line for the terminal: rows read and chosen, truncations and skips."""
        parts = [f"{self.selected} of {self.rows} rows selected"]
        if self.groups is not None:
            parts.append(f"{len(self.groups)} groups")
        parts.append(f"{self.prompt_truncated} prompts and {self.answer_truncated} answers truncated")
        parts.append(f"{self.skipped} skipped")
        if self.skipped_reasons:
            more = len(self.skipped_reasons) - 1
            parts[-1] += f" ({self.skipped_reasons[0]}" + (f", and {more} more)" if more else ")")
        return ", ".join(parts)


@dataclass(frozen=True)
class DataConfig(Settings):
    """Which rows of which file become samples, and how they are tokenized (the `--data ...` flags).

    `samples` 0 (or None) selects every row; `seed` is the selection seed (`--data-seed`).
    """

    path: str | None = None
    format: str = "prompt-answer"
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    chat_template: bool = False
    samples: int | None = 50
    seed: int = 47
    stratify_by: str | None = None
    samples_per_group: int | None = None
    max_length: int = 2048

    META_NAMES = {"path": "data", "seed": "data_seed"}

    def __post_init__(self) -> None:
        if self.path is not None:
            object.__setattr__(self, "path", str(self.path))
        super().__post_init__()

    def validate(self) -> None:
        choice("--format", self.format, FORMATS)
        at_least("--max-length", self.max_length, 1)
        _check_selection_args(self.samples, self.seed, self.stratify_by, self.samples_per_group)

    def build(self, tokenizer: Any) -> tuple[list[Sample], DataReport]:
        """Load, select and tokenize (see `build_samples`)."""
        if self.path is None:
            raise HeadattrError("no dataset file given; pass --data FILE")
        records = load_records(self.path, self.format, self.prompt_field, self.answer_field, self.stratify_by)
        chosen = select_records(records, self.samples, self.seed, self.stratify_by, self.samples_per_group)
        report = DataReport(str(self.path), self.format, rows=len(records), selected=len(chosen))
        if self.stratify_by is not None:
            report.groups = {name: len(members) for name, members in _groups(chosen, self.stratify_by).items()}
        built: list[Sample] = []
        for record in chosen:
            sample = tokenize_record(record, tokenizer, self.max_length, self.chat_template)
            if sample is None:
                report.skipped += 1
                report.skipped_reasons.append(f"row {record.index}: answer has no tokens")
                continue
            _count_truncation(report, sample)
            built.append(dataclasses.replace(sample, source=self))
        if not built:
            raise HeadattrError(
                f"{self.path}: none of the {len(chosen)} selected rows has an answer with tokens; "
                "check the answer field and the tokenizer"
            )
        return built, report


def build_samples(path: str | Path | DataConfig, tokenizer: Any, **options: Any) -> tuple[list[Sample], DataReport]:
    """Load, select, then tokenize; return the samples in row order and a report of every loss.

    `path` is the data file (then `options` are the other `DataConfig` fields: `format`, `samples`, `seed`,
    `stratify_by`, ...) or a whole `DataConfig`. Selection comes before tokenization, so a skipped row (an
    answer with no tokens) never changes which rows are chosen; it is counted and named in the report. If every
    selected row is skipped, that is an error: there would be nothing to attribute.
    """
    if isinstance(path, DataConfig):
        return dataclasses.replace(path, **options).build(tokenizer)
    return DataConfig(path=str(path), **options).build(tokenizer)


def _count_truncation(report: DataReport, sample: Sample) -> None:
    """Add one sample's truncation to the report."""
    report.prompt_truncated += sample.prompt_truncated > 0
    report.answer_truncated += sample.answer_truncated > 0
    report.prompt_tokens_dropped += sample.prompt_truncated
    report.answer_tokens_dropped += sample.answer_truncated
