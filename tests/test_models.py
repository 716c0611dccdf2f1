"""Model families as adapters: what `load_model` accepts and refuses, tried as a user would."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from headattr.cli import main
from headattr.errors import HeadattrError
from headattr.methods.reference import full_logits
from headattr.models import FAMILIES, WholeModel, load_model
from headattr.testing import make_dream_checkpoint

IDS = torch.tensor([[1, 4, 5, 6, 41, 31, 32, 27, 28, 29, 39, 30, 12]])


def test_registry_names_the_native_families():
    assert FAMILIES["dream"].name == "dream" and FAMILIES["llada"].name == "llada"


@pytest.mark.parametrize("name", ["attn_out", "o_proj", "self_attn.o_proj"])
def test_llada_accepts_its_own_head_module_name(llada_dir, name, capsys):
    spec = load_model(llada_dir, dtype="float64", head_module=name)
    assert spec.head_module == "self_attn.o_proj"
    assert spec.head_modules == [layer.self_attn.o_proj for layer in spec.model.model.layers]
    assert main(["info", str(llada_dir), "--head-module", name]) == 0
    assert "self_attn.o_proj" in capsys.readouterr().out


def test_unknown_head_module_is_one_line(llada_dir, capsys):
    assert main(["info", str(llada_dir), "--head-module", "nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--head-module 'nonexistent'" in err and "self_attn.o_proj" in err


def test_no_rope_future_warning(dream_dir, llada_dir, tmp_path):
    """transformers 5 warns about old-style RoPE keys; the loaders pass `rope_parameters` explicitly."""
    root = make_dream_checkpoint(tmp_path / "dream-rope-null")
    cfg = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**cfg, "rope_scaling": None}))  # as released Dream configs say
    for path, theta in ((root, cfg["rope_theta"]), (dream_dir, cfg["rope_theta"]), (llada_dir, 500000.0)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            spec = load_model(path, dtype="float64")
        assert not [w for w in seen if "rope" in str(w.message).lower()], [str(w.message) for w in seen]
        assert spec.model.config.rope_parameters["rope_theta"] == theta


def test_dream_never_applies_a_sliding_window(tmp_path):
    """A Dream config saying `use_sliding_window: true` must change nothing (Dream never slides)."""
    plain = make_dream_checkpoint(tmp_path / "plain")
    sliding = tmp_path / "sliding"
    shutil.copytree(plain, sliding)
    cfg = json.loads((sliding / "config.json").read_text())
    # every layer a sliding one (max_window_layers 0) with a window of 2 tokens: a large change if applied
    window = {"use_sliding_window": True, "sliding_window": 2, "max_window_layers": 0}
    (sliding / "config.json").write_text(json.dumps({**cfg, **window}))
    a, b = load_model(plain, dtype="float64"), load_model(sliding, dtype="float64")
    torch.testing.assert_close(full_logits(b, IDS), full_logits(a, IDS), rtol=0, atol=0)


def test_corrupt_weights_are_one_line(dream_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(dream_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted download
    with pytest.raises(HeadattrError, match="truncated or corrupt"):
        load_model(broken)
    assert main(["info", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "model.safetensors" in err


def test_generic_backbone_refuses_grad_checkpoint():
    """transformers checkpoints only in training mode: a silent no-op would be a lie."""
    with pytest.raises(HeadattrError, match="--grad-checkpoint needs a native family"):
        WholeModel(torch.nn.Linear(2, 2)).set_grad_checkpoint(True)


def test_grad_checkpoint_recomputes_the_layers(dream, monkeypatch):
    """With --grad-checkpoint the layer stack really goes through torch's checkpoint."""
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    stack = dream.backbone
    stack.set_grad_checkpoint(True)
    try:
        h = stack.embed(IDS).requires_grad_(True)
        stack.run(h, 0, dream.num_layers, stack.context(h)).sum().backward()
    finally:
        stack.set_grad_checkpoint(False)
    assert len(calls) == dream.num_layers


def test_model_config_round_trips_through_run_meta():
    from headattr.models import ModelConfig

    cfg = ModelConfig(dtype="float64", head_module="attn_out", logit_shift="off", grad_checkpoint=True)
    assert ModelConfig.from_meta(cfg.to_meta()) == cfg
    with pytest.raises(HeadattrError, match="--dtype"):
        ModelConfig(dtype="float8")


def test_path_errors(tmp_path: Path):
    with pytest.raises(HeadattrError, match="does not exist"):
        load_model(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(HeadattrError, match="is a file"):
        load_model(tmp_path / "file")


@pytest.mark.parametrize("family", ["dream", "llada"])
def test_weights_are_converted_as_they_are_read(family, dream_dir, llada_dir, monkeypatch):
    """Loading in another dtype than the checkpoint's never holds the checkpoint's tensors all at once (issue 24:
    `--dtype float32` of a bf16 checkpoint on CUDA held the bf16 and the float32 copies together, 1.5x)."""
    import weakref

    from headattr.models import files

    real, read, most_alive, stored = files._safetensors_tensors, [], [], set()

    def tracked(shard, device):
        for name, tensor in real(shard, device):
            most_alive.append(sum(ref() is not None for ref in read))  # earlier tensors as read, still held
            read.append(weakref.ref(tensor))
            stored.add(tensor.dtype)
            yield name, tensor

    monkeypatch.setattr(files, "_safetensors_tensors", tracked)
    spec = load_model(dream_dir if family == "dream" else llada_dir, dtype="float64", device="cpu")
    assert {p.dtype for p in spec.model.parameters()} == {torch.float64} and torch.float64 not in stored
    assert len(read) > 10 and max(most_alive) <= 1  # one tensor in flight, not the whole checkpoint


def test_the_suite_and_the_demo_load_on_cpu_float32_on_a_gpu_host(dream_dir, monkeypatch):
    # issue 24: on a host with a GPU, models loaded without --device went to CUDA in bfloat16, and the pinned
    # CPU float32 numbers failed; conftest sets HEADATTR_DEVICE=cpu, and the demo asks for the CPU itself
    import torch

    from headattr.demo.run import demo_model
    from headattr.models import default_device, load_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == "cpu"
    for spec in (load_model(dream_dir), demo_model()):
        assert spec.device.type == "cpu" and spec.dtype == torch.float32
        assert {p.device.type for p in spec.model.parameters()} == {"cpu"}
    monkeypatch.delenv("HEADATTR_DEVICE")
    assert default_device() == "cuda"  # what a user's GPU host gets
    assert demo_model().device.type == "cpu"
