"""`headattr attribute` and `headattr info` end to end, on tiny checkpoints in native formats."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from headattr.cli import main
from headattr.runs.rundir import read_run

FAST = ["--ig-steps", "2", "--mask-probs", "0.5,1.0", "--mask-samples-per-prob", "1", "--quiet"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    rows = [
        {"prompt": f"k{i}=v{i % 7};k{i}?", "answer": f"v{i % 7}x", "task": "kv" if i % 2 else "copy"} for i in range(24)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("family", ["dream_dir", "llada_dir"])
def test_native_checkpoints_run_through_attribute(family, request, data_file, tmp_path, capsys):
    model_dir = request.getfixturevalue(family)
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        ["attribute", model_dir, "--data", data_file, "--samples", 3, "--out", out, *FAST], capsys
    )
    assert code == 0, err
    run = read_run(out)
    assert run.scores.shape == (3, 4) and run.attributions.shape == (3, 2, 3, 4)
    np.testing.assert_allclose(run.scores, run.attributions.astype(np.float64).mean(axis=(0, 1)), rtol=1e-6)
    meta = run.meta
    assert meta["status"] == "complete" and meta["model"]["family"] == ("dream" if "dream" in family else "llada")
    assert len(meta["samples"]) == 3 and {"index", "hash", "prompt_truncated"} <= set(meta["samples"][0])
    assert np.array(meta["diagnostics"]["completeness_error"]).shape == (3, 2, 3)
    assert meta["config"]["seed"] == 47 and meta["config"]["data_seed"] == 47 and meta["config"]["mask_seed"] == 47
    lines = (out / "heads.csv").read_text().splitlines()
    assert lines[0] == "layer,head,score,rank_in_layer,global_rank" and len(lines) == 13
    assert (out / "heatmap.png").stat().st_size > 1000 and not (out / "checkpoints").exists()
    assert "wrote" in stdout


def test_flag_defaults_are_the_settings_defaults():
    """Each flag's default is its settings field's; `--seed` stands for the data, mask and STP path seeds."""
    from headattr.cli.app import cli
    from headattr.data.samples import DataConfig
    from headattr.engine.masking import MaskConfig
    from headattr.methods import GateIGConfig, STPConfig
    from headattr.models import ModelConfig

    flags = {p.name: p.default for p in cli.commands["attribute"].params}
    assert flags["seed"] == DataConfig.seed == MaskConfig.mask_seed == STPConfig.path_seed
    assert tuple(float(p) for p in flags["mask_probs"].split(",")) == MaskConfig.mask_probs
    owners = {
        DataConfig: ("prompt_field", "answer_field", "samples", "max_length", "stratify_by"),
        MaskConfig: ("mask_samples_per_prob", "loss_normalize"),
        GateIGConfig: ("ig_tol", "ig_max_steps", "rule", "scope", "baseline"),
        STPConfig: ("path_samples",),
        ModelConfig: ("dtype", "logit_shift", "attn_implementation", "head_module", "mask_token_id"),
    }
    for owner, fields in owners.items():
        assert {f: flags[f] for f in fields} == {f: getattr(owner, f) for f in fields}, owner.__name__
    assert flags["fmt"] == DataConfig.format and flags["method_name"] == GateIGConfig.name


def test_info_prints_what_was_detected(dream_dir, capsys):
    code, out, _ = run_cli(["info", dream_dir], capsys)
    assert code == 0
    assert "dream" in out and "mask token id  3" in out and "on (position j predicted from j-1)" in out


def test_threads_apply_to_one_command_only(dream_dir, capsys, monkeypatch):
    import torch

    from headattr.models import loading

    seen = []
    real_load = loading.load_model
    monkeypatch.setattr(
        loading, "load_model", lambda *a, **k: seen.append(torch.get_num_threads()) or real_load(*a, **k)
    )
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    assert run_cli(["info", dream_dir, "--threads", wanted], capsys)[0] == 0
    assert seen == [wanted] and torch.get_num_threads() == before
    code, _, err = run_cli(["info", dream_dir, "--threads", 0], capsys)
    assert code == 2 and "--threads" in err and "Traceback" not in err


def test_deterministic_applies_before_loading_and_to_one_command_only(dream_dir, capsys, monkeypatch):
    import os

    import torch

    from headattr.models import loading

    def state():
        cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        return torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, cublas

    seen = []
    real_load = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: seen.append(state()) or real_load(*a, **k))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = state()
    assert before == (False, False, None)
    assert run_cli(["info", dream_dir, "--deterministic"], capsys)[0] == 0
    assert seen == [(True, True, ":4096:8")] and state() == before  # set before cuBLAS could start; undone
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # a setting of the user's own is kept
    assert run_cli(["info", dream_dir, "--deterministic"], capsys)[0] == 0
    assert seen[-1] == (True, True, ":16:8") and state() == (False, False, ":16:8")


def test_deterministic_runs_change_nothing_on_cpu(dream_dir, data_file, tmp_path, capsys):
    """Every op of attribute and generate has a deterministic CPU path (none raises), with the same numbers."""
    args = ["attribute", dream_dir, "--data", data_file, "--samples", 2, *FAST]
    assert run_cli([*args, "--out", tmp_path / "a"], capsys)[0] == 0
    assert run_cli([*args, "--out", tmp_path / "b", "--deterministic"], capsys)[0] == 0
    scores = [(tmp_path / r / "scores.safetensors").read_bytes() for r in "ab"]
    assert scores[0] == scores[1]
    assert [read_run(tmp_path / r).meta["device"]["deterministic"] for r in "ab"] == [False, True]  # run.json says
    gen = ["generate", dream_dir, "--prompt", "k1=v1;k1?", "--max-new-tokens", 4, "--steps", 4, "--temperature", 0.5]
    outputs = [run_cli([*gen, *extra], capsys) for extra in ([], ["--deterministic"])]
    assert outputs[0][0] == outputs[1][0] == 0 and outputs[0][1] == outputs[1][1]


def test_same_seeds_give_byte_identical_scores_and_batch_size_is_irrelevant(dream_dir, data_file, tmp_path, capsys):
    args = ["attribute", dream_dir, "--data", data_file, "--samples", 4, *FAST]
    for name, extra in (("a", []), ("b", []), ("c", ["--batch-size", "1"])):
        assert run_cli([*args, "--out", tmp_path / name, *extra], capsys)[0] == 0
    a, b = (tmp_path / "a/scores.safetensors").read_bytes(), (tmp_path / "b/scores.safetensors").read_bytes()
    assert a == b
    np.testing.assert_allclose(read_run(tmp_path / "c").scores, read_run(tmp_path / "a").scores, rtol=1e-5, atol=1e-7)
    assert run_cli([*args, "--out", tmp_path / "d", "--seed", "1234"], capsys)[0] == 0
    assert not np.array_equal(read_run(tmp_path / "d").scores, read_run(tmp_path / "a").scores)


# `headattr attribute ...` that SIGKILLs itself right after its 6th checkpoint: a hard kill at a known point (the
# tiny model computes a group faster than a watcher could react)
KILLED_AFTER_6 = """
import os, signal
from headattr.runs import checkpoints
from headattr.cli import app as cli
real, saved = checkpoints.save_checkpoint, []
def save(*args):
    real(*args)
    saved.append(1)
    if len(saved) == 6:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoints.save_checkpoint = save
