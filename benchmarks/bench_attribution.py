"""Speed and memory of headattr's Gate-IG against the straightforward reference, in one run.

    python benchmarks/bench_attribution.py                  # synthetic Dream-format model, CPU
    python benchmarks/bench_attribution.py --model DIR      # a real checkpoint (CUDA if available)

Each implementation runs in its own fresh process on the same model and the same masked inputs:

- reference: one layer, one quadrature node, one masked variant at a time; whole forward pass; full logits
  (`headattr.reference`);
- batched:   headattr's batching of nodes and variants, but whole forward passes and full logits
  (the model's backbone swapped for a `WholeModel`);
- headattr:  Gate-IG as shipped (batching + reuse of the layers below the gated one + LM head only at
  masked positions).

Printed: wall time per implementation, the speed ratio against the reference, the largest difference of the
attributions from the reference's, and peak memory (process peak RSS above the loaded model on CPU; peak
allocated CUDA memory on GPU). Absolute times depend on the machine; the ratios are the result.
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


def synthetic_dream(root: Path, layers: int, hidden: int, heads: int, vocab: int, seed: int = 0) -> Path:
    """A random Dream-format checkpoint (Qwen2 weights, `model_type` Dream) with a character tokenizer."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
               num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), tie_word_embeddings=False,
               max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-6)
    model = Qwen2ForCausalLM(Qwen2Config(**cfg))
    root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({"model_type": "Dream", "architectures": ["DreamModel"], **cfg,
                                                  "mask_token_id": 3, "bos_token_id": 1, "eos_token_id": 2}))
    chars = {chr(c): i + 4 for i, c in enumerate(range(33, 33 + vocab - 4))}
    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<bos>": 1, "<eos>": 2, "<mask>": 3, **chars}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                            mask_token="<mask>").save_pretrained(str(root))
    return root


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _worker(kind: str, model_dir: str, ids: list[int], span: tuple[int, int], cfg_kw: dict, queue: mp.Queue) -> None:
    from headattr.attribution import attribute_sample
    from headattr.data import Sample
    from headattr.masking import MaskConfig
    from headattr.methods import GateIGConfig
    from headattr.models import WholeModel, load_model
    from headattr.reference import reference_attribution

    spec = load_model(model_dir, dtype="float32")
    method = GateIGConfig(ig_steps=cfg_kw["ig_steps"])
    masking = MaskConfig(mask_probs=cfg_kw["mask_probs"], mask_samples_per_prob=cfg_kw["mask_samples_per_prob"])
    sample = Sample(0, "00ff00ff00ff00ff", None, tuple(ids), *span, 0, 0)
    cuda = spec.device.type == "cuda"
    if kind == "batched":
        spec.backbone = WholeModel(spec.model)
    base_rss = _peak_rss_mb()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    start = time.perf_counter()
    if kind == "reference":
        attr = reference_attribution(spec, sample, method, masking)
    else:
        attr = attribute_sample(spec, sample, method, masking, cfg_kw["batch_size"]).attributions
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20 if cuda else _peak_rss_mb() - base_rss
    queue.put({"kind": kind, "seconds": seconds, "peak_mb": peak, "attr": attr.tolist(),
               "device": str(spec.device)})


def run(kind: str, model_dir: str, ids: list[int], span: tuple[int, int], cfg_kw: dict) -> dict:
    """One implementation in a fresh process, so that peak memory is its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(kind, model_dir, ids, span, cfg_kw, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


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
    parser.add_argument("--skip-reference", action="store_true", help="for models too large for the slow path")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or str(synthetic_dream(Path(tmp) / "bench-dream", args.layers, args.hidden,
                                                      args.heads, args.vocab))
        rng = np.random.default_rng(0)
        n = args.prompt_len + args.answer_len
        ids = [1] + rng.integers(4, min(args.vocab, 100), size=n).tolist()
        span = (1 + args.prompt_len, 1 + n)
        cfg_kw = {"ig_steps": args.ig_steps, "mask_probs": tuple(float(p) for p in args.mask_probs.split(",")),
                  "mask_samples_per_prob": args.mask_samples_per_prob, "batch_size": args.batch_size}
        kinds = ["batched", "headattr"] if args.skip_reference else ["reference", "batched", "headattr"]
        results = {k: run(k, model_dir, ids, span, cfg_kw) for k in kinds}

    ref = results.get("reference")
    name = args.model or f"synthetic Dream-format, {args.layers} layers x {args.heads} heads, hidden {args.hidden}"
    print(f"model: {name}; device {results['headattr']['device']}")
    print(f"one sample: {len(ids)} tokens ({args.answer_len} answer), "
          f"{len(cfg_kw['mask_probs']) * args.mask_samples_per_prob} masked variants, {args.ig_steps} IG steps")
    print(f"{'implementation':<16}{'seconds':>10}{'speed-up':>10}{'peak MB':>10}{'max |diff|':>14}")
    for kind, r in results.items():
        speed = f"{ref['seconds'] / r['seconds']:.1f}x" if ref else "-"
        diff = f"{np.max(np.abs(np.array(r['attr']) - np.array(ref['attr']))):.2e}" if ref else "-"
        print(f"{kind:<16}{r['seconds']:>10.2f}{speed:>10}{r['peak_mb']:>10.0f}{diff:>14}")


if __name__ == "__main__":
    main()
