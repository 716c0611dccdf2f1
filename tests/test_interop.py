"""Export, import and attention budgets (interop.py, budget.py), through the API and the command line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from headattr import compare, ensemble
from headattr.cli import main
from headattr.engine.sparse_mask import BudgetRule
from headattr.runs.budget import attention_budget
from headattr.runs.interop import export_run, import_head_importance
from headattr.runs.rundir import read_run
from headattr.testing import make_run, standard_signal


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    sig = standard_signal(4, 8) * np.linspace(0.5, 2.0, 4)[:, None]
    return make_run(tmp_path / "run", sig, 1.0, n=10, seed=3)


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("headattr: error: "), err
    return err


# ---------------------------------------------------------------- round trips


def test_adaptive_dllm_export_import_round_trip(run_dir: Path, tmp_path: Path, capsys) -> None:
    run = read_run(run_dir)
    pt = tmp_path / "head_importance.pt"
    assert main(["export", str(run_dir), "--format", "adaptive-dllm", "--out", str(pt)]) == 0
    obj = torch.load(pt, weights_only=True)  # loadable by the consumer exactly as it loads its own files
    assert sorted(obj["importance_scores"]) == list(range(4))
    for layer, t in obj["importance_scores"].items():
        assert t.dtype == torch.float32 and torch.equal(t, torch.from_numpy(run.scores[layer]))
    assert obj["metadata"]["source"] == "headattr" and obj["metadata"]["sign"] == "larger = more important"
    assert obj["metadata"]["run"] == str(run_dir.resolve())
    out = tmp_path / "imported"
    assert main(["import", str(pt), "--out", str(out)]) == 0
    back = read_run(out)
    assert np.array_equal(back.scores, run.scores) and back.attributions.shape == (0, 0, 4, 8)
    assert back.meta["sign"] == "imported" and back.meta["imported"]["negated"] is False
    assert back.meta["imported"]["metadata"]["run"] == str(run_dir.resolve())
    # export the imported run again: the same file content
    again = tmp_path / "again.pt"
    assert main(["export", str(out), "--format", "adaptive-dllm", "--out", str(again)]) == 0
    for layer, t in torch.load(again, weights_only=True)["importance_scores"].items():
        assert torch.equal(t, obj["importance_scores"][layer])
    capsys.readouterr()


def test_negate_turns_loss_attributions_into_importance(run_dir: Path, tmp_path: Path) -> None:
    run = read_run(run_dir)
    raw = {"importance_scores": {i: torch.from_numpy(-run.scores[i].copy()) for i in range(4)}, "metadata": {}}
    torch.save(raw, tmp_path / "raw.pt")
    back = read_run(import_head_importance(tmp_path / "raw.pt", tmp_path / "neg", negate=True))
    assert np.array_equal(back.scores, run.scores) and back.meta["sign"] == "imported-negated"


def test_npy_csv_json_exports(run_dir: Path, tmp_path: Path) -> None:
    run = read_run(run_dir)
    (npy,) = export_run(run_dir, "npy", tmp_path / "s.npy")
    assert np.array_equal(np.load(npy), run.scores) and np.load(npy).dtype == np.float32
    (js,) = export_run(run_dir, "json", tmp_path / "s.json")
    assert np.array_equal(np.asarray(json.loads(js.read_text())["scores"], dtype=np.float32), run.scores)
    (cs,) = export_run(run_dir, "csv", tmp_path / "s.csv")
    rows = list(csv.DictReader(io.StringIO(cs.read_text())))
    table = np.zeros((4, 8), dtype=np.float32)
    for r in rows:
        table[int(r["layer"]), int(r["head"])] = float(r["score"])
    assert np.array_equal(table, run.scores)
    with pytest.raises(Exception, match="already exists"):
        export_run(run_dir, "npy", tmp_path / "s.npy")


@pytest.mark.parametrize("per_layer", [False, True])
def test_head_mask_keeps_the_top_fraction(run_dir: Path, tmp_path: Path, per_layer: bool) -> None:
    scores = read_run(run_dir).scores.astype(np.float64)
    paths = export_run(run_dir, "head-mask", tmp_path / "mask", keep="0.5,0.7", per_layer=per_layer)
    assert [p.name for p in paths] == ["mask.safetensors", "mask.json"]
    tensors, doc = load_file(str(paths[0])), json.loads(paths[1].read_text())
    for keep in (0.5, 0.7):
        mask = tensors[f"keep_{keep:g}"]
        assert np.array_equal(mask, np.asarray(doc["masks"][f"{keep:g}"], dtype=np.uint8))
        if per_layer:  # round(keep * 8), halves up: 4 and 6 per layer, the layer's highest scores
            k = int(np.floor(keep * 8 + 0.5))
            for layer in range(4):
                top = set(np.argsort(-scores[layer], kind="stable")[:k].tolist())
                assert set(np.flatnonzero(mask[layer]).tolist()) == top
        else:
            k = int(np.floor(keep * 32 + 0.5))
            top = set(np.argsort(-scores.ravel(), kind="stable")[:k].tolist())
            assert set(np.flatnonzero(mask.ravel()).tolist()) == top and doc["kept"][f"{keep:g}"] == k


# ---------------------------------------------------------------- budget


def budget_by_hand(scores: np.ndarray, select: float, min_keep: float, kv: int | None = None) -> np.ndarray:
    """The allocation rule written out head by head (issue 13's statement of it)."""
    flat = sorted(scores.ravel().tolist())

    def percentile(q: float) -> float:  # linear interpolation between order statistics
        pos = q / 100 * (len(flat) - 1)
        lo = int(np.floor(pos))
        return flat[lo] + (flat[min(lo + 1, len(flat) - 1)] - flat[lo]) * (pos - lo)

    p5, p95 = percentile(5), percentile(95)
    num_layers, num_heads = scores.shape
    w = np.zeros((num_layers, num_heads))
    for i in range(num_layers):
        for j in range(num_heads):
            s = min(max((scores[i, j] - p5) / (p95 - p5), 0.0), 1.0)
            w[i, j] = min(max(1 + (2 / 3) * 2 * (s - 0.5), 0.1), 10.0)
    w = w / w.mean()
    if kv is not None:
        g = num_heads // kv
        w = np.array([[w[i, j * g : (j + 1) * g].mean() for j in range(kv)] for i in range(num_layers)])
    return np.array([[min(max(x * select, min_keep), 1.0) for x in row] for row in w])


def test_budget_rule_against_a_direct_computation(run_dir: Path, tmp_path: Path, capsys) -> None:
    scores = read_run(run_dir).scores.astype(np.float64)
    doc = attention_budget(run_dir, rule=BudgetRule(select=0.3, min_keep=0.1))
    np.testing.assert_allclose(doc["keep_ratios"], budget_by_hand(scores, 0.3, 0.1), rtol=1e-12)
    assert np.mean(doc["weights"]) == pytest.approx(1.0)
    out = tmp_path / "budget.json"
    argv = ["budget", str(run_dir), "--out", str(out), "--select", "0.6", "--min-keep", "0.2", "--gqa", "kv"]
    assert main(argv) == 0  # the run's model records 2 KV heads for 8 query heads
    written = json.loads(out.read_text())
    np.testing.assert_allclose(written["keep_ratios"], budget_by_hand(scores, 0.6, 0.2, kv=2), rtol=1e-12)
    assert written["shape"] == [4, 2] and written["rule"]["slope"] == pytest.approx(2 / 3)
    assert f"mean keep ratio {written['mean_keep_ratio']:.4f}" in capsys.readouterr().out
    assert main(argv) == 2 and "already exists" in one_line_error(capsys)
    for bad in (["--select", "0"], ["--min-keep", "1.5"], ["--low-percentile", "95"], ["--kv-heads", "3"]):
        assert main([*argv[:4], str(tmp_path / "x.json"), "--gqa", "kv", *bad]) == 2
        one_line_error(capsys)
    assert not (tmp_path / "x.json").exists()


# ---------------------------------------------------------------- malformed files


class CreatesFile:
    """Unpickling this object would call open(path, "w"): code execution, which weights_only must refuse."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_with_code_is_refused_and_nothing_runs(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    torch.save({"importance_scores": {0: torch.ones(4)}, "metadata": CreatesFile(marker)}, evil)
    assert main(["import", str(evil), "--out", str(tmp_path / "out")]) == 2
    assert "not a weights-only torch file" in one_line_error(capsys)
    assert not marker.exists() and not (tmp_path / "out").exists()
    torch.load(evil, weights_only=False)  # the control: an unsafe load would have run the code
    assert marker.exists()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"scores": {0: torch.ones(4)}}, "importance_scores"),
        (torch.ones(3, 4), "importance_scores"),
        ({"importance_scores": {"0": torch.ones(4)}}, "integer layer indices"),
        ({"importance_scores": {0: torch.ones(4), 2: torch.ones(4)}}, "layers must be 0..1"),
        ({"importance_scores": {0: torch.ones(2, 4)}}, "1-D float tensor"),
        ({"importance_scores": {0: torch.ones(4), 1: torch.ones(5)}}, "different head counts"),
        ({"importance_scores": {0: torch.tensor([1.0, float("nan")])}}, "NaN"),
        ({"importance_scores": {0: [1.0, 2.0]}}, "1-D float tensor"),
    ],
)
def test_malformed_files_are_one_line_errors(tmp_path: Path, capsys, payload, message: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    assert main(["import", str(path), "--out", str(tmp_path / "out")]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists()
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    assert main(["import", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "out")]) == 2
    one_line_error(capsys)


# ---------------------------------------------------------------- imported runs in compare, ensemble, prune


def _imported(run_dir: Path, tmp_path: Path, name: str) -> Path:
    (pt,) = export_run(run_dir, "adaptive-dllm", tmp_path / f"{name}.pt")
    return import_head_importance(pt, tmp_path / name)


def test_compare_and_ensemble_on_imported_runs(tmp_path: Path) -> None:
    sig = standard_signal(4, 8)
    a = make_run(tmp_path / "a", sig, 1.0, n=10, seed=1)
    b = make_run(tmp_path / "b", sig, 1.0, n=10, seed=2)
    ia, ib = _imported(a, tmp_path, "ia"), _imported(b, tmp_path, "ib")
    native = compare([a, b])
    comp = compare([ia, ib])
    p, q = comp.pairs[0], native.pairs[0]
    assert p.global_metrics.pearson == pytest.approx(q.global_metrics.pearson)  # same scores, same point metrics
    assert p.intervals is None and p.intervals_note.startswith("no per-sample attributions")
    assert all(r.scores_only and r.reliability.full_layer == [None] * 4 for r in comp.runs)
    assert {item["rule"] for item in comp.recommendations} >= {"scores_only_runs"}
    assert "no_signal_layers" not in {item["rule"] for item in comp.recommendations}
    from headattr.reports.markdown.report import render_report

    text = render_report(comp, "en")
    assert "imported from" in text and "imported as stored in the file" in text and "N/A (scores only)" in text
    assert "No intervals: a run has no per-sample attributions" in text
    assert "导入" in render_report(comp, "zh")
    mixed = compare([a, ia])  # a native run against an imported one (no model identity: shape only)
    assert mixed.config_differences == [] and mixed.common_config["seed"] == 1  # the imported run has no settings
    assert mixed.pairs[0].intervals is None
    text = render_report(mixed)
    assert "method: Gate-IG: integrated gradients of J = -loss" in text and "not computed by headattr" in text
    assert "Runs of different origins are compared**: a: Gate-IG; ia: imported scores." in text
    ens = read_run(ensemble([ia, ib], tmp_path / "ens"))
    expected = (read_run(ia).scores.astype(np.float64) + read_run(ib).scores) / 2
    np.testing.assert_allclose(ens.scores, expected.astype(np.float32))
    assert ens.meta["ensemble"]["scores_only"] and ens.meta["sign"] == "imported" and not ens.has_samples
    assert compare([ens, ia]).pairs[0].global_metrics.pearson is not None


def test_read_run_without_attributions(run_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    run = read_run(run_dir)
    save_file({"scores": run.scores}, str(run_dir / "scores.safetensors"))
    back = read_run(run_dir)
    assert back.attributions.shape == (0, 0, 4, 8) and not back.has_samples


def test_prune_reads_an_imported_run(dream_dir: Path, tmp_path: Path, capsys) -> None:
    scores = np.random.default_rng(0).normal(size=(3, 4))
    torch.save({"importance_scores": {i: torch.tensor(scores[i]) for i in range(3)}}, tmp_path / "h.pt")
    assert main(["import", str(tmp_path / "h.pt"), "--out", str(tmp_path / "noid")]) == 0
    assert main(["import", str(tmp_path / "h.pt"), "--out", str(tmp_path / "run"), "--model", str(dream_dir)]) == 0
    capsys.readouterr()
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"copy {w}=", "answer": w}) + "\n" for w in ("ab", "cd", "ef", "abc", "de"))
    )
    base = ["prune", str(dream_dir), "--data", str(data), "--orders", "most,least", "--fractions", "0.5"]
    base += ["--eval-samples", "2", "--quiet"]
    assert main([*base, "--scores", str(tmp_path / "noid"), "--out", str(tmp_path / "p0")]) == 2
    assert "import it again with --model" in one_line_error(capsys)
    assert main([*base, "--scores", str(tmp_path / "run"), "--out", str(tmp_path / "p")]) == 0
    d = json.loads((tmp_path / "p" / "pruning.json").read_text())
    assert d["curves"]["most"]["num_removed"] == [6]
    capsys.readouterr()
    torch.save({"importance_scores": {0: torch.ones(4)}}, tmp_path / "one.pt")
    assert main(["import", str(tmp_path / "one.pt"), "--out", str(tmp_path / "r1"), "--model", str(dream_dir)]) == 2
    assert "the file has 1 layers x 4 heads" in one_line_error(capsys) and not (tmp_path / "r1").exists()


def test_export_says_which_method_made_the_scores(tmp_path: Path) -> None:
    """The exported metadata describes the run's own method and settings (not Gate-IG for every run)."""
    from headattr.methods import AblationConfig

    run_dir = make_run(tmp_path / "abl", standard_signal(3, 4), 0.5, n=4, seed=1, method=AblationConfig())
    (pt,) = export_run(run_dir, "adaptive-dllm", tmp_path / "abl.pt")
    meta = torch.load(pt, weights_only=True)["metadata"]
    assert meta["method"] == "ablation" and meta["score"].startswith("ablation (leave one out)")
    assert "Gate-IG" not in meta["score"]
    gate_ig = make_run(tmp_path / "gig", standard_signal(3, 4), 0.5, n=4, seed=2)
    (pt,) = export_run(gate_ig, "adaptive-dllm", tmp_path / "gig.pt")
    assert "tolerance 0.04" in torch.load(pt, weights_only=True)["metadata"]["score"]
