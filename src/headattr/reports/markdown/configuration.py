"""The configuration section: the model, each run's method and settings, how the runs' settings differ."""

from __future__ import annotations

from headattr.analysis.results import RunSummary
from headattr.errors import HeadattrError
from headattr.methods import METHODS, method_from_meta
from headattr.reports.markdown.base import RendererBase
from headattr.reports.markdown.format import (
    NA,
    markdown_table,
    value_text,
)
from headattr.reports.strings import table


class ConfigurationSection(RendererBase):
    """The configuration section of the report (a part of `Renderer`)."""

    def title(self) -> list[str]:
        return [self.t("title", model=self.c.model.get("name") or "headattr"), ""]

    def configuration(self) -> list[str]:
        c, m = self.c, self.c.model
        lines = [self.t("h_config"), ""]
        lines.append(
            self.t(
                "model", name=m.get("name"), hash=str(m.get("config_hash"))[:12], layers=c.num_layers, heads=c.num_heads
            )
        )
        labels = [self.method_label(r) for r in c.runs]
        if len({r.method for r in c.runs}) == 1:
            lines.append(self.t("method", label=labels[0]))
        else:
            items = self.t("method_sep").join(
                self.t("method_item", label=r.label, method=m) for r, m in zip(c.runs, labels, strict=True)
            )
            imported = any(r.method in ("imported", "mixed") for r in c.runs)
            lines.append(self.t("origins_differ" if imported else "methods_differ", items=items))
        lines.append(self.t("runs"))
        for r in c.runs:
            seeds = ", ".join(f"{k}={r.config.get(k)}" for k in ("seed", "data_seed", "mask_seed") if k in r.config)
            if r.imported_from is not None:
                lines.append(self.t("run_line_imported", label=r.label, path=r.path, source=r.imported_from))
            else:
                lines.append(
                    self.t(
                        "run_line",
                        label=r.label,
                        path=r.path,
                        seeds=seeds or NA,
                        samples=r.num_samples,
                        variants=r.num_variants,
                    )
                )
            method, sign = self.method_lines(r)
            lines += [self.t("run_method", method=method), self.t("run_sign", sign=sign)]
        lines.append(self.t("common"))
        names = table(self.lang, "config_keys")
        # a method's own settings are in its runs' method lines, in words
        owned = set().union(*(METHODS[r.method].setting_keys() for r in c.runs if r.method in METHODS))
        common = {k: v for k, v in c.common_config.items() if k not in owned}
        for key, name in names.items():
            if key in common:
                lines.append(f"  - {name}: {value_text(common[key])}")
        others = [f"{k}={value_text(v)}" for k, v in common.items() if k not in names]
        if others:
            lines.append(self.t("other_common", items=", ".join(others)))
        if c.config_differences:
            lines += [self.t("differences"), ""]
            header = [self.t("col_setting")] + [r.label for r in c.runs] + [""]
            rows = [
                [f"`{d['key']}`"] + [value_text(v) for v in d["values"]] + [self.s[f"kind_{d['kind']}"]]
                for d in c.config_differences
            ]
            lines += markdown_table(header, rows)
        else:
            lines.append(self.t("no_differences"))
        return lines + [""]

    def method_label(self, r: RunSummary) -> str:
        """The name of the method a run's scores come from."""
        if r.method in METHODS:
            return METHODS[r.method].label
        if r.method in ("imported", "mixed"):
            return self.t("label_" + r.method)
        return r.method

    def method_lines(self, r: RunSummary) -> tuple[str, str]:
        """What a run computed, with the settings it used, and what its scores' sign means: the method's own
        words (`MethodConfig.describe`, `sign_text`) for a run headattr computed."""
        if r.method == "imported":
            return self.t("method_imported"), self.t("sign_" + r.sign)
        if r.method == "mixed":
            methods = value_text(r.config.get("method", "gate-ig"))
            return self.t("method_mixed", methods=methods), self.t("sign_" + r.sign)
        if r.method not in METHODS:  # a run.json from a newer headattr: its sign is its method's, unknown here
            return self.t("method_unknown", name=r.method), NA
        cls = METHODS[r.method]
        try:
            config = {**r.config, "method": r.method}
            method = method_from_meta(config).describe(self.lang, (r.completeness or {}).get("nodes"))
        except (HeadattrError, TypeError, ValueError) as exc:  # e.g. an ensemble whose inputs' settings differ
            keys = [k for k in sorted(cls.setting_keys()) if isinstance(r.config.get(k), list)]
            differ = ", ".join(f"{k}={value_text(r.config[k])}" for k in keys)
            if differ:
                method = self.t("method_inputs_differ", label=cls.label, items=differ)
            else:
                method = self.t("method_unreadable", label=cls.label, error=str(exc))
        sign = cls.sign_text(self.lang) if r.sign == "headattr" else self.t("sign_" + r.sign)
        if r.postprocess in ("abs", "relu"):
            sign += self.t("post_" + r.postprocess)
        return method, sign
