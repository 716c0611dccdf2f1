"""`headattr.generation.completions`, the API behind `headattr generate`: the command prints what it returns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from headattr.cli import main
from headattr.data.records import load_records
from headattr.data.tokens import tokenize_record
from headattr.errors import HeadattrError
from headattr.generation.completions import accuracies, complete, dataset_prompts, score, text_prompts
from headattr.generation.sampling import completion_text, generate
from headattr.generation.scoring import parse_task
from headattr.models import load_model

SETTINGS = {"max_new_tokens": 4, "steps": 4, "temperature": 0.5}
FLAGS = ["--threads", "1", "--max-new-tokens", "4", "--steps", "4", "--temperature", "0.5", "--seed", "3"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    rows = [
        {"prompt": f"k{i}=v{i % 7};k{i}?", "answer": f"v{i % 7}", "task": "kv" if i % 2 else "copy"} for i in range(8)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def spec(dream_dir):
    torch.set_num_threads(1)
    return load_model(dream_dir)  # as the command line loads it: float32 on the CPU


def test_prompts_are_built_as_the_data_pipeline_builds_them(spec, data_file):
    (text,) = text_prompts(spec, ["k1=v1;k1?"])
    bos = spec.tokenizer.bos_token_id
    assert text.prompt_ids == [bos, *spec.tokenizer.encode("k1=v1;k1?", add_special_tokens=False)]
    rows = dataset_prompts(spec, data_file, samples=3, seed=3, group_by="task")
    records = {r.index: r for r in load_records(data_file, stratify_by="task")}
    assert len(rows) == 3 and [r.index for r in rows] == sorted(r.index for r in rows)
    for row in rows:
        sample = tokenize_record(records[row.index], spec.tokenizer, max_length=2048)
        assert row.prompt_ids == list(sample.input_ids[: sample.answer_start])  # the prompt an attribution scored
        assert (row.answer, row.group) == (records[row.index].answer, records[row.index].group)
    assert rows[0].to_dict() == {
        "index": rows[0].index,
        "prompt": rows[0].prompt,
        "answer": rows[0].answer,
        "prompt_ids": rows[0].prompt_ids,
        "group": rows[0].group,
    }


def test_complete_is_generate_cut_at_eos(spec):
    (row,) = complete(spec, text_prompts(spec, ["k2=v2;k2?"]), seed=3, **SETTINGS)
    ids = generate(spec, row.prompt_ids, seed=3, **SETTINGS)[0, len(row.prompt_ids) :]
    assert row.generated_ids == ids.tolist() and row.completion == completion_text(spec, ids)
    with pytest.raises(HeadattrError, match="--batch-size"):
        complete(spec, [row], batch_size=0)


def test_the_command_prints_what_the_api_returns(spec, dream_dir, data_file, tmp_path, capsys):
    prompts = ["k1=v1;k1?", "k3=v3;k3?", "k5=v5;k5?"]
    expected = complete(spec, text_prompts(spec, prompts), batch_size=2, seed=3, **SETTINGS)
    args = ["generate", str(dream_dir), *FLAGS, "--batch-size", "2"]
    assert main([*args, *(x for p in prompts for x in ("--prompt", p))]) == 0
    assert capsys.readouterr().out == "".join(c.completion + "\n" for c in expected)

    rows = dataset_prompts(spec, data_file, samples=5, seed=3, group_by="task")
    rows = score(complete(spec, rows, batch_size=2, seed=3, **SETTINGS), "contains")
    out = tmp_path / "scored.jsonl"
    data = ["--data", str(data_file), "--samples", "5", "--task", "contains", "--group-by", "task", "--out", str(out)]
    assert main([*args, *data]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == [r.to_dict() for r in rows]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"wrote {out} (5 completions)"
    summary = [(metric, group, a["correct"], a["n"]) for metric, group, a in accuracies(rows, parse_task("contains"))]
    assert [line.split(":")[0] for line in lines[1:]] == [f"contains {m} {g}" for m, g, _, _ in summary]
    assert [line.split("(")[1].split(";")[0] for line in lines[1:]] == [f"{k}/{n}" for _, _, k, n in summary]
