"""The files of `headattr sparse` below the report: sparse.json and sparse.png (the report: `reports.sparse`)."""

from __future__ import annotations

import json
from pathlib import Path

from headattr.errors import HeadattrError
from headattr.sparsity.results import SparseResult

SPARSE_FILE = "sparse.json"
FIGURE_FILE = "sparse.png"


def write_outputs(result: SparseResult, out: str | Path) -> dict[str, Path]:
    """Write sparse.json and sparse.png into `out` (each atomically); returns their paths."""
    from headattr.figures import plot_sparse
    from headattr.runs.rundir import atomic_write_bytes, atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.to_dict()
    paths = {SPARSE_FILE: out / SPARSE_FILE, FIGURE_FILE: out / FIGURE_FILE}
    atomic_write_json(paths[SPARSE_FILE], summary)
    atomic_write_bytes(paths[FIGURE_FILE], plot_sparse(summary))
    return paths


def read_sparse(path: str | Path) -> SparseResult:
    """A sparse.json (or the directory holding it) back as a `SparseResult`."""
    path = Path(path)
    path = path / SPARSE_FILE if path.is_dir() else path
    if not path.is_file():
        raise HeadattrError(f"{path} does not exist; pass a sparse.json written by `headattr sparse`")
    return SparseResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
