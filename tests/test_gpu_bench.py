"""`benchmarks/gpu_bench.py --tiny` runs the GPU benchmark's code on CPU and reports consistent numbers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bench.py"


def test_tiny_runs_on_cpu(capsys):
    spec = importlib.util.spec_from_file_location("gpu_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--tiny", "--samples", "1"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line) == json.loads(json.dumps(out))  # the last line is the JSON of the result
    for scope in ("joint", "layer"):
        r = out[scope]
        assert r["samples"] == 1 and r["tokens_per_s"] > 0
        counted = r["tflops"] * 1e12 * r["wall_s"]  # the documented count of one sample of 20 + 10 tokens
        assert abs(counted - bench.flops(bench.TINY, 30, 10, _cfg(scope), scope)) < 1e-6 * counted
    # scope layer re-runs layers l..L-1 for each of the L paths: more FLOPs than one joint path
    layer, joint = (bench.flops(bench.TINY, 30, 10, _cfg(s), s) for s in ("layer", "joint"))
    assert layer > joint


def _cfg(scope: str):
    from headattr.engine import GateIGConfig

    return GateIGConfig(scope=scope, batch_size=16)
