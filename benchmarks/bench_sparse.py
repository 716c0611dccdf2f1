"""Block-sparse attention against dense attention: one attention layer of Dream-7B shape, then end to end.

    python benchmarks/bench_sparse.py [--lengths 1024,2048,4096] [--blocks 32,64,128] [--keep 0.3] [--threads 1]
                                      [--device cpu|cuda] [--out sparse_bench.json]

Layer: random q, k, v of Dream 7B's attention (28 query heads, 4 KV heads, head_dim 128; bfloat16 on CUDA,
float32 on CPU) and random per-head keep ratios with mean `--keep`, generation length T / 4. Per length and
block size: the time of one denoising step's attention, dense (`scaled_dot_product_attention` with GQA) against
the sparse kernels (`engine.sparse_attention.masked_sdpa`, exact, and compiled FlexAttention, the kernel meant
for speed), the one-off cost of building the masks (`engine.sparse_mask.block_mask`), the FLOP density (the
fraction of query-key blocks attended, which is the fraction of the attention FLOPs a block-sparse kernel
performs) and, on CUDA, peak memory. Each timing is the median of `--repeats` after a warm-up (compilation).

End to end: tokens per second of `headattr.generate` on the built-in model, dense and with uniform keep
`--keep` at 4-token blocks (its prompts are short), one prompt batch, the same tokens at keep 1 (checked).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from headattr.engine.sparse_attention import flex_attention_blocks, flex_block_mask, masked_sdpa
from headattr.engine.sparse_mask import block_mask

HEADS, KV_HEADS, HEAD_DIM = 28, 4, 128  # Dream 7B


def _timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `fn` over `repeats` runs, after one warm-up run (compilation, caches)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def layer_case(length: int, block: int, keep_mean: float, device: torch.device, repeats: int) -> dict:
    """One attention layer at `length` tokens and `block`-token key blocks (module docstring)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, HEADS, length, HEAD_DIM, generator=gen).to(device, dtype)
    k = torch.randn(1, KV_HEADS, length, HEAD_DIM, generator=gen).to(device, dtype)
    v = torch.randn(1, KV_HEADS, length, HEAD_DIM, generator=gen).to(device, dtype)
    keep = (torch.rand(HEADS, generator=gen) * 2 * keep_mean).clamp(0.05, 1.0)
    keep = keep * keep_mean / keep.mean()
    started = time.perf_counter()
    mask = block_mask(q[0], k[0], keep.to(device), block, length // 4)[None]
    build_s = time.perf_counter() - started
    prepared = flex_block_mask(mask, block, length)
    torch._dynamo.reset()  # a fresh compilation per shape: torch's recompile limit would fall back to eager flex
    dense = _timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True), device, repeats)
    exact = _timed(lambda: masked_sdpa(q, k, v, mask, block), device, repeats)
    flex = _timed(lambda: flex_attention_blocks(q, k, v, prepared, block), device, repeats)
    out = {
        "tokens": length,
        "block": block,
        "density": float(mask.float().mean()),
        "dense_s": dense,
        "masked_sdpa_s": exact,
        "flex_s": flex,
        "flex_over_dense": flex / dense,
        "mask_build_s": build_s,
        "mask_build_over_dense_step": build_s / dense,
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        flex_attention_blocks(q, k, v, prepared, block)
        out["flex_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def end_to_end(keep: float, repeats: int) -> dict:
    """Tokens per second of `headattr.generate` on the built-in model, dense and sparse (module docstring)."""
    from headattr.demo import DATA_FILE, MODEL_DIR
    from headattr.engine.sparse_schedule import SparseAttention
    from headattr.generation.sampling import generate
    from headattr.models import load_model

    spec = load_model(MODEL_DIR, device="cpu")
    rows = [json.loads(line) for line in DATA_FILE.read_text().splitlines()[:16]]
    prompts = [spec.tokenizer(r["prompt"], add_special_tokens=False).input_ids for r in rows]
    settings = {"max_new_tokens": 12, "steps": 12}
    device = torch.device("cpu")

    def run(sparse):
        return generate(spec, prompts, sparse=sparse, **settings)

    sparse = SparseAttention(keep=keep, block_size=4, kernel="sdpa")
    assert torch.equal(run(None), run(SparseAttention(keep=1.0, block_size=4, kernel="sdpa")))  # keep 1 = dense
    tokens = len(prompts) * settings["max_new_tokens"]
    dense_s, sparse_s = _timed(lambda: run(None), device, repeats), _timed(lambda: run(sparse), device, repeats)
    return {"prompts": len(prompts), "dense_tokens_per_s": tokens / dense_s, "sparse_tokens_per_s": tokens / sparse_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="1024,2048,4096")
    parser.add_argument("--blocks", default="32,64,128")
    parser.add_argument("--keep", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-end-to-end", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    layers = [
        layer_case(int(t), int(b), args.keep, device, args.repeats)
        for t in args.lengths.split(",")
        for b in args.blocks.split(",")
    ]
    result = {"device": str(device), "threads": args.threads, "keep": args.keep, "layer": layers}
    if not args.no_end_to_end:
        result["end_to_end"] = end_to_end(args.keep, args.repeats)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
