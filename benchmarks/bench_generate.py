"""Tokens per second of batched `headattr.generate` against a one-prompt-at-a-time loop, on one CPU thread.

    python benchmarks/bench_generate.py [--model DIR] [--prompts 32] [--batch 32] [--tokens 12] [--steps 12]

Both generate the same tokens (generation is batch-independent; the script checks it); the loop is the
straightforward way to use a sampler written for one prompt. Default model: the built-in demo model, prompts
from its dataset (different lengths, so the batch is left-padded).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from headattr.demo import DATA_FILE, MODEL_DIR
from headattr.generation.sampling import generate, sampler_for
from headattr.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(MODEL_DIR))
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=12)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_model(args.model)
    rows = [json.loads(line) for line in DATA_FILE.read_text().splitlines()[: args.prompts]]
    bos = [spec.tokenizer.bos_token_id] if spec.tokenizer.bos_token_id is not None else []
    prompts = [bos + spec.tokenizer.encode(r["prompt"], add_special_tokens=False) for r in rows]
    settings = sampler_for(spec).with_length({"steps": args.steps}, args.tokens)  # LLaDA: one block
    generate(spec, prompts[:2], **settings)  # warm-up

    start = time.perf_counter()
    alone = [generate(spec, p, **settings)[0, -args.tokens :] for p in prompts]
    loop_s = time.perf_counter() - start
    start = time.perf_counter()
    batched = [
        row[-args.tokens :]
        for i in range(0, len(prompts), args.batch)
        for row in generate(spec, prompts[i : i + args.batch], **settings)
    ]
    batch_s = time.perf_counter() - start
    same = all(torch.equal(a, b) for a, b in zip(alone, batched, strict=True))
    total = args.tokens * len(prompts)
    print(
        f"{spec.name} ({spec.family}), {len(prompts)} prompts x {args.tokens} tokens, {args.steps} steps, "
        f"{args.threads} thread(s); identical tokens: {same}"
    )
    print(f"one prompt at a time: {total / loop_s:8.1f} tokens/s ({loop_s:.2f} s)")
    print(f"batched ({args.batch} a batch): {total / batch_s:8.1f} tokens/s ({batch_s:.2f} s)")
    print(f"speed-up: {loop_s / batch_s:.2f}x")


if __name__ == "__main__":
    main()
