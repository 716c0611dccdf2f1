"""The per-layer sections: most and least consistent layers, the layer trend, split-half reliability."""

from __future__ import annotations

from headattr.analysis.reliability import NA_NO_SAMPLES, NA_NON_POSITIVE
from headattr.analysis.results import PairMetrics, Reliability
from headattr.reports.markdown.base import RendererBase
from headattr.reports.markdown.format import (
    NA,
    fmt_corr,
    fmt_int,
    fmt_pct,
    markdown_table,
)


class LayersSection(RendererBase):
    """The per-layer sections of the report (a part of `Renderer`)."""

    def per_layer(self) -> list[str]:
        lines = [self.t("h_layers"), "", self.t("h_best"), ""]
        lines += self.pair_blocks(lambda p: self.extreme_block(p, p.best_layers, worst=False))
        lines += [self.t("h_worst"), ""]
        lines += self.pair_blocks(lambda p: self.extreme_block(p, p.worst_layers, worst=True))
        lines += [self.t("h_trend"), ""]
        lines += self.pair_blocks(self.trend_block)
        return lines

    def extreme_block(self, p: PairMetrics, layers: list[int], worst: bool) -> list[str]:
        k = self.k
        header = [self.t("col_layer"), "Pearson", "Spearman"] + ([self.t("col_topk_overlap", k=k)] if k else [])
        rows = []
        for i in layers:
            m = p.layers[i]
            rows.append(
                [self.t("layer_name", i=i), fmt_corr(m.pearson), fmt_corr(m.spearman)]
                + ([fmt_pct(m.overlap[k])] if k else [])
            )
        lines = markdown_table(header, rows) + [""]
        counts: dict[str, int] = {}
        for i in layers:
            for b in p.bands:
                if b.first <= i <= b.last:
                    name = self.band_name(b.name, b.first, b.last)
                    counts[name] = counts.get(name, 0) + 1
        if counts:
            lines.append(self.t("in_bands", items=", ".join(f"{n} x{c}" for n, c in counts.items())))
        if worst and layers and k:
            m = p.layers[layers[0]]
            lines += [
                "",
                self.t(
                    "worst_note",
                    layer=m.layer,
                    p=fmt_corr(m.pearson),
                    k=k,
                    o=fmt_pct(m.overlap[k]),
                    c=fmt_pct(p.chance_layer[k]),
                ),
            ]
        return lines

    def trend_block(self, p: PairMetrics) -> list[str]:
        s, k = self.c.settings, self.k
        header = [self.t("col_band"), self.t("col_layers"), self.t("col_mean_pearson"), self.t("col_mean_spearman")]
        header += [self.t("col_mean_overlap", k=k)] if k else []
        header += [self.t("col_good", t=s.good_threshold), self.t("col_needed", target=s.target)]
        rows = []
        for b in p.bands:
            row = [
                self.band_name(b.name, b.first, b.last),
                f"{b.first}-{b.last}",
                fmt_corr(b.pearson_mean),
                fmt_corr(b.spearman_mean),
            ]
            row += [fmt_pct(b.overlap_mean)] if k else []
            row += [f"{b.good_count}/{b.num_layers}", fmt_int(b.samples_needed)]
            rows.append(row)
        lines = markdown_table(header, rows) + ["", self.trend_text(p)[0].upper() + self.trend_text(p)[1:] + "."]
        if p.trend.bands:
            lines.append(self.t(f"bands_{p.trend.bands}"))
        return lines

    def reliability(self) -> list[str]:
        c, s = self.c, self.c.settings
        half = sorted({r.reliability.half for r in c.runs})
        lines = [
            self.t("h_reliability"),
            "",
            self.t("rel_text", half="/".join(map(str, half)), splits=s.splits, seed=s.seed, target=s.target),
            "",
        ]
        two = len(c.runs) == 2
        header = [self.t("col_layer")]
        for r in c.runs:
            header += [self.t("col_rel", label=r.label), self.t("col_need", label=r.label)]
        if two:
            header += [self.t("col_expected"), self.t("col_observed")]
        rows = []
        for i in range(c.num_layers):
            row = [self.t("layer_name", i=i)]
            for r in c.runs:
                row += [self.rel_cell(r.reliability, i), fmt_int(r.reliability.needed_layer[i])]
            if two:
                row += [fmt_corr(c.pairs[0].predicted_pearson[i]), fmt_corr(c.pairs[0].layers[i].pearson)]
            rows.append(row)
        row = [f"**{self.t('global_row')}**"]
        for r in c.runs:
            row += [self.rel_cell(r.reliability, None), fmt_int(r.reliability.needed_global)]
        if two:
            row += [fmt_corr(c.pairs[0].predicted_global), fmt_corr(c.pairs[0].global_metrics.pearson)]
        rows.append(row)
        return lines + markdown_table(header, rows) + [""]

    def rel_cell(self, rel: Reliability, layer: int | None) -> str:
        """A reliability, or N/A with what makes it so (the raw half correlation when r <= 0)."""
        full = rel.full_global if layer is None else rel.full_layer[layer]
        if full is not None:
            return fmt_corr(full)
        reason = rel.reason_global if layer is None else rel.reason_layer[layer]
        split = rel.split_global if layer is None else rel.split_layer[layer]
        if reason == NA_NON_POSITIVE:
            return self.t("rel_na_negative", r=fmt_corr(split))
        if reason == NA_NO_SAMPLES:
            return self.t("rel_na_samples")
        return NA
