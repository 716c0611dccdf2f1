"""`headattr sparse`: allocations at one budget, the evaluation through an injected generate function (a
deterministic fake here), sparse.json, the figure, the report in every language, and the command's errors."""

from __future__ import annotations

import json
import math
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from headattr.cli import main
from headattr.data.records import Record, content_uid
from headattr.data.tokens import tokenize_record
from headattr.engine.sparse_schedule import MaskStore, SparseAttention, StoredMask, row_densities
from headattr.errors import HeadattrError
from headattr.generation.scoring import parse_task
from headattr.reports import sparse as sparse_report
from headattr.reports.sparse import REPORT_FILE, render_sparse, write_sparse_outputs
from headattr.reports.strings import LANGS, table
from headattr.sparsity import evaluate as evaluate_module
from headattr.sparsity.allocations import allocation_keep
from headattr.sparsity.evaluate import evaluate_sparse
from headattr.sparsity.outputs import FIGURE_FILE, SPARSE_FILE, read_sparse
from headattr.sparsity.results import build_result
from headattr.sparsity.settings import SparseEvalSettings
from headattr.stats.paired import VERDICTS

GENERATION = {"max_new_tokens": 8}
ROWS = [
    ("add 3 and 4?", "7"),
    ("what is 2+2?", "4"),
    ("the capital?", "paris"),
    ("count to three", "1,2,3"),
    ("say yes", "yes"),
    ("double 21?", "42"),
    ("spell cat", "c-a-t"),
    ("half of 10?", "5"),
    ("a long prompt with more words than the others?", "ok"),
    ("last one", "done"),
]


# ---------------------------------------------------------------- allocations


def units(keep: np.ndarray, group: int) -> np.ndarray:
    """One ratio per allocation unit (a KV group's query heads share it), checked to be shared."""
    grouped = keep.reshape(keep.shape[0], -1, group)
    assert (grouped == grouped[:, :, :1]).all()
    return grouped[:, :, 0].ravel()


@pytest.mark.parametrize("gqa,kv_heads,group", [("kv", 2, 4), ("q", None, 1), ("q", 2, 1)])
@pytest.mark.parametrize("select", [0.1, 0.3, 0.5])
def test_every_allocation_spends_the_same_budget(gqa, kv_heads, group, select):
    scores = np.random.default_rng(7).normal(size=(5, 8))
    kw = {"min_keep": 0.1, "gqa": gqa, "kv_heads": kv_heads, "seed": 3}
    adaptive = allocation_keep("adaptive", scores, select, **kw)
    rule = SparseAttention(select=select, min_keep=0.1, gqa=gqa).from_scores(scores, kv_heads)
    assert np.array_equal(adaptive, np.asarray(rule.keep))
    reference = np.sort(units(adaptive, group))
    for name, draw in [("inverted", 0), ("random", 0), ("random", 1)]:
        other = allocation_keep(name, scores, select, draw=draw, **kw)
        assert np.array_equal(np.sort(units(other, group)), reference)  # a permutation: the same multiset
        assert math.fsum(other.ravel()) == math.fsum(adaptive.ravel())  # so the same mean, exactly
    uniform = allocation_keep("uniform", scores, select, **kw)
    assert np.ptp(uniform) == 0 and abs(uniform.mean() - adaptive.mean()) < 1e-12
    assert not np.array_equal(allocation_keep("random", scores, select, draw=0, **kw), adaptive)
    assert not np.array_equal(
        allocation_keep("random", scores, select, draw=0, **kw), allocation_keep("random", scores, select, draw=1, **kw)
    )


def test_inverted_gives_the_largest_ratios_to_the_lowest_scores():
    scores = np.random.default_rng(1).normal(size=(4, 6))
    inverted = allocation_keep("inverted", scores, 0.3, gqa="q")
    flat_s, flat_k = scores.ravel(), inverted.ravel()
    for i in range(flat_s.size):  # every pair of heads: a lower score never has a smaller ratio
        for j in range(flat_s.size):
            if flat_s[i] < flat_s[j]:
                assert flat_k[i] >= flat_k[j]
    adaptive = allocation_keep("adaptive", scores, 0.3, gqa="q")
    assert flat_k[np.argmin(flat_s)] == adaptive.max() and flat_k[np.argmax(flat_s)] == adaptive.min()


def test_random_draws_are_one_permutation_across_budgets():
    scores = np.random.default_rng(2).normal(size=(3, 4))
    perm = np.random.default_rng([5, 1]).permutation(12)  # the documented generator of draw 1 under seed 5
    for select in (0.2, 0.5):
        adaptive = allocation_keep("adaptive", scores, select, gqa="q")
        shuffled = allocation_keep("random", scores, select, gqa="q", seed=5, draw=1)
        assert np.array_equal(shuffled.ravel(), adaptive.ravel()[perm])


