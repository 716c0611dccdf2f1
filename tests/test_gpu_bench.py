"""benchmarks/gpu_bench.py --tiny: the GPU benchmark's code path end to end on CPU (issue 10, item 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bench.py"


def test_gpu_bench_tiny_runs_on_cpu_and_ends_with_one_json_line():
    p = subprocess.run(
        [sys.executable, str(BENCH), "--tiny", "--seconds", "0"], capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert set(result["scopes"]) == {"layer", "joint"}
    for r in result["scopes"].values():
        assert r["samples"] >= 1 and r["tokens_per_s"] > 0 and r["flops"] > 0 and r["batch_size"] >= 1
        assert r["projected_50_samples_s"] > 0
    assert result["scopes"]["layer"]["flops"] > result["scopes"]["joint"]["flops"]  # L paths against one
    assert result["reference"]["per_sample_s"] > 0 and result["speedup_vs_reference"] > 0
    assert result["work_ratio_fixed_rule"] > 1  # headattr does less work than the straightforward algorithm
    assert any(line.startswith("scope layer:") for line in lines) and "straightforward" in p.stdout
