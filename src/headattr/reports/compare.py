"""The consistency report: `report.md` (English or Chinese), `metrics.json`, `layer_metrics.csv` and the figure.

One template, two string tables (`STRINGS["en"]`, `STRINGS["zh"]`): every section is built by one function
that asks the table for its words and takes every number from the `Comparison` (consistency.py); nothing
is typed in by hand. Correlations are printed with 4 decimals, overlaps and shares as percentages with 1
decimal, and a metric that is not defined (a constant layer, K >= N) as "N/A".

Sections follow the hand-written seed report (configuration, key findings, correlation table, global
consistency, top-K overlap, score distribution, most/least consistent layers, layer trend, practical
recommendations, conclusion) and add chance levels, jackknife intervals and split-half reliability.

Recommendations are the rules of `consistency.recommendations`, each rendered from its measured numbers:

1. all_layers_consistent / layers_below_threshold: per-layer Pearson vs --good-threshold, every pair.
2. reliability_met / more_samples: split-half reliability vs --target, projected samples per band.
3. no_signal_layers: layers with split-half reliability <= 0 (no projection possible).
4. ensemble_helps: projected reliability of pooling every run's samples (`headattr ensemble`).
5. stable_top_k / unstable_top_k: global top-K overlap vs 0.9 in every pair.
6. config_differences: settings other than seeds (and than settings that cannot change numbers) differ.
7. shared_samples: runs that share samples.
8. completeness_ok / completeness_high: sum |completeness error| / sum |J(1) - J(b)| vs 0.05.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headattr.analysis.reliability import NA_NO_SAMPLES, NA_NON_POSITIVE
from headattr.analysis.results import Comparison, PairMetrics, Reliability, RunSummary, Summary
from headattr.errors import HeadattrError
from headattr.figures import plot_consistency
from headattr.methods import METHODS, method_from_meta
from headattr.runs.rundir import atomic_write_bytes, atomic_write_json, atomic_write_text, prepare_output_dir
from headattr.stats.intervals import Interval

REPORT_FILE = "report.md"
FIGURE_FILE = "consistency_analysis.png"
METRICS_FILE = "metrics.json"
LAYER_CSV_FILE = "layer_metrics.csv"
OUTPUT_FILES = (REPORT_FILE, FIGURE_FILE, METRICS_FILE, LAYER_CSV_FILE)
LANGS = ("en", "zh")
NA = "N/A"

STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "title": "# {model}: head attribution consistency report",
        "h_config": "## Configuration",
        "model": "- **Model**: {name} (config hash `{hash}`, {layers} layers x {heads} heads)",
        "method": "- **Attribution method**: {label} (each run's settings below)",
        "methods_differ": "- ⚠️ **Runs of different methods are compared**: {items}. Their scores measure different "
        "things, so the agreement below is agreement between methods, not the reproducibility of one method.",
        "origins_differ": "- ⚠️ **Runs of different origins are compared**: {items}. headattr does not know how "
        "imported scores were computed; where another method made them, the agreement below is agreement between "
        "methods, not the reproducibility of one method.",
        "method_item": "{label}: {method}",
        "method_sep": "; ",
        "runs": "- **Runs compared**:",
        "run_line": "  - **{label}**: `{path}`: {seeds}; {samples} samples x {variants} masked variants",
        "run_line_imported": "  - **{label}**: `{path}`: imported from `{source}`, scores only (no per-sample "
        "attributions)",
        "run_method": "    - method: {method}",
        "run_sign": "    - scores: {sign}",
        "label_imported": "imported scores",
        "label_mixed": "mixed ensemble",
        "method_imported": "not computed by headattr: scores imported from an adaptive-dllm `head_importance.pt`; "
        "how they were computed is up to whatever wrote that file",
        "method_mixed": "an ensemble of runs that differ in method or origin (config `method`: {methods})",
        "method_unknown": "`{name}`, a method this headattr does not know",
        "method_inputs_differ": "{label}; an ensemble whose inputs differ in its settings: {items}",
        "method_unreadable": "{label}, with settings this headattr cannot read back ({error})",
        "post_abs": "; post-processed with `abs`: a score is the mean of |per-sample attribution| (size only, "
        "the sign dropped)",
        "post_relu": "; post-processed with `relu`: negative per-sample attributions count as 0",
        "sign_imported": "imported as stored in the file, taken as larger = more important",
        "sign_imported-negated": "imported and negated (the file attributed the loss): larger = more important",
        "sign_mixed": "an ensemble of runs with different sign conventions",
        "sign_headattr": "computed by headattr: each input's method's own convention",
        "reason_no_samples": "a run has no per-sample attributions (scores only, e.g. imported)",
        "common": "- **Common settings**:",
        "other_common": "  - Other common settings: {items}",
        "differences": "- **Settings that differ**:",
        "no_differences": "- **Settings that differ**: none besides what is listed above.",
        "col_setting": "Setting",
        "kind_seed": "expected (seed)",
        "kind_no_effect": "cannot change the numbers",
        "kind_flagged": "⚠️ flagged",
        "h_findings": "## Key findings",
        "overall": "### {icon} Overall: **{level} consistency**",
        "verdict_line": "Mean per-layer Pearson {p} and mean per-layer Spearman {s}{over_pairs}: {rule}.",
        "over_pairs": " (means over all {n} pairs of runs)",
        "rule_very_high": "both above {t}, the threshold for very high",
        "rule_high": "both above {t}, the threshold for high",
        "rule_moderate": "both above {t}, the threshold for moderate",
        "rule_low": "not both above {t}, so low",
        "rule_undetermined": "not defined, so no verdict",
        "f_good": "- {good}/{layers} layers ({share}) have Pearson > {t}.",
        "f_global": "- All {n} heads together: Pearson {p} (95% interval {ci}, see 6.), Spearman {s}.",
        "f_overlap": "- Top-{k} overlap, mean per layer: {o}; chance level {c}; Kuncheva index {ki}.",
        "f_trend": "- Depth: {trend}.",
        "f_reliability": "- Split-half reliability of {label} (Spearman-Brown): {lo} to {hi} over layers; "
        "{n}/{layers} layers below {target}.",
        "f_predicted": "- From within-run reliability, the expected mean per-layer Pearson between runs is {pred}; "
        "measured: {obs}.",
        "pair_heading": "#### {a} vs {b}",
        "h_pairwise": "## Pairwise consistency",
        "pairwise_intro": "{n} runs give {pairs} pairs. Matrices of the headline metrics (the diagonal is left empty):",
        "m_mean_layer_pearson": "Mean per-layer Pearson",
        "m_mean_layer_spearman": "Mean per-layer Spearman",
        "m_global_pearson": "Global Pearson",
        "m_global_spearman": "Global Spearman",
        "m_mean_layer_overlap_focus": "Mean per-layer top-{k} overlap",
        "col_metric": "Metric",
        "col_mean_pairs": "Mean over pairs",
        "col_pair": "Pair",
        "col_verdict": "Verdict",
        "h_quant": "## Quantitative metrics",
        "h_corr": "### 1. Correlation analysis",
        "col_mean": "Mean",
        "col_median": "Median",
        "col_min": "Min",
        "col_max": "Max",
        "col_std": "Std",
        "col_na": "N/A layers",
        "pearson": "Pearson",
        "spearman": "Spearman",
        "kendall": "Kendall tau-b",
        "reading": "**Reading**:",
        "r_good": "- **{good}/{layers} layers ({share})** have Pearson > {t}.",
        "r_median_above": "- The median Pearson ({median}) is above the mean ({mean}): a few low layers pull the "
        "mean down (see the least consistent layers).",
        "r_median_below": "- The median Pearson ({median}) is not above the mean ({mean}).",
        "r_undefined": "- Layers with constant scores in a run (correlation N/A, left out of the summaries): {layers}.",
        "h_global": "### 2. Global consistency",
        "col_value": "Value",
        "col_ci": "95% interval (jackknife)",
        "global_pearson": "Global Pearson",
        "global_spearman": "Global Spearman",
        "global_kendall": "Global Kendall tau-b",
        "global_note": "All {n} head scores of a run taken together (layer by layer, head by head).",
        "h_topk": "### 3. Top-K head overlap",
        "col_k": "Top-K",
        "col_layer_overlap": "Mean overlap per layer",
        "col_layer_chance": "Chance (K/{h})",
        "col_layer_kuncheva": "Kuncheva (per layer)",
        "col_global_overlap": "Global overlap",
        "col_global_chance": "Chance (K/{n})",
        "topk_note": "Overlap = |top-K of run A ∩ top-K of run B| / K; ties broken by lower (layer, head) "
        "index. N/A where K is not smaller than the number of heads compared.",
        "topk_focus": "- Top-{k} per layer: {o} against a chance level of {c} (Kuncheva index {ki}; 0 = chance).",
        "topk_na": "- K >= {h}: not defined per layer (a layer has {h} heads); only the global overlap is given.",
        "h_dist": "### 4. Score distribution",
        "d_mean": "Mean",
        "d_median": "Median",
        "d_std": "Std",
        "d_min": "Min",
        "d_max": "Max",
        "d_cmax": "Completeness error, max abs",
        "d_cmean": "Completeness error, mean abs",
        "d_crel": "Completeness error / gap (total)",
        "d_cpath": "Completeness error / gap, largest path",
        "d_nodes": "IG nodes per path: median / 90th pct / max",
        "dist_note": "Completeness error: sum of a layer's head attributions minus the gap J(1) - J(baseline), "
        'per masked variant (run.json diagnostics). "Total" divides the summed absolute errors by the summed '
        'absolute gaps (the number the threshold uses); "largest path" is the largest per-path ratio over '
        "paths whose gap is at least 1% of the run's median gap (smaller gaps would make the ratio explode).",
        "h_chance": "### 5. Chance levels",
        "chance_text": "Two top-K sets drawn at random from N heads share K/N of their members on average (the "
        "mean of the hypergeometric distribution, K·K/N heads, divided by K). The Kuncheva index "
        "(r·N - K²)/(K·(N - K)), with r shared heads, is 0 at chance and 1 for identical sets.",
        "col_chance_layer": "Per layer (N = {h})",
        "col_chance_global": "Global (N = {n})",
        "h_boot": "### 6. Uncertainty (jackknife)",
        "boot_text": "Delete-one jackknife over the samples of both runs: each statistic is recomputed with one "
        "sample of one run left out ({n} recomputations per statistic), the variance on Fisher's z scale is the "
        "sum over the two runs of (n-1)/n · Σ(z_i - z̄)² less the interaction of the two runs' noises (counted in both; "
        "estimated with one sample of each run left out), and the interval is z ± t(df)·SE transformed back "
        "(Welch-Satterthwaite df). It is centred on the estimate and covers the expected between-run value at "
        "these sample counts (the mean over repeated pairs of runs; measured coverage in docs/compare.md). "
        "Top-K overlaps get no interval: they change in steps, and the jackknife does not estimate their "
        "variance.",
        "boot_off": "Intervals skipped (--no-intervals).",
        "boot_na": "No intervals: {reason}.",
        "col_stat": "Statistic",
        "col_estimate": "Estimate",
        "col_se": "SE (Fisher z)",
        "col_df": "df",
        "b_global_pearson": "Global Pearson",
        "b_global_spearman": "Global Spearman",
        "b_mean_layer_pearson": "Mean per-layer Pearson",
        "b_mean_layer_spearman": "Mean per-layer Spearman",
        "h_layers": "## Per-layer analysis",
        "h_best": "### Most consistent layers",
        "h_worst": "### Least consistent layers",
        "col_layer": "Layer",
        "col_topk_overlap": "Top-{k} overlap",
        "layer_name": "Layer {i}",
        "in_bands": "**Bands**: {items}.",
        "worst_note": "**Lowest**: layer {layer} has Pearson {p} and top-{k} overlap {o} (chance {c}).",
        "h_trend": "### Layer trend",
        "col_band": "Band",
        "col_layers": "Layers",
        "col_mean_pearson": "Mean Pearson",
        "col_mean_spearman": "Mean Spearman",
        "col_mean_overlap": "Mean top-{k} overlap",
        "col_good": "Layers > {t}",
        "col_needed": "Samples for reliability {target}",
        "band_shallow": "shallow",
        "band_middle": "middle",
        "band_deep": "deep",
        "band_custom": "layers {first}-{last}",
        "band_generic": "layers {first}-{last}",
        "trend_rises": "consistency rises with depth (Spearman of layer index vs per-layer Pearson ρ = {rho}, p = {p})",
        "trend_falls": "consistency falls with depth (Spearman of layer index vs per-layer Pearson ρ = {rho}, p = {p})",
        "trend_none": "no significant trend with depth (Spearman of layer index vs per-layer Pearson "
        "ρ = {rho}, p = {p}, not below {alpha})",
        "trend_undetermined": "trend not defined (fewer than three layers with a correlation)",
        "bands_increasing": "Band means increase from the first band to the last.",
        "bands_decreasing": "Band means decrease from the first band to the last.",
        "bands_mixed": "Band means do not change monotonically.",
        "h_reliability": "## Reliability within each run (split-half)",
        "rel_text": "Each run's samples are split at random into two halves of {half} ({splits} splits, seed "
        "{seed}); the correlation r of the half-means is averaged over splits and corrected to the full "
        "run with Spearman-Brown (2r/(1+r) for equal halves). The projected number of samples for "
        "reliability {target} is N·R(1-r)/(r(1-R)) (Spearman-Brown prophecy). Where the half correlation is "
        "r <= 0 the correction is undefined (it would leave [-1, 1]): the cell says N/A with the raw half "
        "correlation, and no sample count can be projected. Two runs "
        'with reliabilities r_A and r_B are expected to correlate at √(r_A·r_B) ("expected").',
        "rel_na_negative": "N/A (half r = {r})",
        "rel_na_samples": "N/A (scores only)",
        "col_rel": "Reliability {label}",
        "col_need": "Samples needed {label}",
        "col_expected": "Expected Pearson",
        "col_observed": "Measured Pearson",
        "global_row": "All heads",
        "h_recs": "## Practical recommendations",
        "recs_intro": "Each item is a documented rule applied to the numbers above (see the definitions below).",
        "h_ok": "### ✅ Supported by the measurements",
        "h_caution": "### ⚠️ Needs care",
        "none": "- None.",
        "rec_all_layers_consistent": "- **Single run reproducible**: every one of the {layers} layers has "
        "Pearson > {t} between runs (lowest {min}).",
        "rec_layers_below_threshold": "- **Layers at or below Pearson {t}** (lowest Pearson over pairs): {items}. "
        "Their head ranking from a "
        "single run is less reproducible: average several seeds or add samples before relying on it.",
        "rec_reliability_met": "- **Enough samples**: every layer reaches reliability {target} with {n} samples "
        "(lowest {min}).",
        "rec_more_samples": "- **More samples for layers {layers_list}** ({band}): reliability below {target} at "
        "{n} samples; projected **{needed} samples** to reach it.",
        "rec_no_signal_layers": "- **No measurable signal in layers {layers}**: split-half reliability <= 0 or N/A "
        "(constant scores) in some run; head differences there are within sample noise, and no sample count can be "
        "projected from these runs.",
        "rec_ensemble_helps": "- **Ensemble**: pooling all {runs} runs ({total} samples, `headattr ensemble`) is "
        "projected to bring layers {layers} (projected reliability) to >= {target}.",
        "rec_ensemble_short": "- **Ensemble not enough**: pooling all {runs} runs ({total} samples) is projected "
        "to leave layers {layers} (projected reliability) below {target}.",
        "rec_stable_top_k": "- **Stable head selection**: global top-K overlap >= {t} in every pair for {items}; "
        "selecting (e.g. pruning) these top-K heads from one run gives nearly the same heads.",
        "rec_unstable_top_k": "- **Less stable head selection**: global top-K overlap below {t} for {items}; "
        "check such selections with another seed or an ensemble.",
        "rec_scores_only_runs": "- **Scores-only runs** ({runs}): no per-sample attributions, so their "
        "split-half reliability and the intervals of their pairs are N/A; the reliability rules use the other runs.",
        "rec_config_differences": "- **Settings differ besides the seeds**: {keys}; part of the disagreement may "
        "come from these settings rather than from the random draws.",
        "rec_shared_samples": "- **Shared samples**: {items}; agreement there is partly agreement on the same data.",
        "shared_item": "{a} and {b} share {count}",
        "rec_completeness_ok": "- **Quadrature accurate enough**: completeness error is at most {max} of "
        "J(1) - J(baseline) (threshold {rtol}).",
        "rec_completeness_high": "- **Integrate more accurately** (lower --ig-tol or raise --ig-max-steps; "
        "with the fixed rule, --ig-tol 0, raise --ig-steps): completeness error above {rtol} of "
        "J(1) - J(baseline) in {items}.",
        "h_conclusion": "## Conclusion",
        "conclusion": "The head scores of these runs agree with **{level}** consistency (mean per-layer Pearson "
        "{p}, Spearman {s}, top-{k} overlap {o} against a chance level of {c}). {good}/{layers} layers "
        "have Pearson > {t}{every}.",
        "every_pair": " in every pair",
        "conclusion_reliability": "Reaching reliability {target} in every layer takes a projected {needed} "
        "samples per run (currently {n}).",
        "conclusion_reliability_met": "Every layer already reaches reliability {target} at {n} samples.",
        "conclusion_figure": "Figure `{file}` shows runs {a} and {b}: per-layer correlations with the threshold, "
        "all head scores of one run against the other, top-K overlap against chance, both score heatmaps "
        "and the split-half reliability per layer.",
        "h_definitions": "## Definitions and thresholds",
        "def_verdict": "- Verdict: very high when mean per-layer Pearson and Spearman both exceed {vh}; high when "
        "both exceed {h}; moderate when both exceed {m}; low otherwise.",
        "def_good": "- Good layer: Pearson strictly above {t} (--good-threshold); N/A counts as not good.",
        "def_summary": "- Summaries over layers: mean, median, min, max, population std of the defined values.",
        "def_ties": "- Top-K: highest scores first; ties broken by lower (layer, head) index.",
        "def_trend": "- Trend: significant when p < {alpha}.",
        "def_stable": "- Stable top-K: global overlap >= {t} in every pair.",
        "def_completeness": "- Completeness: summed |error| / summed |J(1) - J(baseline)| <= {rtol}.",
        "generated": "**Generated**: {created} by headattr {version}",
        "figure": "**Figure**: `{file}`",
        "level_very_high": "very high",
        "level_high": "high",
        "level_moderate": "moderate",
        "level_low": "low",
        "level_undetermined": "undetermined",
    },
    "zh": {
        "title": "# {model} 归因结果一致性分析报告",
        "h_config": "## 实验配置",
        "model": "- **模型**: {name}（配置哈希 `{hash}`，{layers} 层 x {heads} 头）",
        "method": "- **归因方法**: {label}（各运行的设置见下）",
        "methods_differ": "- ⚠️ **对比的是不同方法的运行**: {items}。它们的分数衡量的是不同的量，下面的一致性是方法"
        "之间的一致性，而不是同一方法的可复现性。",
        "origins_differ": "- ⚠️ **对比的运行来源不同**: {items}。headattr 不知道导入的分数是如何计算的；若由其他方法"
        "计算，下面的一致性是方法之间的一致性，而不是同一方法的可复现性。",
        "method_item": "{label}：{method}",
        "method_sep": "；",
        "runs": "- **对比组**:",
        "run_line": "  - **{label}**: `{path}`：{seeds}；{samples} 个样本 x {variants} 个 mask 变体",
        "run_line_imported": "  - **{label}**: `{path}`：导入自 `{source}`，仅有分数（无逐样本归因）",
        "run_method": "    - 方法：{method}",
        "run_sign": "    - 分数符号：{sign}",
        "label_imported": "导入的分数",
        "label_mixed": "混合集成",
        "method_imported": "并非由 headattr 计算：分数导入自 adaptive-dllm 的 `head_importance.pt`，其计算方式取决于"
        "生成该文件的程序",
        "method_mixed": "由方法或来源不同的运行集成而来（config `method`：{methods}）",
        "method_unknown": "`{name}`，本版本 headattr 不认识的方法",
        "method_inputs_differ": "{label}；集成的各输入运行在以下设置上不同：{items}",
        "method_unreadable": "{label}，其设置本版本 headattr 无法读回（{error}）",
        "post_abs": "；后处理为 `abs`：分数是逐样本归因绝对值的平均（只看大小，不看符号）",
        "post_relu": "；后处理为 `relu`：逐样本归因为负时按 0 计",
        "sign_imported": "按文件原样导入，视为越大越重要",
        "sign_imported-negated": "导入时取负（文件归因的是 loss）：越大越重要",
        "sign_mixed": "由符号约定不同的运行集成而来",
        "sign_headattr": "由 headattr 计算：各输入运行所用方法各自的符号约定",
        "reason_no_samples": "有运行没有逐样本归因（仅有分数，例如导入的结果）",
        "common": "- **共同参数**:",
        "other_common": "  - 其他共同参数: {items}",
        "differences": "- **不同的参数**:",
        "no_differences": "- **不同的参数**: 除上述外无。",
        "col_setting": "参数",
        "kind_seed": "预期（随机种子）",
        "kind_no_effect": "不影响数值",
        "kind_flagged": "⚠️ 需注意",
        "h_findings": "## 核心发现",
        "overall": "### {icon} 总体评估: **{level}的一致性**",
        "verdict_line": "逐层 Pearson 平均 {p}，逐层 Spearman 平均 {s}{over_pairs}：{rule}。",
        "over_pairs": "（全部 {n} 组两两对比的平均）",
        "rule_very_high": "二者均高于 {t}，即“非常高”的阈值",
        "rule_high": "二者均高于 {t}，即“高”的阈值",
        "rule_moderate": "二者均高于 {t}，即“中等”的阈值",
        "rule_low": "未能二者均高于 {t}，因此为“低”",
        "rule_undetermined": "无定义，无法判定",
        "f_good": "- {good}/{layers} 层（{share}）的 Pearson > {t}。",
        "f_global": "- 全部 {n} 个头合并：Pearson {p}（95% 区间 {ci}，见第 6 节），Spearman {s}。",
        "f_overlap": "- 逐层 Top-{k} 平均重叠率：{o}；随机水平 {c}；Kuncheva 指数 {ki}。",
        "f_trend": "- 层深：{trend}。",
        "f_reliability": "- {label} 的运行内分半信度（Spearman-Brown 校正）：各层在 {lo} 到 {hi} 之间；"
        "{n}/{layers} 层低于 {target}。",
        "f_predicted": "- 由运行内信度推算的跨运行逐层 Pearson 期望平均值为 {pred}；实测：{obs}。",
        "pair_heading": "#### {a} 对比 {b}",
        "h_pairwise": "## 两两一致性",
        "pairwise_intro": "{n} 个运行共 {pairs} 组两两对比。主要指标矩阵（对角线留空）：",
        "m_mean_layer_pearson": "逐层 Pearson 平均",
        "m_mean_layer_spearman": "逐层 Spearman 平均",
        "m_global_pearson": "全局 Pearson",
        "m_global_spearman": "全局 Spearman",
        "m_mean_layer_overlap_focus": "逐层 Top-{k} 平均重叠率",
        "col_metric": "指标",
        "col_mean_pairs": "各组平均",
        "col_pair": "对比组",
        "col_verdict": "评估",
        "h_quant": "## 定量指标",
        "h_corr": "### 1. 相关系数分析",
        "col_mean": "平均值",
        "col_median": "中位数",
        "col_min": "最小值",
        "col_max": "最大值",
        "col_std": "标准差",
        "col_na": "N/A 层数",
        "pearson": "Pearson 相关",
        "spearman": "Spearman 秩相关",
        "kendall": "Kendall tau-b",
        "reading": "**解读**:",
        "r_good": "- **{good}/{layers} 层（{share}）** 达到 Pearson > {t}。",
        "r_median_above": "- Pearson 中位数（{median}）高于平均值（{mean}）："
        "少数低一致性的层拉低了平均值（见一致性较低的层）。",
        "r_median_below": "- Pearson 中位数（{median}）不高于平均值（{mean}）。",
        "r_undefined": "- 分数为常数的层（相关系数 N/A，不计入统计）：{layers}。",
        "h_global": "### 2. 全局一致性",
        "col_value": "数值",
        "col_ci": "95% 区间（刀切法）",
        "global_pearson": "全局 Pearson 相关",
        "global_spearman": "全局 Spearman 相关",
        "global_kendall": "全局 Kendall tau-b",
        "global_note": "将一次运行的全部 {n} 个头的分数合在一起计算（逐层、逐头）。",
        "h_topk": "### 3. Top-K 头重叠率",
        "col_k": "Top-K",
        "col_layer_overlap": "逐层平均重叠率",
        "col_layer_chance": "随机水平 (K/{h})",
        "col_layer_kuncheva": "Kuncheva（逐层）",
        "col_global_overlap": "全局重叠率",
        "col_global_chance": "随机水平 (K/{n})",
        "topk_note": "重叠率 = |A 的 Top-K ∩ B 的 Top-K| / K；分数相同时按 (层, 头) 序号较小者优先。"
        "K 不小于参与比较的头数时为 N/A。",
        "topk_focus": "- 逐层 Top-{k}：{o}，随机水平为 {c}（Kuncheva 指数 {ki}；0 = 随机水平）。",
        "topk_na": "- K >= {h}：逐层无定义（每层只有 {h} 个头），只给出全局重叠率。",
        "h_dist": "### 4. 分数分布统计",
        "d_mean": "均值",
        "d_median": "中位数",
        "d_std": "标准差",
        "d_min": "最小值",
        "d_max": "最大值",
        "d_cmax": "完备性误差，最大绝对值",
        "d_cmean": "完备性误差，平均绝对值",
        "d_crel": "完备性误差 / 差值（总和）",
        "d_cpath": "完备性误差 / 差值，最大单条路径",
        "d_nodes": "每条路径的 IG 节点数：中位数 / 90 分位 / 最大",
        "dist_note": "完备性误差：每个 mask 变体中，一层所有头归因之和减去差值 J(1) - J(baseline)（来自 run.json "
        "diagnostics）。“总和”为绝对误差总和除以绝对差值总和（阈值所用的数值）；“最大单条路径”为差值不小于该运行"
        "差值中位数 1% 的路径中最大的单条比值（差值更小的路径会使比值失去意义）。",
        "h_chance": "### 5. 随机水平",
        "chance_text": "从 N 个头中随机抽取的两个 Top-K 集合平均共享 K/N 的成员（超几何分布的期望 K·K/N 个头，"
        "除以 K）。"
        "Kuncheva 指数 (r·N - K²)/(K·(N - K))（r 为共享头数）在随机水平时为 0，完全相同时为 1。",
        "col_chance_layer": "逐层 (N = {h})",
        "col_chance_global": "全局 (N = {n})",
        "h_boot": "### 6. 不确定性（刀切法区间）",
        "boot_text": "对两个运行的样本做留一刀切法（delete-one jackknife）：每次去掉其中一个运行的一个样本"
        "并重新计算统计量（每个统计量共 {n} 次），在 Fisher z 尺度上方差为两个运行各自 "
        "(n-1)/n · Σ(z_i - z̄)² 之和减去两个运行噪声的交互项（两项中各含一次；"
        "由同时去掉两个运行各一个样本估计），区间为 z ± t(df)·SE 再变换回相关系数"
        "（Welch-Satterthwaite 自由度）。区间以估计值为中心，"
        "覆盖的是在当前样本数下跨运行统计量的期望值"
        "（重复成对运行的平均；实测覆盖率见 docs/compare.md）。"
        "Top-K 重叠率不给出区间：它随分数阶跃变化，刀切法无法估计其方差。",
        "boot_off": "已跳过区间（--no-intervals）。",
        "boot_na": "无区间：{reason}。",
        "col_stat": "统计量",
        "col_estimate": "估计值",
        "col_se": "标准误（Fisher z）",
        "col_df": "自由度",
        "b_global_pearson": "全局 Pearson",
        "b_global_spearman": "全局 Spearman",
        "b_mean_layer_pearson": "逐层 Pearson 平均",
        "b_mean_layer_spearman": "逐层 Spearman 平均",
        "h_layers": "## 逐层分析",
        "h_best": "### 一致性最高的层",
        "h_worst": "### 一致性较低的层",
        "col_layer": "层",
        "col_topk_overlap": "Top-{k} 重叠",
        "layer_name": "Layer {i}",
        "in_bands": "**所在层段**: {items}。",
        "worst_note": "**最低**: Layer {layer} 的 Pearson 为 {p}，Top-{k} 重叠为 {o}（随机水平 {c}）。",
        "h_trend": "### 层级趋势",
        "col_band": "层段",
        "col_layers": "层",
        "col_mean_pearson": "Pearson 平均",
        "col_mean_spearman": "Spearman 平均",
        "col_mean_overlap": "Top-{k} 平均重叠",
        "col_good": "Pearson > {t} 的层数",
        "col_needed": "信度 {target} 所需样本数",
        "band_shallow": "浅层",
        "band_middle": "中层",
        "band_deep": "深层",
        "band_custom": "Layer {first}-{last}",
        "band_generic": "Layer {first}-{last}",
        "trend_rises": "一致性随层数加深而上升（层序号与逐层 Pearson 的 Spearman ρ = {rho}，p = {p}）",
        "trend_falls": "一致性随层数加深而下降（层序号与逐层 Pearson 的 Spearman ρ = {rho}，p = {p}）",
        "trend_none": "一致性与层深无显著关系（层序号与逐层 Pearson 的 Spearman ρ = {rho}，p = {p}，未低于 {alpha}）",
        "trend_undetermined": "无法判断趋势（有相关系数的层少于三个）",
        "bands_increasing": "各层段平均值由浅至深单调上升。",
        "bands_decreasing": "各层段平均值由浅至深单调下降。",
        "bands_mixed": "各层段平均值不是单调变化的。",
        "h_reliability": "## 运行内可靠性（分半信度）",
        "rel_text": "每个运行的样本被随机分成两半，每半 {half} 个（{splits} 次随机划分，"
        "种子 {seed}）；两半均值的相关 r "
        "在各次划分上取平均，并用 Spearman-Brown 公式校正到完整运行（等分时为 2r/(1+r)）。达到信度 {target} "
        "所需的样本数为 N·R(1-r)/(r(1-R))（Spearman-Brown 预测公式）。分半相关 r <= 0 时校正公式无定义（结果会超出 "
        "[-1, 1]）：表中记为 N/A 并给出原始分半相关，也无法推算所需样本数。信度分别为 r_A 与 r_B "
        "的两个运行，其相关的期望值为 √(r_A·r_B)（“期望”）。",
        "rel_na_negative": "N/A（分半 r = {r}）",
        "rel_na_samples": "N/A（仅有分数）",
        "col_rel": "信度 {label}",
        "col_need": "所需样本数 {label}",
        "col_expected": "期望 Pearson",
        "col_observed": "实测 Pearson",
        "global_row": "全部头",
        "h_recs": "## 实际应用建议",
        "recs_intro": "每一条都是对上述数值应用的成文规则（见下方定义）。",
        "h_ok": "### ✅ 可以安全进行的操作",
        "h_caution": "### ⚠️ 需要注意的场景",
        "none": "- 无。",
        "rec_all_layers_consistent": "- **单次运行即可复现**: 全部 {layers} 层的跨运行 Pearson 均 > {t}（最低 {min}）。"
        "",
        "rec_layers_below_threshold": "- **Pearson 不高于 {t} 的层**（各组对比中的最低 Pearson）: {items}。"
        "这些层单次运行得到的头排序可复现性较低："
        "依赖它们之前，建议使用多个种子的平均结果或增加样本数。",
        "rec_reliability_met": "- **样本数足够**: 每一层在 {n} 个样本时均达到信度 {target}（最低 {min}）。",
        "rec_more_samples": "- **Layer {layers_list}（{band}）需要更多样本**: 在 {n} 个样本时信度低于 {target}；"
        "预计需要 **{needed} 个样本**。",
        "rec_no_signal_layers": "- **Layer {layers} 无可测信号**: 某个运行中分半信度 <= 0 或为 N/A（分数为常数）；"
        "这些层的头间差异淹没在样本噪声中，"
        "无法由这些运行推算所需样本数。",
        "rec_ensemble_helps": "- **多种子集成**: 合并全部 {runs} 个运行（{total} 个样本，`headattr ensemble`）预计可使 "
        "Layer {layers}（括号内为预计信度）达到信度 >= {target}。",
        "rec_ensemble_short": "- **集成仍不足**: 合并全部 {runs} 个运行（{total} 个样本）后，预计 Layer {layers}"
        "（括号内为预计信度）的信度仍低于 {target}。",
        "rec_stable_top_k": "- **头选择稳定**: 在每一组对比中，{items} 的全局 Top-K 重叠率 >= {t}；"
        "据单次运行选出（例如剪枝）这些 Top-K 头，结果几乎相同。",
        "rec_unstable_top_k": "- **头选择较不稳定**: {items} 的全局 Top-K 重叠率低于 {t}；"
        "建议用其他种子或集成结果复核。",
        "rec_scores_only_runs": "- **仅有分数的运行**（{runs}）：没有逐样本归因，因此其分半信度以及相关对比的区间均为 "
        "N/A；信度相关的规则只使用其他运行。",
        "rec_config_differences": "- **除种子外参数不同**: {keys}；部分差异可能来自这些参数而非随机抽样。",
        "rec_shared_samples": "- **共享样本**: {items}；这部分一致性部分来自相同的数据。",
        "shared_item": "{a} 与 {b} 共享 {count} 个",
        "rec_completeness_ok": "- **积分精度足够**: 完备性误差至多为 J(1) - J(baseline) 的 {max}（阈值 {rtol}）。",
        "rec_completeness_high": "- **提高积分精度**（降低 --ig-tol 或提高 --ig-max-steps；固定规则 --ig-tol 0 时"
        "增加 --ig-steps）: 以下运行的完备性误差超过 J(1) - J(baseline) 的 {rtol}："
        "{items}。",
        "h_conclusion": "## 结论",
        "conclusion": "这些运行的头重要性分数表现出**{level}的一致性**（逐层 Pearson 平均 {p}，Spearman {s}，"
        "Top-{k} 重叠率 {o}，随机水平 {c}）。{good}/{layers} 层的 Pearson > {t}{every}。",
        "every_pair": "（每一组对比中）",
        "conclusion_reliability": "要使每一层都达到信度 {target}，预计每个运行需要 {needed} 个样本（当前 {n} 个）。",
        "conclusion_reliability_met": "当前 {n} 个样本下，每一层均已达到信度 {target}。",
        "conclusion_figure": "图 `{file}` 展示运行 {a} 与 {b}：逐层相关系数与阈值、两次运行全部头分数的散点图、Top-K "
        "重叠率与随机水平、两组分数热图以及逐层分半信度。",
        "h_definitions": "## 指标定义与阈值",
        "def_verdict": "- 评估等级：逐层 Pearson 与 Spearman 平均值均超过 {vh} 为非常高；均超过 {h} 为高；均超过 {m} "
        "为中等；否则为低。",
        "def_good": "- 合格层：Pearson 严格大于 {t}（--good-threshold）；N/A 不计为合格。",
        "def_summary": "- 跨层统计：对有定义的值计算平均值、中位数、最小值、最大值与总体标准差。",
        "def_ties": "- Top-K：分数从高到低；分数相同时 (层, 头) 序号较小者优先。",
        "def_trend": "- 趋势：p < {alpha} 时视为显著。",
        "def_stable": "- 稳定的 Top-K：每一组对比中全局重叠率 >= {t}。",
        "def_completeness": "- 完备性：|误差| 总和 / |J(1) - J(baseline)| 总和 <= {rtol}。",
        "generated": "**报告生成时间**: {created}，headattr {version}",
        "figure": "**可视化**: `{file}`",
        "level_very_high": "非常高",
        "level_high": "高",
        "level_moderate": "中等",
        "level_low": "低",
        "level_undetermined": "无法判定",
    },
}

COMMON_KEYS = {
    "en": {
        "samples": "Samples",
        "mask_probs": "Mask probabilities",
        "mask_samples_per_prob": "Masked draws per probability",
        "max_length": "Max sequence length",
        "loss_normalize": "Loss normalization",
        "postprocess": "Post-processing",
        "data": "Data",
    },
    "zh": {
        "samples": "样本数",
        "mask_probs": "Mask probabilities",
        "mask_samples_per_prob": "每个概率的 mask 次数",
        "max_length": "最大序列长度",
        "loss_normalize": "损失归一化",
        "postprocess": "后处理",
        "data": "数据",
    },
}

LEVEL_ICONS = {"very_high": "🟢", "high": "🟢", "moderate": "🟡", "low": "🔴", "undetermined": "⚪"}


# ---------------------------------------------------------------- number formatting


def fmt_corr(x: float | None) -> str:
    """A correlation with 4 decimals, or N/A."""
    return NA if x is None else f"{x:.4f}"


def fmt_pct(x: float | None) -> str:
    """A fraction as a percentage with 1 decimal, or N/A."""
    return NA if x is None else f"{100 * x:.1f}%"


def fmt_score(x: float | None) -> str:
    """A head score: 6 decimals, or scientific notation when that would print as zero."""
    if x is None:
        return NA
    return f"{x:.6f}" if x == 0 or abs(x) >= 1e-4 else f"{x:.3e}"


def fmt_p(x: float | None) -> str:
    """A p-value with 3 significant digits, or N/A."""
    return NA if x is None else f"{x:.3g}"


def fmt_int(x: int | None) -> str:
    return NA if x is None else str(x)


def fmt_interval(iv: Interval | None, fmt: Callable[[float | None], str] = fmt_corr) -> str:
    if iv is None or iv.low is None or iv.high is None:
        return NA
    return f"[{fmt(iv.low)}, {fmt(iv.high)}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines (shared by the compare report and `headattr methods`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _layers_text(layers: list[int]) -> str:
    return ", ".join(str(i) for i in layers)


# ---------------------------------------------------------------- the renderer


class _Renderer:
    """Builds the report section by section from one string table."""

    def __init__(self, comp: Comparison, lang: str) -> None:
        if lang not in STRINGS:
            raise HeadattrError(f"unknown report language {lang!r}; choose one of {', '.join(LANGS)}")
        self.c = comp
        self.lang = lang
        self.s = STRINGS[lang]
        self.k = comp.settings.focus_k
        self.multi = len(comp.pairs) > 1

    def t(self, key: str, **kw: Any) -> str:
        return self.s[key].format(**kw)

    def label(self, i: int) -> str:
        return self.c.runs[i].label

    def band_name(self, name: str, first: int, last: int) -> str:
        key = f"band_{name}" if f"band_{name}" in self.s else "band_generic"
        text = self.t(key, first=first, last=last)
        return text if key in ("band_custom", "band_generic") else f"{text} ({first}-{last})"

    def level(self, level: str) -> str:
        return self.s[f"level_{level}"]

    def pair_blocks(self, body: Callable[[PairMetrics], list[str]]) -> list[str]:
        """`body` for every pair, under a pair heading when there are several pairs."""
        lines: list[str] = []
        for p in self.c.pairs:
            if self.multi:
                lines += [self.t("pair_heading", a=self.label(p.a), b=self.label(p.b)), ""]
            lines += body(p) + [""]
        return lines

    # -------------------------------------------------------- sections

    def render(self) -> str:
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
        names = COMMON_KEYS[self.lang]
        # a method's own settings are in its runs' method lines, in words
        owned = set().union(*(METHODS[r.method].setting_keys() for r in c.runs if r.method in METHODS))
        common = {k: v for k, v in c.common_config.items() if k not in owned}
        for key, name in names.items():
            if key in common:
                lines.append(f"  - {name}: {_value(common[key])}")
        others = [f"{k}={_value(v)}" for k, v in common.items() if k not in names]
        if others:
            lines.append(self.t("other_common", items=", ".join(others)))
        if c.config_differences:
            lines += [self.t("differences"), ""]
            header = [self.t("col_setting")] + [r.label for r in c.runs] + [""]
            rows = [
                [f"`{d['key']}`"] + [_value(v) for v in d["values"]] + [self.s[f"kind_{d['kind']}"]]
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
            methods = _value(r.config.get("method", "gate-ig"))
            return self.t("method_mixed", methods=methods), self.t("sign_" + r.sign)
        if r.method not in METHODS:  # a run.json from a newer headattr: its sign is its method's, unknown here
            return self.t("method_unknown", name=r.method), NA
        cls = METHODS[r.method]
        try:
            config = {**r.config, "method": r.method}
            method = method_from_meta(config).describe(self.lang, (r.completeness or {}).get("nodes"))
        except (HeadattrError, TypeError, ValueError) as exc:  # e.g. an ensemble whose inputs' settings differ
            keys = [k for k in sorted(cls.setting_keys()) if isinstance(r.config.get(k), list)]
            differ = ", ".join(f"{k}={_value(r.config[k])}" for k in keys)
            if differ:
                method = self.t("method_inputs_differ", label=cls.label, items=differ)
            else:
                method = self.t("method_unreadable", label=cls.label, error=str(exc))
        sign = cls.sign_text(self.lang) if r.sign == "headattr" else self.t("sign_" + r.sign)
        if r.postprocess in ("abs", "relu"):
            sign += self.t("post_" + r.postprocess)
        return method, sign

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

    def quantitative(self) -> list[str]:
        lines = [self.t("h_quant"), "", self.t("h_corr"), ""]
        lines += self.pair_blocks(self.correlation_block)
        lines += [self.t("h_global"), ""]
        lines += self.pair_blocks(self.global_block)
        lines += [self.t("h_topk"), "", self.t("topk_note"), ""]
        lines += self.pair_blocks(self.topk_block)
        lines += [self.t("h_dist"), ""] + self.distribution() + [""]
        lines += [self.t("h_chance"), ""] + self.chance() + [""]
        lines += [self.t("h_boot"), ""]
        if self.c.settings.intervals:
            n = sorted({r.num_samples for r in self.c.runs if not r.scores_only})
            n_text = "+".join(str(x) for x in n) if len(n) != 1 else f"{n[0]}+{n[0]}"
            lines += [self.t("boot_text", n=n_text), ""]
            lines += self.pair_blocks(self.intervals_block)
        else:
            lines += [self.t("boot_off"), ""]
        return lines

    def correlation_block(self, p: PairMetrics) -> list[str]:
        header = [self.t("col_metric")] + [
            self.t(k) for k in ("col_mean", "col_median", "col_min", "col_max", "col_std", "col_na")
        ]
        rows = [[f"**{self.t(key)}**"] + _summary_cells(p.summary[key]) for key in ("pearson", "spearman", "kendall")]
        lines = markdown_table(header, rows) + ["", self.t("reading")]
        s = p.summary["pearson"]
        lines.append(
            self.t(
                "r_good",
                good=p.good_count,
                layers=self.c.num_layers,
                share=fmt_pct(p.good_share),
                t=self.c.settings.good_threshold,
            )
        )
        if s.median is not None and s.mean is not None:
            key = "r_median_above" if s.median > s.mean else "r_median_below"
            lines.append(self.t(key, median=fmt_corr(s.median), mean=fmt_corr(s.mean)))
        if p.undefined_layers:
            lines.append(self.t("r_undefined", layers=_layers_text(p.undefined_layers)))
        return lines

    def global_block(self, p: PairMetrics) -> list[str]:
        g, boot = p.global_metrics, p.intervals or {}
        rows = [
            [f"**{self.t('global_pearson')}**", fmt_corr(g.pearson), fmt_interval(boot.get("global_pearson"))],
            [f"**{self.t('global_spearman')}**", fmt_corr(g.spearman), fmt_interval(boot.get("global_spearman"))],
            [f"**{self.t('global_kendall')}**", fmt_corr(g.kendall), NA],
        ]
        lines = markdown_table([self.t("col_metric"), self.t("col_value"), self.t("col_ci")], rows)
        return lines + ["", self.t("global_note", n=self.c.num_layers * self.c.num_heads)]

    def topk_block(self, p: PairMetrics) -> list[str]:
        c, g = self.c, p.global_metrics
        n_all = c.num_layers * c.num_heads
        header = [
            self.t("col_k"),
            self.t("col_layer_overlap"),
            self.t("col_layer_chance", h=c.num_heads),
            self.t("col_layer_kuncheva"),
            self.t("col_global_overlap"),
            self.t("col_global_chance", n=n_all),
            "Kuncheva",
        ]
        rows = [
            [
                f"Top-{k}",
                fmt_pct(p.overlap_summary[k].mean),
                fmt_pct(p.chance_layer[k]),
                fmt_corr(p.kuncheva_summary[k].mean),
                fmt_pct(g.overlap[k]),
                fmt_pct(g.chance[k]),
                fmt_corr(g.kuncheva[k]),
            ]
            for k in c.settings.top_k
        ]
        lines = markdown_table(header, rows) + ["", self.t("reading")]
        if self.k is not None:
            o, ch = p.overlap_summary[self.k].mean, p.chance_layer[self.k]
            ki = p.kuncheva_summary[self.k].mean
            lines.append(self.t("topk_focus", k=self.k, o=fmt_pct(o), c=fmt_pct(ch), ki=fmt_corr(ki)))
        if any(k >= c.num_heads for k in c.settings.top_k):
            lines.append(self.t("topk_na", h=c.num_heads))
        return lines

    def distribution(self) -> list[str]:
        runs = self.c.runs
        rows = [
            [f"**{self.t('d_' + key)}**"] + [fmt_score(r.distribution[key]) for r in runs]
            for key in ("mean", "median", "std", "min", "max")
        ]
        for key, field_name in (("d_cmax", "max_abs"), ("d_cmean", "mean_abs")):
            rows.append([f"**{self.t(key)}**"] + [fmt_score((r.completeness or {}).get(field_name)) for r in runs])
        for key, field_name in (("d_crel", "relative_total"), ("d_cpath", "max_relative")):
            rows.append([f"**{self.t(key)}**"] + [fmt_pct((r.completeness or {}).get(field_name)) for r in runs])
        nodes = [(r.completeness or {}).get("nodes") for r in runs]
        if any(nodes):  # recorded by the error-controlled quadrature: how much refinement each run needed
            rows.append([f"**{self.t('d_nodes')}**"] + [_nodes_cell(n) for n in nodes])
        return markdown_table([""] + [r.label for r in runs], rows) + ["", self.t("dist_note")]

    def chance(self) -> list[str]:
        c = self.c
        n_all = c.num_layers * c.num_heads
        p = c.pairs[0]
        rows = [[f"Top-{k}", fmt_pct(p.chance_layer[k]), fmt_pct(p.global_metrics.chance[k])] for k in c.settings.top_k]
        header = [self.t("col_k"), self.t("col_chance_layer", h=c.num_heads), self.t("col_chance_global", n=n_all)]
        return [self.t("chance_text"), ""] + markdown_table(header, rows)

    def intervals_block(self, p: PairMetrics) -> list[str]:
        if p.intervals is None:
            return [self.t("boot_na", reason=self.reason(p.intervals_note))]
        rows = []
        for key in ("global_pearson", "global_spearman", "mean_layer_pearson", "mean_layer_spearman"):
            iv = p.intervals.get(key)
            if iv is not None:
                df = NA if iv.df is None else f"{iv.df:.1f}"
                rows.append([self.t("b_" + key), fmt_corr(iv.estimate), fmt_interval(iv), fmt_corr(iv.se), df])
        header = [self.t("col_stat"), self.t("col_estimate"), self.t("col_ci"), self.t("col_se"), self.t("col_df")]
        return markdown_table(header, rows)

    def reason(self, note: str | None) -> str:
        """An N/A reason in the report's language."""
        return self.t("reason_no_samples") if note == NA_NO_SAMPLES else (note or NA)

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
                    layers_list=_layers_text(b["layers"]),
                    target=item["target"],
                    n=n,
                    needed=b["samples_needed"],
                )
                for b in item["bands"]
            ]
        if rule == "no_signal_layers":
            return [self.t("rec_" + rule, layers=_layers_text(item["layers"]))]
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


