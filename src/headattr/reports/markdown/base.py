"""What every section of the report shares: the comparison, the language's strings, labels and pair blocks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from headattr.analysis.results import Comparison, PairMetrics
from headattr.reports.strings import table


class RendererBase:
    """The state of one rendering: comparison `c`, language, its string table `s`, focus K `k`, several pairs."""

    def __init__(self, comp: Comparison, lang: str) -> None:
        self.s = table(lang, "compare")  # raises for an unknown language
        self.c = comp
        self.lang = lang
        self.k = comp.settings.focus_k
        self.multi = len(comp.pairs) > 1

    def t(self, key: str, **kw: Any) -> str:
        """The string `key` of this language, filled in with `kw`."""
        return self.s.format(key, **kw)

    def label(self, i: int) -> str:
        """The label of run `i`."""
        return self.c.runs[i].label

    def band_name(self, name: str, first: int, last: int) -> str:
        """A band's name in words, with its layer range."""
        key = f"band_{name}" if f"band_{name}" in self.s else "band_generic"
        text = self.t(key, first=first, last=last)
        return text if key in ("band_custom", "band_generic") else f"{text} ({first}-{last})"

    def level(self, level: str) -> str:
        """A verdict level in words."""
        return self.s[f"level_{level}"]

    def pair_blocks(self, body: Callable[[PairMetrics], list[str]]) -> list[str]:
        """`body` for every pair, under a pair heading when there are several pairs."""
        lines: list[str] = []
        for p in self.c.pairs:
            if self.multi:
                lines += [self.t("pair_heading", a=self.label(p.a), b=self.label(p.b)), ""]
            lines += body(p) + [""]
        return lines
