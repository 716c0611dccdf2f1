"""The methods beside Gate-IG (stp, gradient, ablation, dispersion), each against an independent computation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from headattr.cli import main
from headattr.data.tokens import Sample
from headattr.engine import core
from headattr.engine.gates import gated
from headattr.engine.masking import MaskConfig
from headattr.methods import AblationConfig, DispersionConfig, GateIGConfig, GradientConfig, STPConfig
from headattr.methods.stp import threshold_path_attribution
from headattr.runs.attribution import attribute
from headattr.runs.compute import attribute_sample
from headattr.runs.rundir import read_run

IDS = [1, 4, 5, 6, 41, 31, 32, 27, 28, 29, 39, 30, 12]  # [bos] + prompt (7) + answer (5)
SPAN = (8, 13)
SAMPLES = [Sample(i, f"{i + 1:016x}", None, tuple(IDS[:6] + IDS[6 + i :]), 6, 13 - i, 0, 0) for i in range(3)]
MASKING = MaskConfig(mask_probs=(0.3, 0.7), mask_samples_per_prob=2, mask_seed=5)


def sample_of(spec) -> Sample:
    return Sample(0, "0123456789abcdef", None, tuple(IDS), *SPAN, 0, 0)


def run(spec, method, batch_size: int = 64):
    return attribute_sample(spec, sample_of(spec), method, MASKING, batch_size)


# ---------------------------------------------------------------- gradient


@pytest.mark.parametrize("scope", ["layer", "joint"])
def test_gradient_equals_the_gate_ig_integrand_at_one(dream, scope):
    # one right-Riemann node sits at a = 1: Gate-IG's integrand there, with the same rows and gates
    gate_ig = run(dream, GateIGConfig(ig_steps=1, rule="riemann-right", scope=scope))
    gradient = run(dream, GradientConfig())
    np.testing.assert_allclose(gradient.attributions, gate_ig.attributions, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(gradient.diagnostics["j_full"], gate_ig.diagnostics["j_full"], rtol=1e-12)
    assert np.abs(gradient.attributions).max() > 1e-4


def test_gradient_matches_a_finite_difference(dream):
    rows = core.prepare(dream, sample_of(dream), MASKING, 64, cache_layers=False)
    grad = run(dream, GradientConfig()).attributions
    # transformers' RMSNorm computes in float32 even in a float64 model: J carries ~1e-9 noise, so the
    # step must be large; the central difference's own error is O(eps^2)
    layer, head, eps = 1, 2, 1e-2

    def j(value: float) -> np.ndarray:
        g = torch.ones(rows.num_variants, dream.num_heads, dtype=torch.float64)
        g[:, head] = value
        with torch.no_grad(), gated(dream, {layer: g}):
            return core.objective(dream, rows, torch.arange(rows.num_variants), 0).j.numpy()

    np.testing.assert_allclose(grad[:, layer, head], (j(1 + eps) - j(1 - eps)) / (2 * eps), rtol=1e-3)


# ---------------------------------------------------------------- ablation


def explicit_j(spec, zero: tuple[int, int] | None) -> np.ndarray:
    """J per variant of a fresh pass with head `zero`'s columns of the output projection set to 0."""
    proj = None
    if zero is not None:
        layer, head = zero
        proj = spec.head_modules[layer]
        saved = proj.weight.detach().clone()
        with torch.no_grad():
            proj.weight[:, head * spec.head_dim : (head + 1) * spec.head_dim] = 0
    try:
        rows = core.prepare(spec, sample_of(spec), MASKING, 64, cache_layers=False)
        with torch.no_grad():
            return core.objective(spec, rows, torch.arange(rows.num_variants), 0).j.numpy()
    finally:
        if proj is not None:
            with torch.no_grad():
                proj.weight.copy_(saved)


@pytest.mark.parametrize("family", ["dream", "llada"])
def test_ablation_equals_zeroing_the_heads_output_columns(family, request):
    spec = request.getfixturevalue(family)
    result = run(spec, AblationConfig(), batch_size=5)  # chunks that cut across heads
    full = explicit_j(spec, None)
    np.testing.assert_allclose(result.diagnostics["j_full"], full, rtol=1e-12)
    for layer in range(spec.num_layers):
        for head in range(spec.num_heads):
            expected = full - explicit_j(spec, (layer, head))
            np.testing.assert_allclose(result.attributions[:, layer, head], expected, rtol=1e-9, atol=1e-12)
    assert np.abs(result.attributions).max() > 1e-3


# ---------------------------------------------------------------- stp