def _nodes_cell(nodes: dict[str, float] | None) -> str:
    return "N/A" if not nodes else f"{nodes['median']:g} / {nodes['p90']:g} / {nodes['max']:g}"


def _summary_cells(s: Summary) -> list[str]:
    return [fmt_corr(s.mean), fmt_corr(s.median), fmt_corr(s.min), fmt_corr(s.max), fmt_corr(s.std), str(s.n_missing)]


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return NA if v is None else str(v)


def render_report(comparison: Comparison, lang: str = "en") -> str:
    """The markdown report of `comparison` in English (`en`) or Chinese (`zh`)."""
    return _Renderer(comparison, lang).render()


# ---------------------------------------------------------------- the other outputs


def layer_metrics_csv(comp: Comparison) -> str:
    """One row per pair and layer: correlations, overlaps, Kuncheva, reliabilities; empty cell = N/A."""
    ks = comp.settings.top_k
    header = ["run_a", "run_b", "layer", "band", "pearson", "spearman", "kendall"]
    header += [f"overlap_top{k}" for k in ks] + [f"kuncheva_top{k}" for k in ks]
    header += ["reliability_a", "reliability_b", "samples_needed_a", "samples_needed_b", "expected_pearson"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for p in comp.pairs:
        ra, rb = comp.runs[p.a].reliability, comp.runs[p.b].reliability
        for m in p.layers:
            band = _band_of(p, m.layer)
            row = [comp.runs[p.a].label, comp.runs[p.b].label, m.layer, band, m.pearson, m.spearman, m.kendall]
            row += [m.overlap[k] for k in ks] + [m.kuncheva[k] for k in ks]
            row += [
                ra.full_layer[m.layer],
                rb.full_layer[m.layer],
                ra.needed_layer[m.layer],
                rb.needed_layer[m.layer],
                p.predicted_pearson[m.layer],
            ]
            writer.writerow(["" if x is None else repr(x) if isinstance(x, float) else x for x in row])
    return buf.getvalue()


def _band_of(p: PairMetrics, layer: int) -> str:
    """The band a layer belongs to (its name, or FIRST-LAST for custom bands); empty if none."""
    for b in p.bands:
        if b.first <= layer <= b.last:
            return b.name if b.name != "custom" else f"{b.first}-{b.last}"
    return ""


def write_outputs(
    comparison: Comparison, out: str | Path, lang: str = "en", overwrite: bool = False
) -> dict[str, Path]:
    """Write report.md, metrics.json, layer_metrics.csv and consistency_analysis.png into `out`."""
    if lang not in LANGS:
        raise HeadattrError(f"unknown report language {lang!r}; choose one of {', '.join(LANGS)}")
    out = prepare_output_dir(Path(out), overwrite, owned=OUTPUT_FILES)
    paths = {name: out / name for name in OUTPUT_FILES}
    atomic_write_json(paths[METRICS_FILE], comparison.to_dict())
    atomic_write_text(paths[LAYER_CSV_FILE], layer_metrics_csv(comparison))
    atomic_write_bytes(paths[FIGURE_FILE], plot_consistency(comparison, 0, 1))
    atomic_write_text(paths[REPORT_FILE], render_report(comparison, lang))
    return paths
