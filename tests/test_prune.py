"""Tests of `headattr.prune`: removal orders and fractions, evaluation, held-out samples, faithfulness, CLI.

The check that the right heads are removed does not trust the gates: it compares `evaluate` under the
chosen gates with the same model whose removed heads' input columns of the output projection are zeroed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from headattr.cli import main
from headattr.data.samples import build_samples
from headattr.engine import core
from headattr.engine.masking import MaskConfig
from headattr.errors import HeadattrError
from headattr.generation.decode import unmask_decode
from headattr.methods import GateIGConfig
from headattr.methods.reference import full_logits
from headattr.models import load_model
from headattr.pruning.evaluation import Metrics, eval_masking, evaluate
from headattr.pruning.plan import gate_matrix
from headattr.pruning.results import PruneResult
from headattr.pruning.runner import prune
from headattr.pruning.samples import run_uids, select_eval_samples
from headattr.pruning.text import format_verdict_row
from headattr.runs.attribution import attribute
from headattr.runs.compute import attribute_sample
from headattr.runs.headmask import head_order, heads_to_remove, num_to_remove, random_rng
from headattr.runs.rundir import read_run
from headattr.stats.curves import curve_area

RUN_SAMPLES = 6
METHOD = GateIGConfig(ig_steps=2)
MASKING = MaskConfig(mask_probs=(0.3, 0.7), mask_samples_per_prob=2, mask_seed=5)


# ---------------------------------------------------------------- fixtures


def _write_data(path: Path, rows: int = 40) -> Path:
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(rows):
            text = "".join(rng.choice("abcdef") for _ in range(rng.randint(3, 5)))
            f.write(json.dumps({"prompt": f"copy {text}=", "answer": text, "task": "copy"}) + "\n")
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_data(tmp_path_factory.mktemp("prune-data") / "copy.jsonl")


@pytest.fixture(scope="module")
def run_dir(dream, dream_dir: Path, data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An attribution run of the tiny Dream model made from the Python API (its samples record their data)."""
    samples, _ = build_samples(data_file, dream.tokenizer, samples=RUN_SAMPLES, seed=1)
    out = tmp_path_factory.mktemp("prune-run") / "run"
    attribute(dream, samples, METHOD, MASKING, out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def run(run_dir: Path):
    return read_run(run_dir)


@pytest.fixture(scope="module")
def eval_samples(dream, run):
    return select_eval_samples(dream, run, n=5, seed=0).samples


def _zeroed_copy(dream_dir: Path, removed: list[tuple[int, int]]):
    """The model loaded again with the removed heads' input columns of o_proj set to zero."""
    spec = load_model(dream_dir, dtype="float64")
    d = spec.head_dim
    with torch.no_grad():
        for layer, head in removed:
            spec.head_modules[layer].weight[:, head * d : (head + 1) * d] = 0.0
    return spec


# ---------------------------------------------------------------- orders and fractions


def test_head_order_most_least_and_ties():
    scores = np.array([[0.5, 0.1, 0.5], [0.9, 0.1, -0.2]])
    # flat: 0:0.5 1:0.1 2:0.5 3:0.9 4:0.1 5:-0.2; ties go to the lower (layer, head) index first
    assert head_order(scores, "most").tolist() == [3, 0, 2, 1, 4, 5]
    assert head_order(scores, "least").tolist() == [5, 1, 4, 0, 2, 3]


def test_head_order_random_is_seeded_permutation():
    scores = np.zeros((3, 4))
    a = head_order(scores, "random", random_rng(7, 2))
    b = head_order(scores, "random", random_rng(7, 2))
    c = head_order(scores, "random", random_rng(7, 3))
    assert sorted(a.tolist()) == list(range(12))
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()
    with pytest.raises(ValueError):
        head_order(scores, "random")
    with pytest.raises(ValueError, match="unknown pruning order"):
        head_order(scores, "biggest")
    with pytest.raises(HeadattrError, match="NaN"):
        head_order(np.array([[np.nan, 1.0]]), "most")


@pytest.mark.parametrize(
    ("fraction", "count", "expected"),
    [(0.05, 48, 2), (0.1, 48, 5), (0.3, 48, 14), (0.5, 5, 3), (0.35, 10, 4), (0.25, 2, 1), (0.0, 9, 0), (1.0, 9, 9)],
)
def test_num_to_remove_rounds_half_up(fraction: float, count: int, expected: int):
    assert num_to_remove(fraction, count) == expected


def test_num_to_remove_rejects_out_of_range():
    with pytest.raises(HeadattrError, match="outside"):
        num_to_remove(1.5, 10)


def test_heads_to_remove_global_and_per_layer():
    scores = np.array([[0.0, 3.0, 1.0, 2.0], [5.0, -1.0, 4.0, 0.5], [0.2, 0.1, 0.3, 6.0]])
    # round(0.25 * 12) = 3 heads over all layers; returned sorted by (layer, head)
    assert heads_to_remove(scores, "most", 0.25) == sorted([(2, 3), (1, 0), (1, 2)])
    assert heads_to_remove(scores, "least", 0.25) == sorted([(1, 1), (0, 0), (2, 1)])
    # per layer: round(0.5 * 4) = 2 heads in every layer, ranked within the layer
    assert heads_to_remove(scores, "most", 0.5, per_layer=True) == [(0, 1), (0, 3), (1, 0), (1, 2), (2, 2), (2, 3)]
    assert heads_to_remove(scores, "least", 0.5, per_layer=True) == [(0, 0), (0, 2), (1, 1), (1, 3), (2, 0), (2, 1)]
    per_layer_random = heads_to_remove(scores, "random", 0.5, per_layer=True, rng=random_rng(0, 0))
    assert [sum(1 for layer, _ in per_layer_random if layer == i) for i in range(3)] == [2, 2, 2]


def test_random_removals_are_nested_across_fractions():
    scores = np.zeros((4, 5))
    previous: set[tuple[int, int]] = set()
    for fraction in (0.05, 0.1, 0.2, 0.3, 0.5, 1.0):
        heads = set(heads_to_remove(scores, "random", fraction, rng=random_rng(3, 1)))
        assert len(heads) == num_to_remove(fraction, 20)
        assert previous <= heads
        previous = heads


# ---------------------------------------------------------------- evaluation


def test_loss_is_the_attribution_objective(dream, run, eval_samples):
    """Unpruned loss = -J of the core (mean over variants), i.e. what attribution computes as J(1)."""
    cfg = eval_masking(run)
    assert cfg == MASKING.replace(loss_normalize="mean-masked")  # read back from run.json
    sample = eval_samples[0]
    result = attribute_sample(dream, sample, GateIGConfig(ig_steps=1), cfg)
    metrics = evaluate(dream, [sample], None, cfg)
    assert metrics.loss == pytest.approx(-result.diagnostics["j_full"].mean(), rel=1e-10)


def test_accuracy_is_argmax_at_shifted_positions(dream, run, eval_samples):
    cfg = eval_masking(run)
    per_sample = []
    for sample in eval_samples:
        accs = []
        for v in core.variants(dream, sample, cfg):
            with torch.no_grad():
                logits = full_logits(dream, v.input_ids[None])[0]
            predicted = logits[v.positions - 1].argmax(-1)  # Dream: position j predicted at j-1
            accs.append((predicted == v.labels).double().mean().item())
        per_sample.append(np.mean(accs))
    assert evaluate(dream, eval_samples, None, cfg).accuracy == pytest.approx(np.mean(per_sample), abs=1e-12)


def test_gates_remove_exactly_the_chosen_heads(dream, dream_dir, run, eval_samples):
    """evaluate() under the pruning gates equals the model with those heads' o_proj columns zeroed."""
    cfg = eval_masking(run)
    for order, fraction, per_layer in [("most", 0.3, False), ("least", 0.5, False), ("most", 0.5, True)]:
        removed = heads_to_remove(run.scores, order, fraction, per_layer)
        gated_metrics = evaluate(dream, eval_samples, gate_matrix(3, 4, removed), cfg, decode=True)
        zeroed = evaluate(_zeroed_copy(dream_dir, removed), eval_samples, None, cfg, decode=True)
        assert gated_metrics.loss == pytest.approx(zeroed.loss, rel=1e-9)
        assert gated_metrics.accuracy == pytest.approx(zeroed.accuracy, abs=1e-12)
        assert gated_metrics.exact_match == zeroed.exact_match
        other = evaluate(dream, eval_samples, gate_matrix(3, 4, removed[1:]), cfg)
        assert other.loss != pytest.approx(zeroed.loss, rel=1e-9)  # one head fewer is detectably different


def test_prune_curves_use_the_planned_heads(dream, dream_dir, run, eval_samples):
    result = prune(
        dream,
        run,
        eval_samples,
        fractions=(0.1, 0.5),
        random_orders=2,
        seed=4,
        decode=True,
        progress=False,
        batch_size=7,
    )
    cfg = eval_masking(run)
    assert result.num_removed == [1, 6]
    base = evaluate(dream, eval_samples, None, cfg, decode=True)
    assert result.baseline.loss == pytest.approx(base.loss, rel=1e-10)
    for i, fraction in enumerate(result.fractions):
        for order in ("most", "least"):
            heads = heads_to_remove(run.scores, order, fraction)
            assert result.removed[order][0][i] == heads
            zeroed = evaluate(_zeroed_copy(dream_dir, heads), eval_samples, None, cfg, decode=True)
            assert result.curves[order]["loss"][i] == pytest.approx(zeroed.loss, rel=1e-9)
            assert result.curves[order]["accuracy"][i] == pytest.approx(zeroed.accuracy, abs=1e-12)
            assert result.curves[order]["exact_match"][i] == pytest.approx(zeroed.exact_match)
        for rep in range(2):
            heads = heads_to_remove(run.scores, "random", fraction, rng=random_rng(4, rep))
            assert result.removed["random"][rep][i] == heads
            expected = evaluate(dream, eval_samples, gate_matrix(3, 4, heads), cfg)
            assert result.curves["random"]["loss"][rep, i] == pytest.approx(expected.loss, rel=1e-10)
    summary = result.random_summary("loss")
    assert summary["mean"] == pytest.approx(result.curves["random"]["loss"].mean(0))
    d = json.loads(json.dumps(result.to_dict()))
    assert d["curves"]["random"]["loss"]["runs"][1] == pytest.approx(result.curves["random"]["loss"][1].tolist())
    assert {row["fraction"] for row in d["verdicts"]["metrics"]["loss"]["fractions"]} == {0.1, 0.5}
    assert d["verdicts"]["metrics"]["loss"]["area"]["upto"] == 0.1  # the area stops at 0.3
    mask = result.head_mask()
    assert mask["orders"]["most"]["0.5"] == [list(h) for h in result.removed["most"][0][1]]
    assert len(mask["orders"]["random"]) == 2


def test_results_do_not_depend_on_batch_size(dream, run, eval_samples):
    kwargs = {"fractions": (0.2,), "orders": ("most", "random"), "random_orders": 2, "progress": False}
    a = prune(dream, run, eval_samples[:2], batch_size=3, **kwargs)
    b = prune(dream, run, eval_samples[:2], batch_size=64, **kwargs)
    assert a.curves["most"]["loss"] == pytest.approx(b.curves["most"]["loss"], rel=1e-12)
    assert a.curves["random"]["accuracy"] == pytest.approx(b.curves["random"]["accuracy"], abs=1e-12)


def test_per_layer_prune(dream, run, eval_samples):
    result = prune(dream, run, eval_samples[:2], fractions=(0.25, 0.5), per_layer=True, random_orders=2, progress=False)
    assert result.num_removed == [3, 6]
    for order, reps in result.removed.items():
        for rep in reps:
            for heads, k in zip(rep, (1, 2), strict=True):
                assert [sum(1 for layer, _ in heads if layer == i) for i in range(3)] == [k, k, k], order


def test_rank_by_abs(dream, run, eval_samples):
    result = prune(
        dream, run, eval_samples[:1], fractions=(0.25,), orders=("most", "least"), rank_by="abs", progress=False
    )
    assert result.rank_by == "abs" and result.to_dict()["settings"]["rank_by"] == "abs"
    for order in ("most", "least"):
        assert result.removed[order][0][0] == heads_to_remove(np.abs(run.scores), order, 0.25)
    with pytest.raises(HeadattrError, match="rank-by"):
        prune(dream, run, eval_samples[:1], rank_by="square", progress=False)


def test_single_head_effects(dream, run, eval_samples):
    result = prune(dream, run, eval_samples[:3], fractions=(0.1,), orders=("most",), single_head=True, progress=False)
    cfg = eval_masking(run)
    sh = result.single_head
    delta = np.array(sh["delta_loss"])
    assert delta.shape == (3, 4)
    base = evaluate(dream, eval_samples[:3], None, cfg).loss
    for layer, head in [(0, 0), (1, 3), (2, 2)]:
        alone = evaluate(dream, eval_samples[:3], gate_matrix(3, 4, [(layer, head)]), cfg).loss
        assert delta[layer, head] == pytest.approx(alone - base, rel=1e-8, abs=1e-12)
    from scipy.stats import spearmanr

    assert sh["spearman"] == pytest.approx(spearmanr(run.scores.reshape(-1), delta.reshape(-1))[0])
    per_layer = [spearmanr(run.scores[i], delta[i])[0] for i in range(3)]
    assert sh["spearman_per_layer"] == pytest.approx(per_layer)
    assert sh["spearman_per_layer_mean"] == pytest.approx(np.mean(per_layer))
    assert sh["abs"]["spearman"] == pytest.approx(spearmanr(np.abs(run.scores).reshape(-1), delta.reshape(-1))[0])


# ---------------------------------------------------------------- held-out samples and errors


def test_eval_samples_are_disjoint_from_attribution_samples(dream, run, data_file):
    selection = select_eval_samples(dream, run, n=100, seed=0)
    uids = {s.uid for s in selection.samples}
    assert run_uids(run) and not uids & run_uids(run)
    assert selection.excluded == RUN_SAMPLES
    assert len(selection.samples) == 40 - RUN_SAMPLES  # fewer remain than asked: all of them
    again = select_eval_samples(dream, run, data=data_file, n=5, seed=0)
    assert [s.uid for s in again.samples] == [s.uid for s in select_eval_samples(dream, run, n=5, seed=0).samples]
    assert not {s.uid for s in again.samples} & run_uids(run)


def test_prune_refuses_attribution_samples(dream, run, data_file):
    own, _ = build_samples(data_file, dream.tokenizer, samples=RUN_SAMPLES, seed=1)
    with pytest.raises(HeadattrError, match="also attribution samples"):
        prune(dream, run, own[:2], progress=False)


def test_no_eval_samples_left(dream, run, data_file, tmp_path):
    used = [json.loads(line) for line in data_file.read_text().splitlines()]
    own = {s["hash"] for s in run.meta["samples"]}
    from headattr.data.records import content_uid

    only_run_rows = tmp_path / "own.jsonl"
    only_run_rows.write_text(
        "".join(json.dumps(r) + "\n" for r in used if content_uid(r["prompt"], r["answer"]) in own)
    )
    with pytest.raises(HeadattrError, match="no evaluation samples remain"):
        select_eval_samples(dream, run, eval_data=only_run_rows)


def test_model_mismatch_is_an_error(dream, run, eval_samples):
    other = read_run(run.path)
    other.meta["model"]["config_hash"] = "0" * 64
    with pytest.raises(HeadattrError, match="another model"):
        prune(dream, other, eval_samples, progress=False)


def test_bad_options(dream, run, eval_samples):
    with pytest.raises(HeadattrError, match="outside"):
        prune(dream, run, eval_samples, fractions=(0.1, 2.0), progress=False)
    with pytest.raises(HeadattrError, match="unknown pruning order"):
        prune(dream, run, eval_samples, orders=("most", "top"), progress=False)
    with pytest.raises(HeadattrError, match="random-orders"):
        prune(dream, run, eval_samples, random_orders=0, progress=False)


# ---------------------------------------------------------------- command line


def test_cli_prune(dream_dir, run_dir, tmp_path, capsys):
    out = tmp_path / "prune"
    args = [
        "prune",
        str(dream_dir),
        "--scores",
        str(run_dir),
        "--out",
        str(out),
        "--eval-samples",
        "4",
        "--random-orders",
        "2",
        "--fractions",
        "0.1,0.3",
        "--single-head",
        "--exact-match",
        "--quiet",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "single-head ablation vs scores: Spearman" in printed
    d = json.loads((out / "pruning.json").read_text())
    for row in d["verdicts"]["metrics"]["loss"]["fractions"]:  # the printed verdict is the recorded one
        assert f"  {row['fraction']:g}: {format_verdict_row(row)}" in printed
    assert f"  area 0-0.3: {format_verdict_row(d['verdicts']['metrics']['loss']['area'])}" in printed
    for name in ("pruning.json", "pruning_curve.png", "head_mask.json"):
        assert (out / name).is_file() and f"wrote {out / name}" in printed
    d = json.loads((out / "pruning.json").read_text())
    assert d["settings"]["fractions"] == [0.1, 0.3] and d["eval"]["samples"] == 4
    assert not set(d["eval"]["uids"]) & {s["hash"] for s in json.loads((run_dir / "run.json").read_text())["samples"]}
    assert np.isfinite(d["curves"]["most"]["exact_match"]).all()
    assert main(args) == 2  # never silently overwrites
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_cli_prune_errors(dream_dir, run_dir, tmp_path, capsys):
    base = ["prune", str(dream_dir), "--scores", str(run_dir), "--out", str(tmp_path / "x")]
    assert main([*base, "--orders", "most,top"]) == 2
    assert "unknown pruning order 'top' in --orders" in capsys.readouterr().err
    assert main([*base, "--eval-data", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["prune", str(dream_dir), "--scores", str(tmp_path / "norun"), "--out", str(tmp_path / "y")]) == 2


def test_decode_matches_unmask_decode(dream, run, eval_samples):
    """Exact-match of the unpruned model equals decoding each sample directly with unmask_decode."""
    hits = 0
    for s in eval_samples:
        ids = torch.tensor([s.input_ids])
        decoded = unmask_decode(
            lambda x: full_logits(dream, x),
            ids,
            list(range(s.answer_start, s.answer_end)),
            dream.mask_token_id,
            shift=True,
        )
        hits += int((decoded == ids).all())
    assert evaluate(dream, eval_samples, None, eval_masking(run), decode=True).exact_match == hits / len(eval_samples)


def test_cli_prune_exclude_run(dream, dream_dir, data_file, run_dir, tmp_path, capsys):
    samples, _ = build_samples(data_file, dream.tokenizer, samples=RUN_SAMPLES, seed=2)
    other = tmp_path / "other"
    attribute(dream, samples, METHOD, MASKING, out=other, progress=False)
    args = [
        "prune",
        str(dream_dir),
        "--scores",
        str(run_dir),
        "--orders",
        "most",
        "--fractions",
        "0.5",
        "--eval-samples",
        "1000",
        "--quiet",
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--exclude-run", str(other)]) == 0
    capsys.readouterr()
    uids = {name: set(json.loads((tmp_path / name / "pruning.json").read_text())["eval"]["uids"]) for name in "ab"}
    other_uids = {s["hash"] for s in json.loads((other / "run.json").read_text())["samples"]}
    assert other_uids & uids["a"] and not other_uids & uids["b"]  # the excluded run's samples are gone
    assert uids["b"] == uids["a"] - other_uids  # and nothing else changed


# ---------------------------------------------------------------- verdicts (no model needed)


def _result(random_loss: np.ndarray, most: list[float], least: list[float], fractions: list[float]) -> PruneResult:
    """A PruneResult with given loss curves; accuracy mirrors loss (1 - loss / 10)."""
    curves = {
        "random": {"loss": random_loss, "accuracy": 1 - random_loss / 10},
        "most": {"loss": np.array(most), "accuracy": 1 - np.array(most) / 10},
        "least": {"loss": np.array(least), "accuracy": 1 - np.array(least) / 10},
    }
    return PruneResult(
        fractions=fractions,
        orders=["most", "least", "random"],
        per_layer=False,
        seed=3,
        num_removed=[1] * len(fractions),
        baseline=Metrics(0.1, 0.99),
        curves=curves,
        removed={},
        config=MASKING,
        decode=False,
        scores=np.zeros((2, 2)),
    )


def test_verdicts_against_a_direct_computation():
    rng = np.random.default_rng(0)
    fractions = [0.05, 0.1, 0.3, 0.5]
    random_loss = rng.exponential(1.0, size=(40, 4)) * np.array([0.3, 0.7, 2.0, 3.0])  # skewed, like pairs of heads
    result = _result(random_loss, most=[1.2, 3.0, 5.0, 6.0], least=[0.25, 0.11, 0.12, 0.2], fractions=fractions)
    v = result.verdicts()
    assert v == result.verdicts()  # seeded: deterministic
    loss = v["metrics"]["loss"]
    for i, row in enumerate(loss["fractions"]):
        col = random_loss[:, i]
        assert row["random_mean"] == pytest.approx(col.mean())
        assert row["most_percentile"] == pytest.approx(100 * np.mean(col < row["most"]))
        assert row["least_percentile"] == pytest.approx(100 * np.mean(col < row["least"]))
        # the interval is a bootstrap of the mean: it lies around the mean, within the orders' range
        assert col.min() < row["random_low"] < col.mean() < row["random_high"] < col.max()
        assert row["holds"] == (row["most"] > row["random_high"] and row["least"] < row["random_low"])
    # fraction 0.05: least (0.25) is close to the skewed random mean (0.3): inside its interval, so "no"
    assert loss["fractions"][0]["random_low"] < 0.25 and not loss["fractions"][0]["holds"]
    assert all(row["holds"] for row in loss["fractions"][1:])
    # area: trapezoid from (0, baseline 0.1) over 0.05, 0.1, 0.3 (0.5 is beyond 0.3), by hand
    x = [0.0, 0.05, 0.1, 0.3]
    by_hand = lambda y: sum((x[j + 1] - x[j]) * (y[j] + y[j + 1]) / 2 for j in range(3))  # noqa: E731
    area = loss["area"]
    assert area["upto"] == 0.3 and area["most"] == pytest.approx(by_hand([0.1, 1.2, 3.0, 5.0]))
    per_order = [by_hand([0.1, *r[:3]]) for r in random_loss]
    assert area["random_mean"] == pytest.approx(np.mean(per_order))
    np.testing.assert_allclose(curve_area(fractions, random_loss, 0.1, 0.3), per_order)
    # accuracy: lower is worse, so the same ordering gives the same verdicts
    acc = v["metrics"]["accuracy"]
    assert [r["holds"] for r in acc["fractions"]] == [r["holds"] for r in loss["fractions"]]
    assert acc["area"]["holds"] == area["holds"]
    low, high = result.random_interval("loss")  # the figure's band is the verdicts' interval
    assert low.tolist() == [r["random_low"] for r in loss["fractions"]]


def test_verdicts_need_all_three_orders():
    result = _result(np.ones((3, 1)), [2.0], [0.5], [0.1])
    result.orders = ["most", "random"]
    assert result.verdicts() == {}


def test_decode_runs_the_lm_head_only_where_predictions_are_read(dream, run, eval_samples, monkeypatch):
    """Issue 24: exact-match decoding computed [B, T, V] logits at every position; it needs only the answer's
    predictors (the span shifted by one for Dream)."""
    real, widths = core.forward_logits, []

    def spy(spec, ids, *args, keep=None, **kwargs):
        out = real(spec, ids, *args, keep=keep, **kwargs)
        widths.append((out.shape[1], ids.shape[1]))
        return out

    monkeypatch.setattr(core, "forward_logits", spy)
    evaluate(dream, eval_samples[:2], None, eval_masking(run), decode=True)
    spans = {s.answer_end - s.answer_start for s in eval_samples[:2]}
    assert widths and all(w in spans and w < t for w, t in widths)
