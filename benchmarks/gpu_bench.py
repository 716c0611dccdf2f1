"""Gate-IG on a Dream-7B-shaped model on one GPU: throughput, FLOP utilisation, memory, projected wall time.

    python benchmarks/gpu_bench.py                     # one CUDA GPU, bf16, at most about 8 minutes
    python benchmarks/gpu_bench.py --peak-tflops 989   # a GPU not in the table below
    python benchmarks/gpu_bench.py --tiny              # the same code on CPU in seconds (what the test runs;
                                                       # a 2-layer model, one masked variant)
    python benchmarks/gpu_bench.py --family llada2_moe # another family's released shape (model_shapes.py):
                                                       # dream (default), llada, sdar, lladamoe, llada2_moe
    python benchmarks/gpu_bench.py --family sdar --scopes joint --no-reference --seconds 0   # one sample, short

With --family, the model is that family's released shape built by the family's own adapter with random weights
(`model_shapes.py`: SDAR-8B, LLaDA 8B, LLaDA-MoE-7B-A1B, LLaDA 2.0 mini; --tiny: a tiny model of the same
family); everything else is as below. For mixtures of experts the FLOPs are the active experts' (`headattr.plan`),
the memory holds all of them.

The model is transformers' Qwen2 in Dream 7B's shape (28 layers, hidden 3584, 28 query / 4 KV heads, MLP
18944, vocab 152064) with random bf16 weights made directly on the GPU (`models.native.random_model`: meta
device, `to_empty`, normal init; no download, no disk). Random weights cost exactly what trained ones do.
Samples are synthetic: --prompt-tokens (400) + --answer-tokens (200) = 600 tokens. The configuration is
headattr's defaults, what `headattr attribute` runs: the seed report's 10 masked variants (5 mask probabilities
x 2 draws) with the error-controlled quadrature (--ig-tol 0.04), batch size auto. Scope `layer` and scope
`joint` each run on as many samples as fit in --seconds (at least one).

Printed per scope: tokens/s (sample tokens per second of attribution), achieved TFLOP/s = FLOPs / seconds
with FLOPs by `headattr.plan` (its formula, checked against torch's FLOP counter in the tests: forward
2 P T + 4 T^2 d per layer pass and 2 d V per LM-head token; backward, with the weights frozen, the same in
the projections and 2 P T + 10 T^2 d in attention; for the passes Gate-IG made, with the nodes each path
used), MFU = achieved / the GPU's dense bf16 peak
(PEAK_TFLOPS by the device's name, or --peak-tflops), peak memory (torch.cuda.max_memory_allocated), the
batch size chosen (the planner of `headattr attribute`, with its budget), and
the projected wall time of the seed configuration's 50 samples. Then the straightforward algorithm
(`headattr.reference`: one variant, node and layer per whole forward pass) on --reference-paths of the
first sample's layer paths, scaled to all of them (every path of it costs the same), for the speed ratio
(the reference runs the fixed 8-node rule; headattr's refined rule may spend more nodes), with the work ratio at
identical numbers beside it (both at the fixed 8-node rule, FLOPs by `headattr.plan`); and one JSON line with
everything.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass

import numpy as np
import torch

# Dense bf16 tensor-core peaks, TFLOP/s (vendor data sheets, without sparsity), by the name torch reports
# (`torch.cuda.get_device_name()`), first match wins. Hopper's form factors differ by up to a quarter: SXM parts
# ("H100 80GB HBM3", "H200", GH200) 989, NVL cards 835, H100 PCIe 756. Every A100 (SXM4 or PCIe, 40 or 80 GB)
# is 312. An H100 the table cannot place gives no peak (MFU n/a; pass --peak-tflops) rather than a guess.
PEAK_TFLOPS = (
    (r"H100.*PCIe", 756.0),
    (r"H100.*NVL", 835.0),
    (r"H100.*(SXM|HBM3)", 989.0),
    (r"GH200", 989.0),
    (r"H200.*NVL", 835.0),
    (r"H200", 989.0),
    (r"A100", 312.0),
    (r"L40S", 362.0),
    (r"A10G", 70.0),
    (r"\bL4\b", 121.0),
)


def peak_for(name: str) -> float | None:
    """The dense bf16 peak of the GPU torch calls `name` (`PEAK_TFLOPS`), or None when not in the table."""
    return next((peak for pattern, peak in PEAK_TFLOPS if re.search(pattern, name, re.IGNORECASE)), None)


@dataclass(frozen=True)
class Shape:
    layers: int = 28
    hidden: int = 3584
    heads: int = 28
    kv_heads: int = 4
    mlp: int = 18944
    vocab: int = 152064


TINY = Shape(layers=2, hidden=64, heads=4, kv_heads=2, mlp=128, vocab=256)


def dream_shaped_spec(shape: Shape, device: str, dtype: torch.dtype):
    """A `ModelSpec` of a random Qwen2 (Dream's architecture) of `shape` made on `device`."""
    from pathlib import Path

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from headattr.models import native

    config = Qwen2Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.mlp,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    )
    model = native.random_model(Qwen2ForCausalLM, config, dtype, device)
    identity = f"random-dream-shaped-{shape}"
    return native.native_spec(model, Path("random-dream-7b-shape"), "dream", shape.vocab - 1, True, identity=identity)


