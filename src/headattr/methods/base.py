"""The method interface: how a head-attribution method plugs into the core and the attribution runner.

A method is a settings dataclass (`MethodConfig`) that also knows how to attribute one sample:

    result = method.attribute(spec, rows, batch_size, where)   # rows: core.Rows of the sample's variants
    result.attributions                                       # [V, L, H] float64, raw signed
    result.diagnostics                                        # name -> array with leading axis V

The runner (`headattr.attribution`) is generic over methods: it checkpoints `SampleAttribution`s, stacks
them over samples ([N, V, ...]), asks the method to `summarize` the stacked diagnostics for run.json, and
records `method` and the method's settings in run.json's `config`. Where a method `merges_samples`, the
runner may hand it the variants of several samples of one shape (token length, answer span) as one `Rows`
and split the result (`SampleAttribution.split`). `register` makes a method available to `--method NAME`
and to `method_from_meta`.

What reports say about a run comes from its method too: `label` (its name in reports), `describe(lang)` (what
was computed, with the settings used) and `sign_text(lang)` (what a score's sign means, true for that method),
from the method's own `TEXT` table ("describe" and "sign" per language in `TEXT_LANGS`, formatted with the
method's run.json settings).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from headattr.errors import HeadattrError
from headattr.models import ModelSpec
from headattr.settings import Settings


@dataclass
class SampleAttribution:
    """One sample's attributions [V, L, H] and its per-variant diagnostics (arrays with leading axis V)."""

    attributions: np.ndarray
    diagnostics: dict[str, np.ndarray]

    def split(self, counts: list[int]) -> list[SampleAttribution]:
        """The results of consecutive samples with `counts[i]` variants each, from one merged result."""
        edges = np.cumsum([0, *counts])
        parts = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        return [
            SampleAttribution(self.attributions[s].copy(), {k: v[s].copy() for k, v in self.diagnostics.items()})
            for s in parts
        ]


TEXT_LANGS = ("en", "zh")


class MethodConfig(Settings):
    """Base of every method's settings (see the module docstring)."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # the method's name in reports
    # per language of TEXT_LANGS: "describe" (what a run computed, formatted with `to_meta()`) and "sign"
    TEXT: ClassVar[dict[str, dict[str, str]]] = {}
    cache_layers: ClassVar[bool] = True  # whether the core should cache every layer's input for this method
    # whether the variants of several samples of one shape may share one `Rows` (`core.prepare_merged`): true
    # for a method that treats every variant on its own and does not read `rows.uid`
    merges_samples: ClassVar[bool] = False
    # whether `attribute --dry-run` can plan this method (`runs.plan` counts Gate-IG's layer passes)
    plannable: ClassVar[bool] = False
    # whether its diagnostics hold J(b) and completeness errors per path (integrated-gradients methods)
    checks_completeness: ClassVar[bool] = False

    def attribute(self, spec: ModelSpec, rows: Any, batch_size: int, where: str) -> SampleAttribution:
        raise NotImplementedError

    def largest_pass(self, num_variants: int, num_layers: int) -> int | None:
        """The most rows one pass of a sample's first round holds, or None: the planner's own limit."""
        return None

    def cached_outputs_width(self, spec: ModelSpec) -> int:
        """Elements per variant and token the method keeps besides the cached layer inputs (default: none)."""
        return 0

    @classmethod
    def benchmark_config(cls, quick: bool, seed: int) -> MethodConfig:
        """The settings `headattr methods` runs this method with (`quick`: its reduced size); seeded methods
        use the run's `seed`."""
        return cls()

    def summarize(self, diagnostics: dict[str, np.ndarray]) -> dict[str, Any]:
        """run.json's diagnostics summary from the stacked per-variant diagnostics ([N, V, ...])."""
        return {}

    def summary_lines(self, summary: dict[str, Any]) -> list[str]:
        """Lines `headattr attribute` prints about `summarize`'s output (default: none)."""
        return []

    def to_meta(self) -> dict[str, Any]:
        return {"method": self.name, **super().to_meta()}

    @classmethod
    def setting_keys(cls) -> set[str]:
        """The run.json `config` keys this method owns: `method` and its settings."""
        return {"method", *(cls.META_NAMES.get(f.name, f.name) for f in dataclasses.fields(cls))}  # type: ignore[arg-type]

    @classmethod
    def sign_text(cls, lang: str = "en") -> str:
        """What the sign and size of this method's scores mean, in `lang` (one of TEXT_LANGS)."""
        return cls.TEXT[lang]["sign"]

    def describe(self, lang: str = "en", nodes: dict[str, float] | None = None) -> str:
        """What a run of these settings computed, with the settings it used, in `lang`. `nodes`: the quadrature
        nodes its paths used (`diagnostics.nodes_summary`), for a method that records them."""
        return self.TEXT[lang]["describe"].format(**self.to_meta())


METHODS: dict[str, type[MethodConfig]] = {}


def register(cls: type[MethodConfig]) -> type[MethodConfig]:
    """Class decorator: make `cls` the method called `cls.name`."""
    METHODS[cls.name] = cls
    return cls


def method_config(name: str, **settings: Any) -> MethodConfig:
    """The settings of method `name` (unknown name: a one-line error listing the methods)."""
    if name not in METHODS:
        raise HeadattrError(f"unknown --method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](**settings)


def method_from_meta(config: dict[str, Any]) -> MethodConfig:
    """The method and its settings recorded in a run.json `config` (runs before `method` existed: gate-ig)."""
    name = config.get("method", "gate-ig")
    if name not in METHODS:
        raise HeadattrError(f"run.json names method {name!r}, which this headattr does not know")
    return METHODS[name].from_meta(config)
