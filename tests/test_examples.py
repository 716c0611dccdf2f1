"""The example scripts run as a user would run them (they are documentation that must not rot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("family", ["sdar", "llada2_moe"])
def test_block_diffusion_example(tmp_path: Path, family: str):
    cmd = [sys.executable, str(EXAMPLES / "block_diffusion.py"), "--out", str(tmp_path), "--family", family]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"family {family}" in out.stdout and "top heads" in out.stdout and "generated:" in out.stdout
    assert (tmp_path / "run" / "scores.safetensors").is_file()
