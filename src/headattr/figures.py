"""Matplotlib figures written by the commands. Non-interactive backend; text in English."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    """Save atomically: render to bytes, then write-and-rename."""
    import io

    from .rundir import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def _diverging_limits(scores: np.ndarray) -> float:
    lim = float(np.max(np.abs(scores))) if scores.size else 1.0
    return lim if lim > 0 else 1.0


def draw_heatmap(ax: plt.Axes, scores: np.ndarray, title: str = "") -> matplotlib.image.AxesImage:
    """Draw a layers x heads score map on `ax`, diverging colours centred on zero."""
    lim = _diverging_limits(scores)
    im = ax.imshow(scores, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if title:
        ax.set_title(title)
    return im


def plot_heatmap(scores: np.ndarray, path: Path, title: str = "Gate-IG head scores") -> None:
    """Write `heatmap.png`: one cell per head, layer 0 at the top."""
    scores = np.asarray(scores, dtype=np.float64)
    num_layers, num_heads = scores.shape
    fig, ax = plt.subplots(figsize=(min(2 + 0.3 * num_heads, 14), min(1.5 + 0.25 * num_layers, 12)))
    im = draw_heatmap(ax, scores, title)
    fig.colorbar(im, ax=ax, label="score (positive = helps reconstruction)")
    _save(fig, path)