def synthetic_samples(n: int, prompt: int, answer: int, vocab: int, seed: int = 0) -> list:
    from headattr.data.tokens import Sample

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ids = [1, *rng.integers(4, vocab - 1, size=prompt + answer).tolist()]
        out.append(Sample(i, f"{i:016x}", None, tuple(ids), 1 + prompt, 1 + prompt + answer, 0, 0))
    return out


def sync(spec) -> None:
    if spec.device.type == "cuda":
        torch.cuda.synchronize(spec.device)


def run_scope(spec, samples, scope: str, seconds: float, masking, max_steps: int | None = None) -> dict:
    """Gate-IG (batch size auto) on samples until `seconds` have passed (at least one sample); `max_steps`
    caps the refined rule's nodes per path (default: headattr's)."""
    from headattr.engine import core
    from headattr.engine.batching import BatchPlanner, cache_bytes
    from headattr.methods import GateIGConfig
    from headattr.runs.compute import attribute_sample, cached_width, largest_pass
    from headattr.runs.plan import flops, sample_passes

    method = GateIGConfig(scope=scope)  # headattr's defaults: what `headattr attribute` runs
    if max_steps:
        method = GateIGConfig(scope=scope, ig_max_steps=max_steps)
    planner = BatchPlanner.create(spec, "auto")
    if spec.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(spec.device)
    done, total_flops, tokens, start = 0, 0.0, 0, time.perf_counter()
    for s in samples:
        t, answer = len(s.input_ids), s.answer_end - s.answer_start
        planner.calibrate(lambda s=s: core.prepare(spec, s, masking, 1, cache_layers=False), t)
        result = planner.run(
            s.index,
            t,
            answer,
            lambda size, s=s: attribute_sample(spec, s, method, masking, size),
            most_rows=largest_pass(method, masking, spec.num_layers),  # as `headattr attribute` plans it
            held=cache_bytes(spec, masking.num_variants, t, cached_width(spec, method)),
        )
        sync(spec)
        nodes = result.diagnostics["nodes"]  # the passes the refined rule made, not only its base rule's
        total_flops += flops(spec, sample_passes(spec, method, s, masking, nodes), t)
        done, tokens = done + 1, tokens + t
        if time.perf_counter() - start >= seconds:
            break
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(spec.device) if spec.device.type == "cuda" else None
    return {
        "scope": scope,
        "samples": done,
        "seconds": elapsed,
        "per_sample_s": elapsed / done,
        "tokens_per_s": tokens / elapsed,
        "tflops": total_flops / elapsed / 1e12,
        "flops": total_flops,
        "peak_memory_gib": None if peak is None else peak / 2**30,
        "batch_size": planner.record()["batch_size"],
        "projected_50_samples_s": 50 * elapsed / done,
    }


def run_reference(spec, sample, masking, paths: int) -> dict:
    """The straightforward algorithm on `paths` of the sample's layer paths, scaled to all of them."""
    from headattr.methods import GateIGConfig
    from headattr.methods.reference import reference_attribution

    method = GateIGConfig(ig_steps=8, scope="layer")
    paths = min(paths, spec.num_layers)
    object.__setattr__(method, "paths", lambda n: [[layer] for layer in range(paths)])  # a subset of paths
    sync(spec)
    start = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=spec.device.type == "cuda"):
        reference_attribution(spec, sample, method, masking)
    sync(spec)
    measured = time.perf_counter() - start
    return {"paths_measured": paths, "seconds_measured": measured, "per_sample_s": measured * spec.num_layers / paths}


def work_ratio(spec, sample, masking) -> float:
    """FLOPs of the straightforward algorithm over headattr's on `sample`, both at the fixed 8-node rule."""
    from headattr.methods import GateIGConfig
    from headattr.runs.plan import flops, reference_passes, sample_passes

    fixed, tokens = GateIGConfig(ig_steps=8, ig_tol=0.0), len(sample.input_ids)
    plain = flops(spec, reference_passes(spec, fixed, sample, masking), tokens)
    return plain / flops(spec, sample_passes(spec, fixed, sample, masking), tokens)


def peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if not torch.cuda.is_available() or args.tiny:
        return None
    return peak_for(torch.cuda.get_device_name())


def build(args, device: str, dtype: torch.dtype):
    """(spec, the shape's fields for the JSON, its name for the summary line): Dream's as it always was, or
    `--family`'s random model from `model_shapes` (its tiny shape with --tiny)."""
    if args.family == "dream":
        shape = TINY if args.tiny else Shape()
        return dream_shaped_spec(shape, device, dtype), shape.__dict__, f"Qwen2 {shape}"
    from model_shapes import family_spec, shape_of

    spec = family_spec(args.family, args.tiny, device, dtype)
    return spec, shape_of(args.family, args.tiny), f"{args.family} ({type(spec.model).__name__})"


