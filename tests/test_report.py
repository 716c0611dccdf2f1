"""The consistency report (report.py), its files and figure, and the `compare` command end to end."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from headattr import compare, ensemble
from headattr.analysis.results import Comparison
from headattr.cli import main
from headattr.figures import plot_consistency
from headattr.methods import AblationConfig, DispersionConfig, GateIGConfig, GradientConfig, STPConfig
from headattr.reports.markdown.format import fmt_score
from headattr.reports.markdown.report import Renderer as _Renderer
from headattr.reports.markdown.report import render_report
from headattr.reports.outputs import write_outputs
from headattr.reports.strings import LANGS, STRINGS
from headattr.testing import make_run, standard_signal

EN_HEADINGS = [
    "## Configuration",
    "## Key findings",
    "## Quantitative metrics",
    "### 1. Correlation analysis",
    "### 2. Global consistency",
    "### 3. Top-K head overlap",
    "### 4. Score distribution",
    "### 5. Chance levels",
    "### 6. Uncertainty (jackknife)",
    "## Per-layer analysis",
    "### Most consistent layers",
    "### Least consistent layers",
    "### Layer trend",
    "## Reliability within each run (split-half)",
    "## Practical recommendations",
    "## Conclusion",
]
# The section headings of the hand-written seed report, in its order.
SEED_HEADINGS = [
    "## 实验配置",
    "## 核心发现",
    "## 定量指标",
    "### 1. 相关系数分析",
    "### 2. 全局一致性",
    "### 3. Top-K 头重叠率",
    "### 4. 分数分布统计",
    "## 逐层分析",
    "### 一致性最高的层",
    "### 一致性较低的层",
    "### 层级趋势",
    "## 实际应用建议",
    "## 结论",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three runs of a 9 x 12 model; layer 4 is constant (N/A), shallow layers are noisier."""
    root = tmp_path_factory.mktemp("runs")
    sig = standard_signal(9, 12)
    sig[4] = 0.5
    noise = np.linspace(3.0, 0.3, 9)
    noise[4] = 0.0
    return [make_run(root / f"r{s}", sig, noise, n=24, seed=s) for s in (47, 1234, 7)]


@pytest.fixture(scope="module")
def comp2(runs: list[Path]) -> Comparison:
    return compare(runs[:2])


@pytest.fixture(scope="module")
def comp3(runs: list[Path]) -> Comparison:
    return compare(runs, top_k="5,10,15")


def positions(text: str, headings: list[str]) -> list[int]:
    lines = text.splitlines()
    return [lines.index(h) for h in headings]


def test_string_tables_have_the_same_keys() -> None:
    assert STRINGS["en"].keys() == STRINGS["zh"].keys()


@pytest.mark.parametrize("which", ["comp2", "comp3"])
def test_english_report_sections(which: str, request: pytest.FixtureRequest) -> None:
    comp = request.getfixturevalue(which)
    text = render_report(comp, "en")
    pos = positions(text, EN_HEADINGS)
    assert pos == sorted(pos)
    assert "N/A" in text and not re.search(r"\bnan\b", text, re.IGNORECASE)
    assert not re.search(r"[\u4e00-\u9fff]", text)  # English only
    if which == "comp3":
        assert "## Pairwise consistency" in text
        assert text.count("#### seed 47 vs seed 1234") >= 8  # every per-pair section
    else:
        assert "## Pairwise consistency" not in text and "#### " not in text


@pytest.mark.parametrize("which", ["comp2", "comp3"])
def test_chinese_report_carries_seed_headings(which: str, request: pytest.FixtureRequest) -> None:
    comp = request.getfixturevalue(which)
    text = render_report(comp, "zh")
    pos = positions(text, SEED_HEADINGS)
    assert pos == sorted(pos)
    for extra in ("### 5. 随机水平", "### 6. 不确定性（刀切法区间）", "## 运行内可靠性（分半信度）"):
        assert extra in text
    assert "N/A" in text and not re.search(r"\bnan\b", text, re.IGNORECASE)
    assert "总体评估" in text


