"""Consistency metrics (consistency.py) and ensembles (ensembling.py), checked against SciPy/NumPy and against
synthetic runs whose true reliability is known.

`headattr.testing.make_run` writes a run directory the way `headattr attribute` does: per-sample attributions are
`signal + noise` (noise of known standard deviation per layer, independent across samples), spread over the
masked variants so that each sample's mean over variants is exactly that value.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from headattr import compare
from headattr.analysis.agreement import (
    chance_overlap,
    kuncheva,
    layer_metrics,
    summarize,
    top_k_indices,
    top_k_overlap,
    verdict_level,
)
from headattr.analysis.options import default_bands, parse_bands, parse_top_k
from headattr.analysis.reliability import NA_NON_POSITIVE, NA_ONE_SAMPLE, split_half
from headattr.cli import main
from headattr.errors import HeadattrError
from headattr.methods.aggregate import final_scores, sample_scores
from headattr.runs.ensembling import ensemble
from headattr.runs.rundir import read_run
from headattr.stats.correlations import correlate, kendall, pearson, spearman
from headattr.stats.intervals import leave_one_out_means
from headattr.stats.reliability import samples_needed, spearman_brown
from headattr.testing import make_run, standard_signal


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    sig = standard_signal(6, 12) * np.linspace(0.3, 2.0, 6)[:, None]
    return make_run(tmp_path / "a", sig, 1.0, seed=47), make_run(tmp_path / "b", sig, 1.0, seed=1234)


# ---------------------------------------------------------------- elementary metrics vs SciPy / NumPy


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Tau-b by counting pairs (the textbook definition, ties included)."""
    s = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        s += dx * dy
        tx += dx != 0
        ty += dy != 0
    return s / math.sqrt(tx * ty)


@pytest.mark.parametrize("ties", [False, True])
def test_correlations_match_numpy_and_scipy(ties: bool) -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=40)
    b = a + rng.normal(size=40)
    if ties:
        a, b = np.round(a), np.round(b)  # many ties
    assert pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)
    assert spearman(a, b) == pytest.approx(np.corrcoef(stats.rankdata(a), stats.rankdata(b))[0, 1], abs=1e-12)
    assert kendall(a, b) == pytest.approx(kendall_tau_b(a, b), abs=1e-12)
    stat, p = correlate("spearman", a, b)
    ref = stats.spearmanr(a, b)
    assert (stat, p) == pytest.approx((ref.statistic, ref.pvalue))


def test_constant_or_short_input_is_na_not_nan() -> None:
    const, x = np.full(8, 0.5), np.arange(8.0)
    for f in (pearson, spearman, kendall):
        assert f(const, x) is None
        assert f(x, const) is None
        assert f(np.array([1.0]), np.array([2.0])) is None
    assert top_k_overlap(const, x, 3) is None
    layers = layer_metrics(np.stack([const, x]), np.stack([x, x]), [3, 8])
    assert layers[0].pearson is None and layers[0].overlap[3] is None and layers[0].kuncheva[3] is None
    assert layers[1].pearson == pytest.approx(1.0)
    assert layers[1].overlap == {3: 1.0, 8: None}  # K >= H is N/A, not 100%


def test_top_k_ties_broken_by_lower_index() -> None:
    scores = np.array([1.0, 3.0, 2.0, 3.0, 2.0])
    assert top_k_indices(scores, 3).tolist() == [1, 3, 2]
    a = np.array([5.0, 1.0, 1.0, 1.0, 0.0])
    b = np.array([5.0, 0.0, 1.0, 1.0, 1.0])
    # a's top-2 = {0, 1} (ties at 1.0 -> head 1); b's top-2 = {0, 2}
    assert top_k_overlap(a, b, 2) == 0.5
    grid = np.array([[1.0, 2.0], [2.0, 0.0]])  # global ties: (0, 1) before (1, 0)
    assert top_k_indices(grid, 1).tolist() == [1]


