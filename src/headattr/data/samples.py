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

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headattr.data.records import FORMATS, load_records
from headattr.data.selection import check_selection_args, groups_of, select_records
from headattr.data.tokens import Sample, tokenize_record
from headattr.errors import HeadattrError
from headattr.settings import Settings, at_least, choice

# ------------------------------------------------------------------------------------------ file types


# ---------------------------------------------------------------------------------------- tokenization


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
        check_selection_args(self.samples, self.seed, self.stratify_by, self.samples_per_group)

    def build(self, tokenizer: Any) -> tuple[list[Sample], DataReport]:
        """Load, select and tokenize (see `build_samples`)."""
        if self.path is None:
            raise HeadattrError("no dataset file given; pass --data FILE")
        records = load_records(self.path, self.format, self.prompt_field, self.answer_field, self.stratify_by)
        chosen = select_records(records, self.samples, self.seed, self.stratify_by, self.samples_per_group)
        report = DataReport(str(self.path), self.format, rows=len(records), selected=len(chosen))
        if self.stratify_by is not None:
            report.groups = {name: len(members) for name, members in groups_of(chosen, self.stratify_by).items()}
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
