"""The closing sections: practical recommendations, conclusion, definitions and footer."""

from __future__ import annotations

from typing import Any

from headattr.reports.filenames import FIGURE_FILE
from headattr.reports.markdown.base import RendererBase
from headattr.reports.markdown.format import (
    NA,
    fmt_corr,
    fmt_pct,
    layers_text,
)


class AdviceSection(RendererBase):
    """The closing sections of the report (a part of `Renderer`)."""

    def recommendations(self) -> list[str]:
        items = self.c.recommendations
        lines = [self.t("h_recs"), "", self.t("recs_intro"), ""]
        for kind, heading in (("ok", "h_ok"), ("caution", "h_caution")):
            lines += [self.t(heading), ""]
            rendered = [line for item in items if item["kind"] == kind for line in self.recommendation(item)]
            lines += (rendered or [self.t("none")]) + [""]
        return lines

    def recommendation(self, item: dict[str, Any]) -> list[str]:
        """One rule item as text; the numbers come from the item (and so from metrics.json)."""
        rule = item["rule"]
        if rule == "all_layers_consistent":
            return [
                self.t("rec_" + rule, layers=item["num_layers"], t=item["threshold"], min=fmt_corr(item["min_pearson"]))
            ]
        if rule == "layers_below_threshold":
            parts = ", ".join(
                f"{self.t('layer_name', i=x['layer'])} ({fmt_corr(x['min_pearson'])})" for x in item["layers"]
            )
            return [self.t("rec_" + rule, t=item["threshold"], items=parts)]
        if rule == "reliability_met":
            return [
                self.t(
                    "rec_" + rule, target=item["target"], n=item["num_samples"], min=fmt_corr(item["min_reliability"])
                )
            ]
        if rule == "more_samples":
            n = "/".join(str(x) for x in sorted(set(item["num_samples"])))
            return [
                self.t(
                    "rec_" + rule,
                    band=self.band_name(b["band"], b["first"], b["last"]),
                    layers_list=layers_text(b["layers"]),
                    target=item["target"],
                    n=n,
                    needed=b["samples_needed"],
                )
                for b in item["bands"]
            ]
        if rule == "no_signal_layers":
            return [self.t("rec_" + rule, layers=layers_text(item["layers"]))]
        if rule in ("ensemble_helps", "ensemble_short"):
            parts = ", ".join(f"{i} ({fmt_corr(v)})" for i, v in item["projected"].items())
            return [
                self.t(
                    "rec_" + rule, runs=item["runs"], total=item["total_samples"], layers=parts, target=item["target"]
                )
            ]
        if rule in ("stable_top_k", "unstable_top_k"):
            parts = ", ".join(f"top-{x['k']} ({fmt_pct(x['min_overlap'])})" for x in item["ks"])
            return [self.t("rec_" + rule, t=fmt_pct(item["threshold"]), items=parts)]
        if rule == "scores_only_runs":
            return [self.t("rec_" + rule, runs=", ".join(item["runs"]))]
        if rule == "config_differences":
            return [self.t("rec_" + rule, keys=", ".join(f"`{k}`" for k in item["keys"]))]
        if rule == "shared_samples":
            parts = "; ".join(
                self.t("shared_item", a=self.label(x["a"]), b=self.label(x["b"]), count=x["count"])
                for x in item["pairs"]
            )
            return [self.t("rec_" + rule, items=parts)]
        if rule == "completeness_ok":
            return [self.t("rec_" + rule, max=fmt_pct(item["max_relative"]), rtol=fmt_pct(item["rtol"]))]
        if rule == "completeness_high":
            parts = ", ".join(f"{x['run']} ({fmt_pct(x['relative'])})" for x in item["runs"])
            return [self.t("rec_" + rule, rtol=fmt_pct(item["rtol"]), items=parts)]
        raise ValueError(f"no text for recommendation rule {rule!r}")

    def conclusion(self) -> list[str]:
        c, v, k = self.c, self.c.verdict, self.k
        s = c.settings
        good = c.consistent_layers
        overlap = c.matrix_mean["mean_layer_overlap_focus"]
        chance = c.pairs[0].chance_layer[k] if k else None
        lines = [
            self.t("h_conclusion"),
            "",
            self.t(
                "conclusion",
                level=self.level(v.level),
                p=fmt_corr(v.pearson_mean),
                s=fmt_corr(v.spearman_mean),
                k=k if k else NA,
                o=fmt_pct(overlap),
                c=fmt_pct(chance),
                good=good,
                every=self.t("every_pair") if self.multi else "",
                layers=c.num_layers,
                t=s.good_threshold,
            ),
        ]
        needed = [n for r in c.runs for n in r.reliability.needed_layer if n is not None]
        n_now = "/".join(str(x) for x in sorted({r.num_samples for r in c.runs}))
        met = all(x is not None and x >= s.target for r in c.runs for x in r.reliability.full_layer)
        if met:
            lines += ["", self.t("conclusion_reliability_met", target=s.target, n=n_now)]
        elif needed:
            lines += ["", self.t("conclusion_reliability", target=s.target, needed=max(needed), n=n_now)]
        lines += ["", self.t("conclusion_figure", file=FIGURE_FILE, a=self.label(0), b=self.label(1)), ""]
        return lines

    def definitions(self) -> list[str]:
        s = self.c.settings
        lv = s.verdict_levels
        return [
            self.t("h_definitions"),
            "",
            self.t("def_verdict", vh=lv["very_high"], h=lv["high"], m=lv["moderate"]),
            self.t("def_good", t=s.good_threshold),
            self.t("def_summary"),
            self.t("def_ties"),
            self.t("def_trend", alpha=s.trend_alpha),
            self.t("def_stable", t=fmt_pct(s.overlap_stable)),
            self.t("def_completeness", rtol=fmt_pct(s.completeness_rtol)),
            "",
        ]

    def footer(self) -> list[str]:
        from headattr.version import __version__

        return [
            "---",
            "",
            self.t("generated", created=self.c.created, version=__version__) + "  ",
            self.t("figure", file=FIGURE_FILE),
        ]
