"""Inputs a new user gets wrong: each is one line `headattr: error: ...` and exit status 2, no traceback."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from headattr.cli import main
from headattr.errors import HeadattrError
from headattr.models.devices import check_device
from headattr.runs import rundir

FAST = ["--ig-steps", "1", "--mask-probs", "0.5", "--mask-samples-per-prob", "1", "--samples", "1", "--quiet"]


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"k{i}=v{i};k{i}?", "answer": f"v{i}"}) for i in range(4)) + "\n")
    return path


def one_line_error(code: int, err: str) -> str:
    """The message of a one-line CLI error: exit 2, the last line of stderr, no traceback (progress lines
    before it are allowed)."""
    errors = [line for line in err.splitlines() if line.startswith("headattr: error: ")]
    assert code == 2 and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert "Traceback" not in err
    return errors[0]


@pytest.mark.parametrize("command", ["attribute", "info"])
def test_cuda_without_cuda_is_one_line(command, dream_dir, data_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    extra = ["--data", data_file, "--out", tmp_path / "run", *FAST] if command == "attribute" else []
    code = main([str(a) for a in [command, dream_dir, *extra, "--device", "cuda"]])
    assert "CUDA is not available" in one_line_error(code, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_device_validation(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda") == "cuda" and check_device("cuda:1") == "cuda:1"
    with pytest.raises(HeadattrError, match="2 CUDA device"):
        check_device("cuda:2")
    for bad in ("gpu", "", "cuda:x"):
        with pytest.raises(HeadattrError, match="not a torch device"):
            check_device(bad)
    assert check_device(None) is None and check_device("cpu") == "cpu" and check_device("meta") == "meta"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(HeadattrError, match="MPS is not available"):
        check_device("mps")


def test_unwritable_out_is_one_line(dream_dir, data_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (Path("/proc/headattr-x/y"), blocker / "run"):
        code = main([str(a) for a in ["attribute", dream_dir, "--data", data_file, "--out", out, *FAST]])
        assert "cannot create" in one_line_error(code, capsys.readouterr().err)


def test_prepare_output_dir_and_atomic_writes_turn_oserror_into_one_error(tmp_path):
    with pytest.raises(HeadattrError, match="cannot create /proc/headattr-x"):
        rundir.prepare_output_dir(Path("/proc/headattr-x/y"))
    with pytest.raises(HeadattrError, match="cannot create directory /proc/headattr-x"):
        rundir.make_dir(Path("/proc/headattr-x/y"))
    with pytest.raises(HeadattrError, match="cannot create"):
        rundir.atomic_write_text(Path("/proc/headattr-x/y/run.json"), "{}")
    (tmp_path / "file").write_text("x")
    with pytest.raises(HeadattrError, match="is not a directory"):
        rundir.check_output_dir(tmp_path / "file" / "run")


def test_out_that_permissions_allow_but_the_filesystem_refuses_is_caught_before_loading(tmp_path):
    # root passes every permission check, yet /proc takes no new directory: the probe finds it up front
    with pytest.raises(HeadattrError, match="cannot create /proc/headattr-x/y: /proc refuses it"):
        rundir.check_output_dir(Path("/proc/headattr-x/y"))
    rundir.check_output_dir(tmp_path / "new" / "run")  # a creatable one passes, and the probe leaves nothing
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_run_files_honour_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        rundir.atomic_write_text(tmp_path / "a.txt", "x")
        rundir.atomic_save_tensors(tmp_path / "b.safetensors", {"x": np.zeros(2, dtype=np.float32)})
    finally:
        os.umask(old)
    for name in ("a.txt", "b.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.safetensors"]  # no temporary left over
