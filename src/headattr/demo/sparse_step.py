"""Step 5 of the demo: `headattr sparse` on the built-in model.

The seed-47 scores allocate block-sparse attention (the adaptive-dllm rule); the same budget is also spent
uniformly, in inverted order and in seeded random orders, and every held-out item is generated dense and under
each allocation, with paired statistics (`sparsity`, `stats.paired`). The built-in model's prompts are a few
dozen tokens, so key blocks are 4 tokens: with 32-token blocks a prompt would be one block and nothing could be
left out.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from headattr.generation.sampling import resolve_settings
from headattr.generation.taskeval import GenerationEval
from headattr.models import ModelSpec
from headattr.pruning.samples import select_eval_samples
from headattr.reports.sparse import render_sparse, write_sparse_outputs
from headattr.runs.rundir import Run, atomic_write_text
from headattr.sparsity.evaluate import evaluate_sparse
from headattr.sparsity.results import SparseResult, build_result
from headattr.sparsity.settings import SparseEvalSettings

SETTINGS = SparseEvalSettings(selects=(0.1, 0.3), block_size=4, kernel="sdpa")


def sparse_step(
    spec: ModelSpec,
    runs: list[Run],
    generation: GenerationEval,
    eval_samples: int,
    out: Path,
    progress: bool,
    echo: Callable[[str], None],
) -> tuple[SparseResult, dict[str, Path]]:
    """Evaluate the allocations of `runs[0]`'s scores on held-out items (disjoint from every run's samples)
    and write sparse.json, sparse.png, sparse.md and sparse.zh.md under `out`."""
    selection = select_eval_samples(spec, runs[0], n=eval_samples, seed=1, exclude_runs=runs[1:])
    echo(
        f"[5/5] sparse attention from the seed-47 scores on {len(selection.samples)} held-out samples "
        f"(blocks of {SETTINGS.block_size} tokens, mean keep {', '.join(f'{s:g}' for s in SETTINGS.selects)})"
    )
    outcomes = evaluate_sparse(
        spec, runs[0].scores, selection.samples, generation.task, SETTINGS, generation=generation.settings,
        seed=generation.seed, batch_size=generation.batch_size, progress=progress,
    )  # fmt: skip
    info: dict[str, Any] = {
        "model": {"name": spec.name, "path": spec.path, "config_hash": spec.config_hash},
        "run": {"path": str(runs[0].path), "config_hash": runs[0].meta.get("model", {}).get("config_hash")},
        "eval": selection.to_dict() | {"eval_seed": 1},
        "generation": {"settings": resolve_settings(spec, generation.settings), "seed": generation.seed},
    }
    result = build_result(outcomes, SETTINGS, generation.task.name, info)
    paths = write_sparse_outputs(result, out, "en")
    paths["sparse.zh.md"] = out / "sparse.zh.md"
    atomic_write_text(paths["sparse.zh.md"], render_sparse(result.to_dict(), "zh"))
    return result, paths
