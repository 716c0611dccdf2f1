"""The files a pruning experiment writes: pruning.json, head_mask.json and the pruning-curve figure."""

from __future__ import annotations

from pathlib import Path

from headattr.pruning.results import PruneResult

PRUNING_FILE = "pruning.json"
CURVE_FILE = "pruning_curve.png"
HEAD_MASK_FILE = "head_mask.json"
PRUNE_FILES = (PRUNING_FILE, CURVE_FILE, HEAD_MASK_FILE)


def write_outputs(result: PruneResult, out: str | Path) -> dict[str, Path]:
    """Write pruning.json, pruning_curve.png and head_mask.json into `out` (each atomically)."""
    from headattr.figures import plot_pruning_curve
    from headattr.runs.rundir import atomic_write_bytes, atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in PRUNE_FILES}
    atomic_write_json(paths[PRUNING_FILE], result.to_dict())
    atomic_write_json(paths[HEAD_MASK_FILE], result.head_mask())
    atomic_write_bytes(paths[CURVE_FILE], plot_pruning_curve(result))
    return paths
