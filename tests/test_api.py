"""The public Python API: every public name is what the README calls it, and none hides a module."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import torch

import headattr


def test_public_names_are_functions_classes_or_constants_never_modules():
    assert not [name for name in headattr.__all__ if isinstance(getattr(headattr, name), types.ModuleType)]
    for name in ("generate", "prune", "ensemble", "compare", "attribute"):
        assert callable(getattr(headattr, name)), name


def test_renamed_modules_keep_their_public_names():
    # the modules behind headattr.generate / prune / ensemble are named for their job, not for the function
    assert importlib.import_module("headattr.generation").generate is headattr.generate
    assert importlib.import_module("headattr.pruning").prune is headattr.prune
    assert importlib.import_module("headattr.runs.ensembling").ensemble is headattr.ensemble


def test_generate_from_import_headattr(dream):
    """Issue 12's call: `headattr.generate(spec, ids, max_new_tokens=..., steps=...)`."""
    prompt = dream.tokenizer("k1=v1;k1?", add_special_tokens=False).input_ids
    out = headattr.generate(dream, prompt, max_new_tokens=4, steps=4)
    assert isinstance(out, torch.Tensor) and out.shape == (1, len(prompt) + 4)
    assert out[0, : len(prompt)].tolist() == prompt
    assert isinstance(headattr.completion_text(dream, out[0, len(prompt) :]), str)


def test_import_headattr_loads_no_matplotlib():
    # figures are drawn on demand: `import headattr` (and the command line's import) must not pull matplotlib in
    modules = "headattr, headattr.cli, headattr.figures, headattr.runs.rundir"
    code = f"import sys, {modules}; print(sorted(m for m in sys.modules if m.startswith('matplotlib')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_sparse_attention_building_blocks_are_public():
    # issue 22: headattr.keep_ratios is the spec's allocation from an [L, H] array (the budget's JSON comes from
    # headattr.attention_budget), headattr.block_mask the spec's mask rule
    import numpy as np

    keep = headattr.keep_ratios(np.arange(8.0).reshape(2, 4), headattr.BudgetRule(select=0.3), gqa="q")
    assert keep.shape == (2, 4) and keep.dtype == np.float32
    assert callable(headattr.block_mask) and headattr.SparseAttention().skip == 0.2