def test_overlap_definition_against_sets() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b, k = rng.normal(size=30), rng.normal(size=30), int(rng.integers(1, 30))
        ref = len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k
        assert top_k_overlap(a, b, k) == pytest.approx(ref)
    assert top_k_overlap(a, b, 0) is None and top_k_overlap(a, b, 30) is None


def test_chance_level_k_over_n_by_simulation() -> None:
    rng = np.random.default_rng(5)
    n, trials = 28, 6000
    for k in (5, 10, 20):
        overlaps = np.array([top_k_overlap(rng.random(n), rng.random(n), k) for _ in range(trials)])
        se = overlaps.std() / math.sqrt(trials)
        assert abs(overlaps.mean() - chance_overlap(k, n)) < 4 * se
        kis = np.array([kuncheva(o, k, n) for o in overlaps])
        assert abs(kis.mean()) < 4 * kis.std() / math.sqrt(trials)
    assert chance_overlap(10, 28) == pytest.approx(10 / 28)
    assert chance_overlap(28, 28) is None
    assert kuncheva(1.0, 10, 28) == pytest.approx(1.0)
    assert kuncheva(10 / 28, 10, 28) == pytest.approx(0.0)


def test_summary_matches_numpy_and_skips_na() -> None:
    values = [0.5, None, 0.9, 0.7, None, 0.2]
    defined = np.array([0.5, 0.9, 0.7, 0.2])
    s = summarize(values)
    assert (s.mean, s.median, s.min, s.max, s.std) == pytest.approx(
        (defined.mean(), np.median(defined), defined.min(), defined.max(), defined.std())
    )
    assert (s.n, s.n_missing) == (4, 2)
    empty = summarize([None, None])
    assert empty.mean is None and empty.n_missing == 2


@pytest.mark.parametrize(
    ("p", "s", "level"),
    [
        (0.95, 0.91, "very_high"),
        (0.95, 0.9, "high"),
        (0.85, 0.81, "high"),
        (0.75, 0.95, "moderate"),
        (0.7, 0.95, "low"),
        (0.2, 0.1, "low"),
        (None, 0.9, "undetermined"),
    ],
)
def test_verdict_levels(p: float | None, s: float, level: str) -> None:
    assert verdict_level(p, s) == level


def test_spearman_brown_and_prophecy() -> None:
    assert spearman_brown(0.5, 2) == pytest.approx(2 * 0.5 / 1.5)
    assert spearman_brown(None, 2) is None
    # r_full = 0.75 at n = 40 -> target 0.9 needs 40 * 0.9 * 0.25 / (0.75 * 0.1) = 120
    assert samples_needed(0.75, 40, 0.9) == 120
    assert samples_needed(0.0, 40, 0.9) is None and samples_needed(-0.2, 40, 0.9) is None
    assert samples_needed(None, 40, 0.9) is None
    # round trip: lengthening by n_needed / n reaches the target
    r = 0.6
    assert spearman_brown(r, samples_needed(r, 10, 0.9) / 10) >= 0.9 - 1e-12


def test_option_parsing() -> None:
    assert parse_top_k("10, 5,10") == [5, 10]
    assert parse_top_k([30, 5]) == [5, 30]
    for bad in ("5,x", "0", "", "-3"):
        with pytest.raises(HeadattrError):
            parse_top_k(bad)
    assert parse_bands("0-5,6-15,16-27") == [(0, 5), (6, 15), (16, 27)]
    assert parse_bands("3") == [(3, 3)]
    assert parse_bands(None) is None
    for bad in ("0-5,x", "5-3", "0-5,3-8", "a-b", ""):
        with pytest.raises(HeadattrError):
            parse_bands(bad)
    assert default_bands(28) == ([(0, 9), (10, 18), (19, 27)], ["shallow", "middle", "deep"])
    assert default_bands(2)[0] == [(0, 0), (1, 1)]


# ---------------------------------------------------------------- intervals and split-half


