"""Tests of `PruneSettings`: validation, its meta form, and `prune`'s keyword arguments building it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import click
import numpy as np
import pytest

import headattr
from headattr.cli.app import cli
from headattr.data.samples import build_samples
from headattr.errors import HeadattrError
from headattr.pruning import PruneSettings, prune
from headattr.runs.rundir import read_run
from headattr.testing import make_run, standard_signal


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        ({"fractions": ()}, "--fractions"),
        ({"fractions": (0.1, 1.5)}, "--fractions"),
        ({"orders": ()}, "--orders"),
        ({"orders": ("most", "best")}, "--orders"),
        ({"random_orders": 0}, "--random-orders"),
        ({"seed": -1}, "--seed"),
        ({"rank_by": "size"}, "--rank-by"),
    ],
)
def test_invalid_settings_are_one_line_errors_naming_the_flag(options, flag):
    with pytest.raises(HeadattrError) as info:
        PruneSettings(**options)
    message = str(info.value)
    assert flag in message and "\n" not in message


def test_random_settings_are_checked_only_with_random_orders():
    settings = PruneSettings(orders=("most", "least"), random_orders=0, seed=-1)
    assert settings.random_orders == 0


def test_settings_normalize_sequences():
    settings = PruneSettings(fractions=[1, 0.5], orders=["least"])
    assert settings.fractions == (1.0, 0.5) and settings.orders == ("least",)
    assert all(isinstance(f, float) for f in settings.fractions)


def test_meta_round_trip_uses_pruning_json_names():
    settings = PruneSettings(
        fractions=(0.1, 0.3),
        orders=("least", "random"),
        random_orders=3,
        seed=5,
        per_layer=True,
        rank_by="abs",
        single_head=True,
        decode=True,
    )
    meta = settings.to_meta()
    assert meta["exact_match"] is True and "decode" not in meta
    assert meta["fractions"] == [0.1, 0.3] and meta["orders"] == ["least", "random"]
    assert PruneSettings.from_meta(json.loads(json.dumps(meta))) == settings
    assert PruneSettings.from_meta({}) == PruneSettings()


def test_override_applies_only_given_options():
    settings = PruneSettings(fractions=(0.2,), seed=3)
    assert settings.override(seed=None, rank_by=None) is settings
    assert settings.override(seed=4) == PruneSettings(fractions=(0.2,), seed=4)
    with pytest.raises(HeadattrError, match="--rank-by"):
        settings.override(rank_by="size")


def test_cli_defaults_are_the_settings_defaults():
    command = cli.commands["prune"]
    ctx = click.Context(command)
    defaults = {p.name: p.get_default(ctx) for p in command.params}
    expected = PruneSettings()
    assert [float(f) for f in defaults["fractions"].split(",")] == list(expected.fractions)
    assert tuple(defaults["orders"].split(",")) == expected.orders
    assert defaults["random_orders"] == expected.random_orders
    assert defaults["seed"] == expected.seed
    assert defaults["rank_by"] == expected.rank_by
    assert not defaults["per_layer"] and not defaults["single_head"] and not defaults["exact_match"]


def test_public_names():
    assert headattr.prune is prune and headattr.PruneSettings is PruneSettings


# ---------------------------------------------------------------- prune: keywords and settings agree


@pytest.fixture(scope="module")
def toy_run(dream, tmp_path_factory: pytest.TempPathFactory):
    """A synthetic run of the tiny Dream model's shape and identity (its samples are not real rows)."""
    path = tmp_path_factory.mktemp("prune-settings") / "run"
    signal = standard_signal(dream.num_layers, dream.num_heads)
    return read_run(make_run(path, signal, 0.1, n=4, v=1, config_hash=dream.config_hash))


@pytest.fixture(scope="module")
def samples(dream, tmp_path_factory: pytest.TempPathFactory):
    rng = random.Random(0)
    path: Path = tmp_path_factory.mktemp("prune-settings-data") / "copy.jsonl"
    with path.open("w") as f:
        for _ in range(3):
            text = "".join(rng.choice("abcdef") for _ in range(3))
            f.write(json.dumps({"prompt": f"copy {text}=", "answer": text}) + "\n")
    return build_samples(path, dream.tokenizer, samples=3, seed=0)[0]


def _comparable(result) -> dict:
    out = result.to_dict()
    out.pop("timings")
    return {**out, "head_mask": result.head_mask()}


def test_keywords_and_settings_give_the_same_result(dream, toy_run, samples):
    options = {
        "fractions": (0.25, 0.5),
        "orders": ("most", "least", "random"),
        "random_orders": 2,
        "seed": 3,
        "rank_by": "abs",
        "single_head": True,
    }
    settings = PruneSettings(**options)
    by_keywords = prune(dream, toy_run, samples, **options, batch_size=8, progress=False)
    by_settings = prune(dream, toy_run, samples, settings=settings, batch_size=8, progress=False)
    overridden = prune(
        dream, toy_run, samples, settings.replace(seed=9, rank_by="score"), seed=3, rank_by="abs", progress=False
    )
    expected = _comparable(by_keywords)
    assert _comparable(by_settings) == expected
    assert _comparable(overridden) == expected
    assert np.array_equal(by_settings.curves["random"]["loss"], by_keywords.curves["random"]["loss"])
    # pruning.json's settings read back through the class (single_head is not among them)
    assert PruneSettings.from_meta(expected["settings"]) == settings.replace(single_head=False)