def test_row_densities_count_each_row_on_its_own_blocks():
    from headattr.engine.sparse_schedule import row_densities

    rng = np.random.default_rng(0)
    blocks = torch.as_tensor(rng.random((3, 2, 4, 4)) < 0.5)  # [B, H, n, n], block size 2: up to 8 tokens
    valid = torch.zeros(3, 8, dtype=torch.bool)
    for b, real in enumerate((8, 5, 2)):  # left padding: 4, 3 and 1 real blocks
        valid[b, 8 - real :] = True
    other = torch.as_tensor(rng.random((3, 2, 4, 4)) < 0.5)
    store = MaskStore({0: StoredMask(blocks, valid), 3: StoredMask(other, valid)})
    expected = []
    for b, n in enumerate((4, 3, 1)):  # a plain loop over the row's own blocks, then the mean over layers
        per_layer = []
        for m in (blocks, other):
            cells = [bool(m[b, h, i, j]) for h in range(2) for i in range(n) for j in range(n)]
            per_layer.append(sum(cells) / len(cells))
        expected.append(sum(per_layer) / 2)
    assert row_densities(store, 2) == pytest.approx(expected, abs=1e-12)
    assert row_densities(MaskStore({0: StoredMask(blocks)}), 2) == pytest.approx(
        blocks.float().mean(dim=(1, 2, 3)).tolist()
    )
    assert row_densities(MaskStore(), 2) == []


def test_settings_errors_are_one_line():
    with pytest.raises(HeadattrError, match="--select 1.5"):
        SparseEvalSettings(selects=(0.3, 1.5))
    with pytest.raises(HeadattrError, match="unknown allocation 'sorted'"):
        SparseEvalSettings(allocations=("adaptive", "sorted"))
    with pytest.raises(HeadattrError, match="twice"):
        SparseEvalSettings(allocations=("adaptive", "adaptive"))
    with pytest.raises(HeadattrError, match="--sparse-gqa"):
        SparseEvalSettings(gqa="x")
    assert SparseEvalSettings.from_meta(SparseEvalSettings(selects=(0.2,)).to_meta()) == SparseEvalSettings(
        selects=(0.2,)
    )


# ---------------------------------------------------------------- the evaluation with a fake generate


def keep_key(sparse: SparseAttention | None) -> bytes:
    return b"dense" if sparse is None else np.asarray(sparse.keep, dtype=np.float64).tobytes()


def right(prompt: list[int], sparse: SparseAttention | None) -> bool:
    """The fake model's rule: a fixed pseudo-random function of the prompt and the keep ratios."""
    return zlib.crc32(bytes(str(prompt), "utf-8") + keep_key(sparse)) % 10 < 6


def blocks_kept(sparse: SparseAttention) -> int:
    return int(round(10 * float(np.mean(sparse.keep))))


class FakeGenerate:
    """Answers a prompt right or wrong by `right`, reports masks of density blocks_kept / 10, counts calls."""

    def __init__(self, answers: dict[tuple[int, ...], list[int]]):
        self.answers, self.calls = answers, []

    def __call__(self, spec, prompt_ids, *, sparse, seed, on_usage, max_new_tokens):
        self.calls.append((len(prompt_ids), sparse is not None, seed))
        width = max(len(p) for p in prompt_ids)
        rows = []
        for p in prompt_ids:
            gen = list(self.answers[tuple(p)]) + (
                [] if right(p, sparse) else [spec.tokenizer.convert_tokens_to_ids("x")]
            )
            gen = (gen + [2] * max_new_tokens)[:max_new_tokens]  # 2: eos
            rows.append([0] * (width - len(p)) + list(p) + gen)
        if on_usage is not None:
            store = MaskStore()
            blocks = torch.zeros(len(prompt_ids), 1, 1, 10, dtype=torch.bool)
            blocks[..., : blocks_kept(sparse)] = True
            store.put(0, blocks)
            on_usage(row_densities(store, 10))
        return torch.tensor(rows)


@pytest.fixture(scope="module")
def samples(dream):
    records = [Record(i, p, a, None, content_uid(p, a)) for i, (p, a) in enumerate(ROWS)]
    return [tokenize_record(r, dream.tokenizer, 128) for r in records]


@pytest.fixture(scope="module")
def evaluated(dream, samples):
    scores = np.random.default_rng(0).normal(size=(dream.num_layers, dream.num_heads))
    settings = SparseEvalSettings(selects=(0.2, 0.5), random_draws=2, block_size=4, resamples=500)
    fake = FakeGenerate({tuple(s.input_ids[: s.answer_start]): list(s.input_ids[s.answer_start :]) for s in samples})
    outcomes = evaluate_sparse(
        dream, scores, samples, parse_task("exact"), settings, generation=GENERATION, seed=3, batch_size=4,
        generate_fn=fake,
    )  # fmt: skip
    return scores, settings, fake, outcomes


