"""Matplotlib figures of the commands, as PNG bytes; text in English.

No pyplot and no global backend: every figure is a `matplotlib.figure.Figure` rendered by its own
`FigureCanvasAgg`, so importing headattr leaves a notebook's or an application's backend alone, and nothing
is kept in pyplot's figure registry. The callers (`rundir.write_run`, `report.write_outputs`,
`pruning.write_outputs`) write the bytes atomically; this module writes no file and imports no headattr module.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # matplotlib itself loads with the first figure (`_new_figure`): `import headattr` stays light
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure with its own Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _integer_ticks():
    """A tick locator at whole numbers (layers, heads)."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _png(fig: Figure) -> bytes:
    """Render `fig` to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def _diverging_limits(scores: np.ndarray) -> float:
    lim = float(np.max(np.abs(scores))) if scores.size else 1.0
    return lim if lim > 0 else 1.0


def draw_heatmap(ax: Axes, scores: np.ndarray, title: str = "") -> AxesImage:
    """Draw a layers x heads score map on `ax`, diverging colours centred on zero."""
    lim = _diverging_limits(scores)
    im = ax.imshow(scores, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.yaxis.set_major_locator(_integer_ticks())
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if title:
        ax.set_title(title)
    return im


def plot_heatmap(scores: np.ndarray, title: str = "Gate-IG head scores") -> bytes:
    """`heatmap.png` of [L, H] scores as PNG bytes: one cell per head, layer 0 at the top."""
    scores = np.asarray(scores, dtype=np.float64)
    num_layers, num_heads = scores.shape
    fig = _new_figure((min(2 + 0.3 * num_heads, 14), min(1.5 + 0.25 * num_layers, 12)))
    ax = fig.subplots()
    im = draw_heatmap(ax, scores, title)
    fig.colorbar(im, ax=ax, label="score (larger = more important)")
    return _png(fig)


def plot_consistency(comparison, run_a: int, run_b: int) -> bytes:
    """`consistency_analysis.png` (PNG bytes) for runs `run_a` and `run_b` of a `headattr.Comparison`.

    Six panels, each backing a claim of the report: per-layer Pearson and Spearman with the threshold;
    every head score of run A against run B, coloured by layer; top-K overlap against K with its chance
    level; the two score heatmaps on one colour scale; split-half reliability per layer with the target.
    """
    pair = comparison.pair(run_a, run_b)
    ra, rb = comparison.runs[run_a], comparison.runs[run_b]
    settings = comparison.settings
    layers = np.arange(comparison.num_layers)
    fig = _new_figure((19, 11))
    axes = fig.subplots(2, 3)
    fig.suptitle(f"Consistency of head scores: {ra.label} vs {rb.label} ({comparison.model.get('name', '')})")
    _panel_layer_correlations(axes[0, 0], pair, layers, settings.good_threshold)
    _panel_scatter(fig, axes[0, 1], ra, rb, pair)
    _panel_overlap(axes[0, 2], comparison, pair)
    lim = max(_diverging_limits(ra.scores), _diverging_limits(rb.scores))
    for ax, run in ((axes[1, 0], ra), (axes[1, 1], rb)):
        im = draw_heatmap(ax, run.scores, f"scores: {run.label}")
        im.set_clim(-lim, lim)
    fig.colorbar(im, ax=axes[1, :2].tolist(), label="score (same scale in both maps)", shrink=0.9)
    _panel_reliability(axes[1, 2], comparison, (ra, rb), layers)
    return _png(fig)


def _nan(values) -> np.ndarray:
    """None -> NaN for plotting (matplotlib leaves a gap)."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _panel_layer_correlations(ax: Axes, pair, layers: np.ndarray, threshold: float) -> None:
    ax.plot(layers, _nan(m.pearson for m in pair.layers), "o-", label="Pearson")
    ax.plot(layers, _nan(m.spearman for m in pair.layers), "s--", label="Spearman")
    ax.axhline(threshold, color="grey", linestyle=":", label=f"threshold {threshold:g}")
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_ylabel("correlation between runs")
    ax.set_title(f"per-layer correlation ({pair.good_count}/{len(layers)} layers > {threshold:g})")
    values = [v for m in pair.layers for v in (m.pearson, m.spearman) if v is not None]
    ax.set_ylim(min(values + [threshold]) - 0.05, 1.02)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)


