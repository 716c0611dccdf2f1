"""Speed and memory of headattr's Gate-IG against the straightforward algorithm, in one run.

    python benchmarks/bench_attribution.py                  # synthetic Dream-format model, CPU, 1 thread
    python benchmarks/bench_attribution.py --threads 0      # torch's default thread count
    python benchmarks/bench_attribution.py --model DIR      # a real checkpoint (CUDA if available)

Each implementation runs in its own fresh process (`torch.set_num_threads(--threads)` in each) on the same
model and the same masked inputs:

- reference:       one layer, one quadrature node, one masked variant at a time; whole forward pass; full
                   logits (`headattr.reference`);
- straightforward: the usual batched implementation: every layer's path re-runs the whole forward pass,
                   2 rows (variant, node) per pass, logits at every position (a `WholeModel` backbone,
                   batch size 2);
- batched:         headattr's batching of nodes and variants, but whole forward passes and full logits;
- headattr:        Gate-IG as shipped (batching, reuse of the layers below the gated one, the gated layer's
                   attention once per variant, LM head only at masked positions, the last layer only at
                   the answer span).

Printed: wall time per implementation (median of --repeats rounds; each round runs every implementation
once, so that the machine's changing load falls on all alike), the speed ratio against the straightforward
algorithm and the reference, headattr's ratio as the median of the rounds' ratios with their range, the
largest difference of the attributions from the reference's (identical numbers up to rounding), and peak
memory (process peak RSS above the loaded model on CPU; peak allocated CUDA memory on GPU). Absolute times
depend on the machine; the ratios are the result.

FLOPs (unless --no-flops): the straightforward algorithm and headattr each run once more, untimed, under
torch's FLOP counter (`headattr.plan.flop_counter`: matrix products and the attention kernel). Their ratio is
the work headattr saves; the time ratio is that times the ratio of the two FLOP rates (large batches run
faster per FLOP), which is printed with it.

Equal accuracy (on unless --no-accuracy), on the built-in model (a trained model: on random weights every
rule is exact to float32 rounding at 8 nodes, so there is nothing to compare), its first demo sample: the
converged scores are Gauss-Legendre with --converged nodes (128); the default configuration (GateIGConfig's
defaults as shipped) has some distance from them (max |score difference|, scores = the sample's attributions
averaged over its variants); the fewest right-Riemann steps (the seed report's rule) reaching that distance
are found by doubling from 1, then bisection, and timed against the default.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

COUNTED = ("straightforward", "headattr")  # the implementations whose FLOPs are counted (one more run each)


def synthetic_dream(root: Path, layers: int, hidden: int, heads: int, vocab: int, seed: int = 0) -> Path:
    """A random Dream-format checkpoint (Qwen2 weights, `model_type` Dream) with a character tokenizer."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 4),
        tie_word_embeddings=False,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
    )
    model = Qwen2ForCausalLM(Qwen2Config(**cfg))
    root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "model.safetensors"))
    (root / "config.json").write_text(
        json.dumps(
            {
                "model_type": "Dream",
                "architectures": ["DreamModel"],
                **cfg,
                "mask_token_id": 3,
                "bos_token_id": 1,
                "eos_token_id": 2,
            }
        )
    )
    chars = {chr(c): i + 4 for i, c in enumerate(range(33, 33 + vocab - 4))}
    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<bos>": 1, "<eos>": 2, "<mask>": 3, **chars}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", mask_token="<mask>"
    ).save_pretrained(str(root))
    return root


def method_config(cfg_kw: dict):
    """Gate-IG's settings for a worker: `cfg_kw["method"]` over GateIGConfig's defaults (None: the default
    configuration as shipped), else --ig-steps with the default rule."""
    import dataclasses

    from headattr.methods import GateIGConfig

    if "method" not in cfg_kw:
        # the fixed rule, so that every kind computes the same numbers
        return GateIGConfig(ig_steps=cfg_kw["ig_steps"], ig_tol=0.0)
    changes = dict(cfg_kw["method"] or {})
    names = {f.name for f in dataclasses.fields(GateIGConfig)}
    if changes and "ig_tol" in names:  # an explicit rule is a fixed rule (no refinement, where that exists)
        changes.setdefault("ig_tol", 0.0)
    return GateIGConfig(**changes)


