"""methods.md of `headattr methods`: formatting only; every number comes from methods.json, every word from the
`methods` table of `reports.strings`."""

from __future__ import annotations

from typing import Any

from headattr.reports.markdown.format import markdown_table
from headattr.reports.strings import Table, table


def corr(x: float | None) -> str:
    return "N/A" if x is None else f"{x:.3f}"


def f2(x: float | None) -> str:
    return "N/A" if x is None else f"{x:.2f}"


def passes(cost: dict[str, float]) -> float:
    return cost["forward_passes_per_sample"] + cost["backward_passes_per_sample"]


def _row(rank: int, name: str, m: dict[str, Any], pareto: bool, t: Table) -> list[str]:
    c, f, cost = m["consistency"], m["faithfulness"], m["cost"]
    return [
        str(rank),
        name,
        corr(c["mean_layer_pearson"]),
        corr(c["mean_layer_spearman"]),
        corr(c["global_pearson"]),
        corr(c["global_spearman"]),
        corr(c["top_k_overlap"]),
        f2(f["F"]),
        f2(f["F_most"]),
        f2(f["F_least"]),
        corr(f["single_head_spearman"]),
        f"{cost['per_sample_s']:.3f}",
        f"{cost['forward_passes_per_sample']:.1f}",
        f"{cost['backward_passes_per_sample']:.1f}",
        t["yes"] if pareto else t["no"],
    ]


def render_markdown(summary: dict[str, Any], lang: str = "en") -> str:
    """methods.md from methods.json's content."""
    t, methods, ranking = table(lang, "methods"), summary["methods"], summary["ranking"]
    any_c = next(iter(methods.values()))["consistency"]
    model, ref = summary["model"], summary["reference"]
    lines = [
        t["title"],
        "",
        t["intro"].format(
            model=model["name"],
            layers=model["num_layers"],
            heads=model["num_heads"],
            seeds=", ".join(str(s) for s in summary["seeds"]),
            samples=summary["size"]["samples"],
            eval=summary["eval_samples"],
            maxf=f"{summary['size']['max_fraction']:g}",
        ),
        "",
    ]
    header = [c.format(k=any_c["top_k"], chance=corr(any_c["top_k_chance"])) for c in t["cols"]]
    rows = [_row(methods[n]["rank"], n, methods[n], n in summary["pareto"], t) for n in ranking]
    lines += markdown_table(header, rows)
    lines += [
        "",
        t["consistency"].format(
            one=ref["oracle_F"],
            zero=ref["random_F"],
            random=f"{ref['random_area']:.4f}",
            omost=f"{ref['oracle_area_most']:.4f}",
            oleast=f"{ref['oracle_area_least']:.4f}",
        ),
        "",
        t["rule"],
        "",
    ]
    names, grid = summary["agreement"]["methods"], summary["agreement"]["global_spearman"]
    lines += [t["agreement"], ""]
    lines += markdown_table(["", *names], [[a, *[corr(x) for x in grid[i]]] for i, a in enumerate(names)])
    lines += ["", t["reading"], ""]
    lines += _reading(summary, t)
    return "\n".join(lines) + "\n"


def _reading(summary: dict[str, Any], t: Table) -> list[str]:
    """Statements derived from the numbers: who is best on each axis, and where Gate-IG stands."""
    methods, ranking = summary["methods"], summary["ranking"]
    best_c = max(methods, key=lambda n: methods[n]["consistency"]["global_spearman"] or -1.0)
    cheapest = min(methods, key=lambda n: passes(methods[n]["cost"]))
    lines = [
        t["best_f"].format(name=ranking[0], f=f2(methods[ranking[0]]["faithfulness"]["F"])),
        t["best_c"].format(name=best_c, c=corr(methods[best_c]["consistency"]["global_spearman"])),
        t["cheapest"].format(name=cheapest, p=f"{passes(methods[cheapest]['cost']):.1f}"),
    ]
    if "gate-ig" in methods:
        rank = ranking.index("gate-ig")
        f = f2(methods["gate-ig"]["faithfulness"]["F"])
        if rank == 0:
            lines.append(t["gate_ig_best"].format(f=f))
        else:
            better = ", ".join(f"{n} ({f2(methods[n]['faithfulness']['F'])})" for n in ranking[:rank])
            lines.append(
                t["gate_ig"].format(rank=methods["gate-ig"]["rank"], n=summary["num_methods"], f=f, better=better)
            )
    return lines