def _panel_scatter(fig: Figure, ax: Axes, ra, rb, pair) -> None:
    num_layers, num_heads = ra.scores.shape
    colour = np.repeat(np.arange(num_layers), num_heads)
    sc = ax.scatter(ra.scores.ravel(), rb.scores.ravel(), c=colour, cmap="viridis", s=10, alpha=0.8)
    lo = float(min(ra.scores.min(), rb.scores.min()))
    hi = float(max(ra.scores.max(), rb.scores.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1, linestyle=":", label="y = x")
    g = pair.global_metrics
    fmt = lambda x: "N/A" if x is None else f"{x:.4f}"  # noqa: E731
    ax.set_title(f"all heads: Pearson {fmt(g.pearson)}, Spearman {fmt(g.spearman)}")
    ax.set_xlabel(f"score, {ra.label}")
    ax.set_ylabel(f"score, {rb.label}")
    ax.legend(loc="upper left")
    fig.colorbar(sc, ax=ax, label="layer")


def _panel_overlap(ax: Axes, comparison, pair) -> None:
    ks = np.array(comparison.settings.top_k)
    layer_mean = _nan(pair.overlap_summary[k].mean for k in ks)
    glob = _nan(pair.global_metrics.overlap[k] for k in ks)
    ax.plot(ks, 100 * layer_mean, "o-", label="mean per layer")
    ax.plot(
        ks,
        100 * _nan(pair.chance_layer[k] for k in ks),
        ":",
        color="C0",
        label=f"chance per layer (K/{comparison.num_heads})",
    )
    ax.plot(ks, 100 * glob, "s-", color="C1", label="global")
    ax.plot(
        ks,
        100 * _nan(pair.global_metrics.chance[k] for k in ks),
        ":",
        color="C1",
        label=f"chance global (K/{comparison.num_layers * comparison.num_heads})",
    )
    ax.set_xlabel("K")
    ax.set_ylabel("top-K overlap (%)")
    ax.set_ylim(0, 105)
    ax.set_title("top-K overlap vs chance")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)


def _panel_reliability(ax: Axes, comparison, runs, layers: np.ndarray) -> None:
    target = comparison.settings.target
    for i, run in enumerate(runs):
        rel = run.reliability
        ax.plot(layers, _nan(rel.full_layer), "o-", color=f"C{i + 2}", label=f"{run.label} (N={rel.n_samples})")
    ax.axhline(target, color="grey", linestyle=":", label=f"target {target:g}")
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_ylabel("split-half reliability (Spearman-Brown)")
    ax.set_title("reliability within each run")
    values = [v for run in runs for v in run.reliability.full_layer if v is not None]
    ax.set_ylim(min(values + [target]) - 0.05, 1.02)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)


# ---------------------------------------------------------------- pruning (headattr prune)

_PRUNE_LABELS = {"loss": "masked-token loss", "accuracy": "masked-token accuracy", "exact_match": "exact match"}
_PRUNE_STYLE = {"most": ("C3", "o-"), "least": ("C2", "s-"), "random": ("C0", "^-")}


def plot_pruning_curve(result) -> bytes:
    """`pruning_curve.png` (PNG bytes): each metric vs the fraction of heads removed, one line per order.

    `result` is a `headattr.pruning.PruneResult`. The unpruned model is the point at fraction 0 of every line;
    the random orders are drawn as their mean, a band for the 95% interval of that mean (the interval the
    verdicts use, `result.random_interval`) and a lighter band from their minimum to their maximum. The legend
    sits below the panels, where it cannot hide a curve.
    """
    fractions = np.concatenate([[0.0], np.asarray(result.fractions, dtype=np.float64)])
    metrics = result.metrics
    fig = _new_figure((4.6 * len(metrics), 4.2))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        base = result.baseline.value(metric)
        for order in result.display_orders:
            color, style = _PRUNE_STYLE[order]
            if order == "random":
                summary = result.random_summary(metric)
                n = result.curves["random"][metric].shape[0]
                low, high = result.random_interval(metric)
                bands = (
                    (summary["min"], summary["max"], 0.12, f"random min-max ({n} orders)"),
                    (low, high, 0.35, "random mean, 95% interval"),
                )
                for lo, hi, alpha, label in bands:
                    ax.fill_between(
                        fractions,
                        np.concatenate([[base], lo]),
                        np.concatenate([[base], hi]),
                        color=color,
                        alpha=alpha,
                        linewidth=0,
                        label=label,
                    )
                values, label = summary["mean"], f"random (mean of {n})"
            else:
                values, label = result.curves[order][metric], f"{order} important first"
                if metric.startswith("task_"):  # generated-answer accuracy: its 95% Wilson interval as error bars
                    low, high = result.interval(np.concatenate([[base], values]))
                    full = np.concatenate([[base], values])
                    yerr = np.clip([full - low, high - full], 0, None)  # float rounding must not go negative
                    ax.errorbar(fractions, full, yerr=yerr, fmt="none", color=color, alpha=0.6, capsize=3)
            ax.plot(fractions, np.concatenate([[base], values]), style, color=color, label=label, markersize=4)
        ax.set_xlabel("fraction of heads removed" + (" (per layer)" if result.per_layer else ""))
        title = _PRUNE_LABELS.get(metric) or f"generated answers: {metric.removeprefix('task_')} (95% CI)"
        ax.set_ylabel(title)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize="small", frameon=False)
    n_eval = result.eval_info.get("samples")
    fig.suptitle("Head pruning by Gate-IG score" + (f" ({n_eval} held-out samples)" if n_eval else ""))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _png(fig)


