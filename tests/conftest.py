"""Session fixtures: tiny checkpoints in Dream's and LLaDA's on-disk formats (built by `headattr.testing`).

The suite runs on the CPU in float32 (`--dtype auto` there) whatever the host: its pinned and byte-identity
numbers are CPU float32 numbers, and a GPU host would otherwise load every model on CUDA in bfloat16. Set
before any test runs, so subprocesses (the CLI tests) inherit it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from headattr.models.loading import DEVICE_ENV
from headattr.testing import make_dream_checkpoint, make_llada_checkpoint

os.environ[DEVICE_ENV] = "cpu"


@pytest.fixture(scope="session")
def dream_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dream_checkpoint(tmp_path_factory.mktemp("dream") / "tiny-dream")


@pytest.fixture(scope="session")
def llada_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_llada_checkpoint(tmp_path_factory.mktemp("llada") / "tiny-llada")


@pytest.fixture(scope="session")
def dream(dream_dir: Path):
    from headattr.models import load_model

    return load_model(dream_dir, dtype="float64")


@pytest.fixture(scope="session")
def llada(llada_dir: Path):
    from headattr.models import load_model

    return load_model(llada_dir, dtype="float64")