def test_unknown_language(comp2: Comparison) -> None:
    from headattr.errors import HeadattrError

    with pytest.raises(HeadattrError, match="language"):
        render_report(comp2, "fr")


def _floats(obj) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _floats(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _floats(v)]
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return [float(obj)]
    return []


@pytest.mark.parametrize(("which", "lang"), [("comp2", "en"), ("comp2", "zh"), ("comp3", "en")])
def test_every_number_in_the_report_is_in_metrics_json(which: str, lang: str, request: pytest.FixtureRequest) -> None:
    comp = request.getfixturevalue(which)
    text = render_report(comp, lang)
    values = _floats(json.loads(json.dumps(comp.to_dict())))
    four = {f"{v:.4f}" for v in values}
    pct = {f"{100 * v:.1f}%" for v in values}
    six = {fmt_score(v) for v in values}
    found_four = re.findall(r"-?\d+\.\d{4}(?!\d)", text)
    found_pct = re.findall(r"-?\d+\.\d%", text)
    found_six = re.findall(r"-?\d+\.\d{6}(?!\d)", text)
    assert found_four and found_pct and found_six
    assert set(found_four) <= four
    assert set(found_pct) <= pct
    assert set(found_six) <= six


def test_report_numbers_are_the_metrics(comp2: Comparison) -> None:
    text = render_report(comp2, "en")
    p = comp2.pairs[0]
    s = p.summary["pearson"]
    row = f"| **Pearson** | {s.mean:.4f} | {s.median:.4f} | {s.min:.4f} | {s.max:.4f} | {s.std:.4f} | 1 |"
    assert row in text
    assert f"**{p.good_count}/9 layers ({100 * p.good_share:.1f}%)**" in text
    assert f"| Top-5 | {100 * p.overlap_summary[5].mean:.1f}% | {100 * 5 / 12:.1f}% |" in text
    assert "| Top-15 | N/A | N/A | N/A |" in text  # K >= 12 heads per layer
    rules = {r["rule"]: r for r in comp2.recommendations}
    for band in rules["more_samples"]["bands"]:
        assert f"**{band['samples_needed']} samples**" in text
    assert "No measurable signal in layers 4" in text  # the constant layer


def test_every_rule_renders_in_both_languages(comp2: Comparison) -> None:
    items = [
        {"rule": "all_layers_consistent", "kind": "ok", "threshold": 0.9, "num_layers": 9, "min_pearson": 0.95},
        {
            "rule": "layers_below_threshold",
            "kind": "caution",
            "threshold": 0.9,
            "layers": [{"layer": 2, "min_pearson": None}],
        },
        {"rule": "reliability_met", "kind": "ok", "target": 0.9, "min_reliability": 0.93, "num_samples": 50},
        {
            "rule": "more_samples",
            "kind": "caution",
            "target": 0.9,
            "num_samples": [50, 60],
            "bands": [{"band": "shallow", "first": 0, "last": 2, "layers": [0, 1], "samples_needed": 120}],
        },
        {"rule": "no_signal_layers", "kind": "caution", "layers": [3]},
        {
            "rule": "ensemble_helps",
            "kind": "ok",
            "runs": 2,
            "total_samples": 100,
            "target": 0.9,
            "layers": [1],
            "projected": {1: 0.91},
        },
        {
            "rule": "ensemble_short",
            "kind": "caution",
            "runs": 2,
            "total_samples": 100,
            "target": 0.9,
            "layers": [0],
            "projected": {0: 0.85},
        },
        {"rule": "stable_top_k", "kind": "ok", "threshold": 0.9, "ks": [{"k": 20, "min_overlap": 0.95}]},
        {"rule": "unstable_top_k", "kind": "caution", "threshold": 0.9, "ks": [{"k": 5, "min_overlap": 0.6}]},
        {"rule": "config_differences", "kind": "caution", "keys": ["ig_steps"]},
        {"rule": "shared_samples", "kind": "caution", "pairs": [{"a": 0, "b": 1, "count": 3}]},
        {"rule": "completeness_ok", "kind": "ok", "max_relative": 0.01, "rtol": 0.05},
        {"rule": "completeness_high", "kind": "caution", "runs": [{"run": "seed 47", "relative": 0.2}], "rtol": 0.05},
    ]
    for lang in ("en", "zh"):
        r = _Renderer(comp2, lang)
        for item in items:
            lines = r.recommendation(item)
            assert lines and all(line.startswith("- **") for line in lines), item
    with pytest.raises(ValueError):
        _Renderer(comp2, "en").recommendation({"rule": "unknown", "kind": "ok"})