def parse_args() -> argparse.Namespace:
    from model_shapes import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on CPU, seconds (tests)")
    parser.add_argument("--family", choices=FAMILIES, default="dream", help="the released shape to build")
    parser.add_argument("--scopes", default="layer,joint", help="Gate-IG scopes to run, comma-separated")
    parser.add_argument("--no-reference", action="store_true", help="skip the straightforward algorithm")
    parser.add_argument("--ig-max-steps", type=int, default=None, help="cap on a path's nodes (default headattr's)")
    parser.add_argument("--seconds", type=float, default=None, help="time per scope (default 150; tiny 1)")
    parser.add_argument("--prompt-tokens", type=int, default=None)
    parser.add_argument("--answer-tokens", type=int, default=None)
    parser.add_argument("--reference-paths", type=int, default=None, help="layer paths of the reference timed")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, TFLOP/s")
    args = parser.parse_args()
    if not args.no_reference and "layer" not in args.scopes.split(","):
        parser.error("the reference is compared with scope layer: add it to --scopes, or pass --no-reference")
    return args


def main() -> None:
    """Long because it is the script: build, run each scope, the reference, print the lines and the JSON."""
    args = parse_args()
    from headattr.engine.masking import MaskConfig

    if args.tiny:
        device, dtype = "cpu", torch.float32
        seconds, prompt, answer, ref_paths = 1.0, 24, 8, 1
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_bench: no CUDA device; run with --tiny for the CPU smoke test")
        device, dtype = "cuda", torch.bfloat16
        seconds, prompt, answer, ref_paths = 150.0, 400, 200, 2
    seconds = args.seconds if args.seconds is not None else seconds
    prompt = args.prompt_tokens or prompt
    answer = args.answer_tokens or answer
    ref_paths = args.reference_paths or ref_paths
    torch.manual_seed(0)
    built = time.perf_counter()
    spec, shape, name = build(args, device, dtype)
    sync(spec)
    build_s = time.perf_counter() - built
    # the seed configuration: 5 probabilities x 2 draws (--tiny: one variant, to stay within seconds)
    masking = MaskConfig(mask_probs=(0.5,), mask_samples_per_prob=1) if args.tiny else MaskConfig()
    samples = synthetic_samples(64, prompt, answer, spec.vocab_size)
    peak = peak_tflops(args)
    experts = f", {spec.active_experts} of {spec.num_experts} experts per token" if spec.num_experts else ""
    print(
        f"model: random {name} ({spec.num_parameters / 1e9:.2f} B parameters{experts}), {dtype}, on {device} "
        f"(built in {build_s:.1f} s); samples of {prompt + answer} tokens ({answer} answer)"
    )
    results = {}
    for scope in args.scopes.split(","):
        r = run_scope(spec, samples, scope, seconds, masking, args.ig_max_steps)
        r["mfu"] = None if peak is None else r["tflops"] / peak
        results[scope] = r
        mfu = "n/a (unknown peak; pass --peak-tflops)" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        mem = "n/a (CPU)" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f} GiB"
        print(
            f"scope {scope}: {r['samples']} samples in {r['seconds']:.1f} s ({r['per_sample_s']:.2f} s each); "
            f"{r['tokens_per_s']:.1f} tokens/s; {r['tflops']:.2f} TFLOP/s, MFU {mfu}; peak memory {mem}; "
            f"batch size {r['batch_size']}; 50 samples: {r['projected_50_samples_s'] / 60:.1f} min"
        )
    summary = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "dtype": str(dtype),
        "family": args.family,
        "shape": shape,
        "parameters": spec.num_parameters,
        "tokens": prompt + answer,
        "answer_tokens": answer,
        "peak_tflops": peak,
        "scopes": results,
    }
    if not args.no_reference:
        summary.update(compare_reference(spec, samples[0], masking, ref_paths, results["layer"]))
    print(json.dumps(summary))


def compare_reference(spec, sample, masking, ref_paths: int, layer: dict) -> dict:
    """The straightforward algorithm's time and work against headattr's scope `layer` (printed; JSON entries)."""
    ref = run_reference(spec, sample, masking, ref_paths)
    ratio = ref["per_sample_s"] / layer["per_sample_s"]
    work = work_ratio(spec, sample, masking)
    print(
        f"straightforward algorithm (headattr.reference, fixed 8-node rule), scope layer: {ref['per_sample_s']:.1f} s "
        f"per sample (from {ref['paths_measured']} of {spec.num_layers} paths); headattr at its defaults is "
        f"{ratio:.1f}x faster; at identical numbers (both at the fixed 8-node rule) it does {work:.2f}x less work "
        "(FLOPs by headattr.plan)"
    )
    return {"reference": ref, "speedup_vs_reference": ratio, "work_ratio_fixed_rule": work}


if __name__ == "__main__":
    main()