def test_leave_one_out_means_equal_final_scores_without_the_sample() -> None:
    rng = np.random.default_rng(0)
    att = rng.normal(size=(15, 3, 4, 5)).astype(np.float32)
    for how in ("signed", "abs", "relu"):
        loo = leave_one_out_means(sample_scores(att, how).reshape(15, -1))
        for i in (0, 7, 14):
            rest = np.delete(att, i, axis=0)
            np.testing.assert_allclose(loo[i].reshape(4, 5), final_scores(rest, how), rtol=1e-5, atol=1e-6)


def test_split_half_recovers_known_reliability(tmp_path: Path) -> None:
    """Signal variance 1 per layer, noise sigma per sample: reliability of N samples is 1 / (1 + sigma^2 / N)."""
    n, truth = 40, np.array([0.5, 0.8, 0.95])
    sigma = np.sqrt(n * (1 - truth) / truth)
    run = read_run(make_run(tmp_path / "r", standard_signal(3, 1000), sigma, n=n, seed=0))
    rel = split_half(sample_scores(run.attributions), 40, np.random.default_rng(0), target=0.9)
    # sampling SD of the estimate over data sets (simulated): about 0.02 at R = 0.5 with 1000 heads
    np.testing.assert_allclose(rel.full_layer, truth, atol=0.05)
    expected_needed = n * 0.9 * (1 - truth) / (truth * 0.1)  # 360, 90, 19
    np.testing.assert_allclose(rel.needed_layer, expected_needed, rtol=0.25)
    assert rel.half == 20 and rel.below_target == 2


def test_split_half_odd_n_and_no_signal(tmp_path: Path) -> None:
    sig = standard_signal(2, 200)
    sig[1] = 0.0  # layer 1: noise only, true reliability 0
    run = read_run(make_run(tmp_path / "r", sig, [1.0, 1.0], n=21))
    rel = split_half(sample_scores(run.attributions), 10, np.random.default_rng(0), target=0.9)
    assert rel.half == 10
    assert rel.full_layer[0] == pytest.approx(spearman_brown(rel.split_layer[0], 21 / 10))
    assert abs(rel.split_layer[1]) < 0.2
    if rel.full_layer[1] is None:  # r <= 0: N/A with the reason, never a value below -1
        assert rel.split_layer[1] <= 0 and rel.reason_layer[1] == NA_NON_POSITIVE
    else:
        assert 0 < rel.full_layer[1] < 0.2 and rel.reason_layer[1] is None
    one = split_half(np.zeros((1, 2, 3)), 5, np.random.default_rng(0), 0.9)
    assert one.full_layer == [None, None] and one.needed_global is None and one.reason_layer == [NA_ONE_SAMPLE] * 2


def test_split_half_negative_half_correlation_is_na_with_raw_r() -> None:
    """Two samples x and -x: every split correlates its halves at exactly -1; Spearman-Brown would give -inf."""
    x = np.random.default_rng(0).normal(size=(1, 2, 6))
    rel = split_half(np.concatenate([x, -x]), 5, np.random.default_rng(0), 0.9)
    assert rel.split_layer == pytest.approx([-1.0, -1.0]) and rel.split_global == pytest.approx(-1.0)
    assert rel.full_layer == [None, None] and rel.full_global is None and rel.needed_layer == [None, None]
    assert rel.reason_layer == [NA_NON_POSITIVE] * 2 and rel.reason_global == NA_NON_POSITIVE
    for r in np.linspace(-1, 0, 11):
        assert spearman_brown(float(r), 2.0) is None  # the formula gives r < -1 for r < -1/3