def test_outputs_and_figure(tmp_path: Path, comp2: Comparison, comp3: Comparison) -> None:
    paths = write_outputs(comp2, tmp_path / "out", lang="zh")
    assert set(paths) == {"report.md", "consistency_analysis.png", "metrics.json", "layer_metrics.csv"}
    assert paths["consistency_analysis.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads(paths["metrics.json"].read_text())
    assert metrics["verdict"]["level"] == comp2.verdict.level
    rows = list(csv.DictReader(io.StringIO(paths["layer_metrics.csv"].read_text())))
    assert len(rows) == 9 and rows[4]["pearson"] == "" and rows[0]["band"] == "shallow"
    assert float(rows[0]["pearson"]) == pytest.approx(comp2.pairs[0].layers[0].pearson)
    assert "## 实验配置" in paths["report.md"].read_text(encoding="utf-8")
    from headattr.errors import HeadattrError

    with pytest.raises(HeadattrError, match="not empty"):
        write_outputs(comp2, tmp_path / "out")
    (tmp_path / "out" / "keep.txt").write_text("mine")
    write_outputs(comp3, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert len((tmp_path / "out" / "layer_metrics.csv").read_text().splitlines()) == 1 + 3 * 9
    (tmp_path / "fig.png").write_bytes(plot_consistency(comp3, 1, 2))
    assert (tmp_path / "fig.png").stat().st_size > 10_000


def test_cli_compare_and_ensemble(tmp_path: Path, runs: list[Path], capsys) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", str(runs[0]), str(runs[1]), "--out", str(out), "--bootstrap", "30", "--lang", "zh"]
    assert main(argv + ["--top-k", "3,6", "--bands", "0-2,3-8", "--target", "0.8", "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    for name in ("report.md", "metrics.json", "layer_metrics.csv", "consistency_analysis.png"):
        assert f"wrote {out / name}" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["top_k"] == [3, 6] and metrics["settings"]["bands"] == [[0, 2], [3, 8]]
    assert metrics["settings"]["target"] == 0.8 and metrics["settings"]["seed"] == 4
    assert main(argv) == 2  # exists, no --overwrite
    capsys.readouterr()
    assert main(argv + ["--overwrite"]) == 0
    ens = tmp_path / "ens"
    assert main(["ensemble", str(runs[0]), str(runs[1]), "--out", str(ens)]) == 0
    assert f"wrote {ens}/" in capsys.readouterr().out
    assert main(["compare", str(ens), str(runs[2]), "--out", str(tmp_path / "c2"), "--bootstrap", "0"]) == 0
    assert "Intervals skipped" in (tmp_path / "c2" / "report.md").read_text()


def test_reliability_with_non_positive_half_correlation_is_na_with_r(tmp_path: Path) -> None:
    """A layer whose halves anti-correlate: N/A with the raw r in both languages and null in metrics.json."""
    sig = standard_signal(2, 12)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 2, 12))
    a = make_run(tmp_path / "a", sig, 0.1, n=20, seed=1)
    b = make_run(tmp_path / "b", sig, 0.1, n=20, seed=2)
    comp = compare([a, b], bootstrap=0)
    rel = comp.runs[0].reliability
    assert rel.full_layer[1] is not None
    from headattr.analysis.reliability import split_half

    anti = split_half(np.concatenate([x, -x]), 4, np.random.default_rng(0), 0.9)  # r = -1 in both layers
    comp.runs[0].reliability = anti
    assert "| Layer 1 | N/A (half r = -1.0000) |" in render_report(comp, "en")
    assert "N/A（分半 r = -1.0000）" in render_report(comp, "zh")
    d = json.loads(json.dumps(comp.to_dict()))
    assert d["runs"][0]["reliability"]["full_layer"] == [None, None]
    assert d["runs"][0]["reliability"]["split_layer"] == pytest.approx([-1.0, -1.0])
    assert d["runs"][0]["reliability"]["reason_layer"][0].startswith("half correlation r <= 0")


def test_report_shows_the_nodes_each_path_used(tmp_path):
    """Runs of the error-controlled quadrature record nodes per path; the report shows their distribution."""
    import json

    import numpy as np

    from headattr import compare
    from headattr.reports.markdown.report import render_report

    sig = standard_signal(3, 4)
    a, b = make_run(tmp_path / "a", sig, 0.5, n=6, seed=1), make_run(tmp_path / "b", sig, 0.5, n=6, seed=2)
    nodes = np.arange(6 * 2 * 3).reshape(6, 2, 3) % 5 + 2  # [N, V, S]: 2..6
    meta = json.loads((a / "run.json").read_text())
    meta["diagnostics"]["nodes"] = nodes.tolist()
    (a / "run.json").write_text(json.dumps(meta))
    text = render_report(compare([a, b]), "en")
    row = next(line for line in text.splitlines() if "IG nodes per path" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{np.median(nodes):g} / {np.percentile(nodes, 90):g} / {nodes.max():g}" and cells[2] == "N/A"
    assert "IG 节点数" in render_report(compare([a, b]), "zh")


# ---------------------------------------------------------------- what each run computed (issue 20)

CONFIG_END = {"en": "## Key findings", "zh": "## 核心发现"}
METHOD_LINE = {"en": "    - method: ", "zh": "    - 方法："}
SIGN_LINE = {"en": "    - scores: ", "zh": "    - 分数符号："}


def configuration(text: str, lang: str) -> str:
    return text.split(CONFIG_END[lang])[0]


def run_lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def method_runs(tmp_path: Path, methods: list, **kw) -> list[Path]:
    sig = standard_signal(3, 4)
    return [make_run(tmp_path / f"r{i}", sig, 0.5, n=6, seed=i + 1, method=m, **kw) for i, m in enumerate(methods)]


# per method: words its method line must hold, and words its sign line must hold, per language
METHOD_WORDS = {
    "stp": (
        STPConfig(path_samples=3, ig_steps=2),
        {
            "en": ["STP", "mean over 3 path samples", "fixed gauss-legendre rule with 2 nodes on each piece"],
            "zh": ["STP", "对 3 条路径样本取平均", "固定的 gauss-legendre 规则、2 个节点"],
        },
        {"en": ["raises J = -loss", "sum to J(1) - J(b)"], "zh": ["提高 J = -loss", "等于 J(1) - J(b)"]},
    ),
    "ablation": (
        AblationConfig(),
        {"en": ["ablation", "removed on its own", "gate set to 0"], "zh": ["消融", "门控设为 0"]},
        {
            "en": ["A = J(all heads) - J(head removed)", "positive = removing the head lowers J"],
            "zh": ["A = J(全部头) - J(移除该头)", "为正表示移除该头会降低 J"],
        },
    ),
    "gradient": (
        GradientConfig(),
        {"en": ["gradient", "dJ/dg of each head's gate at g = 1"], "zh": ["梯度", "g = 1"]},
        {"en": ["A = dJ/dg at g = 1", "to first order"], "zh": ["A = g = 1 处的 dJ/dg", "一阶"]},
    ),
    "dispersion": (
        DispersionConfig(),
        {"en": ["dispersion", "normalised entropy"], "zh": ["注意力分散度", "归一化熵"]},
        {"en": ["not an attribution of J", "not a more useful head"], "zh": ["不是对 J 的归因", "并不表示该头越有用"]},
    ),
}


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("name", list(METHOD_WORDS))
def test_report_names_each_runs_method_and_sign(tmp_path: Path, name: str, lang: str) -> None:
    """Two runs of one method other than Gate-IG: the report names that method and its own sign convention, and
    nowhere in its configuration calls it Gate-IG or lists Gate-IG's quadrature."""
    method, method_words, sign_words = METHOD_WORDS[name]
    comp = compare(method_runs(tmp_path, [method, method]))
    assert [r.method for r in comp.runs] == [name, name]
    config = configuration(render_report(comp, lang), lang)
    heading = {"en": f"- **Attribution method**: {method.label} (", "zh": f"- **归因方法**: {method.label}（"}
    assert heading[lang] in config
    methods, signs = run_lines(config, METHOD_LINE[lang]), run_lines(config, SIGN_LINE[lang])
    assert len(methods) == len(signs) == 2
    for line in methods:
        assert all(word in line for word in method_words[lang]), line
    for line in signs:
        assert all(word in line for word in sign_words[lang]), line
    for word in ("Gate-IG", "IG steps", "Simpson", "ig_tol", "different methods", "不同方法"):
        assert word not in config
    if name != "stp":  # no path: no baseline, no quadrature
        assert "gauss-legendre" not in config and "baseline" not in config


@pytest.mark.parametrize("lang", LANGS)
def test_refined_gate_ig_run_says_the_refined_rule_and_its_tolerance(tmp_path: Path, lang: str) -> None:
    """Gate-IG's defaults refine Simpson's rule from 3 nodes to tolerance 0.04: the report says so, with the
    nodes the paths used, and not "IG steps 3, gauss-legendre"."""
    runs = method_runs(tmp_path, [GateIGConfig(), GateIGConfig()])
    meta = json.loads((runs[0] / "run.json").read_text())
    assert meta["config"]["ig_steps"] == 3 and meta["config"]["rule"] == "gauss-legendre"  # what run.json records
    meta["diagnostics"]["nodes"] = [[[3, 5, 9]] * 2] * 6  # [N, V, S]
    (runs[0] / "run.json").write_text(json.dumps(meta))
    config = configuration(render_report(compare(runs), lang), lang)
    words = {
        "en": [
            "Gate-IG",
            "Simpson's rule from 3 nodes per path, refined by bisection",
            "tolerance 0.04",
            "at most 256 nodes",
            "baseline 0 (head removed)",
            "one path per layer",
        ],
        "zh": [
            "Gate-IG",
            "Simpson 规则，每条路径从 3 个节点开始，二分细化",
            "容差 0.04",
            "最多 256 个节点",
            "基线 0（移除该头）",
        ],
    }
    methods = run_lines(config, METHOD_LINE[lang])
    assert len(methods) == 2 and all(all(w in line for w in words[lang]) for line in methods)
    nodes = {"en": "nodes used per path: median 5, 90th percentile 9, max 9", "zh": "中位数 5，90 分位 9，最大 9"}
    assert nodes[lang] in methods[0] and nodes[lang] not in methods[1]
    for word in ("gauss-legendre", "IG steps", "fixed", "固定"):
        assert word not in config
    assert all("J = -loss" in line for line in run_lines(config, SIGN_LINE[lang]))


@pytest.mark.parametrize("lang", LANGS)
def test_fixed_rule_gate_ig_runs_say_their_rule_and_nodes(tmp_path: Path, lang: str) -> None:
    """--ig-tol 0, a Riemann rule (never refined, whatever ig_tol says) and a run written before --ig-tol
    existed (fixed rule): each says its rule and nodes, and no tolerance."""
    fixed, riemann, old = method_runs(
        tmp_path, [GateIGConfig(ig_tol=0.0, ig_steps=8), GateIGConfig(rule="riemann-right", ig_steps=16), None]
    )
    meta = json.loads((old / "run.json").read_text())
    assert meta["config"].pop("ig_tol") > 0 and meta["config"].pop("ig_max_steps")
    (old / "run.json").write_text(json.dumps(meta))
    config = configuration(render_report(compare([fixed, riemann, old]), lang), lang)
    methods = run_lines(config, METHOD_LINE[lang])
    expected = {
        "en": [
            "fixed gauss-legendre rule with 8 nodes per path, not refined",
            "fixed riemann-right rule with 16 nodes per path, not refined",
            "fixed gauss-legendre rule with 8 nodes per path, not refined",
        ],
        "zh": [
            "固定的 gauss-legendre 规则，每条路径 8 个节点，不细化",
            "固定的 riemann-right 规则，每条路径 16 个节点，不细化",
            "固定的 gauss-legendre 规则，每条路径 8 个节点，不细化",
        ],
    }
    assert len(methods) == 3 and all(e in line for e, line in zip(expected[lang], methods, strict=True))
    for word in ("Simpson", "tolerance", "容差", "different methods", "不同方法"):
        assert word not in config


@pytest.mark.parametrize("lang", LANGS)
def test_runs_of_different_methods_say_so(tmp_path: Path, lang: str) -> None:
    runs = method_runs(tmp_path, [GateIGConfig(), AblationConfig(), STPConfig()])
    comp = compare(runs)
    assert [r.method for r in comp.runs] == ["gate-ig", "ablation", "stp"]
    assert json.loads(json.dumps(comp.to_dict()))["runs"][2]["method"] == "stp"
    assert "method" in {d["key"] for d in comp.config_differences}
    config = configuration(render_report(comp, lang), lang)
    line = {
        "en": "- ⚠️ **Runs of different methods are compared**: seed 1: Gate-IG; seed 2: ablation; seed 3: STP. "
        "Their scores measure different things",
        "zh": "- ⚠️ **对比的是不同方法的运行**: seed 1：Gate-IG；seed 2：ablation；seed 3：STP。",
    }
    assert line[lang] in config
    methods, signs = run_lines(config, METHOD_LINE[lang]), run_lines(config, SIGN_LINE[lang])
    assert "Gate-IG" in methods[0] and "Gate-IG" not in methods[1] + signs[1] + methods[2] + signs[2]
    assert "STP" in methods[2] and ("J(all heads)" in signs[1] or "J(全部头)" in signs[1])


def test_post_processing_and_ensembles_of_differing_settings(tmp_path: Path) -> None:
    """`abs` drops the sign, and the sign line says so; an ensemble of Gate-IG runs of different tolerances
    names the settings its inputs differ in rather than one rule."""
    a, b = method_runs(tmp_path, [GateIGConfig(ig_tol=0.04), GateIGConfig(ig_tol=0.02)])
    c = make_run(tmp_path / "abs", standard_signal(3, 4), 0.5, n=6, seed=9, config={"postprocess": "abs"})
    ens = ensemble([a, b], tmp_path / "ens")
    text = configuration(render_report(compare([ens, c]), "en"), "en")
    methods, signs = run_lines(text, METHOD_LINE["en"]), run_lines(text, SIGN_LINE["en"])
    assert methods[0] == "    - method: Gate-IG; an ensemble whose inputs differ in its settings: ig_tol=[0.04, 0.02]"
    assert "post-processed with `abs`" in signs[1] and "abs" not in signs[0]


def test_run_method_of_old_runs_imports_and_ensembles() -> None:
    from headattr.runs.rundir import run_method

    assert run_method({"config": {"ig_steps": 8}}) == "gate-ig"  # written before `method` existed
    assert run_method({"config": {"method": ["gate-ig", None]}}) == "gate-ig"  # ensemble of such a run and a newer
    assert run_method({"config": {"method": ["gate-ig", "stp"]}}) == "mixed"
    assert run_method({"config": {"postprocess": "signed"}, "sign": "imported-negated"}) == "imported"
    assert run_method({"config": {}, "sign": "mixed"}) == "mixed"
