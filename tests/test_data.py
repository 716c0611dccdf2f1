"""Tests of `headattr.data`: file types, formats, selection, tokenization and error messages.

The tokenizer is built in code: a word-level vocabulary split on whitespace, so that every word is one
token and token counts can be read off the text. `~` is removed by the normalizer, which gives a
non-empty answer with no tokens.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from headattr.data.records import FORMATS, Record, content_uid, load_records
from headattr.data.samples import DataConfig, DataReport, build_samples
from headattr.data.selection import select_records
from headattr.data.tokens import tokenize_record
from headattr.errors import HeadattrError

SPECIAL = ["<bos>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
WORDS = [f"w{i}" for i in range(200)] + list("abcdefghijklmnopqrstuvwxyz")
VOCAB = {word: i for i, word in enumerate(SPECIAL + WORDS)}
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(bos: bool = True, template: bool = False) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer; optional bos token and chat template."""
    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    backend.normalizer = normalizers.Replace("~", "")
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    extra = {"bos_token": "<bos>"} if bos else {}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **extra)
    if template:
        tokenizer.chat_template = TEMPLATE
    return tokenizer


def words(start: int, count: int) -> str:
    """`count` distinct vocabulary words, one token each."""
    return " ".join(f"w{i}" for i in range(start, start + count))


def ids_of(text: str) -> list[int]:
    """The token ids of whitespace-separated vocabulary words."""
    return [VOCAB[word] for word in text.split()]


ROWS = [
    {"prompt": "a b c", "answer": "d e", "level": "1"},
    {"prompt": 'Q, with "quotes"', "answer": "multi\nline", "level": "2"},
    {"prompt": "ünïcödé ✓", "answer": "x", "level": "1"},
]


