"""The GPU paths in one prepared run: at most about 8 minutes on one H100/H200, one JSON summary at the end.

    python benchmarks/gpu_check.py              # on a machine with one CUDA GPU
    python benchmarks/gpu_check.py --dry        # the same steps on CPU with tiny models, in about a minute
                                                # (what CI runs, so the script cannot rot between device loans)

Each step runs the command line in a subprocess, as a user would, with its own time limit; a failing step is
recorded and the next one runs. The steps:

1. `bench`: `benchmarks/gpu_bench.py` (Dream-7B-shaped random model, bf16): throughput, MFU, peak memory, the
   batch size chosen, the speed and work ratios against the straightforward algorithm.
2. `attribute`: three `headattr attribute` runs on a random Dream-format checkpoint (long synthetic samples,
   `--batch-size auto`): two identical runs, which must be byte-identical, and one at half the batch size the
   first chose, which must agree within `HALF_BATCH_RTOL` of the scores' largest magnitude (GPU kernels pick
   tiles by problem size, so the bits may differ); the batch sizes chosen per sample (run.json).
3. `torchrun`: the same run as 2 processes on the one GPU (`--device cuda` maps each rank to
   `cuda:LOCAL_RANK % device_count`), which must be byte-identical to a one-process run at the same integer
   batch size.
4. `generate`: `headattr generate` on the built-in model at batch size 1 and 8 (temperature 0): the share of
   prompts whose tokens agree, and the time of each.
5. `sparse`: `benchmarks/bench_sparse.py` (one Dream-7B-shaped attention layer, bf16: dense against the sparse
   kernels at mean keep 0.3, 4k and 16k tokens, blocks 32 and 128; the issue's target is FlexAttention at most
   0.5x the dense step at 16k) and `headattr generate --sparse uniform:0.3` on the built-in model at batch size 1
   and 8, whose tokens must agree.
6. `families`: `gpu_bench.py --family X` for LLaDA 8B, SDAR-8B, LLaDA-MoE-7B-A1B and LLaDA 2.0 mini
   (`model_shapes.py`: random weights in the released shapes, bf16): one 600-token sample of scope joint at most
   `FAMILY_MAX_NODES` nodes per path, no reference: that each builds and attributes, its throughput, FLOP rate
   (for a mixture of experts, of the active experts), peak memory and batch size. A family starts only while
   `BUDGET_S` leaves room for its limit; the others are recorded as not run.

The last line printed is the JSON summary: {"device", "torch", "dry", "steps": {name: {"ok", ...}}, "ok",
"seconds"}. Exit status 0 only when every step that ran passed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
HALF_BATCH_RTOL = 1e-2  # GPU, bf16: different batch sizes take different kernels (README, batch invariance)
STEP_LIMIT_S = {"bench": 200, "attribute": 150, "torchrun": 90, "generate": 60, "sparse": 120}
BUDGET_S = 480  # the whole script on one H100/H200: no family bench starts that could end later
# Per family on one H100/H200, estimated (not measured: no GPU was lent when they were added): about 15 s of
# start-up (Python, CUDA, random init), the plan's FLOPs for one 600-token sample (10 variants, scope joint, up to
# 17 nodes: 3e15 for the 8B dense models, 4e14 for the mixtures of experts) at 300-400 TFLOP/s, and for the
# mixtures of experts the per-expert loop (transformers' eager experts: a few kernels per expert hit, per layer):
#   llada ~25 s, sdar ~25 s, lladamoe ~35 s, llada2_moe ~45 s; together ~2.2 min of the 8.
FAMILY_LIMIT_S = {"llada": 75, "sdar": 75, "lladamoe": 90, "llada2_moe": 100}
FAMILY_MAX_NODES = 17  # routing makes a mixture of experts' integrand jump: refinement could otherwise take 256


def run(cmd: list[str], limit: float, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run `cmd`; (seconds, stdout). Raises RuntimeError with the output's tail on failure or timeout."""
    start = time.perf_counter()
    try:
        p = subprocess.run(
            cmd, capture_output=True, text=True, timeout=limit, env={**os.environ, **(env or {})}, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {limit:.0f} s: {' '.join(cmd[:6])} ...") from None
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"exit {p.returncode}: {' | '.join(tail)}")
    return time.perf_counter() - start, p.stdout


def headattr(*args: str) -> list[str]:
    return [sys.executable, "-m", "headattr", *args]


# ---------------------------------------------------------------- inputs