cli.main()
"""


def test_resume_after_sigkill_gives_the_same_scores(dream_dir, data_file, tmp_path, capsys):
    args = ["attribute", str(dream_dir), "--data", str(data_file), "--samples", "12", *FAST]
    assert run_cli([*args, "--out", tmp_path / "whole"], capsys)[0] == 0
    out = tmp_path / "killed"
    # on CPU samples of one shape are computed in groups (here of 5 and 7): the 6th checkpoint is inside a group
    # in either order, and the resumed run computes that group whole, as the whole run did
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_6, *args, "--out", str(out)], capture_output=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert len(list((out / "checkpoints").glob("*.safetensors"))) == 6
    code, _, err = run_cli([*args, "--out", out], capsys)
    assert code == 2 and "--resume" in err  # never silently continues or overwrites
    assert run_cli([*args, "--out", out, "--resume"], capsys)[0] == 0
    assert (out / "scores.safetensors").read_bytes() == (tmp_path / "whole/scores.safetensors").read_bytes()
    assert read_run(out).meta["timings"]["resumed_samples"] == 6


def test_resume_refuses_checkpoints_from_another_configuration(dream_dir, data_file, tmp_path, capsys, monkeypatch):
    from headattr.runs import compute

    out = tmp_path / "run"
    args = ["attribute", dream_dir, "--data", data_file, "--samples", 3, "--out", out, *FAST]
    real = compute.attribute_samples
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(compute, "MERGE_SAMPLES", 1)  # a sample at a time, so the second call is sample 2
    monkeypatch.setattr(compute, "attribute_samples", flaky)
    code, _, err = run_cli(args, capsys)  # Ctrl-C: exit 130, finished samples stay checkpointed
    monkeypatch.setattr(compute, "attribute_samples", real)
    assert code == 130 and "--resume" in err
    assert len(list((out / "checkpoints").glob("*.safetensors"))) == 1
    code, _, err = run_cli([*args, "--resume", "--ig-steps", "3"], capsys)
    assert code == 2 and "different model, data or configuration" in err


# ---------------------------------------------------------------- errors: one line, exit 2, no traceback


def _broken_models(tmp_path: Path, dream_dir: Path) -> dict[str, Path]:
    from headattr.testing import make_dream_checkpoint

    no_config = tmp_path / "no-config"
    shutil.copytree(dream_dir, no_config)
    (no_config / "config.json").unlink()
    bad_json = tmp_path / "bad-json"
    shutil.copytree(dream_dir, bad_json)
    (bad_json / "config.json").write_text("{not json")
    nan_model = tmp_path / "nan"
    shutil.copytree(dream_dir, nan_model)
    weights = load_file(str(nan_model / "model.safetensors"))
    weights["lm_head.weight"][:] = np.nan
    from safetensors.numpy import save_file

    save_file(weights, str(nan_model / "model.safetensors"))
    return {
        "no_config": no_config,
        "bad_json": bad_json,
        "nan": nan_model,
        "no_mask": make_dream_checkpoint(tmp_path / "no-mask", mask=False),
    }


def _bert(tmp_path: Path) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    from headattr.testing import write_char_tokenizer

    root = tmp_path / "bert"
    vocab = write_char_tokenizer(root)
    BertForMaskedLM(
        BertConfig(
            vocab_size=vocab,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
        )
    ).save_pretrained(root)
    return root


def test_generic_model_with_named_head_module(tmp_path, data_file, capsys):
    bert = _bert(tmp_path)
    args = ["attribute", bert, "--data", data_file, "--samples", 2, *FAST]
    code, _, err = run_cli([*args, "--out", tmp_path / "x", "--logit-shift", "off"], capsys)
    assert code == 2 and "--head-module" in err and "attention.output.dense" in err
    code, _, err = run_cli([*args, "--out", tmp_path / "y", "--head-module", "attention.output.dense"], capsys)
    assert code == 2 and "--logit-shift" in err
    code, _, err = run_cli(
        [*args, "--out", tmp_path / "z", "--head-module", "attention.output.dense", "--logit-shift", "off"], capsys
    )
    assert code == 0, err
    assert read_run(tmp_path / "z").scores.shape == (2, 2)


def test_every_input_error_is_one_line_with_exit_2(dream_dir, data_file, tmp_path, capsys):
    bad = _broken_models(tmp_path, dream_dir)
    missing_field = tmp_path / "fields.jsonl"
    missing_field.write_text('{"question": "a", "answer": "b"}\n')
    empty_answer = tmp_path / "empty.jsonl"
    empty_answer.write_text('{"prompt": "a", "answer": ""}\n')
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": \n')
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("precious")
    base = ["--samples", 2, *FAST]
    cases = [
        (["attribute", tmp_path / "nope", "--data", data_file], "does not exist"),
        (["attribute", bad["no_config"], "--data", data_file], "config.json"),
        (["attribute", bad["bad_json"], "--data", data_file], "cannot read"),
        (["attribute", dream_dir, "--data", tmp_path / "missing.jsonl"], "does not exist"),
        (["attribute", dream_dir, "--data", missing_field], "prompt"),
        (["attribute", dream_dir, "--data", empty_answer, "--samples", 1], "empty"),
        (["attribute", dream_dir, "--data", malformed], "line 2"),
        (["attribute", dream_dir, "--data", data_file, "--samples", 1000], "--samples"),
        (["attribute", dream_dir, "--data", data_file, "--mask-probs", "0.5,1.5"], "outside (0, 1]"),
        (["attribute", dream_dir, "--data", data_file, "--mask-probs", "0"], "outside (0, 1]"),
        (["attribute", dream_dir, "--data", data_file, "--ig-steps", "0"], "--ig-steps"),
        (["attribute", dream_dir, "--data", data_file, "--baseline", "1.0"], "--baseline"),
        (["attribute", dream_dir, "--data", data_file, "--rule", "simpson"], "--rule"),
        (["attribute", dream_dir, "--data", data_file, "--scope", "head"], "--scope"),
        (["attribute", dream_dir, "--data", data_file, "--format", "xml"], "--format"),
        (["attribute", bad["no_mask"], "--data", data_file], "--mask-token-id"),
        (["attribute", bad["nan"], "--data", data_file], "non-finite loss or gradient on sample"),
    ]
    for i, (args, needle) in enumerate(cases):
        code, _, err = run_cli([*args[:2], *base, *args[2:], "--out", tmp_path / f"out{i}"], capsys)
        errors = [line for line in err.splitlines() if line.startswith("headattr: error: ")]
        assert code == 2 and len(errors) == 1 and needle in errors[0] and "Traceback" not in err, (args, err)
    code, _, err = run_cli(["attribute", dream_dir, "--data", data_file, *base, "--out", existing], capsys)
    assert code == 2 and "--overwrite" in err and (existing / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("family", ["dream_dir", "llada_dir", "bert"])
def test_meta_device_describes_without_reading_weights(family, request, tmp_path):
    import torch

    from headattr.models import load_model

    root = _bert(tmp_path) if family == "bert" else request.getfixturevalue(family)
    options = {"head_module": "attention.output.dense", "logit_shift": "off"} if family == "bert" else {}
    full, meta = load_model(root, device="cpu", **options), load_model(root, device="meta", **options)
    assert all(p.is_meta for p in meta.model.parameters())
    assert meta.describe() | {"device": "cpu"} == full.describe()
    assert all(isinstance(p, torch.Tensor) and not p.is_meta for p in full.model.parameters())


def test_failed_overwrite_keeps_the_finished_run(dream_dir, data_file, tmp_path, capsys, monkeypatch):
    from headattr.runs import compute

    out = tmp_path / "run"
    args = ["attribute", dream_dir, "--data", data_file, "--samples", 3, "--out", out, *FAST]
    assert run_cli(args, capsys)[0] == 0
    old = (out / "scores.safetensors").read_bytes()
    real, calls = compute.attribute_samples, {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(compute, "MERGE_SAMPLES", 1)  # a sample at a time, so the second call is sample 2
    monkeypatch.setattr(compute, "attribute_samples", interrupted)
    assert run_cli([*args, "--seed", 5, "--overwrite"], capsys)[0] == 130
    assert (out / "scores.safetensors").read_bytes() == old  # the finished run is intact and readable
    assert read_run(out).meta["config"]["seed"] == 47
    monkeypatch.setattr(compute, "attribute_samples", real)
    assert run_cli([*args, "--seed", 5, "--resume"], capsys)[0] == 0  # finishing the new run replaces it
    assert run_cli([*args, "--seed", 5, "--out", tmp_path / "fresh"], capsys)[0] == 0
    assert (out / "scores.safetensors").read_bytes() == (tmp_path / "fresh/scores.safetensors").read_bytes()
    assert read_run(out).meta["config"]["seed"] == 5 and not (out / "checkpoints").exists()


def test_shards_in_sequence_and_in_parallel_give_the_one_process_run(
    dream_dir, data_file, tmp_path, capsys, monkeypatch
):
    from headattr.runs import compute

    # one thread in every run: a product split over threads can round its rows differently (MKL on AMD EPYC)
    args = ["attribute", dream_dir, "--data", data_file, "--samples", 5, *FAST, "--threads", 1]
    assert run_cli([*args, "--out", tmp_path / "merged"], capsys)[0] == 0
    merged = (tmp_path / "merged/scores.safetensors").read_bytes()
    # in sequence, a sample at a time, so that every shard gets samples (merged groups are shared out whole)
    monkeypatch.setattr(compute, "MERGE_SAMPLES", 1)
    assert run_cli([*args, "--out", tmp_path / "one"], capsys)[0] == 0
    expected = (tmp_path / "one/scores.safetensors").read_bytes()

    out = tmp_path / "seq"
    for i in range(3):
        code, stdout, err = run_cli([*args, "--out", out, "--shard", f"{i}/3"], capsys)
        assert code == 0, err
        assert ("the shard that finishes last writes the run" in stdout) == (i < 2)
        assert (out / "scores.safetensors").exists() == (i == 2)
    assert (out / "scores.safetensors").read_bytes() == expected and not (out / "checkpoints").exists()
    meta = read_run(out).meta
    assert meta["status"] == "complete"
    # the last shard (index 2 of 3; shares balanced by token count hold 2, 1 and 2 of the 5 samples) computed
    # its own and read the others from its peers
    assert meta["timings"]["computed_samples"] == 2 and meta["timings"]["resumed_samples"] == 0
    assert meta["timings"]["other_shards_samples"] == 3

    out = tmp_path / "parallel"
    command = [sys.executable, "-m", "headattr.cli", *map(str, args), "--out", str(out)]
    procs = [
        subprocess.Popen([*command, "--shard", f"{i}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    assert (out / "scores.safetensors").read_bytes() == merged  # in parallel, samples merged as in one process


def test_shard_errors_are_one_line(dream_dir, data_file, tmp_path, capsys):
    args = ["attribute", dream_dir, "--data", data_file, "--samples", 2, "--out", tmp_path / "r", *FAST]
    for shard, extra, words in (
        ("3/3", [], "0 <= I < N"),
        ("one/two", [], "I/N"),
        ("0/2", ["--overwrite"], "--overwrite with --shard"),
    ):
        code, _, err = run_cli([*args, "--shard", shard, *extra], capsys)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()
