"""Figures (figures.py) leave matplotlib's global state alone and return PNG bytes."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

import numpy as np

from headattr.figures import plot_heatmap

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_importing_headattr_and_plotting_keeps_the_backend() -> None:
    """A process that chose a backend (here `svg`, not Agg) still has it after importing headattr and plotting."""
    code = textwrap.dedent(
        """
        import sys
        import matplotlib
        matplotlib.use("svg")
        before = matplotlib.get_backend()
        import numpy as np
        import headattr
        from headattr.figures import plot_heatmap
        png = plot_heatmap(np.arange(6.0).reshape(2, 3) - 2.5)
        after = matplotlib.get_backend()
        pyplot_loaded = "matplotlib.pyplot" in sys.modules
        print(before, after, pyplot_loaded, png[:4] == b"\\x89PNG")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, after, pyplot_loaded, is_png = out
    assert before == "svg" and after == before
    assert pyplot_loaded == "False"  # nothing imported pyplot, so no figure registry and no backend switch
    assert is_png == "True"


def test_heatmap_is_png_bytes_and_figures_imports_no_rundir() -> None:
    png = plot_heatmap(np.array([[0.0, 1.0], [-1.0, 0.5]]), title="t")
    assert isinstance(png, bytes) and png.startswith(PNG_MAGIC)
    import headattr.figures as figures

    tree = ast.parse(open(figures.__file__, encoding="utf-8").read())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {str(node.module) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any("pyplot" in name or "rundir" in name for name in imported), imported
    assert all(node.level == 0 for node in ast.walk(tree) if isinstance(node, ast.ImportFrom))  # no headattr import