def write_checkpoint(root: Path, dry: bool) -> Path:
    """A random Dream-format checkpoint with the character tokenizer of `headattr.testing`; on GPU wide and deep
    enough (about 0.2 B parameters) that the memory planner has something to plan."""
    import torch

    from headattr.testing import make_dream_checkpoint

    make_dream_checkpoint(root)
    if dry:
        return root
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = json.loads((root / "config.json").read_text())
    cfg.update(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16)
    cfg.update(num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=4096)
    (root / "config.json").write_text(json.dumps(cfg))
    qwen = Qwen2Config(**{k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "auto_map")})
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(qwen).to(torch.bfloat16)
    for old in root.glob("*.safetensors"):
        old.unlink()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "model.safetensors"))
    return root


def write_data(path: Path, dry: bool) -> Path:
    """Synthetic prompt/answer rows over the character tokenizer's alphabet: long on GPU (about 1,000 tokens,
    varying so that the planner sizes each sample), short in the dry run."""
    from headattr.testing import CHARS

    rng = np.random.default_rng(0)
    alphabet = [c for c in CHARS if c != " "]
    rows = []
    for i in range(6):
        prompt_len = 12 + i if dry else 600 + 80 * i
        answer_len = 4 if dry else 200
        prompt = "".join(rng.choice(alphabet, prompt_len))
        answer = "".join(rng.choice(alphabet, answer_len))
        rows.append({"prompt": prompt, "answer": answer})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- steps


def step_bench(dry: bool) -> dict:
    cmd = [sys.executable, str(HERE / "gpu_bench.py")]
    cmd += ["--tiny", "--seconds", "0"] if dry else ["--seconds", "45"]
    seconds, out = run(cmd, STEP_LIMIT_S["bench"])
    result = json.loads(out.strip().splitlines()[-1])
    return {"ok": True, "seconds": seconds, "result": result}


def step_families(dry: bool, deadline: float) -> dict:
    """`gpu_bench.py --family X` for each family of `FAMILY_LIMIT_S` that can end before `deadline`
    (`time.perf_counter()` seconds); the rest are recorded as not run."""
    results: dict[str, dict] = {}
    for family, limit in FAMILY_LIMIT_S.items():
        if time.perf_counter() + limit > deadline:
            results[family] = {"ok": None, "note": f"not run: fewer than {limit} s of the {BUDGET_S} s budget left"}
            continue
        cmd = [sys.executable, str(HERE / "gpu_bench.py"), "--family", family, "--seconds", "0"]
        cmd += ["--scopes", "joint", "--no-reference", "--ig-max-steps", str(FAMILY_MAX_NODES)]
        cmd += ["--tiny"] if dry else []
        try:
            seconds, out = run(cmd, limit)
            results[family] = {"ok": True, "seconds": seconds, "result": json.loads(out.strip().splitlines()[-1])}
        except RuntimeError as exc:  # one family failing must not hide the others' numbers
            results[family] = {"ok": False, "error": str(exc)[:600]}
    return {"ok": all(r["ok"] is not False for r in results.values()), "families": results}