def _jackknife_by_hand(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Global Pearson of two runs' mean scores and its jackknife interval, written out sample by sample."""
    corr = lambda x, y: float(np.corrcoef(x.ravel(), y.ravel())[0, 1])  # noqa: E731
    z = lambda x, y: float(np.arctanh(corr(x, y)))  # noqa: E731
    n_a, n_b = len(a), len(b)
    without = lambda x, i: np.delete(x, i, axis=0).mean(0)  # noqa: E731
    est = corr(a.mean(0), b.mean(0))
    za = np.array([z(without(a, i), b.mean(0)) for i in range(n_a)])
    zb = np.array([z(a.mean(0), without(b, j)) for j in range(n_b)])
    v_a = (n_a - 1) / n_a * ((za - za.mean()) ** 2).sum()
    v_b = (n_b - 1) / n_b * ((zb - zb.mean()) ** 2).sum()
    # the interaction of the runs' noises, counted in both v_a and v_b: one copy is removed
    d = [z(without(a, i), without(b, j)) - za[i] - zb[j] + np.arctanh(est) for i in range(n_a) for j in range(n_b)]
    inter = ((n_a - 1) * (n_b - 1) / (n_a * n_b)) ** 2 * np.sum(np.square(d))
    var = max(v_a + v_b - inter, v_a, v_b)
    df = (v_a + v_b) ** 2 / (v_a**2 / (n_a - 1) + v_b**2 / (n_b - 1))
    half = stats.t.ppf(0.975, df) * math.sqrt(var)
    return est, math.tanh(np.arctanh(est) - half), math.tanh(np.arctanh(est) + half)


def test_jackknife_interval_matches_a_direct_computation(tmp_path: Path) -> None:
    sig = standard_signal(4, 10)
    a = make_run(tmp_path / "a", sig, 2.0, n=12, seed=1)
    b = make_run(tmp_path / "b", sig, 2.0, n=9, seed=2)
    comp = compare([a, b], seed=0)
    iv = comp.pairs[0].intervals["global_pearson"]
    pa, pb = (sample_scores(read_run(r).attributions) for r in (a, b))
    est, low, high = _jackknife_by_hand(pa, pb)
    assert iv.estimate == pytest.approx(est, abs=1e-6)  # the reported (float32 scores) estimate
    assert (iv.low, iv.high) == pytest.approx((low, high), abs=1e-5)
    assert iv.low < iv.estimate < iv.high and iv.leave_one_out == 21
    assert compare([a, b], seed=5).pairs[0].intervals["global_pearson"] == iv  # deterministic: no draws
    assert compare([a, b], intervals=False).pairs[0].intervals is None
    assert compare([a, b], bootstrap=0).pairs[0].intervals is None  # the former bootstrap's "skip"


def test_intervals_cover_the_expected_between_run_correlation() -> None:
    """200 seeded pairs of runs from a known model (per-sample scores = true head effects + noise): the 95%
    interval covers the expected between-run statistic at these run sizes (its mean over 1000 independent
    pairs) in at least 90% of replications, for each statistic; the old bootstrap's failure (an interval
    below its own estimate) cannot happen."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from interval_coverage import coverage, expected

    truth = expected(20, 20, 1000)
    assert 0.4 < truth["mean_layer_pearson"] < 0.7  # a noisy regime, where intervals matter
    cov = coverage(200, 20, 20, truth)
    assert all(c >= 0.90 for c in cov.values()), cov


def test_intervals_without_noise_collapse(tmp_path: Path) -> None:
    sig = standard_signal(3, 10)
    a = make_run(tmp_path / "a", sig, 0.0, n=8, seed=1)
    b = make_run(tmp_path / "b", sig, 0.0, n=5, seed=2)  # different sample counts are fine
    p = compare([a, b]).pairs[0]
    for key in ("global_pearson", "mean_layer_pearson", "global_spearman"):
        iv = p.intervals[key]
        assert iv.low == pytest.approx(iv.high, abs=1e-6) and iv.low == pytest.approx(iv.estimate, abs=1e-6)


def test_compare_on_seed_sized_runs(tmp_path: Path) -> None:
    sig = standard_signal(28, 28)
    a = make_run(tmp_path / "a", sig, 3.0, n=50, v=10, seed=1)
    b = make_run(tmp_path / "b", sig, 3.0, n=50, v=10, seed=2)
    comp = compare([a, b])
    iv = comp.pairs[0].intervals["mean_layer_pearson"]
    assert iv.leave_one_out == 100 and iv.low < iv.estimate < iv.high


# ---------------------------------------------------------------- compare on runs


def test_compare_metrics_and_json(pair: tuple[Path, Path]) -> None:
    a, b = pair
    comp = compare([a, b], top_k="3,5,12")
    ra, rb = read_run(a), read_run(b)
    p = comp.pairs[0]
    for layer in range(6):
        x, y = ra.scores[layer].astype(float), rb.scores[layer].astype(float)
        assert p.layers[layer].pearson == pytest.approx(stats.pearsonr(x, y).statistic)
        assert p.layers[layer].kendall == pytest.approx(stats.kendalltau(x, y).statistic)
        assert p.layers[layer].overlap[12] is None
    flat_a, flat_b = ra.scores.ravel().astype(float), rb.scores.ravel().astype(float)
    assert p.global_metrics.spearman == pytest.approx(stats.spearmanr(flat_a, flat_b).statistic)
    assert p.global_metrics.overlap[12] is not None and p.global_metrics.chance[12] == pytest.approx(12 / 72)
    assert p.summary["pearson"].mean == pytest.approx(np.mean([m.pearson for m in p.layers]))
    assert p.good_count == sum(m.pearson > 0.9 for m in p.layers)
    assert comp.settings.focus_k == 5  # 10 not requested: the requested K closest to 10
    assert [b.name for b in p.bands] == ["shallow", "middle", "deep"]
    assert comp.runs[0].label == "seed 47"
    assert comp.runs[0].distribution["max"] == pytest.approx(float(ra.scores.max()))
    assert comp.runs[0].completeness["relative_total"] > 0
    kinds = {d["key"]: d["kind"] for d in comp.config_differences}
    assert kinds == {"seed": "seed", "data_seed": "seed", "mask_seed": "seed"}
    d = json.loads(json.dumps(comp.to_dict(), allow_nan=False))
    assert d["format"] == "headattr-compare"
    assert set(d) >= {"settings", "model", "runs", "pairs", "matrix", "matrix_mean", "verdict", "recommendations"}
    assert "scores" not in d["runs"][0]
    assert d["pairs"][0]["layers"][0]["overlap"]["12"] is None
    assert d["pairs"][0]["global"]["chance"]["5"] == pytest.approx(5 / 72)


def test_trend_rises_when_shallow_layers_are_noisy(tmp_path: Path) -> None:
    sig = standard_signal(9, 30)
    noise = np.linspace(8.0, 0.5, 9)
    a = make_run(tmp_path / "a", sig, noise, n=30, seed=1)
    b = make_run(tmp_path / "b", sig, noise, n=30, seed=2)
    p = compare([a, b], intervals=False, bands="0-2,3-5,6-8").pairs[0]
    assert p.trend.direction == "rises" and p.trend.rho > 0 and p.trend.p_value < 0.05
    assert p.trend.bands == "increasing"
    assert p.intervals is None
    assert [(b.first, b.last, b.name) for b in p.bands] == [(0, 2, "custom"), (3, 5, "custom"), (6, 8, "custom")]
    rho, pv = correlate("spearman", list(range(9)), [m.pearson for m in p.layers])
    assert (p.trend.rho, p.trend.p_value) == pytest.approx((rho, pv))


def test_constant_layer_is_na_everywhere(tmp_path: Path) -> None:
    sig = standard_signal(4, 10)
    sig[2] = 0.25
    noise = np.array([1.0, 1.0, 0.0, 1.0])
    a = make_run(tmp_path / "a", sig, noise, seed=1)
    b = make_run(tmp_path / "b", sig, noise, seed=2)
    comp = compare([a, b], top_k="3")
    p = comp.pairs[0]
    assert p.layers[2].pearson is None and p.layers[2].overlap[3] is None
    assert p.undefined_layers == [2] and p.summary["pearson"].n_missing == 1
    assert comp.runs[0].reliability.full_layer[2] is None
    rules = {r["rule"]: r for r in comp.recommendations}
    assert rules["no_signal_layers"]["layers"] == [2]
    assert 2 in [x["layer"] for x in rules["layers_below_threshold"]["layers"]]
    assert "NaN" not in json.dumps(comp.to_dict())


def test_three_runs_matrix_and_flags(tmp_path: Path) -> None:
    sig = standard_signal(3, 16)
    a = make_run(tmp_path / "a", sig, 1.0, seed=1, sample_ids=[f"s{i}" for i in range(20)])
    b = make_run(tmp_path / "b", sig, 1.0, seed=2, sample_ids=[f"s{i}" for i in range(5, 25)])
    c = make_run(tmp_path / "c", sig, 1.0, seed=3, n=30, config={"ig_steps": 16, "batch_size": 8})
    comp = compare([a, b, c])
    assert [(p.a, p.b) for p in comp.pairs] == [(0, 1), (0, 2), (1, 2)]
    m = comp.matrix["global_pearson"]
    assert m[0][0] is None and m[0][2] == m[2][0] == comp.pair(2, 0).global_metrics.pearson
    assert comp.matrix_mean["global_pearson"] == pytest.approx(np.mean([p.global_metrics.pearson for p in comp.pairs]))
    assert comp.pair(0, 1).shared_samples == 15 and comp.pair(0, 2).shared_samples == 0
    kinds = {d["key"]: d["kind"] for d in comp.config_differences}
    assert kinds["ig_steps"] == "flagged" and kinds["samples"] == "flagged" and kinds["batch_size"] == "no_effect"
    rules = {r["rule"]: r for r in comp.recommendations}
    assert rules["config_differences"]["keys"] == ["ig_steps", "samples"]
    assert rules["shared_samples"]["pairs"] == [{"a": 0, "b": 1, "count": 15}]


# ---------------------------------------------------------------- input errors


def test_compare_input_errors(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    a, b = pair
    sig = standard_signal(6, 12)
    other_model = make_run(tmp_path / "m", sig, 1.0, config_hash="cd" * 32)
    other_shape = make_run(tmp_path / "s", standard_signal(6, 8), 1.0)
    (tmp_path / "empty").mkdir()
    cases = [
        ([a], {}, "at least two"),
        ([a, tmp_path / "missing"], {}, "does not exist"),
        ([a, tmp_path / "empty"], {}, "missing"),
        ([a, other_model], {}, "different models"),
        ([a, other_shape], {}, "different score shapes"),
        ([a, b], {"top_k": "5,x"}, "--top-k"),
        ([a, b], {"bands": "0-2,x"}, "--bands"),
        ([a, b], {"bands": "0-9"}, "outside"),
        ([a, b], {"target": 1.0}, "--target"),
        ([a, b], {"bootstrap": -1}, "--bootstrap"),
        ([a, b], {"good_threshold": 2.0}, "--good-threshold"),
    ]
    for runs, kwargs, message in cases:
        with pytest.raises(HeadattrError, match=message):
            compare(runs, **kwargs)


def test_cli_errors_are_one_line_exit_2(tmp_path: Path, pair: tuple[Path, Path], capsys) -> None:
    a, b = pair
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    cases = [
        ["compare", str(a), "--out", str(tmp_path / "o1")],
        ["compare", str(a), str(b), "--out", str(tmp_path / "full")],
        ["compare", str(a), str(b), "--out", str(tmp_path / "o2"), "--lang", "fr"],
        ["compare", str(a), str(b), "--out", str(tmp_path / "o3"), "--bands", "4-1"],
        ["ensemble", str(a), "--out", str(tmp_path / "e1")],
        ["ensemble", str(a), str(b), "--out", str(a), "--overwrite"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("headattr: error:") and err.count("\n") == 1, err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()


# ---------------------------------------------------------------- ensemble


def test_ensemble_run_directory(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    a, b = pair
    out = ensemble([a, b], tmp_path / "ens")
    ens, ra, rb = read_run(out), read_run(a), read_run(b)
    np.testing.assert_allclose(ens.scores, (ra.scores.astype(float) + rb.scores) / 2, rtol=1e-6)
    np.testing.assert_array_equal(ens.attributions, np.concatenate([ra.attributions, rb.attributions]))
    np.testing.assert_allclose(final_scores(ens.attributions), ens.scores, atol=1e-5)  # equal N: same thing
    meta = ens.meta
    assert meta["config"]["seed"] == [47, 1234] and meta["config"]["samples"] == 40
    assert meta["config"]["ig_steps"] == 8
    assert meta["ensemble"]["equal_weights"] is True
    inputs = meta["ensemble"]["inputs"]
    assert [Path(i["path"]) for i in inputs] == [a.resolve(), b.resolve()]
    assert inputs[0]["scores_sha256"] == hashlib.sha256((a / "scores.safetensors").read_bytes()).hexdigest()
    assert inputs[1]["config"]["seed"] == 1234
    assert [s["run"] for s in meta["samples"]] == [0] * 20 + [1] * 20
    assert len(meta["diagnostics"]["j_full"]) == 40 and meta["diagnostics"]["completeness"]["max_abs"] > 0
    assert (out / "heads.csv").is_file()
    comp = compare([out, a])
    assert comp.runs[0].num_samples == 40 and comp.runs[0].label == "seed [47, 1234]"
    assert comp.pairs[0].shared_samples == 20
    with pytest.raises(HeadattrError, match="not empty"):
        ensemble([a, b], out)
    assert ensemble([a, b], out, overwrite=True) == out


def test_ensemble_input_errors(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    a, b = pair
    sig = standard_signal(6, 12)
    cases = [
        ([a], "at least two"),
        ([a, make_run(tmp_path / "v", sig, 1.0, v=3)], "masked variants"),
        ([a, make_run(tmp_path / "p", sig, 1.0, config={"postprocess": "abs"})], "postprocess"),
        ([a, make_run(tmp_path / "m", sig, 1.0, config_hash="ef" * 32)], "different models"),
        ([a, tmp_path / "nothing"], "does not exist"),
    ]
    for runs, message in cases:
        with pytest.raises(HeadattrError, match=message):
            ensemble(runs, tmp_path / "out")
    with pytest.raises(HeadattrError, match="one of the input runs"):
        ensemble([a, b], a, overwrite=True)
    assert (a / "scores.safetensors").is_file()


def test_compare_settings_own_the_options(tmp_path: Path) -> None:
    from headattr import CompareSettings

    # one-line errors naming the flag, at construction
    for bad, flag in (({"top_k": "5,x"}, "--top-k"), ({"bands": "3-1"}, "--bands"), ({"target": 1.0}, "--target")):
        with pytest.raises(HeadattrError, match=flag):
            CompareSettings(**bad)
    chosen = CompareSettings(top_k="10,5,5", bands="0-1,2-5", seed=3, intervals=False)
    assert chosen.top_k == (5, 10) and chosen.bands == ((0, 1), (2, 5))
    assert CompareSettings.from_meta(json.loads(json.dumps(chosen.to_meta()))) == chosen
    # settings= and the keyword arguments compute the same comparison; keywords override the settings' fields
    sig = standard_signal(6, 12) * np.linspace(0.3, 2.0, 6)[:, None]
    runs = [make_run(tmp_path / "a", sig, 1.0, seed=47), make_run(tmp_path / "b", sig, 1.0, seed=1234)]
    by_keywords = compare(runs, top_k="5,10", bands="0-1,2-5", seed=3, intervals=False).to_dict()
    by_settings = compare(runs, settings=chosen).to_dict()
    base = CompareSettings(top_k=(7,), seed=3, intervals=False)
    overridden = compare(runs, settings=base, top_k="5,10", bands="0-1,2-5").to_dict()
    for d in (by_keywords, by_settings, overridden):
        d.pop("created")
    assert by_keywords == by_settings == overridden