def test_each_configuration_is_scored_item_by_item(dream, samples, evaluated):
    scores, settings, fake, outcomes = evaluated
    names = [o.configuration.name for o in outcomes]
    assert names[0] == "dense" and len(names) == 1 + 2 * (3 + 2)
    assert "random#1@0.5" in names and "inverted@0.2" in names
    for o in outcomes:
        sparse = None if o.configuration.keep is None else SparseAttention(keep=o.configuration.keep)
        expected = [right(list(s.input_ids[: s.answer_start]), sparse) for s in samples]
        assert o.correct["exact"].tolist() == expected, o.configuration.name
        assert o.generated == len(samples) * GENERATION["max_new_tokens"] and o.seconds > 0
        if sparse is None:
            assert o.budget_used == 1.0 and o.densities == []
        else:
            assert o.budget_used == pytest.approx(blocks_kept(sparse) / 10)
            assert len(o.densities) == len(samples)  # one per row of each generate call
    assert all(seed == 3 for _, _, seed in fake.calls) and max(b for b, _, _ in fake.calls) == 4
    assert 0 < np.mean([o.correct["exact"].mean() for o in outcomes]) < 1  # the rule gives both outcomes


def test_sparse_json_round_trip_and_files(dream, evaluated, tmp_path):
    _, settings, _, outcomes = evaluated
    result = build_result(outcomes, settings, "exact", {"model": {"name": dream.name}, "generation": GENERATION})
    paths = write_sparse_outputs(result, tmp_path / "out", "en")
    assert set(paths) == {SPARSE_FILE, FIGURE_FILE, REPORT_FILE}
    assert paths[FIGURE_FILE].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = json.loads(paths[SPARSE_FILE].read_text(encoding="utf-8"))
    again = read_sparse(tmp_path / "out")
    assert again.to_dict() == written == json.loads(json.dumps(result.to_dict()))
    assert again.settings == settings and again.records[3].keep.shape == (dream.num_layers, dream.num_heads)
    pairs = {(c["a"], c["b"]) for c in written["comparisons"]}
    assert pairs == {("adaptive@0.2", "uniform@0.2"), ("adaptive@0.2", "dense")} | {
        ("adaptive@0.5", "uniform@0.5"),
        ("adaptive@0.5", "dense"),
    }
    dense = written["configurations"][0]
    k = sum(dense["correct"]["exact"])
    assert dense["accuracy"]["exact"]["correct"] == k and dense["accuracy"]["exact"]["n"] == len(ROWS)
    with pytest.raises(HeadattrError, match="does not exist"):
        read_sparse(tmp_path / "missing.json")


@pytest.mark.parametrize("lang", LANGS)
def test_the_report_renders_in_every_language(dream, evaluated, lang):
    _, settings, _, outcomes = evaluated
    summary = build_result(outcomes, settings, "exact", {"model": {"name": dream.name}}).to_dict()
    text = render_sparse(summary, lang)
    t = table(lang, "sparse")
    assert text.startswith(t["title"]) and t["speed_heading"] in text
    first = summary["comparisons"][0]
    assert f"{first['difference']:+.3f}" in text and f"{first['p_value']:.3g}" in text
    verdicts = {t["verdict_" + v.replace(" ", "_")].format(a=c["a"], b=c["b"]) for c in summary["comparisons"]
                for v in [c["verdict"]]}  # fmt: skip
    assert all(v in text for v in verdicts)
    a = summary["configurations"][0]["accuracy"]["exact"]
    assert f"[{a['low']:.3f}, {a['high']:.3f}]" in text


def test_the_keys_the_sparse_report_names_exist():
    source = Path(sparse_report.__file__).read_text(encoding="utf-8")
    keys = set(re.findall(r"""\bt\[["']([a-z_]+)["']\]""", source))
    keys |= set(re.findall(r"""\bt\.format\(\s*["']([a-z_]+)["']""", source))
    keys |= {"verdict_" + v.replace(" ", "_") for v in VERDICTS}
    assert len(keys) > 10
    for lang in LANGS:
        assert keys <= set(table(lang, "sparse")), keys - set(table(lang, "sparse"))


# ---------------------------------------------------------------- the command


