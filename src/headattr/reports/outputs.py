"""The files of `headattr compare`: report.md, metrics.json, layer_metrics.csv and the figure, written together."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from headattr.analysis.results import Comparison, PairMetrics
from headattr.reports.filenames import FIGURE_FILE, LAYER_CSV_FILE, METRICS_FILE, OUTPUT_FILES, REPORT_FILE
from headattr.reports.markdown.report import render_report
from headattr.reports.strings import check_lang
from headattr.runs.rundir import atomic_write_bytes, atomic_write_json, atomic_write_text, prepare_output_dir


def layer_metrics_csv(comp: Comparison) -> str:
    """One row per pair and layer: correlations, overlaps, Kuncheva, reliabilities; empty cell = N/A."""
    ks = comp.settings.top_k
    header = ["run_a", "run_b", "layer", "band", "pearson", "spearman", "kendall"]
    header += [f"overlap_top{k}" for k in ks] + [f"kuncheva_top{k}" for k in ks]
    header += ["reliability_a", "reliability_b", "samples_needed_a", "samples_needed_b", "expected_pearson"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for p in comp.pairs:
        ra, rb = comp.runs[p.a].reliability, comp.runs[p.b].reliability
        for m in p.layers:
            band = _band_of(p, m.layer)
            row = [comp.runs[p.a].label, comp.runs[p.b].label, m.layer, band, m.pearson, m.spearman, m.kendall]
            row += [m.overlap[k] for k in ks] + [m.kuncheva[k] for k in ks]
            row += [
                ra.full_layer[m.layer],
                rb.full_layer[m.layer],
                ra.needed_layer[m.layer],
                rb.needed_layer[m.layer],
                p.predicted_pearson[m.layer],
            ]
            writer.writerow(["" if x is None else repr(x) if isinstance(x, float) else x for x in row])
    return buf.getvalue()


def _band_of(p: PairMetrics, layer: int) -> str:
    """The band a layer belongs to (its name, or FIRST-LAST for custom bands); empty if none."""
    for b in p.bands:
        if b.first <= layer <= b.last:
            return b.name if b.name != "custom" else f"{b.first}-{b.last}"
    return ""


def write_outputs(
    comparison: Comparison, out: str | Path, lang: str = "en", overwrite: bool = False
) -> dict[str, Path]:
    """Write report.md, metrics.json, layer_metrics.csv and consistency_analysis.png into `out`."""
    check_lang(lang)
    out = prepare_output_dir(Path(out), overwrite, owned=OUTPUT_FILES)
    paths = {name: out / name for name in OUTPUT_FILES}
    atomic_write_json(paths[METRICS_FILE], comparison.to_dict())
    atomic_write_text(paths[LAYER_CSV_FILE], layer_metrics_csv(comparison))
    from headattr.figures import plot_consistency  # here: matplotlib loads only when a figure is drawn

    atomic_write_bytes(paths[FIGURE_FILE], plot_consistency(comparison, 0, 1))
    atomic_write_text(paths[REPORT_FILE], render_report(comparison, lang))
    return paths
