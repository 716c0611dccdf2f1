"""`headattr demo` end to end at reduced size (`--quick`) on the built-in model, through the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from headattr.cli import main
from headattr.demo import DATA_FILE, MODEL_DIR

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "config.json").is_file() or not DATA_FILE.is_file(),
    reason="the built-in demo model is not built (python -m headattr.demo.train)",
)

OUTPUTS = [
    "run-seed47/scores.safetensors",
    "run-seed47/run.json",
    "run-seed1234/scores.safetensors",
    "run-seed1234/run.json",
    "compare/report.md",
    "compare/report.zh.md",
    "compare/metrics.json",
    "compare/layer_metrics.csv",
    "compare/consistency_analysis.png",
    "prune/pruning.json",
    "prune/pruning_curve.png",
    "prune/head_mask.json",
    "summary.json",
]


def _finite(values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def test_demo_quick_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--quiet", "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in OUTPUTS:
        assert (out / name).is_file(), name
        assert str(out / name) in printed or str((out / name).parent) in printed, name
    assert "mean per-layer Pearson" in printed and "single-head ablation vs scores" in printed
    zh = (out / "compare/report.zh.md").read_text(encoding="utf-8")
    assert any("\u4e00" <= ch <= "\u9fff" for ch in zh)  # the Chinese report is in Chinese

    summary = json.loads((out / "summary.json").read_text())
    c, p = summary["consistency"], summary["pruning"]
    assert summary["size"]["ig_steps"] == 2 and summary["size"]["ig_tol"] == 0.0  # what --quick ran, no nulls
    assert _finite([c["mean_per_layer_pearson"], c["global_spearman"], p["single_head_spearman"]])
    assert _finite(p["baseline"].values())
    for rows in p["at_fraction"].values():
        assert set(rows) == {"0.05", "0.1", "0.2", "0.3"}
        assert all(_finite(r.values()) for r in rows.values())

    # the built-in model ends its answers with EOS: pruning is judged on generated answers, not a known span
    assert set(p["baseline"]) == {"loss", "accuracy", "task_exact"} and p["baseline"]["task_exact"] == 1.0
    pruning = json.loads((out / "prune/pruning.json").read_text())
    assert not pruning["settings"]["exact_match"] and pruning["single_head"] is not None
    assert pruning["task"]["task"] == "exact" and pruning["task"]["settings"]["max_new_tokens"] == 12
    for order in ("most", "least"):
        assert _finite(pruning["curves"][order]["loss"]) and _finite(pruning["curves"][order]["task_exact"])
    attributed = {
        s["hash"] for seed in (47, 1234) for s in json.loads((out / f"run-seed{seed}/run.json").read_text())["samples"]
    }
    assert not attributed & set(pruning["eval"]["uids"])  # held out from both runs

    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 2  # never silently overwrites
    assert "already exists" in capsys.readouterr().err


def test_demo_on_another_model_and_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    import shutil

    model = tmp_path / "retrained"
    shutil.copytree(MODEL_DIR, model)
    rows = DATA_FILE.read_text().splitlines()[:160]
    data = tmp_path / "subset.jsonl"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--quiet", "--threads", "1", "--out", str(out)]
    assert main([*args, "--model", str(model), "--data", str(data)]) == 0
    meta = json.loads((out / "run-seed47/run.json").read_text())
    assert meta["model"]["path"] == str(model) and meta["config"]["data"] == str(data)
    pruning = json.loads((out / "prune/pruning.json").read_text())
    assert pruning["eval"]["source"] == str(data) and pruning["eval"]["rows"] == len(rows)
    capsys.readouterr()
    assert main([*args, "--overwrite", "--data", str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "does not exist" in err and (out / "summary.json").is_file()  # nothing lost