def write(path: Path, rows: list[dict]) -> Path:
    """Write `rows` in the file type given by the extension of `path`."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def records_for(tmp_path: Path, rows: list[dict], name: str = "d.jsonl", **kwargs) -> list[Record]:
    """Write `rows` and load them back."""
    return load_records(write(tmp_path / name, rows), **kwargs)


def plain_records(count: int, groups: dict[str, int] | None = None) -> list[Record]:
    """`count` records (or `groups` sizes) built in memory, for selection tests.

    The content depends on the group and the position in the group only, so adding a group keeps the
    uids of the others.
    """
    labels = [(name, k) for name, size in (groups or {None: count}).items() for k in range(size)]
    records = []
    for index, (label, k) in enumerate(labels):
        prompt, answer = f"p {label} {k}", f"a {label} {k}"
        records.append(Record(index, prompt, answer, label, content_uid(prompt, answer)))
    return records


# ------------------------------------------------------------------------------------------ file types


def test_every_file_type_gives_the_same_records(tmp_path: Path) -> None:
    loaded = {
        name: records_for(tmp_path, ROWS, name, stratify_by="level")
        for name in ("d.jsonl", "d.json", "d.csv", "d.parquet")
    }
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"data": ROWS}), encoding="utf-8")
    loaded["w.json"] = load_records(wrapped, stratify_by="level")
    reference = loaded["d.jsonl"]
    assert [r.prompt for r in reference] == [row["prompt"] for row in ROWS]
    assert [r.answer for r in reference] == [row["answer"] for row in ROWS]
    assert [r.group for r in reference] == ["1", "2", "1"]
    assert [r.index for r in reference] == [0, 1, 2]
    for name, records in loaded.items():
        assert records == reference, name


def test_numeric_group_values_match_csv_text(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "answer": "b", "level": 3}]
    from_json = records_for(tmp_path, rows, "d.jsonl", stratify_by="level")
    from_csv = records_for(tmp_path, rows, "d.csv", stratify_by="level")
    assert from_json == from_csv
    assert from_json[0].group == "3"


def test_jsonl_blank_lines_are_not_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('\n{"prompt": "a", "answer": "b"}\n  \n\n{"prompt": "c", "answer": "d"}\n')
    records = load_records(path)
    assert [(r.index, r.prompt) for r in records] == [(0, "a"), (1, "c")]


def test_uid_is_a_content_hash(tmp_path: Path) -> None:
    records = records_for(tmp_path, [{"prompt": "a", "answer": "b"}, {"prompt": "b", "answer": "a"}] * 2)
    uids = [r.uid for r in records]
    assert uids[0] == uids[2] and uids[1] == uids[3]  # same content, same uid
    assert uids[0] != uids[1]  # prompt and answer are not interchangeable
    assert len(uids[0]) == 16 and int(uids[0], 16) >= 0
    assert content_uid("a b", "c") != content_uid("a", "b c")  # the split point matters


# --------------------------------------------------------------------------------------------- formats


def test_prompt_answer_field_names(tmp_path: Path) -> None:
    rows = [{"input": "a b", "output": "c", "prompt": "wrong", "answer": "wrong"}]
    (record,) = records_for(tmp_path, rows, prompt_field="input", answer_field="output")
    assert (record.prompt, record.answer) == ("a b", "c")


def test_gsm8k_format(tmp_path: Path) -> None:
    rows = [{"question": "how many", "answer": "so 4\n#### 4"}]
    (record,) = records_for(tmp_path, rows, fmt="gsm8k")
    assert (record.prompt, record.answer) == ("how many", "so 4\n#### 4")


def test_text_format_has_empty_prompt(tmp_path: Path) -> None:
    (record,) = records_for(tmp_path, [{"text": "a b c"}], fmt="text")
    assert (record.prompt, record.answer) == ("", "a b c")
    sample = tokenize_record(record, make_tokenizer(), max_length=100)
    assert sample is not None
    assert sample.input_ids == (VOCAB["<bos>"], *ids_of("a b c"))
    assert sample.answer_start == 1


def test_messages_single_turn(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c"}]}]
    (record,) = records_for(tmp_path, rows, fmt="messages")
    assert (record.prompt, record.chat_prompt, record.answer) == ("a b", "a b", "c")


def test_messages_multi_turn_joins_earlier_turns(tmp_path: Path) -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "final"},
        {"role": "user", "content": "ignored"},
    ]
    (record,) = records_for(tmp_path, [{"messages": messages}], fmt="messages")
    assert record.prompt == "s\n\nu1\n\na1\n\nu2"
    assert record.chat_prompt == "u2"
    assert record.answer == "final"
    assert record.uid == content_uid(record.prompt, record.answer)


def test_messages_chat_template_uses_last_user_turn(tmp_path: Path) -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c d"},
        {"role": "assistant", "content": "e"},
    ]
    (record,) = records_for(tmp_path, [{"messages": messages}], fmt="messages")
    sample = tokenize_record(record, make_tokenizer(template=True), max_length=100, chat_template=True)
    assert sample is not None
    assert sample.input_ids == tuple(ids_of("<|user|> c d <|assistant|> e"))


def test_formats_constant() -> None:
    assert FORMATS == ("prompt-answer", "gsm8k", "messages", "text")


# ------------------------------------------------------------------------------------------- selection


def test_selection_is_deterministic_sorted_and_unique() -> None:
    records = plain_records(100)
    first = select_records(records, 10, seed=47)
    assert first == select_records(records, 10, seed=47)
    indices = [r.index for r in first]
    assert indices == sorted(indices) and len(set(indices)) == 10
    assert indices != [r.index for r in select_records(records, 10, seed=48)]


def test_selection_matches_the_documented_permutation() -> None:
    records = plain_records(30)
    expected = sorted(np.random.default_rng(5).permutation(30)[:7].tolist())
    assert [r.index for r in select_records(records, 7, seed=5)] == expected


def test_smaller_selection_is_a_subset_of_a_larger_one() -> None:
    records = plain_records(50)
    small = {r.index for r in select_records(records, 5, seed=3)}
    large = {r.index for r in select_records(records, 20, seed=3)}
    assert small < large


def test_selection_is_uniform() -> None:
    records = plain_records(10)
    counts = Counter(r.index for seed in range(3000) for r in select_records(records, 3, seed=seed))
    # each row is chosen with probability 0.3: 900 of 3000, standard deviation about 25
    assert all(abs(counts[i] - 900) < 120 for i in range(10)), counts


@pytest.mark.parametrize("samples", [None, 0])
def test_no_sample_count_means_every_row(samples: int | None) -> None:
    records = plain_records(7)
    assert select_records(records, samples, seed=1) == records


def test_all_rows_requested_gives_all_rows() -> None:
    records = plain_records(7)
    assert select_records(records, 7, seed=1) == records


def test_too_many_samples_is_an_error() -> None:
    with pytest.raises(HeadattrError, match=r"more than the 7 rows.*lower --samples"):
        select_records(plain_records(7), 8, seed=1)


def test_bad_selection_arguments() -> None:
    records = plain_records(5, {"x": 5})
    with pytest.raises(HeadattrError, match="--samples -1"):
        select_records(records, -1, seed=1)
    with pytest.raises(HeadattrError, match="--data-seed -3"):
        select_records(records, 1, seed=-3)
    with pytest.raises(HeadattrError, match="--samples-per-group needs --stratify-by"):
        select_records(records, 1, seed=1, samples_per_group=2)
    with pytest.raises(HeadattrError, match="--samples-per-group 0"):
        select_records(records, 1, seed=1, stratify_by="level", samples_per_group=0)


def test_stratified_counts_per_group() -> None:
    records = plain_records(0, {"b": 10, "a": 6, "c": 8})
    chosen = select_records(records, 50, seed=2, stratify_by="level", samples_per_group=4)
    assert Counter(r.group for r in chosen) == {"a": 4, "b": 4, "c": 4}
    assert [r.index for r in chosen] == sorted(r.index for r in chosen)
    assert chosen == select_records(records, None, seed=2, stratify_by="level", samples_per_group=4)


def test_stratified_even_split() -> None:
    records = plain_records(0, {"b": 10, "a": 6, "c": 8})
    chosen = select_records(records, 8, seed=2, stratify_by="level")
    assert Counter(r.group for r in chosen) == {"a": 3, "b": 3, "c": 2}
    everything = select_records(records, 0, seed=2, stratify_by="level")
    assert everything == records


def test_adding_a_group_leaves_other_groups_unchanged() -> None:
    before = plain_records(0, {"a": 12, "b": 9})
    after = plain_records(0, {"0new": 5, "a": 12, "b": 9})  # new group first: every index shifts

    def draw(records: list[Record], group: str) -> list[str]:
        chosen = select_records(records, None, seed=11, stratify_by="level", samples_per_group=4)
        return [r.uid for r in chosen if r.group == group]

    assert draw(before, "a") == draw(after, "a")
    assert draw(before, "b") == draw(after, "b")
    other_seed = select_records(before, None, seed=12, stratify_by="level", samples_per_group=4)
    assert [r.uid for r in other_seed if r.group == "a"] != draw(before, "a")


def test_groups_of_equal_size_draw_different_positions() -> None:
    records = plain_records(0, {"a": 20, "b": 20})
    chosen = select_records(records, None, seed=11, stratify_by="level", samples_per_group=5)
    positions = {g: [r.index - 20 * (g == "b") for r in chosen if r.group == g] for g in "ab"}
    assert positions["a"] != positions["b"]  # the stream is keyed by the group name too


def test_small_group_is_an_error() -> None:
    records = plain_records(0, {"big": 10, "tiny": 2})
    with pytest.raises(HeadattrError, match=r"group 'tiny' has 2 rows.*3"):
        select_records(records, None, seed=1, stratify_by="level", samples_per_group=3)


def test_stratifying_records_without_groups_is_an_error() -> None:
    with pytest.raises(HeadattrError, match="row 0 has no 'level' group"):
        select_records(plain_records(3), 2, seed=1, stratify_by="level")


# ---------------------------------------------------------------------------------------- tokenization


def record(prompt: str, answer: str, index: int = 0) -> Record:
    """An in-memory record."""
    return Record(index, prompt, answer, None, content_uid(prompt, answer))


def test_tokens_bos_prompt_answer() -> None:
    sample = tokenize_record(record("a b c", "d e"), make_tokenizer(), max_length=100)
    assert sample is not None
    assert sample.input_ids == (VOCAB["<bos>"], *ids_of("a b c d e"))
    assert (sample.answer_start, sample.answer_end) == (4, 6)
    assert sample.input_ids[sample.answer_start : sample.answer_end] == tuple(ids_of("d e"))
    assert (sample.prompt_truncated, sample.answer_truncated) == (0, 0)


def test_no_bos_when_the_tokenizer_has_none() -> None:
    sample = tokenize_record(record("a b", "c"), make_tokenizer(bos=False), max_length=100)
    assert sample is not None
    assert sample.input_ids == tuple(ids_of("a b c"))
    assert sample.answer_start == 2


def test_chat_template_replaces_bos() -> None:
    tokenizer = make_tokenizer(template=True)
    sample = tokenize_record(record("a b", "c"), tokenizer, max_length=100, chat_template=True)
    assert sample is not None
    assert VOCAB["<bos>"] not in sample.input_ids
    assert sample.input_ids == tuple(ids_of("<|user|> a b <|assistant|> c"))
    assert sample.answer_start == 4
    plain = tokenize_record(record("a b", "c"), tokenizer, max_length=100)
    assert plain is not None and plain.input_ids[0] == VOCAB["<bos>"]


def test_chat_template_without_template_is_an_error() -> None:
    with pytest.raises(HeadattrError, match="tokenizer has no chat template"):
        tokenize_record(record("a", "b"), make_tokenizer(), max_length=10, chat_template=True)


def test_exact_fit_is_not_truncated() -> None:
    sample = tokenize_record(record(words(0, 5), words(10, 4)), make_tokenizer(), max_length=10)
    assert sample is not None
    assert len(sample.input_ids) == 10
    assert (sample.prompt_truncated, sample.answer_truncated) == (0, 0)


def test_prompt_is_cut_from_the_left() -> None:
    sample = tokenize_record(record(words(0, 10), words(50, 4)), make_tokenizer(), max_length=8)
    assert sample is not None
    assert sample.input_ids == (VOCAB["<bos>"], *ids_of(words(7, 3) + " " + words(50, 4)))
    assert (sample.prompt_truncated, sample.answer_truncated) == (7, 0)
    assert (sample.answer_start, sample.answer_end) == (4, 8)


def test_answer_end_is_cut_only_when_it_alone_is_too_long() -> None:
    sample = tokenize_record(record(words(0, 3), words(50, 10)), make_tokenizer(), max_length=6)
    assert sample is not None
    assert sample.input_ids == (VOCAB["<bos>"], *ids_of(words(50, 5)))
    assert (sample.prompt_truncated, sample.answer_truncated) == (3, 5)
    assert (sample.answer_start, sample.answer_end) == (1, 6)
    no_bos = tokenize_record(record(words(0, 3), words(50, 10)), make_tokenizer(bos=False), max_length=6)
    assert no_bos is not None
    assert no_bos.input_ids == tuple(ids_of(words(50, 6)))
    assert (no_bos.prompt_truncated, no_bos.answer_truncated) == (3, 4)


def test_chat_template_prompt_is_cut_from_the_left() -> None:
    tokenizer = make_tokenizer(template=True)
    sample = tokenize_record(record("a b c", "d e"), tokenizer, max_length=4, chat_template=True)
    assert sample is not None
    assert sample.input_ids == tuple(ids_of("c <|assistant|> d e"))
    assert sample.prompt_truncated == 3


def test_max_length_with_no_room_for_the_answer() -> None:
    with pytest.raises(HeadattrError, match="--max-length 1"):
        tokenize_record(record("a", "b"), make_tokenizer(), max_length=1)


def test_answer_without_tokens_is_skipped() -> None:
    assert tokenize_record(record("a", "~~~"), make_tokenizer(), max_length=10) is None


# -------------------------------------------------------------------------------------------- pipeline


def test_build_samples_reports_everything(tmp_path: Path) -> None:
    rows = [{"prompt": words(0, 2 + i), "answer": words(100, 1 + i % 3)} for i in range(12)]
    rows[4]["answer"] = "~ ~"
    path = write(tmp_path / "d.jsonl", rows)
    samples, report = build_samples(path, make_tokenizer(), samples=0, max_length=6)
    assert isinstance(report, DataReport)
    assert (report.rows, report.selected, report.skipped) == (12, 12, 1)
    assert report.skipped_reasons == ["row 4: answer has no tokens"]
    assert [s.index for s in samples] == [i for i in range(12) if i != 4]
    assert all(len(s.input_ids) <= 6 for s in samples)
    assert report.prompt_truncated == sum(s.prompt_truncated > 0 for s in samples)
    assert report.prompt_tokens_dropped == sum(s.prompt_truncated for s in samples)
    assert report.prompt_truncated > 0 and report.answer_truncated == 0
    assert json.loads(json.dumps(report.to_dict()))["skipped_reasons"] == ["row 4: answer has no tokens"]
    assert report.to_dict()["path"] == str(path)
    line = report.summary()
    assert "\n" not in line and "12 of 12 rows" in line and "1 skipped (row 4: answer has no tokens)" in line
    assert f"{report.prompt_truncated} prompts" in line


def test_build_samples_takes_a_data_config(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [{"prompt": words(0, 2), "answer": words(100, 1 + i % 3)} for i in range(9)])
    by_path, _ = build_samples(path, make_tokenizer(), samples=4, seed=3)
    by_config, _ = build_samples(DataConfig(path=str(path), samples=4, seed=3), make_tokenizer())
    overridden, _ = build_samples(DataConfig(path=str(path), samples=9), make_tokenizer(), samples=4, seed=3)
    assert [s.input_ids for s in by_config] == [s.input_ids for s in by_path] == [s.input_ids for s in overridden]
    assert len(by_path) == 4


def test_skipping_does_not_change_the_selection(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "answer": f"w{i}"} for i in range(30)]
    clean = write(tmp_path / "clean.jsonl", rows)
    rows = [dict(row) for row in rows]
    for row in rows[::3]:
        row["answer"] = "~"
    dirty = write(tmp_path / "dirty.jsonl", rows)
    kept, _ = build_samples(clean, make_tokenizer(), samples=10, seed=9)
    partial, report = build_samples(dirty, make_tokenizer(), samples=10, seed=9)
    assert report.selected == 10 and report.skipped == sum(s.index % 3 == 0 for s in kept)
    assert [s.index for s in partial] == [s.index for s in kept if s.index % 3 != 0]


def test_build_samples_stratified_report(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "answer": f"w{i}", "level": "hard" if i % 3 else "easy"} for i in range(30)]
    path = write(tmp_path / "d.csv", rows)
    samples, report = build_samples(path, make_tokenizer(), stratify_by="level", samples_per_group=4)
    assert report.groups == {"easy": 4, "hard": 4}
    assert Counter(s.group for s in samples) == {"easy": 4, "hard": 4}


def test_every_selected_row_skipped_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [{"prompt": "a", "answer": "~"}])
    with pytest.raises(HeadattrError, match="none of the 1 selected rows"):
        build_samples(path, make_tokenizer(), samples=1)


# ---------------------------------------------------------------------------------------------- errors


def test_malformed_jsonl_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "answer": "b"}\n\n{"prompt": "a", "answer": \n')
    with pytest.raises(HeadattrError, match=r"d\.jsonl line 3: not valid JSON"):
        load_records(path)


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "answer": "b"}\n[1, 2]\n')
    with pytest.raises(HeadattrError, match=r"line 2 \(row 1\): a row must be a JSON object"):
        load_records(path)


def test_malformed_json_file(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[\n{"prompt": "a",\n "answer": }\n]')
    with pytest.raises(HeadattrError, match=r"d\.json line 3: not valid JSON"):
        load_records(path)


def test_json_object_with_several_keys(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"data": [], "meta": []}))
    with pytest.raises(HeadattrError, match="single list value"):
        load_records(path)


def test_ragged_csv_row(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,answer\na,b\nc\n")
    with pytest.raises(HeadattrError, match=r"d\.csv line 3 \(row 1\).*number of cells"):
        load_records(path)


def test_unknown_extension_lists_supported(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("x")
    with pytest.raises(
        HeadattrError,
        match=r"unsupported file type '\.txt'.*\.jsonl, \.json, \.csv, \.parquet",
    ):
        load_records(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(HeadattrError, match="not found"):
        load_records(tmp_path / "missing.jsonl")
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    with pytest.raises(HeadattrError, match="is a directory"):
        load_records(folder)


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_text("not parquet")
    with pytest.raises(HeadattrError, match="not a readable Parquet file"):
        load_records(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "\xff", "answer": "b"}\n')
    with pytest.raises(HeadattrError, match="not UTF-8"):
        load_records(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n\n")
    with pytest.raises(HeadattrError, match="no rows"):
        load_records(path)


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(HeadattrError, match="unknown data format 'alpaca'.*prompt-answer"):
        records_for(tmp_path, ROWS, fmt="alpaca")


def test_missing_field_names_field_row_and_fix(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "answer": "b"}, {"question": "a", "answer": "b"}]
    with pytest.raises(
        HeadattrError,
        match=r"line 2 \(row 1\): no field 'prompt'; the row has fields 'question', 'answer'; "
        r"pass --prompt-field/--answer-field",
    ):
        records_for(tmp_path, rows)
    with pytest.raises(HeadattrError, match=r"d\.json row 0: no field 'out'"):
        records_for(tmp_path, rows, "d.json", answer_field="out")
    with pytest.raises(HeadattrError, match="no field 'text'"):
        records_for(tmp_path, rows, fmt="text")
    with pytest.raises(HeadattrError, match="row 0.*no field 'question'"):
        records_for(tmp_path, rows, fmt="gsm8k")


def test_missing_stratify_field(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "answer": "b", "level": "1"}, {"prompt": "a", "answer": "b"}]
    with pytest.raises(HeadattrError, match=r"line 2 \(row 1\): no field 'level' to stratify by"):
        records_for(tmp_path, rows, stratify_by="level")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "", "answer": "b"}, r"row 0\): the prompt is empty"),
        ({"prompt": "a", "answer": "  \n"}, r"row 0\): the answer is empty"),
        ({"prompt": "a", "answer": 4}, r"row 0\): field 'answer' is a int, expected a string"),
        ({"prompt": ["a"], "answer": "b"}, r"field 'prompt' is a list"),
        ({"prompt": None, "answer": "b"}, r"field 'prompt' is null"),
    ],
)
def test_bad_values(tmp_path: Path, row: dict, message: str) -> None:
    with pytest.raises(HeadattrError, match=message):
        records_for(tmp_path, [row])


def test_empty_csv_cell(tmp_path: Path) -> None:
    with pytest.raises(HeadattrError, match=r"d\.csv line 2 \(row 0\): the answer is empty"):
        records_for(tmp_path, [{"prompt": "a", "answer": ""}], "d.csv")


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([{"role": "user", "content": "a"}], "no assistant turn"),
        ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}], "no user turn"),
        ([{"role": "user", "content": "a"}, {"role": "assistant"}], r"message 1: .*string 'content'"),
        (["hello"], r"message 0: a message must be an object"),
        ("user: a", r"field 'messages' is a str, expected a list"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}], "the answer is empty"),
    ],
)
def test_bad_messages(tmp_path: Path, messages: object, message: str) -> None:
    with pytest.raises(HeadattrError, match=message):
        records_for(tmp_path, [{"messages": messages}], fmt="messages")
