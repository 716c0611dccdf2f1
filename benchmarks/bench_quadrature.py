"""The error-controlled quadrature against the fixed 8-node rule on the built-in model: accuracy, work, time.

    python benchmarks/bench_quadrature.py                       # default --ig-tol, 50 + 10 samples, 1 thread
    python benchmarks/bench_quadrature.py --tols 0.03,0.05      # several tolerances side by side
    python benchmarks/bench_quadrature.py --model DIR --data FILE

Every configuration is one `headattr attribute` command in its own process (one torch thread, batch size 256,
seed 47, stratified by task), the configurations alternating `--repeats` times; the numbers come from the
run directories:

- on `--samples` (50) samples, per configuration: wall time (run.json `timings.total_s`, median over
  repeats), model work (`timings.backward_passes_per_sample`: full-model backward passes, the gradient
  work in units that do not depend on which layer a row starts at), total |completeness error| / total
  |J(1) - J(b)| and the nodes per path (mean, median, max);
- on the first `--accuracy-samples` (10): the largest |score - score of a fixed `--reference-steps` (256)
  node Gauss-Legendre run| divided by the largest |reference score|.

Ratios are against the fixed 8-node rule (`--ig-tol 0 --ig-steps 8`) of the same invocation; the machine is
shared and noisy, so only ratios measured together mean anything. Prints a Markdown table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from headattr.demo import DATA_FILE, MODEL_DIR

FIXED = ("--ig-tol", "0", "--ig-steps", "8")


def attribute(model: str, data: str, samples: int, flags: tuple[str, ...], out: Path) -> dict:
    """Run one `headattr attribute` in a fresh process; its run.json."""
    cmd = [sys.executable, "-m", "headattr", "attribute", model, "--data", data, "--stratify-by", "task"]
    cmd += ["--samples", str(samples), "--seed", "47", "--batch-size", "256", "--threads", "1", "--quiet"]
    subprocess.run([*cmd, *flags, "--out", str(out), "--overwrite"], check=True, capture_output=True)
    return json.loads((out / "run.json").read_text())


def summary(meta: dict) -> dict:
    """Completeness and nodes of a run.json (scope layer: per variant, per layer)."""
    d = meta["diagnostics"]
    gap = np.abs(np.asarray(d["j_full"])[..., None] - np.asarray(d["j_baseline"])).sum()
    nodes = np.asarray(d["nodes"])
    return {
        "completeness_pct": float(100 * np.abs(np.asarray(d["completeness_error"])).sum() / gap),
        "nodes_mean": float(nodes.mean()),
        "nodes_median": float(np.median(nodes)),
        "nodes_max": int(nodes.max()),
        "backward_passes_per_sample": float(meta["timings"]["backward_passes_per_sample"]),
    }


def score_error(run: Path, reference: Path) -> float:
    """Largest |score difference| as a percentage of the largest |reference score|."""
    s, r = (load_file(str(p / "scores.safetensors"))["scores"] for p in (run, reference))
    return float(100 * np.abs(s - r).max() / np.abs(r).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(MODEL_DIR))
    parser.add_argument("--data", default=str(DATA_FILE))
    parser.add_argument("--tols", default="", help="comma-separated --ig-tol values (default: the shipped one)")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--accuracy-samples", type=int, default=10)
    parser.add_argument("--reference-steps", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    configs = {"fixed 8": FIXED}
    for tol in [t for t in args.tols.split(",") if t]:
        configs[f"tol {tol}"] = ("--ig-tol", tol)
    if not args.tols:
        configs["default"] = ()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        times: dict[str, list[float]] = {name: [] for name in configs}
        rows: dict[str, dict] = {}
        for _ in range(args.repeats):
            for i, (name, flags) in enumerate(configs.items()):
                meta = attribute(args.model, args.data, args.samples, flags, root / f"full{i}")
                times[name].append(float(meta["timings"]["total_s"]))
                rows[name] = summary(meta)
        reference = root / "reference"
        attribute(
            args.model,
            args.data,
            args.accuracy_samples,
            ("--ig-tol", "0", "--ig-steps", str(args.reference_steps)),
            reference,
        )
        for i, (name, flags) in enumerate(configs.items()):
            attribute(args.model, args.data, args.accuracy_samples, flags, root / f"acc{i}")
            rows[name]["score_error_pct"] = score_error(root / f"acc{i}", reference)
            rows[name]["seconds"] = float(np.median(times[name]))
    base = rows["fixed 8"]
    print(
        f"{args.samples} samples (score error: first {args.accuracy_samples}, against fixed {args.reference_steps})\n"
    )
    print("| rule | seconds | time vs fixed 8 | work vs fixed 8 | completeness | score error | nodes mean/median/max |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        r["time_ratio"] = r["seconds"] / base["seconds"]
        r["work_ratio"] = r["backward_passes_per_sample"] / base["backward_passes_per_sample"]
        print(
            f"| {name} | {r['seconds']:.1f} | {r['time_ratio']:.2f}x | {r['work_ratio']:.2f}x | "
            f"{r['completeness_pct']:.2f}% | {r['score_error_pct']:.2f}% | "
            f"{r['nodes_mean']:.1f} / {r['nodes_median']:g} / {r['nodes_max']} |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
