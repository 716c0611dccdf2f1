"""Gate-IG on the built-in model is pinned, so that restructuring the code cannot change a number.

`fixtures/gate_ig_builtin.safetensors` holds, for 4 demo samples (seed 47, stratified by task), 4 IG steps
and both scopes, every per-variant array one sample's attribution produces. Restructuring the code must not
change them, at any batch size (rows never interact): the arrays of two batch sizes are byte-identical to each
other, and within float32 rounding of the pin. The model is the built-in model of the time the pin was first
made (`fixtures/builtin-v3`, the weights shipped until issue 12 retrained them to end answers with EOS), kept
so that the pin still holds.

Why not bit for bit against the pin: the CPU's matrix kernel decides the last bits. MKL picks its kernels by
CPU, and on AMD EPYC (2026-12-02) the arrays differ from the pin made on an earlier machine by at most 5.9e-5
(attributions up to 15) and 8.5e-5 (completeness errors up to 51): 4e-6 of an array's largest value, while any
change of the arithmetic that matters moves them by orders of magnitude more. PIN_TOLERANCE allows 2e-5.

History of the pin (only a deliberate change of the arithmetic may re-pin it, with `python
tests/test_pinned.py --write`, and each one is recorded here with what it changed):

- commit f219245, batch size 16: the engine before the core was restructured.
- issue 10: the last layer computes o_proj and the MLP only at the answer span's positions
  (`core.loss_window`). Products of other shapes round differently: J(1), J(b) and every array of samples
  2 and 3 (too short to narrow) kept every bit; the attributions and completeness errors of samples 0 and 1
  moved by at most 2.3e-5 (values up to 51; float32). `tests/test_last_layer.py` shows that the two paths
  agree to 1e-10 in float64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import headattr
from headattr.demo import DATA_FILE
from headattr.runs.compute import attribute_sample

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


PIN_TOLERANCE = 2e-5  # of an array's largest |value|: float32 rounding of another CPU's kernels (docstring)


@pytest.mark.parametrize("scope", ["layer", "joint"])
def test_gate_ig_matches_the_pinned_fixture_at_any_batch_size(builtin, scope):
    spec, samples = builtin
    pinned = load_file(str(FIXTURE))
    method = headattr.GateIGConfig(ig_steps=4, scope=scope, ig_tol=0.0)  # --ig-tol 0: the fixed rule of before
    masking = headattr.MaskConfig(mask_seed=47)
    for i, s in enumerate(samples):
        runs = [attribute_sample(spec, s, method, masking, batch_size) for batch_size in (16, 7)]
        for name in ("attributions", "j_full", "j_baseline", "completeness_error"):
            expected = pinned[f"{scope}/{i}/{name}"]
            got, other = (np.asarray(r.attributions if name == "attributions" else r.diagnostics[name]) for r in runs)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert got.tobytes() == other.tobytes(), f"{scope} sample {i} {name}: batch sizes 16 and 7 differ"
            bound = PIN_TOLERANCE * max(float(np.abs(expected).max()), 1e-30)
            np.testing.assert_allclose(got, expected, rtol=0, atol=bound, err_msg=f"{scope} sample {i} {name}")


def write_fixture() -> None:
    """Recompute the pinned arrays with the current code (batch size 16, one thread) and overwrite the fixture."""
    from safetensors.numpy import save_file

    torch.set_num_threads(1)
    spec = headattr.load_model(MODEL_DIR)
    samples, _ = headattr.build_samples(DATA_FILE, spec.tokenizer, samples=4, seed=47, stratify_by="task")
    arrays = {}
    for scope in ("layer", "joint"):
        method = headattr.GateIGConfig(ig_steps=4, scope=scope, ig_tol=0.0)
        for i, s in enumerate(samples):
            r = attribute_sample(spec, s, method, headattr.MaskConfig(mask_seed=47), 16)
            got = {"attributions": r.attributions, **r.diagnostics}
            for name in ("attributions", "j_full", "j_baseline", "completeness_error"):
                arrays[f"{scope}/{i}/{name}"] = np.ascontiguousarray(got[name])
    save_file(arrays, str(FIXTURE), metadata={"samples": ",".join(s.uid for s in samples)})
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_pinned.py --write   (re-pins the fixture; record why in the docstring)")
    write_fixture()
