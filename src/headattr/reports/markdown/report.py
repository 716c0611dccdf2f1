"""The report renderer: the section classes combined, in the report's order, and `render_report`.

The sections follow the hand-written seed report (configuration, key findings, correlation table, global
consistency, top-K overlap, score distribution, most/least consistent layers, layer trend, practical
recommendations, conclusion) and add chance levels, jackknife intervals and split-half reliability.
"""

from __future__ import annotations

from headattr.analysis.results import Comparison
from headattr.reports.markdown.advice import AdviceSection
from headattr.reports.markdown.configuration import ConfigurationSection
from headattr.reports.markdown.findings import FindingsSection
from headattr.reports.markdown.layers import LayersSection
from headattr.reports.markdown.metrics import MetricsSection


class Renderer(ConfigurationSection, FindingsSection, MetricsSection, LayersSection, AdviceSection):
    """Builds report.md section by section from one language's string table."""

    def render(self) -> str:
        """The whole report: the sections in order, runs of blank lines collapsed to one."""
        sections = [
            self.title(),
            self.configuration(),
            self.findings(),
            self.pairwise() if len(self.c.runs) > 2 else [],
            self.quantitative(),
            self.per_layer(),
            self.reliability(),
            self.recommendations(),
            self.conclusion(),
            self.definitions(),
            self.footer(),
        ]
        text = "\n".join(line for section in sections for line in section)
        while "\n\n\n" in text:
            text = text.replace("\n\n\n", "\n\n")
        return text.rstrip() + "\n"


def render_report(comparison: Comparison, lang: str = "en") -> str:
    """The markdown report of `comparison` in English (`en`) or Chinese (`zh`)."""
    return Renderer(comparison, lang).render()
