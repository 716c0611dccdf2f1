"""The report of `headattr sparse` (sparse.md), from sparse.json's content; every word from the `sparse` table of
`reports.strings`, every number from the summary. Also writes all of the command's files together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headattr.reports.markdown.format import markdown_table
from headattr.reports.strings import Table, check_lang, table
from headattr.sparsity.outputs import write_outputs
from headattr.sparsity.results import SparseResult

REPORT_FILE = "sparse.md"


def _num(x: float | None, digits: int = 3) -> str:
    return "N/A" if x is None else f"{x:.{digits}f}"


def _accuracy_rows(summary: dict[str, Any], metric: str, t: Table) -> list[list[str]]:
    rows = []
    for c in summary["configurations"]:
        a = c["accuracy"][metric]
        rows.append(
            [
                t["dense"] if c["allocation"] == "dense" else c["name"],
                "" if c["select"] is None else f"{c['select']:g}",
                _num(c["keep_mean"]),
                _num(c["budget_used"]),
                f"{a['accuracy']:.3f} ({a['correct']}/{a['n']})",
                f"[{a['low']:.3f}, {a['high']:.3f}]",
            ]
        )
    return rows


def _comparison_rows(summary: dict[str, Any], metric: str, t: Table) -> list[list[str]]:
    rows = []
    for c in summary["comparisons"]:
        if c["metric"] != metric:
            continue
        verdict = t["verdict_" + c["verdict"].replace(" ", "_")]
        rows.append(
            [
                f"{c['a']} vs {c['b']}",
                f"{c['difference']:+.3f}",
                f"[{c['low']:+.3f}, {c['high']:+.3f}]",
                f"{c['a_only']} / {c['b_only']}",
                f"{c['p_value']:.3g}",
                t["none_detectable"] if c["detectable"] is None else f"{c['detectable']:.3f}",
                verdict.format(a=c["a"], b=c["b"]),
            ]
        )
    return rows


def _speed_rows(summary: dict[str, Any], t: Table) -> list[list[str]]:
    rows = []
    for c in summary["configurations"]:
        spt = c["seconds_per_token"]
        rows.append(
            [
                t["dense"] if c["allocation"] == "dense" else c["name"],
                "N/A" if spt is None else f"{spt:.4g}",
                str(c["generated_tokens"]),
                f"{c['seconds']:.1f}",
            ]
        )
    return rows


def render_sparse(summary: dict[str, Any], lang: str = "en") -> str:
    """sparse.md from sparse.json's content in `lang`."""
    t = table(lang, "sparse")
    s, task = summary["settings"], summary["task"]
    n = len(summary["configurations"][0]["correct"][task["metrics"][0]]) if summary["configurations"] else 0
    lines = [t["title"], ""]
    lines += [
        t.format(
            "intro",
            model=summary.get("model", {}).get("name", "?"),
            n=n,
            task=task["name"],
            block=s["block_size"],
            skip=s["skip"],
            min_keep=s["min_keep"],
            gqa=s["gqa"],
            compat=s["compat"] or "none",
        ),
        "",
        t["allocations"],
        "",
    ]
    for metric in task["metrics"]:
        lines += [t.format("accuracy_heading", metric=metric), ""]
        lines += markdown_table(list(t["accuracy_cols"]), _accuracy_rows(summary, metric, t)) + [""]
        lines += [t.format("comparison_heading", metric=metric), ""]
        rows = _comparison_rows(summary, metric, t)
        lines += (markdown_table(list(t["comparison_cols"]), rows) if rows else [t["no_comparisons"]]) + [""]
    lines += [t["comparison_notes"], "", t["speed_heading"], ""]
    lines += markdown_table(list(t["speed_cols"]), _speed_rows(summary, t)) + ["", t["speed_notes"], ""]
    return "\n".join(lines)


def write_sparse_outputs(result: SparseResult, out: str | Path, lang: str = "en") -> dict[str, Path]:
    """sparse.json, sparse.png (`sparsity.outputs`) and sparse.md in `lang`, each written atomically."""
    from headattr.runs.rundir import atomic_write_text

    check_lang(lang)
    paths = write_outputs(result, out)
    paths[REPORT_FILE] = Path(out) / REPORT_FILE
    atomic_write_text(paths[REPORT_FILE], render_sparse(result.to_dict(), lang))
    return paths
