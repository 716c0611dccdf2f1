"""Session fixtures: tiny checkpoints in Dream's and LLaDA's on-disk formats (built by `headattr.testing`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from headattr.testing import make_dream_checkpoint, make_llada_checkpoint


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
