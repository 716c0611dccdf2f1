"""Gate-IG on the built-in model is pinned to numbers computed before the core was restructured.

`fixtures/gate_ig_builtin.safetensors` holds, for 4 demo samples (seed 47, stratified by task), 4 IG steps
and both scopes, every per-variant array one sample's attribution produces, as computed by the engine of
commit f219245 with batch size 16. Restructuring the code must not change a single bit of them, at any
batch size (rows never interact). The model is the built-in model of that time (`fixtures/builtin-v3`, the
weights shipped until issue 12 retrained them to end answers with EOS), kept so that the pin still holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import headattr
from headattr.attribution import attribute_sample
from headattr.demo import DATA_FILE

FIXTURE = Path(__file__).parent / "fixtures" / "gate_ig_builtin.safetensors"
MODEL_DIR = Path(__file__).parent / "fixtures" / "builtin-v3"  # the built-in model f219245 ran


@pytest.fixture(scope="module")
def builtin():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the fixture was computed with one thread
    spec = headattr.load_model(MODEL_DIR)
    samples, _ = headattr.build_samples(DATA_FILE, spec.tokenizer, samples=4, seed=47, stratify_by="task")
    yield spec, samples
    torch.set_num_threads(threads)


@pytest.mark.parametrize("scope", ["layer", "joint"])
@pytest.mark.parametrize("batch_size", [16, 7])
def test_gate_ig_is_byte_identical_to_the_pinned_fixture(builtin, scope, batch_size):
    spec, samples = builtin
    pinned = load_file(str(FIXTURE))
    method = headattr.GateIGConfig(ig_steps=4, scope=scope, ig_tol=0.0)  # --ig-tol 0: the fixed rule of before
    masking = headattr.MaskConfig(mask_seed=47)
    for i, s in enumerate(samples):
        r = attribute_sample(spec, s, method, masking, batch_size)
        arrays = {"attributions": r.attributions, **r.diagnostics}
        for name in ("attributions", "j_full", "j_baseline", "completeness_error"):
            expected = pinned[f"{scope}/{i}/{name}"]
            got = np.asarray(arrays[name])
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert got.tobytes() == expected.tobytes(), f"{scope} sample {i} {name} (batch size {batch_size})"
