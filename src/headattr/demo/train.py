"""Train the demo masked diffusion LM from scratch and write it as a Dream-format checkpoint.

    python -m headattr.demo.train [--out DIR] [--data FILE | --no-data] [--SETTING VALUE ...]

Every field of `TrainConfig` is a SETTING (`--seed`, `--steps`, `--head-dim`, ...; `--help` lists them).

Why: headattr needs a real, trained diffusion LM that runs on a CPU in seconds, ships inside the package
and has heads that matter, so that attribution and pruning can be demonstrated and tested without a
download. The model is transformers' Qwen2 run with bidirectional attention, exactly Dream's architecture,
and it keeps Dream's conventions: shifted logits (the token at position j is predicted from position j-1),
a `<|mask|>` token, `config.json` with `"model_type": "Dream"` and Qwen2 weight names.

The objective and why each choice was made (with the measurements behind them): docs/demo-model.md.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, Qwen2ForCausalLM

from headattr.demo import DATA_FILE, MODEL_DIR
from headattr.demo import tasks as demo_tasks
from headattr.demo.checkpoint import WEIGHTS_FILE, build_model, load_checkpoint, model_config, save_checkpoint
from headattr.demo.evaluate import check_bidirectional, evaluate, progress_report
from headattr.demo.objective import TrainConfig, batches, diffusion_loss, make_batch
from headattr.demo.tokenizer import build_tokenizer

# ---------------------------------------------------------------- model


# ---------------------------------------------------------------- batches and the objective


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio` of the peak."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train(
    cfg: TrainConfig, out_dir: str | Path | None = None, log: bool = True
) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerBase]:
    """Train a demo model with `cfg`; write the checkpoint to `out_dir` when given."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tokenizer = build_tokenizer()
    model = build_model(model_config(cfg, tokenizer))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    model.train()
    start, running = time.time(), 0.0
    stream = batches(cfg.seed, cfg.batch_size, eos_window=cfg.eos_window, eos_fraction=cfg.eos_fraction)
    for step, items in zip(range(cfg.steps), stream, strict=False):
        batch = make_batch([example for example, _ in items], tokenizer, [window for _, window in items])
        loss = diffusion_loss(model, batch, tokenizer.mask_token_id, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        running += loss.item()
        if log and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
            count = (step % cfg.log_every) + 1
            print(
                f"step {step + 1:5d}  loss {running / count:.4f}  lr {scheduler.get_last_lr()[0]:.2e}  "
                f"elapsed {time.time() - start:6.1f}s",
                flush=True,
            )
            running = 0.0
        if log and cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            print(f"step {step + 1:5d}  held-out masked_acc@0.5  {progress_report(model, tokenizer)}", flush=True)
            model.train()
    model.eval()
    if out_dir is not None:
        save_checkpoint(model, tokenizer, out_dir, cfg)
    return model, tokenizer


# ---------------------------------------------------------------- evaluation


# ---------------------------------------------------------------- command line

CLI_FIELDS = tuple(field.name for field in fields(TrainConfig))  # every setting, so any variant is one command


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m headattr.demo.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=MODEL_DIR, help="checkpoint directory (default: shipped)")
    parser.add_argument("--data", type=Path, default=DATA_FILE, help="where to write the demo dataset")
    parser.add_argument("--no-data", action="store_true", help="do not write the demo dataset")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate the checkpoint in --out")
    parser.add_argument("--eval-per-task", type=int, default=200, help="held-out examples per task")
    for name in CLI_FIELDS:
        value, flag = getattr(defaults, name), f"--{name.replace('_', '-')}"
        if value is None:  # head_dim
            parser.add_argument(flag, type=int, help="default: hidden size // heads")
        else:
            parser.add_argument(flag, type=type(value), default=value, help=f"default: {value}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    if args.eval_only:
        model, tokenizer = load_checkpoint(args.out)
    else:
        cfg = TrainConfig(**{name: getattr(args, name) for name in CLI_FIELDS})
        print(f"training {cfg}", flush=True)
        train(cfg, args.out)
        print(f"training time {time.time() - start:.1f}s; checkpoint written to {args.out}", flush=True)
        model, tokenizer = load_checkpoint(args.out)  # evaluate what was written, not what is in memory
    size = (Path(args.out) / WEIGHTS_FILE).stat().st_size
    params = sum(p.numel() for p in model.parameters())
    print(
        f"parameters {params}, {WEIGHTS_FILE} {size} bytes, "
        f"bidirectional check {check_bidirectional(model, tokenizer):.3g}"
    )
    args_file = Path(args.out) / "training_args.json"
    window = int(json.loads(args_file.read_text()).get("eos_window", 0)) if args_file.is_file() else 0
    header = f"{'task':<8} {'masked_acc@0.5':>15} {'exact_match':>12}" + (f" {'generated':>10}" if window else "")
    print(f"{header}   (held-out, {args.eval_per_task} per task)")
    for task, result in evaluate(model, tokenizer, args.eval_per_task, model_dir=args.out, eos_window=window).items():
        line = f"{task:<8} {result['masked_acc@0.5']:>15.4f} {result['exact_match']:>12.4f}"
        print(line + (f" {result['generated']:>10.4f}" if window else ""))
    if window:
        print(f"generated: {window} new tokens and steps, maskgit_plus, greedy, cut at EOS (exact match)")
    if not args.no_data and not args.eval_only:
        print(f"dataset written to {demo_tasks.write_dataset(args.data)}")
    print(f"total elapsed {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
