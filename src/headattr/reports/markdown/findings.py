"""The key findings and, with more than two runs, the pairwise section: the verdict and its numbers."""

from __future__ import annotations

from headattr.analysis.results import PairMetrics
from headattr.reports.markdown.base import RendererBase
from headattr.reports.markdown.format import (
    LEVEL_ICONS,
    fmt_corr,
    fmt_interval,
    fmt_p,
    fmt_pct,
    markdown_table,
)


class FindingsSection(RendererBase):
    """The key findings and, with more than two runs, the pairwise section of the report (a part of `Renderer`)."""

    def verdict_rule(self, level: str) -> str:
        levels = self.c.settings.verdict_levels
        if level in levels:
            return self.t(f"rule_{level}", t=levels[level])
        if level == "low":
            return self.t("rule_low", t=min(levels.values()))
        return self.t("rule_undetermined")

    def findings(self) -> list[str]:
        c, v = self.c, self.c.verdict
        lines = [self.t("h_findings"), "", self.t("overall", icon=LEVEL_ICONS[v.level], level=self.level(v.level)), ""]
        over = self.t("over_pairs", n=len(c.pairs)) if self.multi else ""
        lines += [
            self.t(
                "verdict_line",
                p=fmt_corr(v.pearson_mean),
                s=fmt_corr(v.spearman_mean),
                over_pairs=over,
                rule=self.verdict_rule(v.level),
            ),
            "",
        ]
        lines += self.pair_blocks(self.pair_findings)
        return lines

    def pair_findings(self, p: PairMetrics) -> list[str]:
        c, g = self.c, p.global_metrics
        boot = p.intervals or {}
        lines = [
            self.t(
                "f_good",
                good=p.good_count,
                layers=c.num_layers,
                share=fmt_pct(p.good_share),
                t=c.settings.good_threshold,
            ),
            self.t(
                "f_global",
                n=c.num_layers * c.num_heads,
                p=fmt_corr(g.pearson),
                ci=fmt_interval(boot.get("global_pearson")),
                s=fmt_corr(g.spearman),
            ),
        ]
        if self.k is not None:
            lines.append(
                self.t(
                    "f_overlap",
                    k=self.k,
                    o=fmt_pct(p.overlap_summary[self.k].mean),
                    c=fmt_pct(p.chance_layer[self.k]),
                    ki=fmt_corr(p.kuncheva_summary[self.k].mean),
                )
            )
        lines.append(self.t("f_trend", trend=self.trend_text(p)))
        for run in (c.runs[p.a], c.runs[p.b]):
            values = [x for x in run.reliability.full_layer if x is not None]
            if values:
                lines.append(
                    self.t(
                        "f_reliability",
                        label=run.label,
                        lo=fmt_corr(min(values)),
                        hi=fmt_corr(max(values)),
                        target=c.settings.target,
                        n=run.reliability.below_target,
                        layers=c.num_layers,
                    )
                )
        if p.predicted_pearson_mean is not None:
            lines.append(
                self.t("f_predicted", pred=fmt_corr(p.predicted_pearson_mean), obs=fmt_corr(p.summary["pearson"].mean))
            )
        return lines

    def trend_text(self, p: PairMetrics) -> str:
        tr = p.trend
        return self.t(
            f"trend_{tr.direction}", rho=fmt_corr(tr.rho), p=fmt_p(tr.p_value), alpha=self.c.settings.trend_alpha
        )

    def pairwise(self) -> list[str]:
        c = self.c
        n = len(c.runs)
        lines = [self.t("h_pairwise"), "", self.t("pairwise_intro", n=n, pairs=len(c.pairs)), ""]
        for name in ("mean_layer_pearson", "mean_layer_spearman", "global_pearson"):
            lines += [f"**{self.t('m_' + name, k=self.k)}**", ""]
            grid = c.matrix[name]
            rows = [
                [r.label] + ["—" if i == j else fmt_corr(grid[i][j]) for j in range(n)] for i, r in enumerate(c.runs)
            ]
            lines += markdown_table([""] + [r.label for r in c.runs], rows) + [""]
        rows = []
        for name, value in c.matrix_mean.items():
            if name == "mean_layer_overlap_focus":
                rows.append([self.t("m_" + name, k=self.k), fmt_pct(value)])
            else:
                rows.append([self.t("m_" + name), fmt_corr(value)])
        lines += markdown_table([self.t("col_metric"), self.t("col_mean_pairs")], rows) + [""]
        rows = [
            [
                f"{self.label(p.a)} / {self.label(p.b)}",
                fmt_corr(p.verdict.pearson_mean),
                fmt_corr(p.verdict.spearman_mean),
                self.level(p.verdict.level),
            ]
            for p in c.pairs
        ]
        header = [
            self.t("col_pair"),
            self.t("m_mean_layer_pearson"),
            self.t("m_mean_layer_spearman"),
            self.t("col_verdict"),
        ]
        return lines + markdown_table(header, rows) + [""]