def plot_methods(summary: dict) -> bytes:
    """methods.png: consistency vs faithfulness (one point per method) and the agreement matrix."""
    methods = summary["methods"]
    fig = _new_figure((12, 5))
    fig.set_layout_engine("constrained")
    ax, bx = fig.subplots(1, 2)
    for name, m in methods.items():
        x, y = m["consistency"]["global_spearman"], m["faithfulness"]["F"]
        if x is None or y is None:  # undefined (constant scores, or no head matters): no point to draw
            continue
        ax.scatter([x], [y], s=40)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4))
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("consistency: global Spearman between seeds")
    ax.set_ylabel("faithfulness F (0 random, 1 single-head oracle)")
    ax.set_title("consistency vs faithfulness")
    names, grid = summary["agreement"]["methods"], np.array(summary["agreement"]["global_spearman"], dtype=float)
    im = bx.imshow(grid, cmap="RdBu_r", vmin=-1, vmax=1)
    bx.set_xticks(range(len(names)), names, rotation=45, ha="right")
    bx.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            bx.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
    bx.set_title("agreement: global Spearman\n(diagonal: between seeds)")
    fig.colorbar(im, ax=bx)
    return _png(fig)


# ---------------------------------------------------------------- sparse attention (headattr sparse)

_SPARSE_STYLE = {"adaptive": ("C3", "o-"), "uniform": ("C0", "s-"), "inverted": ("C2", "v-"), "random": ("C7", "^:")}


def plot_sparse(summary: dict) -> bytes:
    """`sparse.png` (PNG bytes) from sparse.json's content: accuracy against the budget, one panel per metric.

    x: the budget used (mean fraction of attended key blocks) where measured, else the nominal mean keep
    ratio; one line per allocation (random: each draw's points, joined per draw), 95% Wilson intervals as
    error bars, the lines dodged sideways by a few thousandths; dense as a horizontal line with its interval
    as a band.
    """
    metrics = summary["task"]["metrics"]
    configs = summary["configurations"]
    fig = _new_figure((5.0 * len(metrics), 4.2))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    measured = all(c["budget_used"] is not None for c in configs)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for c in configs:
            if c["allocation"] == "dense":
                a = c["accuracy"][metric]
                ax.axhline(a["accuracy"], color="black", linewidth=1, label="dense")
                ax.axhspan(a["low"], a["high"], color="black", alpha=0.08, linewidth=0)
        lines: dict[tuple[str, int | None], list[dict]] = {}
        for c in configs:
            if c["allocation"] != "dense":
                lines.setdefault((c["allocation"], c["draw"]), []).append(c)
        for i, ((allocation, draw), members) in enumerate(lines.items()):
            color, style = _SPARSE_STYLE[allocation]
            x = np.array([c["budget_used"] if measured else c["keep_mean"] for c in members], dtype=np.float64)
            x = x + (i - (len(lines) - 1) / 2) * 0.004  # dodged, so that equal budgets' intervals stay visible
            acc = [c["accuracy"][metric] for c in members]
            y = np.array([a["accuracy"] for a in acc])
            yerr = np.clip([y - [a["low"] for a in acc], [a["high"] for a in acc] - y], 0, None)
            label = allocation if draw in (None, 0) else None  # one legend entry per allocation
            ax.errorbar(x, y, yerr=yerr, fmt=style, color=color, capsize=3, markersize=4, label=label, alpha=0.85)
        ax.set_xlabel("budget used (fraction of key blocks attended)" if measured else "mean keep ratio")
        ax.set_ylabel(f"accuracy: {metric} (95% Wilson)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
    n = len(configs[0]["correct"][metrics[0]]) if configs else 0
    fig.suptitle(f"Sparse attention: accuracy against budget ({n} held-out items)")
    fig.tight_layout()
    return _png(fig)