def test_stp_with_every_threshold_at_zero_is_joint_gate_ig(dream):
    rows = core.prepare(dream, sample_of(dream), MASKING, 64, cache_layers=False)
    zeros = np.zeros((1, dream.num_layers, dream.num_heads))
    stp = threshold_path_attribution(dream, rows, zeros, 0.25, "gauss-legendre", 3, 64, "test")
    gate_ig = run(dream, GateIGConfig(ig_steps=3, scope="joint", baseline=0.25, ig_tol=0.0))  # the fixed rule
    np.testing.assert_allclose(stp.attributions, gate_ig.attributions, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(
        stp.diagnostics["completeness_error"], gate_ig.diagnostics["completeness_error"], rtol=1e-6, atol=1e-12
    )


def test_stp_completeness_holds_per_path_sample_and_converges(dream):
    coarse = run(dream, STPConfig(ig_steps=1, path_samples=3))
    fine = run(dream, STPConfig(ig_steps=4, path_samples=3))
    gap = np.abs(fine.diagnostics["j_full"][:, None] - fine.diagnostics["j_baseline"])
    assert fine.diagnostics["completeness_error"].shape == (4, 3)
    assert np.all(np.abs(fine.diagnostics["completeness_error"]) < 1e-4 * gap)
    assert (
        np.abs(fine.diagnostics["completeness_error"]).max()
        < 0.1 * np.abs(coarse.diagnostics["completeness_error"]).max()
    )
    # the average of the path samples is the reported attribution, so its sum is complete as well
    total = fine.attributions.sum(axis=(1, 2))
    np.testing.assert_allclose(total, fine.diagnostics["j_full"] - fine.diagnostics["j_baseline"][:, 0], rtol=1e-4)


def test_stp_thresholds_are_keyed_by_seed_sample_and_index():
    method = STPConfig(path_seed=3)
    a = method.thresholds("00000000000000aa", 0, (3, 4))
    np.testing.assert_array_equal(a, method.thresholds("00000000000000aa", 0, (3, 4)))
    assert not np.allclose(a, method.thresholds("00000000000000aa", 1, (3, 4)))
    assert not np.allclose(a, method.thresholds("00000000000000ab", 0, (3, 4)))
    assert not np.allclose(a, STPConfig(path_seed=4).thresholds("00000000000000aa", 0, (3, 4)))


def test_stp_numbers_do_not_depend_on_batch_size(dream):
    method = STPConfig(ig_steps=1, path_samples=2)
    one, many = run(dream, method, batch_size=1), run(dream, method, batch_size=64)
    np.testing.assert_allclose(one.attributions, many.attributions, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(
        one.diagnostics["completeness_error"], many.diagnostics["completeness_error"], rtol=1e-8, atol=1e-13
    )


def test_stp_runs_resumed_or_sharded_give_the_same_scores(dream, tmp_path):
    from headattr.runs.distributed import assign

    method = STPConfig(ig_steps=1, path_samples=2)
    kw = dict(method=method, masking=MASKING, progress=False)
    whole = attribute(dream, SAMPLES, out=tmp_path / "whole", batch_size=64, **kw)
    assert attribute(dream, SAMPLES, out=tmp_path / "shards", shard=(1, 2), batch_size=3, **kw) is None
    sharded = attribute(dream, SAMPLES, out=tmp_path / "shards", shard=(0, 2), batch_size=7, **kw)
    attribute(dream, SAMPLES, out=tmp_path / "resumed", shard=(0, 2), batch_size=1, **kw)
    resumed = attribute(dream, SAMPLES, out=tmp_path / "resumed", resume=True, batch_size=64, **kw)
    for other in (sharded, resumed):
        np.testing.assert_allclose(other.attributions, whole.attributions, rtol=1e-6, atol=1e-9)
    mine = len(assign([len(s.input_ids) for s in SAMPLES], 2)[0])  # shard 0's share, balanced by token count
    assert resumed.timings["resumed_samples"] == mine and resumed.timings["computed_samples"] == len(SAMPLES) - mine
    assert read_run(tmp_path / "whole").meta["config"]["path_samples"] == 2


# ---------------------------------------------------------------- dispersion


def eager_dispersion(spec, rows, layer: int) -> np.ndarray:
    """[V, H] dispersion from q and k computed here: norm, projections, RoPE, GQA, softmax, all in float64."""
    block = spec.backbone.layers[layer]
    x = block.input_layernorm(rows.hidden_in[layer]).double()
    attn = block.self_attn
    v, t, _ = x.shape
    d, n_heads, n_kv = spec.head_dim, spec.num_heads, spec.num_kv_heads
    q = x @ attn.q_proj.weight.double().T + (0 if attn.q_proj.bias is None else attn.q_proj.bias.double())
    k = x @ attn.k_proj.weight.double().T + (0 if attn.k_proj.bias is None else attn.k_proj.bias.double())
    q = q.view(v, t, n_heads, d).transpose(1, 2)
    k = k.view(v, t, n_kv, d).transpose(1, 2)
    theta = spec.model.config.rope_parameters["rope_theta"]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.arange(t, dtype=torch.float64)[:, None] * inv[None]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rope(z: torch.Tensor) -> torch.Tensor:
        return z * cos + torch.cat([-z[..., d // 2 :], z[..., : d // 2]], -1) * sin

    q, k = rope(q), rope(k)
    k = k[:, [h // (n_heads // n_kv) for h in range(n_heads)]]
    p = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(d), dim=-1)
    entropy = -(p * p.log()).sum(-1) / math.log(t)  # [V, H, T]
    start, end = rows.answer
    return entropy[:, :, start:end].mean(-1).detach().numpy()


@pytest.fixture(scope="module")
def builtin():
    from headattr.demo import MODEL_DIR
    from headattr.models import load_model

    return load_model(MODEL_DIR, dtype="float64")


@pytest.mark.parametrize("family", ["dream", "llada", "builtin"])
def test_dispersion_equals_attention_entropy_computed_from_q_and_k(family, request):
    spec = request.getfixturevalue(family)
    result = run(spec, DispersionConfig(), batch_size=3)
    rows = core.prepare(spec, sample_of(spec), MASKING, 64, cache_layers=True)
    assert np.all((result.attributions > 0) & (result.attributions < 1))
    for layer in range(spec.num_layers):
        # compared as 1 - D: the random test models attend almost uniformly (D near 1), where D itself
        # would agree trivially; the softmax in float32 leaves ~1e-7 relative error in the weights
        expected = eager_dispersion(spec, rows, layer)
        np.testing.assert_allclose(1 - result.attributions[:, layer], 1 - expected, rtol=2e-3, atol=1e-8)
    if family == "builtin":  # a trained model's heads differ: some focus, some spread
        assert np.ptp(result.attributions) > 0.1


# ---------------------------------------------------------------- cost accounting


def test_passes_are_counted_as_the_methods_do_them(dream):
    n_var, n_layers, n_heads = MASKING.num_variants, dream.num_layers, dream.num_heads

    def passes(method) -> dict[str, float]:
        with core.counting() as count:
            run(dream, method)
        return count.passes()

    assert passes(GradientConfig()) == {"forward": n_var, "backward": n_var}
    assert passes(DispersionConfig()) == {"forward": n_var, "backward": 0}
    # ablation: the cached layer inputs, J(1) from the last layer, then H rows per variant from each layer l
    row_layers = n_var * (n_layers - 1) + n_var + sum(n_heads * n_var * (n_layers - layer) for layer in range(n_layers))
    assert passes(AblationConfig()) == {"forward": row_layers / n_layers, "backward": 0}
    # stp: J(1) and J(b) from layer 0, then one row per (variant, node) with every distinct threshold a piece
    stp = passes(STPConfig(ig_steps=2, path_samples=3))
    nodes = 3 * n_layers * n_heads * 2
    assert stp == {"forward": n_var * (2 + nodes), "backward": n_var * nodes}


# ---------------------------------------------------------------- run directories and the CLI


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    rows = [
        {"prompt": f"k{i}=v{i % 7};k{i}?", "answer": f"v{i % 7}x", "task": "kv" if i % 2 else "copy"} for i in range(30)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


FAST = ["--samples", 3, "--mask-probs", "0.5,1.0", "--mask-samples-per-prob", 1, "--quiet"]
METHOD_FLAGS = {
    "gate-ig": ["--ig-steps", 2],
    "stp": ["--ig-steps", 1, "--path-samples", 2],
    "gradient": [],
    "ablation": [],
    "dispersion": [],
}


def cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("method", list(METHOD_FLAGS))
def test_every_method_goes_through_compare_ensemble_and_prune(method, dream_dir, data_file, tmp_path, capsys):
    runs = []
    for seed in (47, 1234):
        out = tmp_path / f"run{seed}"
        code, _, err = cli(
            [
                "attribute",
                dream_dir,
                "--data",
                data_file,
                "--out",
                out,
                "--seed",
                seed,
                "--method",
                method,
                *METHOD_FLAGS[method],
                *FAST,
            ],
            capsys,
        )
        assert code == 0, err
        meta = read_run(out).meta
        assert meta["config"]["method"] == method and meta["timings"]["forward_passes_per_sample"] > 0
        if method == "stp":  # the path seed follows --seed, as the data and mask seeds do
            assert meta["config"]["path_seed"] == seed
        runs.append(out)
    code, out, err = cli(["compare", *runs, "--out", tmp_path / "cmp", "--bootstrap", 0], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "cmp" / "metrics.json").read_text())["pairs"]
    code, _, err = cli(["ensemble", *runs, "--out", tmp_path / "ens"], capsys)
    assert code == 0, err
    assert read_run(tmp_path / "ens").meta["config"]["method"] == method
    other = "gradient" if method != "gradient" else "ablation"
    code, _, err = cli(
        ["attribute", dream_dir, "--data", data_file, "--out", tmp_path / "other", "--method", other, *FAST], capsys
    )
    assert code == 0, err
    code, _, err = cli(["ensemble", runs[0], tmp_path / "other", "--out", tmp_path / "mixed"], capsys)
    assert code == 2 and "different --method" in err and err.count("\n") == 1
    code, out, err = cli(
        [
            "prune",
            dream_dir,
            "--scores",
            runs[0],
            "--exclude-run",
            runs[1],
            "--out",
            tmp_path / "prune",
            "--eval-samples",
            4,
            "--random-orders",
            2,
            "--single-head",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    pruning = json.loads((tmp_path / "prune" / "pruning.json").read_text())
    np.testing.assert_allclose(pruning["single_head"]["delta_loss"], np.asarray(pruning["single_head"]["delta_loss"]))
    assert "single-head ablation vs scores" in out


@pytest.mark.parametrize(
    "flags",
    [
        ["--method", "gradient", "--ig-steps", "16"],
        ["--method", "stp", "--scope", "layer"],
        ["--method", "ablation", "--rule", "riemann-left"],
        ["--method", "dispersion", "--baseline", "0.5"],
        ["--method", "gate-ig", "--path-samples", "2"],
        ["--method", "gradient", "--path-seed", "3"],
    ],
)
def test_nonsense_method_flags_are_one_line_exit_2(flags, dream_dir, data_file, tmp_path, capsys):
    code, out, err = cli(["attribute", dream_dir, "--data", data_file, "--out", tmp_path / "x", *flags], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("headattr: error: ") and flags[2] in err
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- headattr methods


def json_numbers(obj) -> list[float]:
    """Every number in a JSON document (booleans excluded)."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in json_numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in json_numbers(v)]
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return [float(obj)]
    return []


def test_methods_command_end_to_end_every_number_of_the_report_is_in_the_json(dream_dir, data_file, tmp_path, capsys):
    import re

    out = tmp_path / "bench"
    args = [
        "methods",
        dream_dir,
        "--data",
        data_file,
        "--out",
        out,
        "--quick",
        "--samples",
        3,
        "--eval-samples",
        4,
        "--random-orders",
        2,
        "--quiet",
    ]
    code, stdout, err = cli(args, capsys)
    assert code == 0, err
    summary = json.loads((out / "methods.json").read_text())
    assert set(summary["methods"]) == set(METHOD_FLAGS) and len(summary["agreement"]["global_spearman"]) == 5
    for name, m in summary["methods"].items():
        run = read_run(out / "runs" / f"{name}-s47")
        assert run.meta["config"]["method"] == name
        # cost is what the runs recorded; consistency is compare's number for the same two runs
        both = [read_run(out / "runs" / f"{name}-s{seed}").meta["timings"] for seed in (47, 1234)]
        passes = [t["forward_passes_per_sample"] for t in both]  # the adaptive rule spends per seed's samples
        assert m["cost"]["forward_passes_per_sample"] == pytest.approx(np.mean(passes), rel=1e-12)
        from headattr.analysis.comparison import compare

        pair = compare(
            [run, read_run(out / "runs" / f"{name}-s1234")], top_k=[m["consistency"]["top_k"]], bootstrap=0
        ).pairs[0]
        assert m["consistency"]["global_spearman"] == pytest.approx(pair.global_metrics.spearman)
    assert summary["ranking"] == sorted(
        summary["methods"],
        key=lambda n: (
            -summary["methods"][n]["faithfulness"]["F"],
            -summary["methods"][n]["consistency"]["global_spearman"],
        ),
    )
    numbers = json_numbers(summary)
    md = (out / "methods.md").read_text()
    tokens = re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?", md)
    assert len(tokens) > 50
    for tok in tokens:
        decimals = len(tok.split(".")[1]) if "." in tok else 0
        assert any(f"{x:.{decimals}f}" == tok for x in numbers), tok
    assert (out / "methods.png").read_bytes()[:4] == b"\x89PNG"
    created = {n: read_run(out / "runs" / f"{n}-s47").meta["created"] for n in METHOD_FLAGS}
    code, _, err = cli([*args, "--lang", "zh", "--methods", "gradient,ablation"], capsys)  # finished runs reused
    assert code == 0, err
    assert {n: read_run(out / "runs" / f"{n}-s47").meta["created"] for n in METHOD_FLAGS} == created
    assert "忠实度" in (out / "methods.md").read_text()


@pytest.mark.parametrize("flags", [["--seeds", "47"], ["--methods", "gate-ig,magic"], ["--seeds", "1,x"]])
def test_methods_command_bad_input_is_one_line_exit_2(flags, tmp_path, capsys):
    code, _, err = cli(["methods", "--out", tmp_path / "m", *flags], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("headattr: error: ")
