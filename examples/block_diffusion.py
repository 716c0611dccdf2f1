"""Attribute, prune-rank and generate with a block-diffusion model: a tiny SDAR checkpoint in its released format.

    python examples/block_diffusion.py [--out DIR] [--family sdar|llada2_moe]

The checkpoint is written by `headattr.testing` (random weights, the released config keys and tensor names), so
the numbers mean nothing; the calls are the ones a real SDAR, TraDo or LLaDA 2 checkpoint takes. headattr reads
it natively (no `--trust-remote-code`), attributes the objective the family declares, and generates with the
family's own block-diffusion sampler.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import headattr
from headattr.testing import make_llada2_checkpoint, make_sdar_checkpoint

PROMPTS = [("k1=v1;k2=v2;k1?", "v1"), ("k3=v3;k4=v4;k4?", "v4"), ("abc reversed?", "cba"), ("1+2?", "3")] * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="where the checkpoint and the run go (default: temp)")
    parser.add_argument("--family", choices=["sdar", "llada2_moe"], default="sdar")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="headattr-block-diffusion-"))
    make = make_sdar_checkpoint if args.family == "sdar" else make_llada2_checkpoint
    checkpoint = make(root / "checkpoint")
    spec = headattr.load_model(checkpoint, device="cpu")
    print(f"{spec.name}: family {spec.family}, {spec.num_layers} layers x {spec.num_heads} heads, "
          f"head_dim {spec.head_dim}, block size {spec.block_size}")  # fmt: skip

    data = root / "data.jsonl"
    data.write_text("".join(f'{{"prompt": "{p}", "answer": "{a}"}}\n' for p, a in PROMPTS))
    samples, _ = headattr.build_samples(str(data), spec.tokenizer, samples=8, seed=47)
    result = headattr.attribute(
        spec, samples, headattr.GateIGConfig(ig_steps=4, ig_tol=0.0), headattr.MaskConfig(), out=root / "run",
        overwrite=True, progress=False,
    )  # fmt: skip
    order = np.argsort(-result.scores, axis=None)[:5]
    print("top heads (layer, head):", [tuple(int(i) for i in np.unravel_index(o, result.scores.shape)) for o in order])

    ids = spec.tokenizer(PROMPTS[0][0], add_special_tokens=False).input_ids
    out = headattr.generate(spec, ids, gen_length=8, steps=4, temperature=0.0)  # SDAR and LLaDA 2: gen_length
    print("generated:", repr(headattr.completion_text(spec, out[0, len(ids) :])))
    print(f"run written to {root / 'run'}")


if __name__ == "__main__":
    main()