def demo_sample() -> tuple[str, list[int], tuple[int, int]]:
    """The built-in model and its first demo sample (seed 47): a trained model, where quadrature matters."""
    import headattr
    from headattr.demo import DATA_FILE, MODEL_DIR

    spec = headattr.load_model(MODEL_DIR)
    samples, _ = headattr.build_samples(DATA_FILE, spec.tokenizer, samples=1, seed=47)
    s = samples[0]
    return str(MODEL_DIR), list(s.input_ids), (s.answer_start, s.answer_end)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _worker(kind: str, model_dir: str, ids: list[int], span: tuple[int, int], cfg_kw: dict, queue: mp.Queue) -> None:
    if cfg_kw["threads"]:
        torch.set_num_threads(cfg_kw["threads"])
    from headattr.data.tokens import Sample
    from headattr.engine.masking import MaskConfig
    from headattr.models import WholeModel, load_model

    spec = load_model(model_dir, dtype="float32")
    method = method_config(cfg_kw)
    masking = MaskConfig(mask_probs=cfg_kw["mask_probs"], mask_samples_per_prob=cfg_kw["mask_samples_per_prob"])
    sample = Sample(0, "00ff00ff00ff00ff", None, tuple(ids), *span, 0, 0)
    cuda = spec.device.type == "cuda"
    batch_size = 2 if kind == "straightforward" else cfg_kw["batch_size"]
    if kind in ("batched", "straightforward"):
        spec.backbone = WholeModel(spec.model)
    if cfg_kw.get("count_flops"):  # an untimed run under torch's FLOP counter
        from headattr.runs.plan import flop_counter

        with flop_counter() as counter:
            compute(kind, spec, sample, method, masking, batch_size)
        queue.put({"kind": kind, "flops": counter.get_total_flops()})
        return
    base_rss = _peak_rss_mb()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    start = time.perf_counter()
    attr = compute(kind, spec, sample, method, masking, batch_size)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20 if cuda else _peak_rss_mb() - base_rss
    queue.put({"kind": kind, "seconds": seconds, "peak_mb": peak, "attr": attr.tolist(), "device": str(spec.device)})


def compute(kind: str, spec, sample, method, masking, batch_size: int) -> np.ndarray:
    """One sample's attributions [V, L, H] by implementation `kind`."""
    from headattr.methods.reference import reference_attribution
    from headattr.runs.compute import attribute_sample

    if kind == "reference":
        return reference_attribution(spec, sample, method, masking)
    return attribute_sample(spec, sample, method, masking, batch_size).attributions


def run(kind: str, model_dir: str, ids: list[int], span: tuple[int, int], cfg_kw: dict) -> dict:
    """One implementation in a fresh process, so that peak memory is its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(kind, model_dir, ids, span, cfg_kw, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def timed(kind: str, model_dir: str, ids: list[int], span: tuple[int, int], cfg_kw: dict, repeats: int) -> dict:
    """`run` `repeats` times; the median time, the first run's attributions and the largest peak."""
    return alternating([kind], model_dir, ids, span, cfg_kw, repeats)[kind]


def alternating(
    kinds: list[str], model_dir: str, ids: list[int], span: tuple[int, int], cfg_kw: dict, repeats: int
) -> dict[str, dict]:
    """Each of `kinds` `repeats` times, alternating (round r runs every kind once), so that a change in the
    machine's load falls on all kinds alike. Per kind: the median time, every round's time ("rounds"), the
    first run's attributions and the largest peak."""
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for _ in range(repeats):
        for kind in kinds:
            runs[kind].append(run(kind, model_dir, ids, span, cfg_kw))
    out = {}
    for kind, done in runs.items():
        out[kind] = dict(done[0])
        out[kind]["rounds"] = [r["seconds"] for r in done]
        out[kind]["seconds"] = float(np.median(out[kind]["rounds"]))
        out[kind]["peak_mb"] = max(r["peak_mb"] for r in done)
    return out


