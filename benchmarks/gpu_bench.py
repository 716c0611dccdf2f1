"""GPU benchmark skeleton (issue 10, item 6): Gate-IG on a Dream-7B-shaped model with random bf16 weights.

    python benchmarks/gpu_bench.py            # Dream 7B shapes on the GPU (no download, no disk)
    python benchmarks/gpu_bench.py --tiny     # the same code on CPU in seconds (a few layers, small dims)

The model is a Qwen2 stack (Dream's architecture) built directly on the device with random weights, so the
numbers measure speed only. Samples are synthetic: `--prompt-tokens` + `--answer-tokens` random ids. Printed:
tokens/s, achieved TFLOP/s, MFU, peak memory, then one JSON line.

FLOPs (counted, not measured), per sample, for the engine's work (`flops`):
  a layer pass over T tokens costs  F_layer = 2 * P_layer * T + 4 * T^2 * d   (matmuls; attention scores and
  values: 2 * T^2 * d each), P_layer = parameters of one decoder layer, d = hidden size;
  a gradient row costs 3x its forward (backward = 2x forward);
  scope layer: the path of layer l re-runs layers l..L-1 from the cached input, so per row sum_l (L - l) layer
  passes; scope joint: L passes; each row adds the LM head at its M masked positions: 2 * d * vocab * M;
  the cache of layer inputs costs V * L forward layer passes.
MFU = achieved FLOP/s / `--peak-tflops` (default 989: H100/H200 SXM dense bf16).

Not yet done (see issue 10): `--batch-size auto`, the straightforward algorithm's ratio, the projected wall time
of the seed configuration, the README numbers.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

DREAM_7B = dict(num_hidden_layers=28, hidden_size=3584, num_attention_heads=28, num_key_value_heads=4,
                intermediate_size=18944, vocab_size=152064)
TINY = dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=200)


def build_spec(shape: dict, device: str, dtype: torch.dtype):
    """A `ModelSpec` of a random Qwen2 model built on `device` (weights never touch the disk)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from headattr.models import ModelSpec, Stack

    config = Qwen2Config(**shape, max_position_embeddings=4096, rope_theta=1e6, tie_word_embeddings=False)
    config.is_causal = False
    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in the target dtype: no float32 copy of 7B weights
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.requires_grad_(False)
    for layer in model.model.layers:
        layer.self_attn.is_causal = False
    base = model.model
    return ModelSpec(
        model=model, tokenizer=None, family="dream", name="random-dream-7b-shape", path="", num_layers=shape[
            "num_hidden_layers"], num_heads=shape["num_attention_heads"],
        num_kv_heads=shape["num_key_value_heads"], head_dim=shape["hidden_size"] // shape["num_attention_heads"],
        head_modules=[layer.self_attn.o_proj for layer in base.layers], head_module_name="self_attn.o_proj",
        mask_token_id=shape["vocab_size"] - 1, logit_shift=True, config_hash="random",
        num_parameters=sum(p.numel() for p in model.parameters()),
        stack=Stack(base.embed_tokens, base.layers, base.norm, model.lm_head, base.rotary_emb),
    )


def attribute_one(spec, ids: list[int], answer_start: int, cfg, uid: str):
    """The engine call, in one place: the API is renamed by the engine refactor."""
    from headattr.engine import attribute_sample

    return attribute_sample(spec, ids, answer_start, len(ids), uid, cfg)


def flops(shape: dict, tokens: int, answer: int, cfg, scope: str) -> float:
    """The documented FLOP count of one sample (module docstring)."""
    d, n_layers, vocab = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]
    kv = d // shape["num_attention_heads"] * shape["num_key_value_heads"]
    p_layer = d * d * 2 + d * kv * 2 + 3 * d * shape["intermediate_size"]
    f_layer = 2 * p_layer * tokens + 4 * tokens**2 * d
    variants = cfg.num_variants
    masked = sum(p for p in cfg.mask_probs) / len(cfg.mask_probs) * answer
    passes = sum(n_layers - layer for layer in range(n_layers)) if scope == "layer" else n_layers
    paths = n_layers if scope == "layer" else 1
    rows = variants * cfg.ig_steps
    return 3 * rows * (passes * f_layer + paths * 2 * d * vocab * masked) + variants * n_layers * f_layer


def run(args: argparse.Namespace) -> dict:
    from headattr.engine import GateIGConfig

    shape = TINY if args.tiny else DREAM_7B
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    spec = build_spec(shape, device, dtype)
    gen = torch.Generator().manual_seed(0)
    prompt, answer = (20, 10) if args.tiny else (args.prompt_tokens, args.answer_tokens)
    out = {"device": device, "shape": shape, "prompt_tokens": prompt, "answer_tokens": answer}
    for scope in ("joint", "layer"):
        cfg = GateIGConfig(scope=scope, batch_size=args.batch_size)
        done, start, total_flops = 0, time.perf_counter(), 0.0
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        while done < args.samples and time.perf_counter() - start < args.seconds:
            ids = torch.randint(3, shape["vocab_size"] - 1, (prompt + answer,), generator=gen).tolist()
            attribute_one(spec, ids, prompt, cfg, uid=f"{done:016x}")  # a hex content hash in real runs
            total_flops += flops(shape, prompt + answer, answer, cfg, scope)
            done += 1
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None  # CPU: not measured
        out[scope] = {
            "samples": done, "wall_s": wall, "tokens_per_s": done * (prompt + answer) / wall,
            "tflops": total_flops / wall / 1e12, "mfu": total_flops / wall / (args.peak_tflops * 1e12),
            "peak_memory_gib": peak, "batch_size": args.batch_size,
        }
        r = out[scope]
        memory = "n/a" if peak is None else f"{peak:.1f} GiB"
        print(f"scope {scope}: {done} samples in {wall:.1f} s, {r['tokens_per_s']:.1f} tokens/s, "
              f"{r['tflops']:.2f} TFLOP/s, MFU {100 * r['mfu']:.1f}%, peak {memory}")
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a small model on CPU (seconds)")
    parser.add_argument("--samples", type=int, default=50, help="at most this many samples per scope")
    parser.add_argument("--seconds", type=float, default=150.0, help="time budget per scope")
    parser.add_argument("--prompt-tokens", type=int, default=400)
    parser.add_argument("--answer-tokens", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16, help="rows per pass (auto: not yet)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense bf16 peak")
    args = parser.parse_args(argv)
    if args.tiny:
        args.samples, args.seconds = min(args.samples, 2), min(args.seconds, 30.0)
    out = run(args)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