@pytest.mark.parametrize(
    "args,message",
    [
        (["--select", "0.1,abc"], "--select must be comma-separated numbers"),
        (["--select", "0"], "--select 0: give mean keep ratios in (0, 1]"),
        (["--allocations", "adaptive,bogus"], "unknown allocation 'bogus'"),
        (["--task", "nope"], "unknown --task 'nope'"),
        (["--sparse-min-keep", "2"], "--sparse-min-keep 2"),
        (["--random-draws", "0"], "--random-draws"),
        (["--lang", "fr"], "--lang"),
    ],
)
def test_command_errors_are_one_line(tmp_path, capsys, args, message):
    code = main(["sparse", "model", "--scores", str(tmp_path / "run"), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("headattr: error:") and message in err and "\n" not in err


def test_command_refuses_a_full_out_dir(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("x")
    assert main(["sparse", "model", "--scores", "run", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_command_end_to_end_with_a_fake_generate(dream, dream_dir, tmp_path, capsys, monkeypatch):
    """Run, held-out items, evaluation, files: everything but the model's sparse attention (a fake here)."""
    from headattr.runs.rundir import read_run
    from headattr.testing import make_run, standard_signal

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in ROWS), encoding="utf-8")
    used = [content_uid(*ROWS[0]), content_uid(*ROWS[1])]  # two rows are the run's own samples
    run = tmp_path / "run"
    signal = standard_signal(dream.num_layers, dream.num_heads)
    make_run(run, signal, 0.1, n=2, v=1, config_hash=dream.config_hash, sample_ids=used)
    # make_run hashes its sample ids; store the rows' uids instead, as a real run records them
    meta = json.loads((run / "run.json").read_text())
    for record, uid in zip(meta["samples"], used, strict=True):
        record["hash"] = uid
    (run / "run.json").write_text(json.dumps(meta))

    def fake(spec, prompt_ids, *, sparse, seed, on_usage, **settings):
        """An empty completion (right under `regex:^$`) where `right` says so, else "x"; masks of density 1."""
        first = [2 if right(p, sparse) else spec.tokenizer.convert_tokens_to_ids("x") for p in prompt_ids]
        width, n = max(map(len, prompt_ids)), settings["max_new_tokens"]
        if on_usage is not None:
            on_usage(row_densities(MaskStore({0: StoredMask(torch.ones(1, 1, 1, 2, dtype=torch.bool))}), 2))
        return torch.tensor(
            [[0] * (width - len(p)) + p + [f] + [2] * (n - 1) for p, f in zip(prompt_ids, first, strict=True)]
        )

    monkeypatch.setattr(evaluate_module, "sampling_generate", fake)
    out = tmp_path / "out"
    argv = [
        "sparse",
        str(dream_dir),
        "--scores",
        str(run),
        "--data",
        str(data),
        "--task",
        "regex:^$",
        "--out",
        str(out),
    ]
    argv += ["--select", "0.3", "--allocations", "adaptive,uniform", "--max-new-tokens", "4", "--lang", "zh"]
    assert main(argv + ["--quiet"]) == 0, capsys.readouterr().err
    summary = read_sparse(out).to_dict()
    assert summary["eval"]["samples"] == len(ROWS) - 2 and summary["eval"]["excluded_attribution_rows"] == 2
    assert not set(used) & set(summary["eval"]["uids"])
    assert [c["name"] for c in summary["configurations"]] == ["dense", "adaptive@0.3", "uniform@0.3"]
    assert summary["generation"]["settings"]["max_new_tokens"] == 4
    assert [c["budget_used"] for c in summary["configurations"]] == [1.0, 1.0, 1.0]
    assert read_run(run).meta["samples"][0]["hash"] == used[0]
    assert (out / REPORT_FILE).read_text(encoding="utf-8").startswith(table("zh", "sparse")["title"])
    printed = capsys.readouterr().out
    assert "adaptive@0.3 vs uniform@0.3" in printed and f"wrote {out / SPARSE_FILE}" in printed


def test_cli_defaults_are_the_settings_defaults():
    import click

    from headattr.cli.app import cli
    from headattr.cli.sparse import _settings

    command = cli.commands["sparse"]
    ctx = click.Context(command)
    defaults = {p.name: p.get_default(ctx) for p in command.params}
    assert _settings(defaults) == SparseEvalSettings()


# ---------------------------------------------------------------- with headattr.generate's sparse attention


def test_with_the_real_sampler(dream, samples):
    """The real generate: keep 1 for every head (min_keep 1) gives the dense answers, item by item."""
    settings = SparseEvalSettings(
        selects=(1.0,), allocations=("adaptive", "uniform"), min_keep=1.0, block_size=2, kernel="sdpa"
    )
    scores = np.random.default_rng(0).normal(size=(dream.num_layers, dream.num_heads))
    gen = {"max_new_tokens": 6, "steps": 6}
    outcomes = evaluate_sparse(dream, scores, samples[:4], parse_task("contains"), settings, generation=gen)
    dense = outcomes[0].correct["contains"]
    for o in outcomes[1:]:
        assert np.array_equal(o.correct["contains"], dense), o.configuration.name  # keep 1: nothing masked
        assert o.budget_used == pytest.approx(1.0)