def ratio(slow: dict, fast: dict) -> tuple[float, float, float]:
    """The speed ratio slow / fast: the median over rounds of each round's ratio, and its range."""
    ratios = np.array(slow["rounds"]) / np.array(fast["rounds"])
    return float(np.median(ratios)), float(ratios.min()), float(ratios.max())


def score_distance(a: list, b: list) -> float:
    """max |difference| of the sample's scores (attributions [V, L, H] averaged over variants)."""
    return float(np.max(np.abs(np.mean(np.array(a), axis=0) - np.mean(np.array(b), axis=0))))


def equal_accuracy(cfg_kw: dict, args) -> dict:
    """On the built-in model: the fewest right-Riemann steps as close to the converged scores as the default
    configuration, found by doubling from 1 then bisection, and their time against the default's."""
    model_dir, ids, span = demo_sample()

    def headattr(method: dict | None, repeats: int = 1) -> dict:
        return timed("headattr", model_dir, ids, span, {**cfg_kw, "method": method}, repeats)

    converged = headattr({"rule": "gauss-legendre", "ig_steps": args.converged})
    default = headattr(None, args.repeats)
    target = score_distance(default["attr"], converged["attr"])
    tried: dict[int, float] = {}

    def close_enough(n: int) -> bool:
        if n not in tried:
            tried[n] = score_distance(headattr({"rule": "riemann-right", "ig_steps": n})["attr"], converged["attr"])
        return tried[n] <= target

    high = 1
    while not close_enough(high) and high < args.max_riemann:
        high *= 2
    low = high // 2
    while high - low > 1:  # close_enough(high) holds (or the cap was hit); close_enough(low) fails
        mid = (low + high) // 2
        if close_enough(mid):
            high = mid
        else:
            low = mid
    riemann = headattr({"rule": "riemann-right", "ig_steps": high}, args.repeats)
    return {
        "model": "built-in (demo sample 0)",
        "converged_steps": args.converged,
        "default_distance": target,
        "riemann_steps": high,
        "riemann_distance": tried[high],
        "reached": tried[high] <= target,
        "default_s": default["seconds"],
        "riemann_s": riemann["seconds"],
        "ratio": riemann["seconds"] / default["seconds"],
        "tried": tried,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory (default: a synthetic Dream-format model)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--answer-len", type=int, default=32)
    parser.add_argument("--ig-steps", type=int, default=8)
    parser.add_argument("--mask-probs", default="0.15,0.3,0.5,0.7,0.9")
    parser.add_argument("--mask-samples-per-prob", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per implementation (the median is shown)")
    parser.add_argument("--converged", type=int, default=128, help="Gauss-Legendre nodes of the converged run")
    parser.add_argument("--max-riemann", type=int, default=4096, help="most right-Riemann steps tried")
    parser.add_argument("--no-flops", dest="flops", action="store_false", help="skip counting the FLOPs")
    parser.add_argument("--no-accuracy", dest="accuracy", action="store_false", help="skip the equal-accuracy part")
    parser.add_argument("--skip-reference", action="store_true", help="for models too large for the slow path")
    parser.add_argument("--only-accuracy", action="store_true", help="run only the equal-accuracy part")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or str(
            synthetic_dream(Path(tmp) / "bench-dream", args.layers, args.hidden, args.heads, args.vocab)
        )
        rng = np.random.default_rng(0)
        n = args.prompt_len + args.answer_len
        ids = [1] + rng.integers(4, min(args.vocab, 100), size=n).tolist()
        span = (1 + args.prompt_len, 1 + n)
        cfg_kw = {
            "ig_steps": args.ig_steps,
            "mask_probs": tuple(float(p) for p in args.mask_probs.split(",")),
            "mask_samples_per_prob": args.mask_samples_per_prob,
            "batch_size": args.batch_size,
            "threads": args.threads,
        }
        kinds = ["straightforward", "batched", "headattr"]
        kinds = kinds if args.skip_reference else ["reference", *kinds]
        kinds = [] if args.only_accuracy else kinds
        results = alternating(kinds, model_dir, ids, span, cfg_kw, args.repeats) if kinds else {}
        for kind in COUNTED if args.flops and kinds else ():
            results[kind]["flops"] = run(kind, model_dir, ids, span, {**cfg_kw, "count_flops": True})["flops"]
    accuracy = equal_accuracy(cfg_kw, args) if args.accuracy or args.only_accuracy else None
    if args.only_accuracy:
        print_accuracy(accuracy, {})
        return

    ref, plain = results.get("reference"), results["straightforward"]
    name = args.model or f"synthetic Dream-format, {args.layers} layers x {args.heads} heads, hidden {args.hidden}"
    print(f"model: {name}; device {results['headattr']['device']}; threads {args.threads or 'default'}")
    print(
        f"one sample: {len(ids)} tokens ({args.answer_len} answer), "
        f"{len(cfg_kw['mask_probs']) * args.mask_samples_per_prob} masked variants, {args.ig_steps} IG steps"
    )
    print(
        f"{'implementation':<17}{'seconds':>9}{'vs straightf.':>15}{'vs reference':>14}{'peak MB':>9}{'max |diff|':>12}"
    )
    for kind, r in results.items():
        speed = f"{ref['seconds'] / r['seconds']:.1f}x" if ref else "-"
        diff = f"{np.max(np.abs(np.array(r['attr']) - np.array(ref['attr']))):.2e}" if ref else "-"
        print(
            f"{kind:<17}{r['seconds']:>9.2f}{plain['seconds'] / r['seconds']:>14.2f}x{speed:>14}"
            f"{r['peak_mb']:>9.0f}{diff:>12}"
        )
    speedup, low, high = ratio(plain, results["headattr"])
    print(
        f"headattr against the straightforward algorithm, median of {args.repeats} alternating rounds' ratios: "
        f"{speedup:.2f}x (range {low:.2f}x to {high:.2f}x)"
    )
    if all("flops" in results[k] for k in COUNTED):
        plain_rate, rate = (results[k]["flops"] / results[k]["seconds"] / 1e9 for k in COUNTED)
        flop_ratio = plain["flops"] / results["headattr"]["flops"]
        print(
            f"FLOPs (torch.utils.flop_counter): straightforward {plain['flops'] / 1e9:.1f} G, headattr "
            f"{results['headattr']['flops'] / 1e9:.1f} G: {flop_ratio:.2f}x fewer; rates {plain_rate:.1f} and "
            f"{rate:.1f} GFLOP/s (time ratio = FLOP ratio x rate ratio = {flop_ratio:.2f} x {rate / plain_rate:.2f})"
        )
    summary = {
        "threads": args.threads,
        "seconds": {k: r["seconds"] for k, r in results.items()},
        "rounds": {k: r["rounds"] for k, r in results.items()},
        "headattr_vs_straightforward": speedup,
        "headattr_vs_straightforward_range": [low, high],
        "flops": {k: results[k]["flops"] for k in COUNTED if "flops" in results[k]},
    }
    print_accuracy(accuracy, summary)


def print_accuracy(accuracy: dict | None, summary: dict) -> None:
    """The equal-accuracy line (when measured), then the JSON summary line."""
    if accuracy is not None:
        a = accuracy
        print(
            f"equal accuracy, {a['model']}: the default is {a['default_distance']:.3g} from Gauss-Legendre "
            f"{a['converged_steps']} (max |score difference|); right Riemann needs {a['riemann_steps']} steps "
            f"({a['riemann_distance']:.3g}{'' if a['reached'] else ', not reached'}): {a['riemann_s']:.2f} s "
            f"against {a['default_s']:.2f} s = {a['ratio']:.1f}x"
        )
        summary["equal_accuracy"] = {k: v for k, v in a.items() if k != "tried"}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
