"""tools/check_sizes.py (run by `make lint`): it flags what is too long, and accepts a stated reason."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "check_sizes.py"


def _tool():
    spec = importlib.util.spec_from_file_location("check_sizes", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_long_functions_and_modules_are_flagged_unless_explained(tmp_path: Path):
    tool = _tool()
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    (tmp_path / "long.py").write_text(f'def f():\n    """Doc."""\n{body}\n')
    (tmp_path / "explained.py").write_text(f'def g():\n    """Doc.\n\n    Long because of a reason.\n    """\n{body}\n')
    (tmp_path / "short.py").write_text('def h():\n    """A\n    long\n    docstring."""\n    return 1\n')
    (tmp_path / "big.py").write_text("x = 1\n" * 501)
    found = tool.problems(tmp_path)
    assert any("long.py:1: f is 62 lines" in p for p in found)
    assert any("big.py: 501 lines" in p for p in found)
    assert not any("explained.py" in p or "short.py" in p for p in found)


def test_the_package_is_within_its_limits():
    assert _tool().problems(TOOL.parents[1] / "src" / "headattr") == []
