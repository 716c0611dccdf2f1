"""methods.md and methods.png of `headattr methods`: formatting only; every number comes from methods.json."""

from __future__ import annotations

from typing import Any

from headattr.reports.compare import markdown_table

TEXT = {
    "en": {
        "title": "# Attribution methods side by side",
        "intro": "Model {model} ({layers} layers x {heads} heads); seeds {seeds}; {samples} samples per run; "
        "faithfulness on {eval} held-out samples, fractions of heads removed up to {maxf}. "
        "Definitions: docs/methods.md.",
        "cols": [
            "rank",
            "method",
            "layer Pearson",
            "layer Spearman",
            "global Pearson",
            "global Spearman",
            "top-{k} overlap (chance {chance})",
            "F",
            "F most",
            "F least",
            "single-head Spearman",
            "s / sample",
            "fwd / sample",
            "bwd / sample",
            "Pareto",
        ],
        "yes": "yes",
        "no": "",
        "consistency": "Consistency: between the seeds' runs (the `compare` metrics). Faithfulness: F = {one} is the "
        "oracle order of measured single-head effects, {zero} a random order; pruning-curve areas: random {random}, "
        "oracle most {omost}, oracle least {oleast}. Cost: per sample, passes counted by the core.",
        "rule": "Ranking: by F, then by global Spearman between seeds. Pareto: no other method is at least as "
        "consistent and faithful at no more passes.",
        "agreement": "## Agreement between methods (global Spearman; diagonal: between seeds)",
        "reading": "## Reading",
        "best_f": "- Most faithful: {name} (F {f}).",
        "best_c": "- Most consistent between seeds: {name} (global Spearman {c}).",
        "cheapest": "- Cheapest: {name} ({p} passes per sample).",
        "gate_ig": "- Gate-IG ranks {rank} of {n} by F ({f}); better F: {better}.",
        "gate_ig_best": "- Gate-IG ranks first by F ({f}).",
    },
    "zh": {
        "title": "# 归因方法对比",
        "intro": "模型 {model}（{layers} 层 x {heads} 头）；种子 {seeds}；每次运行 {samples} 个样本；"
        "忠实度在 {eval} 个留出样本上测量，移除头的比例最高 {maxf}。定义见 docs/methods.md。",
        "cols": [
            "排名",
            "方法",
            "逐层 Pearson",
            "逐层 Spearman",
            "全局 Pearson",
            "全局 Spearman",
            "Top-{k} 重叠（随机 {chance}）",
            "F",
            "F most",
            "F least",
            "单头消融 Spearman",
            "秒/样本",
            "前向/样本",
            "反向/样本",
            "Pareto",
        ],
        "yes": "是",
        "no": "",
        "consistency": "一致性：两个种子运行之间（与 `compare` 相同的指标）。忠实度：F = {one} 为按实测单头"
        "消融效应排序的 oracle 顺序，{zero} 为随机顺序；"
        "剪枝曲线面积：随机 {random}，oracle most {omost}，oracle least {oleast}。"
        "成本：每个样本，由核心计数的前向/反向次数。",
        "rule": "排名规则：按 F，其次按种子间全局 Spearman。Pareto：没有其他方法在不多于其计算量的情况下"
        "一致性和忠实度都不差。",
        "agreement": "## 方法之间的一致性（全局 Spearman；对角线：种子之间）",
        "reading": "## 解读",
        "best_f": "- 忠实度最高：{name}（F {f}）。",
        "best_c": "- 种子间最一致：{name}（全局 Spearman {c}）。",
        "cheapest": "- 成本最低：{name}（每样本 {p} 次前向+反向）。",
        "gate_ig": "- Gate-IG 按 F 排第 {rank}/{n}（{f}）；F 更高的方法：{better}。",
        "gate_ig_best": "- Gate-IG 按 F 排第一（{f}）。",
    },
}


def corr(x: float | None) -> str:
    return "N/A" if x is None else f"{x:.3f}"


def f2(x: float | None) -> str:
    return "N/A" if x is None else f"{x:.2f}"


def passes(cost: dict[str, float]) -> float:
    return cost["forward_passes_per_sample"] + cost["backward_passes_per_sample"]


def _row(rank: int, name: str, m: dict[str, Any], pareto: bool, t: dict[str, Any]) -> list[str]:
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
    t, methods, ranking = TEXT[lang], summary["methods"], summary["ranking"]
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


def _reading(summary: dict[str, Any], t: dict[str, Any]) -> list[str]:
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