def _scores(run_dir: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(str(run_dir / "scores.safetensors"))["scores"]


def _batch_sizes(run_dir: Path) -> dict:
    timings = json.loads((run_dir / "run.json").read_text()).get("timings", {})
    return {k: v for k, v in timings.items() if k.startswith("batch_size")}


def attribute_args(model: Path, data: Path, out: Path, dry: bool, device: str) -> list[str]:
    args = ["attribute", str(model), "--data", str(data), "--samples", "0", "--out", str(out), "--quiet"]
    args += ["--device", device, "--seed", "47"]
    if dry:  # seconds on CPU: one variant per sample, a fixed 2-node rule
        args += ["--mask-probs", "0.5", "--mask-samples-per-prob", "1", "--ig-tol", "0", "--ig-steps", "2"]
    else:  # the defaults' masking on fewer variants, the refined rule as users run it
        args += ["--mask-probs", "0.3,0.7", "--mask-samples-per-prob", "1"]
    return args


def step_attribute(model: Path, data: Path, work: Path, dry: bool, device: str) -> dict:
    a, b, half = work / "auto-a", work / "auto-b", work / "half"
    t_a, _ = run(headattr(*attribute_args(model, data, a, dry, device)), STEP_LIMIT_S["attribute"] / 3)
    t_b, _ = run(headattr(*attribute_args(model, data, b, dry, device)), STEP_LIMIT_S["attribute"] / 3)
    chosen = _batch_sizes(a)
    size = max(int(chosen.get("batch_size") or 2) // 2, 1)
    args = attribute_args(model, data, half, dry, device) + ["--batch-size", str(size)]
    t_half, _ = run(headattr(*args), STEP_LIMIT_S["attribute"] / 3)
    sa, sb, sh = _scores(a), _scores(b), _scores(half)
    scale = float(np.abs(sa).max()) or 1.0
    rel = float(np.abs(sa - sh).max()) / scale
    identical = sa.tobytes() == sb.tobytes()
    return {
        "ok": identical and rel <= HALF_BATCH_RTOL,
        "seconds": [t_a, t_b, t_half],
        "repeat_byte_identical": identical,
        "half_batch_size": size,
        "half_batch_max_rel_diff": rel,
        "half_batch_rtol": HALF_BATCH_RTOL,
        "batch_sizes_auto": chosen,
    }


def step_torchrun(model: Path, data: Path, work: Path, dry: bool, device: str) -> dict:
    one, two = work / "one-process", work / "two-processes"
    fixed = ["--batch-size", "4"]
    t_one, _ = run(headattr(*attribute_args(model, data, one, dry, device), *fixed), STEP_LIMIT_S["torchrun"] / 2)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = [*launcher, "-m", "headattr", *attribute_args(model, data, two, dry, device), *fixed]
    t_two, _ = run(cmd, STEP_LIMIT_S["torchrun"] / 2, env={"OMP_NUM_THREADS": "1"})
    identical = _scores(one).tobytes() == _scores(two).tobytes()
    return {"ok": identical, "seconds": [t_one, t_two], "byte_identical_to_one_process": identical}


def step_generate(work: Path, dry: bool, device: str) -> dict:
    from headattr.demo import DATA_FILE, MODEL_DIR

    outs, seconds = {}, {}
    for batch in (1, 8):
        out = work / f"generate-b{batch}.jsonl"
        args = ["generate", str(MODEL_DIR), "--data", str(DATA_FILE), "--samples", "8" if dry else "64"]
        args += ["--max-new-tokens", "12", "--steps", "12", "--alg", "maskgit_plus", "--batch-size", str(batch)]
        args += ["--device", device, "--out", str(out), "--seed", "0"]
        seconds[batch], _ = run(headattr(*args), STEP_LIMIT_S["generate"] / 2)
        outs[batch] = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    same = [x == y for x, y in zip(outs[1], outs[8], strict=True)]
    return {"ok": all(same), "seconds": seconds, "prompts": len(same), "agreeing": sum(same)}


def step_sparse(work: Path, dry: bool, device: str) -> dict:
    cmd = [sys.executable, str(HERE / "bench_sparse.py"), "--no-end-to-end", "--device", device]
    cmd += ["--lengths", "256", "--blocks", "32", "--repeats", "1"] if dry else ["--lengths", "4096,16384"]
    cmd += [] if dry else ["--blocks", "32,128", "--repeats", "3"]
    seconds, out = run(cmd, STEP_LIMIT_S["sparse"] / 2)
    layer = json.loads(out[out.index("{") :])["layer"]
    from headattr.demo import DATA_FILE, MODEL_DIR

    outs = {}
    for batch in (1, 8):
        path = work / f"sparse-b{batch}.jsonl"
        args = ["generate", str(MODEL_DIR), "--data", str(DATA_FILE), "--samples", "8" if dry else "32"]
        args += ["--max-new-tokens", "12", "--steps", "12", "--alg", "maskgit_plus", "--batch-size", str(batch)]
        args += ["--sparse", "uniform:0.3", "--sparse-block", "4", "--device", device, "--out", str(path)]
        args += ["--sparse-kernel", "sdpa"] if dry else []  # compiling flex on a CPU takes most of a minute
        run(headattr(*args), STEP_LIMIT_S["sparse"] / 4)
        outs[batch] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    same = [x == y for x, y in zip(outs[1], outs[8], strict=True)]
    return {"ok": all(same), "seconds": seconds, "layer": layer, "generate_prompts": len(same), "agreeing": sum(same)}


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="CPU, tiny models: the script's own test")
    args = parser.parse_args()
    import torch

    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; run with --dry for the CPU rehearsal")
    device = "cpu" if args.dry else "cuda"
    started = time.perf_counter()
    steps: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="headattr-gpu-check-") as tmp:
        work = Path(tmp)
        model = write_checkpoint(work / "model", args.dry)
        data = write_data(work / "data.jsonl", args.dry)
        plan = {
            "bench": lambda: step_bench(args.dry),
            "attribute": lambda: step_attribute(model, data, work, args.dry, device),
            "torchrun": lambda: step_torchrun(model, data, work, args.dry, device),
            "generate": lambda: step_generate(work, args.dry, device),
            "sparse": lambda: step_sparse(work, args.dry, device),
            "families": lambda: step_families(args.dry, started + BUDGET_S),
        }
        for name, fn in plan.items():
            try:
                steps[name] = fn()
            except Exception as exc:  # one failing step must not hide the others' numbers
                steps[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:600]}
            print(f"{name}: {'ok' if steps[name]['ok'] else 'FAILED'}", flush=True)
    summary = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "dry": args.dry,
        "steps": steps,
        "ok": all(s["ok"] is not False for s in steps.values()),
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
