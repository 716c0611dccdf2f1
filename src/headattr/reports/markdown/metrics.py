"""The quantitative sections: correlations, global consistency, top-K overlap, distribution, chance, intervals."""

from __future__ import annotations

from headattr.analysis.reliability import NA_NO_SAMPLES
from headattr.analysis.results import PairMetrics
from headattr.reports.markdown.base import RendererBase
from headattr.reports.markdown.format import (
    NA,
    fmt_corr,
    fmt_interval,
    fmt_pct,
    fmt_score,
    layers_text,
    markdown_table,
    nodes_cell,
    summary_cells,
)


class MetricsSection(RendererBase):
    """The quantitative sections of the report (a part of `Renderer`)."""

    def quantitative(self) -> list[str]:
        lines = [self.t("h_quant"), "", self.t("h_corr"), ""]
        lines += self.pair_blocks(self.correlation_block)
        lines += [self.t("h_global"), ""]
        lines += self.pair_blocks(self.global_block)
        lines += [self.t("h_topk"), "", self.t("topk_note"), ""]
        lines += self.pair_blocks(self.topk_block)
        lines += [self.t("h_dist"), ""] + self.distribution() + [""]
        lines += [self.t("h_chance"), ""] + self.chance() + [""]
        lines += [self.t("h_boot"), ""]
        if self.c.settings.intervals:
            n = sorted({r.num_samples for r in self.c.runs if not r.scores_only})
            n_text = "+".join(str(x) for x in n) if len(n) != 1 else f"{n[0]}+{n[0]}"
            lines += [self.t("boot_text", n=n_text), ""]
            lines += self.pair_blocks(self.intervals_block)
        else:
            lines += [self.t("boot_off"), ""]
        return lines

    def correlation_block(self, p: PairMetrics) -> list[str]:
        header = [self.t("col_metric")] + [
            self.t(k) for k in ("col_mean", "col_median", "col_min", "col_max", "col_std", "col_na")
        ]
        rows = [[f"**{self.t(key)}**"] + summary_cells(p.summary[key]) for key in ("pearson", "spearman", "kendall")]
        lines = markdown_table(header, rows) + ["", self.t("reading")]
        s = p.summary["pearson"]
        lines.append(
            self.t(
                "r_good",
                good=p.good_count,
                layers=self.c.num_layers,
                share=fmt_pct(p.good_share),
                t=self.c.settings.good_threshold,
            )
        )
        if s.median is not None and s.mean is not None:
            key = "r_median_above" if s.median > s.mean else "r_median_below"
            lines.append(self.t(key, median=fmt_corr(s.median), mean=fmt_corr(s.mean)))
        if p.undefined_layers:
            lines.append(self.t("r_undefined", layers=layers_text(p.undefined_layers)))
        return lines

    def global_block(self, p: PairMetrics) -> list[str]:
        g, boot = p.global_metrics, p.intervals or {}
        rows = [
            [f"**{self.t('global_pearson')}**", fmt_corr(g.pearson), fmt_interval(boot.get("global_pearson"))],
            [f"**{self.t('global_spearman')}**", fmt_corr(g.spearman), fmt_interval(boot.get("global_spearman"))],
            [f"**{self.t('global_kendall')}**", fmt_corr(g.kendall), NA],
        ]
        lines = markdown_table([self.t("col_metric"), self.t("col_value"), self.t("col_ci")], rows)
        return lines + ["", self.t("global_note", n=self.c.num_layers * self.c.num_heads)]

    def topk_block(self, p: PairMetrics) -> list[str]:
        c, g = self.c, p.global_metrics
        n_all = c.num_layers * c.num_heads
        header = [
            self.t("col_k"),
            self.t("col_layer_overlap"),
            self.t("col_layer_chance", h=c.num_heads),
            self.t("col_layer_kuncheva"),
            self.t("col_global_overlap"),
            self.t("col_global_chance", n=n_all),
            "Kuncheva",
        ]
        rows = [
            [
                f"Top-{k}",
                fmt_pct(p.overlap_summary[k].mean),
                fmt_pct(p.chance_layer[k]),
                fmt_corr(p.kuncheva_summary[k].mean),
                fmt_pct(g.overlap[k]),
                fmt_pct(g.chance[k]),
                fmt_corr(g.kuncheva[k]),
            ]
            for k in c.settings.top_k
        ]
        lines = markdown_table(header, rows) + ["", self.t("reading")]
        if self.k is not None:
            o, ch = p.overlap_summary[self.k].mean, p.chance_layer[self.k]
            ki = p.kuncheva_summary[self.k].mean
            lines.append(self.t("topk_focus", k=self.k, o=fmt_pct(o), c=fmt_pct(ch), ki=fmt_corr(ki)))
        if any(k >= c.num_heads for k in c.settings.top_k):
            lines.append(self.t("topk_na", h=c.num_heads))
        return lines

    def distribution(self) -> list[str]:
        runs = self.c.runs
        rows = [
            [f"**{self.t('d_' + key)}**"] + [fmt_score(r.distribution[key]) for r in runs]
            for key in ("mean", "median", "std", "min", "max")
        ]
        for key, field_name in (("d_cmax", "max_abs"), ("d_cmean", "mean_abs")):
            rows.append([f"**{self.t(key)}**"] + [fmt_score((r.completeness or {}).get(field_name)) for r in runs])
        for key, field_name in (("d_crel", "relative_total"), ("d_cpath", "max_relative")):
            rows.append([f"**{self.t(key)}**"] + [fmt_pct((r.completeness or {}).get(field_name)) for r in runs])
        nodes = [(r.completeness or {}).get("nodes") for r in runs]
        if any(nodes):  # recorded by the error-controlled quadrature: how much refinement each run needed
            rows.append([f"**{self.t('d_nodes')}**"] + [nodes_cell(n) for n in nodes])
        return markdown_table([""] + [r.label for r in runs], rows) + ["", self.t("dist_note")]

    def chance(self) -> list[str]:
        c = self.c
        n_all = c.num_layers * c.num_heads
        p = c.pairs[0]
        rows = [[f"Top-{k}", fmt_pct(p.chance_layer[k]), fmt_pct(p.global_metrics.chance[k])] for k in c.settings.top_k]
        header = [self.t("col_k"), self.t("col_chance_layer", h=c.num_heads), self.t("col_chance_global", n=n_all)]
        return [self.t("chance_text"), ""] + markdown_table(header, rows)

    def intervals_block(self, p: PairMetrics) -> list[str]:
        if p.intervals is None:
            return [self.t("boot_na", reason=self.reason(p.intervals_note))]
        rows = []
        for key in ("global_pearson", "global_spearman", "mean_layer_pearson", "mean_layer_spearman"):
            iv = p.intervals.get(key)
            if iv is not None:
                df = NA if iv.df is None else f"{iv.df:.1f}"
                rows.append([self.t("b_" + key), fmt_corr(iv.estimate), fmt_interval(iv), fmt_corr(iv.se), df])
        header = [self.t("col_stat"), self.t("col_estimate"), self.t("col_ci"), self.t("col_se"), self.t("col_df")]
        return markdown_table(header, rows)

    def reason(self, note: str | None) -> str:
        """An N/A reason in the report's language."""
        return self.t("reason_no_samples") if note == NA_NO_SAMPLES else (note or NA)
