"""One home per model family: families name their samplers, and generation dispatches through the registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import headattr.generation.sampling  # noqa: F401  (registers the samplers)
from headattr.generation import decode, llada, sampler
from headattr.generation.schedule import transfer_counts
from headattr.models.registry import registered

GENERATION = Path(sampler.__file__).parent
SAMPLER_MODULES = {"dream.py", "llada.py"}


def test_every_family_with_a_sampler_name_resolves_to_a_sampler():
    named = [f for f in registered() if f.sampler is not None]
    assert {f.name for f in named} >= {"dream", "llada"}
    for family in named:
        found = sampler.SAMPLERS.get(family.sampler)
        assert found is not None, f"{family.name} names sampler {family.sampler!r}, which is not registered"
        assert family.display_name
        assert found.length_setting in found.defaults


def test_no_family_branches_in_generation_outside_the_sampler_modules():
    branch = re.compile(r"family\s*(==|!=|in\b)|[\"'](dream|llada)[\"']")
    for path in sorted(GENERATION.glob("*.py")):
        if path.name in SAMPLER_MODULES:
            continue
        hits = [line for line in path.read_text().splitlines() if branch.search(line)]
        assert not hits, f"{path.name}: {hits}"


def test_one_transfer_schedule_for_llada_and_the_decoder():
    assert decode.transfer_counts is transfer_counts and llada.transfer_counts is transfer_counts
    assert transfer_counts(10, 4) == [3, 3, 2, 2] and transfer_counts(3, 3) == [1, 1, 1]


def test_an_evaluation_length_keeps_a_given_llada_block():
    sampler_ = sampler.SAMPLERS["llada"]
    assert sampler_.with_length({"steps": 8}, 8) == {"steps": 8, "block_length": 8, "gen_length": 8}
    assert sampler_.with_length({"block_length": 4}, 8) == {"block_length": 4, "gen_length": 8}
    assert sampler.SAMPLERS["dream"].with_length({"steps": 8}, 6) == {"steps": 8, "max_new_tokens": 6}


def test_generation_settings_classes_own_the_defaults_and_checks(dream, llada):
    import headattr
    from headattr.errors import HeadattrError
    from headattr.generation.dream import DREAM_DEFAULTS
    from headattr.generation.llada import LLADA_DEFAULTS

    # the documented defaults of the official samplers, read from the classes
    assert DREAM_DEFAULTS["steps"] == 512 and DREAM_DEFAULTS["alg"] == "origin" and DREAM_DEFAULTS["eps"] == 1e-3
    assert LLADA_DEFAULTS == {
        "gen_length": 128,
        "steps": 128,
        "block_length": 128,
        "temperature": 0.0,
        "cfg_scale": 0.0,
        "remasking": "low_confidence",
    }
    with pytest.raises(HeadattrError, match="gen_length 10 must be a multiple of block_length 4"):
        headattr.LLaDASettings(gen_length=10, block_length=4)
    with pytest.raises(HeadattrError, match="unknown alg"):
        headattr.DreamSettings(alg="greedy")
    prompt = dream.tokenizer("k1=v1;k1?", add_special_tokens=False).input_ids
    by_object = headattr.generate(dream, prompt, headattr.DreamSettings(max_new_tokens=4, steps=4))
    by_keywords = headattr.generate(dream, prompt, max_new_tokens=4, steps=4)
    overridden = headattr.generate(dream, prompt, headattr.DreamSettings(max_new_tokens=4, steps=2), steps=4)
    assert torch.equal(by_object, by_keywords) and torch.equal(by_object, overridden)
    with pytest.raises(HeadattrError, match="pass DreamSettings, not LLaDASettings"):
        headattr.generate(dream, prompt, headattr.LLaDASettings())
