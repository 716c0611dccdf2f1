"""Scoring of generated answers, `prune --eval generate`, and the `headattr generate` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from headattr.cli import main
from headattr.data.samples import build_samples
from headattr.demo import DATA_FILE, MODEL_DIR
from headattr.engine.masking import MaskConfig
from headattr.errors import HeadattrError
from headattr.generation.sampling import completion_text, generate
from headattr.generation.scoring import accuracy, last_number, parse_task
from headattr.generation.taskeval import GenerationEval, generation_correct
from headattr.methods import GateIGConfig
from headattr.models import load_model
from headattr.pruning.outputs import write_outputs
from headattr.pruning.plan import gate_matrix
from headattr.pruning.runner import prune
from headattr.pruning.samples import select_eval_samples
from headattr.pruning.text import format_task
from headattr.runs.attribution import attribute
from headattr.runs.rundir import read_run
from headattr.stats.intervals import wilson_interval

SETTINGS = {"max_new_tokens": 4, "steps": 2, "alg": "maskgit_plus"}


# ---------------------------------------------------------------- scoring


def test_gsm8k_strict_and_flexible():
    task = parse_task("gsm8k")
    gold = "She pays 3 * 4 = 12 dollars.\n#### 1,200"
    assert task.score("so the total is #### 1200.", gold) == {"strict": True, "flexible": True}
    assert task.score("The answer is $1,200.00", gold) == {"strict": False, "flexible": True}
    assert task.score("#### 1200 and then 7", gold) == {"strict": True, "flexible": False}
    assert task.score("no number", gold) == {"strict": False, "flexible": False}
    assert task.score("#### -3.50", "#### -3.5")["strict"]
    assert last_number("a 7.0 b") == "7" and last_number("none") is None


def test_exact_contains_regex():
    assert parse_task("exact").score("  the   cat\n", "the cat") == {"exact": True}
    assert parse_task("exact").score("the cat sat", "the cat") == {"exact": False}
    assert parse_task("contains").score("so: the  cat sat", "the cat") == {"contains": True}
    assert parse_task("regex:answer is (\\w+)").score("the answer is 42!", "42") == {"regex": True}
    assert parse_task("regex:answer is (\\w+)").score("the answer is 41!", "42") == {"regex": False}
    assert parse_task("regex:^\\d+$").score("123", "whatever") == {"regex": True}
    for bad in ("gsm", "regex:", "regex:(("):
        with pytest.raises(HeadattrError):
            parse_task(bad)


def test_wilson_interval():
    low, high = wilson_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)  # the textbook value
    z2 = 1.959963984540054**2
    assert wilson_interval(0, 20) == (0.0, pytest.approx(z2 / (20 + z2)))  # closed form at 0 successes
    assert wilson_interval(20, 20)[1] == 1.0 and wilson_interval(0, 0) == (0.0, 1.0)
    a = accuracy([True, False, True, True])
    assert a["accuracy"] == 0.75 and a["correct"] == 3 and a["low"] < 0.75 < a["high"]


# ---------------------------------------------------------------- generation under gate configurations


@pytest.fixture(scope="module")
def builtin():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model(MODEL_DIR)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_run(builtin, tmp_path_factory):
    samples, _ = build_samples(DATA_FILE, builtin.tokenizer, samples=4, seed=3)
    out = tmp_path_factory.mktemp("gen-run") / "run"
    masking = MaskConfig(mask_probs=(0.5,), mask_samples_per_prob=1)
    attribute(builtin, samples, GateIGConfig(ig_steps=2), masking, out=out, progress=False)
    return read_run(out)


def test_generation_correct_equals_a_plain_loop(builtin, demo_run):
    samples = select_eval_samples(builtin, demo_run, n=5, seed=0).samples
    configs = np.stack([gate_matrix(6, 8, []), gate_matrix(6, 8, [(0, 1), (0, 2), (3, 4)])])
    evaluation = GenerationEval.from_text("contains", SETTINGS, batch_size=3)
    got = generation_correct(builtin, samples, configs, evaluation)["contains"]
    for c, removed in enumerate([[], [(0, 1), (0, 2), (3, 4)]]):
        for n, s in enumerate(samples):
            prompt = list(s.input_ids[: s.answer_start])
            out = generate(builtin, prompt, head_mask=removed, **SETTINGS)[0, len(prompt) :]
            answer = builtin.tokenizer.decode(list(s.input_ids[s.answer_start :]))
            assert got[c, n] == (answer in completion_text(builtin, out))


def test_prune_with_generation(builtin, demo_run, tmp_path):
    samples = select_eval_samples(builtin, demo_run, n=5, seed=0).samples
    evaluation = GenerationEval.from_text("contains", SETTINGS)
    result = prune(
        builtin, demo_run, samples, fractions=(0.1, 0.3), random_orders=2, progress=False, generation=evaluation
    )
    assert "task_contains" in result.metrics
    for i, heads in enumerate(result.removed["most"][0]):
        expected = generation_correct(builtin, samples, gate_matrix(6, 8, heads)[None], evaluation)["contains"]
        assert result.curves["most"]["task_contains"][i] == expected.mean()
    paths = write_outputs(result, tmp_path)
    data = json.loads(paths["pruning.json"].read_text())
    task = data["task"]
    assert task["interval"].startswith("Wilson") and task["settings"]["alg"] == "maskgit_plus"
    base = task["baseline"]["task_contains"]
    assert base["low"] <= base["accuracy"] <= base["high"]
    assert len(task["curves"]["random"]["task_contains"]["low"]) == 2  # one row per random order
    assert data["baseline"]["task_contains"] == base["accuracy"]
    assert any("95% Wilson" in line for line in format_task(result)) and paths["pruning_curve.png"].stat().st_size


# ---------------------------------------------------------------- the command line


def test_cli_generate_prints_and_writes_jsonl(tmp_path, capsys):
    args = [
        "generate",
        str(MODEL_DIR),
        "--threads",
        "1",
        "--max-new-tokens",
        "6",
        "--steps",
        "6",
        "--alg",
        "maskgit_plus",
    ]
    assert main([*args, "--prompt", "copy:abcdef=", "--prompt", "rev:abc="]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and printed[0].startswith("abcdef")
    out = tmp_path / "gen.jsonl"
    assert main([*args, "--data", str(DATA_FILE), "--samples", "3", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and {"prompt", "answer", "completion", "prompt_ids", "completion_ids"} <= set(rows[0])
    assert len(rows[0]["generated_ids"]) == 6
    assert main([*args, "--data", str(DATA_FILE), "--samples", "3", "--out", str(out)]) == 2  # no silent overwrite


def test_cli_generate_with_head_mask_and_errors(builtin, demo_run, tmp_path, capsys):
    samples = select_eval_samples(builtin, demo_run, n=3, seed=0).samples
    result = prune(builtin, demo_run, samples, fractions=(0.2,), random_orders=1, progress=False)
    mask = write_outputs(result, tmp_path)["head_mask.json"]
    base = ["generate", str(MODEL_DIR), "--prompt", "copy:abcdef=", "--max-new-tokens", "6", "--steps", "3"]
    assert main([*base, "--head-mask", str(mask), "--fraction", "0.2", "--order", "most"]) == 0
    pruned = capsys.readouterr().out
    removed = result.removed["most"][0][0]
    ids = [builtin.tokenizer.bos_token_id, *builtin.tokenizer.encode("copy:abcdef=", add_special_tokens=False)]
    expected = completion_text(builtin, generate(builtin, ids, head_mask=removed, max_new_tokens=6, steps=3)[0, -6:])
    assert pruned == expected + "\n"
    for extra, words in (
        (["--gen-length", "6", "--block-length", "2"], "LLaDA setting"),
        (["--head-mask", str(mask), "--fraction", "0.7"], "no fraction 0.7"),
        (["--fraction", "0.2"], "go together"),
        (["--data", str(DATA_FILE)], "one of them"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("headattr: error:") and words in err and err.count("\n") == 1


def test_cli_prune_eval_generate(demo_run, tmp_path, capsys):
    args = [
        "prune",
        str(MODEL_DIR),
        "--scores",
        str(demo_run.path),
        "--out",
        str(tmp_path / "p"),
        "--threads",
        "1",
        "--fractions",
        "0.1",
        "--random-orders",
        "1",
        "--eval-samples",
        "3",
        "--quiet",
    ]
    assert main([*args, "--eval", "generate", "--task", "exact", "--max-new-tokens", "4", "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "generated answers, task exact" in printed
    assert json.loads((tmp_path / "p/pruning.json").read_text())["task"]["settings"]["max_new_tokens"] == 4
    assert main([*args, "--overwrite", "--steps", "2"]) == 2
    assert "need --eval generate" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--eval", "generate", "--task", "nope"]) == 2
    assert "unknown --task" in capsys.readouterr().err


def test_cli_generate_scores_with_task(tmp_path, capsys):
    args = [
        "generate",
        str(MODEL_DIR),
        "--threads",
        "1",
        "--data",
        str(DATA_FILE),
        "--samples",
        "4",
        "--max-new-tokens",
        "4",
        "--steps",
        "2",
        "--task",
        "contains",
        "--group-by",
        "task",
    ]
    out = tmp_path / "scored.jsonl"
    assert main([*args, "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    hits = sum(r["answer"] in r["completion"] for r in rows)
    assert lines[1].startswith(f"contains contains all: {hits / 4:.3f} ({hits}/4;") and "95% Wilson" in lines[1]
    assert len(lines) == 2 + len({r["group"] for r in rows})
    assert main(["generate", str(MODEL_DIR), "--prompt", "x", "--task", "exact"]) == 2


def test_demo_judges_generated_answers_only_for_a_model_trained_with_eos(tmp_path):
    from headattr.demo.run import demo_generation

    shipped = demo_generation(MODEL_DIR)  # the built-in model was trained with a 12-token EOS window
    assert shipped.task.name == "exact" and shipped.settings["max_new_tokens"] == 12
    assert demo_generation(tmp_path) is None  # no training_args.json: no EOS window known
    (tmp_path / "training_args.json").write_text(json.dumps({"eos_window": 0}))  # trained without EOS
    assert demo_generation(tmp_path) is None
    (tmp_path / "training_args.json").write_text(json.dumps({"eos_window": 8}))
    assert demo_generation(tmp_path).settings == {"max_new_tokens": 8, "steps": 8, "alg": "maskgit_plus"}
