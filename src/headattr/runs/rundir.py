"""The run directory: what `headattr attribute` writes and every other command reads.

Layout (see README, "Output files"):

- `scores.safetensors`: `scores` [L, H] float32 (final), `attributions` [N, V, L, H] float32
  (raw signed, per sample and masked variant).
- `run.json`: configuration, model and tokenizer identity, samples, variants, diagnostics, timings,
  versions, `status`.
- `heads.csv`: layer, head, score, rank in layer, global rank (rank 1 = highest score).
- `heatmap.png`: the scores as a layers x heads image.
- `checkpoints/`: one safetensors file per finished sample while a run is in progress (for `--resume`).

Every file is written to a temporary name in the same directory and moved into place with `os.replace`,
so a reader never sees a half-written file, even after SIGKILL.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from headattr.errors import HeadattrError
from headattr.figures import plot_heatmap

RUN_FORMAT = "headattr-run"
RUN_VERSION = 1
SCORES_FILE = "scores.safetensors"
META_FILE = "run.json"
HEADS_FILE = "heads.csv"
HEATMAP_FILE = "heatmap.png"
CHECKPOINT_DIR = "checkpoints"
RUN_FILES = (SCORES_FILE, META_FILE, HEADS_FILE, HEATMAP_FILE, CHECKPOINT_DIR)

# run.json `sign`: which convention a run's scores follow; every one of them stores larger = more important
SIGNS = ("headattr", "imported", "imported-negated", "mixed")


@dataclass
class Run:
    """A run directory loaded into memory."""

    path: Path
    scores: np.ndarray  # [L, H] float32
    attributions: np.ndarray  # [N, V, L, H] float32
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return int(self.scores.shape[0])

    @property
    def has_samples(self) -> bool:
        """Whether per-sample attributions are stored (not so for scores-only runs, e.g. imported ones)."""
        return has_samples(self)

    @property
    def num_heads(self) -> int:
        return int(self.scores.shape[1])


def has_samples(run: Run) -> bool:
    """True when `run.attributions` holds at least one sample's [V, L, H] attributions."""
    a = run.attributions
    return a.ndim == 4 and a.shape[0] > 0 and a.shape[1] > 0


def run_sign(meta: dict[str, Any]) -> str:
    """The sign convention of a run's scores (one of SIGNS); runs written by `attribute` are `headattr`.

    `headattr`: computed by headattr, with the sign convention of the run's method (`run_method`; for an
    attribution of J = -loss, a head that helps scores positive; each method's `sign_text` says it exactly);
    `imported`: taken as they were in an imported file (assumed larger = more important); `imported-negated`:
    negated on import (the file attributed the loss); `mixed`: an ensemble of runs with different conventions.
    """
    sign = meta.get("sign", "headattr")
    return sign if sign in SIGNS else "headattr"


def run_method(meta: dict[str, Any]) -> str:
    """Where a run's scores come from: the name of the method that computed them (run.json `config.method`;
    runs written before `method` existed are `gate-ig`), `imported` for scores imported from a file (and
    ensembles of such runs), or `mixed` for an ensemble of runs that differ in method or origin."""
    sign = run_sign(meta)
    if sign == "mixed":
        return "mixed"
    if sign.startswith("imported") or "imported" in meta:
        return "imported"
    method = (meta.get("config") or {}).get("method", "gate-ig")
    if isinstance(method, list):  # an ensemble's inputs' values (None: a run from before `method`, so gate-ig)
        names = {m or "gate-ig" for m in method}
        return str(names.pop()) if len(names) == 1 else "mixed"
    return str(method)


def _method_label(meta: dict[str, Any]) -> str:
    """The name of the method a run's scores come from (heatmap titles)."""
    from headattr.methods import METHODS  # here, not at the top: the methods import the model code

    name = run_method(meta)
    return METHODS[name].label if name in METHODS else name


# ---------------------------------------------------------------- atomic writes


def _umask() -> int:
    """The process's umask (read by setting it and restoring it at once: POSIX has no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_dir(path: Path) -> Path:
    """Create `path` and its parents; a directory that cannot be created is a one-line `HeadattrError`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HeadattrError(f"cannot create directory {path}: {exc.strerror or exc}; choose another --out") from None
    return path


def _temp_file(path: Path) -> tuple[int, str]:
    """A new temporary file next to `path`, with the permissions an ordinary new file gets.

    `mkstemp` creates it 0600; the run files would then stay unreadable to the user's group on a shared
    cluster after the rename, so the mode is set to what `open()` would give: 0666 minus the umask.
    """
    make_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise HeadattrError(f"cannot write in {path.parent}: {exc.strerror or exc}") from None
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def _write_failed(path: Path, tmp: str, exc: BaseException) -> None:
    """Remove the temporary file; an OSError (disk full, permissions) becomes a one-line error."""
    if os.path.exists(tmp):
        os.unlink(tmp)
    if isinstance(exc, OSError):
        raise HeadattrError(f"cannot write {path}: {exc.strerror or exc}") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is either the old file or the complete new one."""
    path = Path(path)
    fd, tmp = _temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _write_failed(path, tmp, exc)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def atomic_save_tensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Save numpy arrays as safetensors, atomically (write to a temp file, then rename)."""
    path = Path(path)
    fd, tmp = _temp_file(path)
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors writes a file of its own, 0600 again
        os.replace(tmp, path)
    except BaseException as exc:
        _write_failed(path, tmp, exc)
        raise


# ---------------------------------------------------------------- output directory policy


def check_output_dir(out: Path, overwrite: bool = False, resume: bool | None = None) -> bool:
    """Raise unless `out` may be written: new, empty, or explicitly `--overwrite`n (or `--resume`d).

    `resume` is None for commands that cannot resume; their message does not offer it. Touches nothing, so
    commands call it before any slow work. Returns whether `out` holds files.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HeadattrError(f"output path {out} exists and is not a directory; choose another --out")
    _check_creatable(out)
    existing = out.is_dir() and any(out.iterdir())
    if existing and not (overwrite or resume):
        fix = "--overwrite to replace it, " + ("--resume to continue it, " if resume is not None else "")
        raise HeadattrError(
            f"output directory {out} already exists and is not empty; pass {fix}or choose another --out"
        )
    return existing


def prepare_output_dir(
    out: Path, overwrite: bool = False, resume: bool | None = None, owned: tuple[str, ...] = RUN_FILES
) -> Path:
    """`check_output_dir`, then create `out`.

    With `overwrite`, the entries a command writes (`owned`: files or folders) are removed now; anything else
    in the directory is left alone.
    """
    out = Path(out)
    existing = check_output_dir(out, overwrite, resume)
    if existing and overwrite and not resume:
        for name in owned:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    return make_dir(out)


def _check_creatable(out: Path) -> None:
    """Raise if `out` cannot be created: its nearest existing ancestor is a file, not writable, or refuses a
    new directory.

    Permissions do not tell everything (root passes every permission check, yet nothing can be created under
    /proc), so a uniquely named directory is created in the ancestor and removed at once.
    """
    ancestor = out.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor == out.absolute():
        return
    if not ancestor.is_dir():
        raise HeadattrError(f"cannot create {out}: {ancestor} is not a directory; choose another --out")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise HeadattrError(f"cannot create {out}: {ancestor} is not writable; choose another --out")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".headattr-probe-", dir=ancestor))
    except OSError as exc:
        raise HeadattrError(
            f"cannot create {out}: {ancestor} refuses it ({exc.strerror}); choose another --out"
        ) from None


# ---------------------------------------------------------------- reading and writing runs


def heads_table(scores: np.ndarray) -> list[dict[str, Any]]:
    """Rows of `heads.csv`: rank 1 is the highest score, ties broken by (layer, head) order."""
    scores = np.asarray(scores, dtype=np.float64)
    num_layers, num_heads = scores.shape
    flat = scores.reshape(-1)
    global_order = np.lexsort((np.arange(flat.size), -flat))
    global_rank = np.empty(flat.size, dtype=np.int64)
    global_rank[global_order] = np.arange(1, flat.size + 1)
    rows = []
    for layer in range(num_layers):
        order = np.lexsort((np.arange(num_heads), -scores[layer]))
        layer_rank = np.empty(num_heads, dtype=np.int64)
        layer_rank[order] = np.arange(1, num_heads + 1)
        for head in range(num_heads):
            rows.append(
                {
                    "layer": layer,
                    "head": head,
                    "score": float(np.float32(scores[layer, head])),
                    "rank_in_layer": int(layer_rank[head]),
                    "global_rank": int(global_rank[layer * num_heads + head]),
                }
            )
    return rows


def heads_csv(scores: np.ndarray) -> str:
    buf = io.StringIO()
    rows = heads_table(scores)
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "score": repr(row["score"])})
    return buf.getvalue()


def write_run(
    out: Path,
    scores: np.ndarray | torch.Tensor,
    attributions: np.ndarray | torch.Tensor,
    meta: dict[str, Any],
    heatmap: bool = True,
) -> Path:
    """Write the final files of a run directory (atomically). `out` must already be prepared."""
    out = Path(out)
    scores = np.asarray(scores, dtype=np.float32)
    attributions = np.asarray(attributions, dtype=np.float32)
    atomic_save_tensors(out / SCORES_FILE, {"scores": scores, "attributions": attributions})
    atomic_write_text(out / HEADS_FILE, heads_csv(scores))
    if heatmap:
        title = f"{_method_label(meta)} head scores: {meta.get('model', {}).get('name', '')}".rstrip(": ")
        atomic_write_bytes(out / HEATMAP_FILE, plot_heatmap(scores, title=title))
    meta = {"format": RUN_FORMAT, "version": RUN_VERSION, **meta}
    atomic_write_json(out / META_FILE, meta)
    return out


def run_meta(
    *,
    config: dict[str, Any],
    model: dict[str, Any],
    samples: list[dict[str, Any]],
    variants: list[dict[str, Any]],
    status: str = "complete",
    tokenizer: dict[str, Any] | None = None,
    data_report: dict[str, Any] | None = None,
    diagnostics: dict[str, Any] | None = None,
    timings: dict[str, Any] | None = None,
    device: dict[str, str] | None = None,
    versions: dict[str, str] | None = None,
    created: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """run.json's content, in its one layout (every writer of a run directory builds it here).

    `config` is the flat settings object (see `headattr.settings`), `model` a `ModelSpec.describe()`,
    `samples` one record per sample (index, hash, tokens, ...), `variants` the (prob, draw) of each masked
    variant, `device` {"type", "name"}. `extra` adds top-level entries (`demo`, `ensemble`, ...).
    """
    from datetime import datetime, timezone

    return {
        "status": status,
        "created": created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "model": model,
        "tokenizer": tokenizer,
        "samples": samples,
        "variants": variants,
        "data_report": data_report,
        "diagnostics": diagnostics,
        "timings": timings or {},
        **extra,
        "device": device,
        "versions": versions or {},
    }


def read_run(path: str | Path) -> Run:
    """Load a run directory written by `headattr attribute` (or `ensemble`)."""
    path = Path(path)
    if not path.is_dir():
        raise HeadattrError(f"run directory {path} does not exist; pass a directory written by `headattr attribute`")
    scores_path, meta_path = path / SCORES_FILE, path / META_FILE
    for p in (scores_path, meta_path):
        if not p.is_file():
            raise HeadattrError(
                f"{p} is missing: {path} is not a finished run directory (run or --resume `headattr attribute`)"
            )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise HeadattrError(f"cannot read {meta_path}: {exc}") from None
    if meta.get("format") != RUN_FORMAT:
        raise HeadattrError(f"{meta_path} is not a headattr run file (format {meta.get('format')!r})")
    if meta.get("status") != "complete":
        raise HeadattrError(
            f"run {path} has status {meta.get('status')!r}; finish it with `headattr attribute --resume`"
        )
    try:
        tensors = load_file(str(scores_path))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise HeadattrError(f"cannot read {scores_path}: {exc}") from None
    if "scores" not in tensors:
        raise HeadattrError(f"{scores_path} lacks the `scores` tensor")
    scores = tensors["scores"]
    if scores.ndim != 2:
        raise HeadattrError(f"{scores_path}: `scores` must be [layers, heads], got shape {tuple(scores.shape)}")
    # a scores-only run (imported) stores an empty [0, 0, L, H] `attributions` tensor or none at all
    attributions = tensors.get("attributions")
    if attributions is None or attributions.size == 0:
        attributions = np.zeros((0, 0, *scores.shape), dtype=np.float32)
    return Run(path=path, scores=scores, attributions=attributions, meta=meta)


def check_same_model(runs: Sequence[Run]) -> None:
    """Raise unless all runs come from the same model (config_hash) and have the same score shape."""
    first = runs[0]
    for run in runs:
        if run.scores.ndim != 2 or run.attributions.ndim != 4 or run.attributions.shape[2:] != run.scores.shape:
            raise HeadattrError(
                f"run {run.path}: scores {tuple(run.scores.shape)} and attributions "
                f"{tuple(run.attributions.shape)} do not fit together ([L, H] and [N, V, L, H])"
            )
        if run.attributions.shape[0] < 1 and not _scores_only_by_design(run):
            raise HeadattrError(f"run {run.path} has no samples")
        if not np.all(np.isfinite(run.scores)):
            raise HeadattrError(f"run {run.path} has non-finite scores; rerun `headattr attribute`")
        if not run.meta.get("model", {}).get("config_hash") and not _scores_only_by_design(run):
            raise HeadattrError(f"{run.path}/run.json lacks model.config_hash; it was not written by headattr")
    for run in runs[1:]:
        if run.scores.shape != first.scores.shape:
            raise HeadattrError(
                f"runs have different score shapes: {first.path} is {_shape(first)}, {run.path} is {_shape(run)}"
                "; compare runs of the same model"
            )
        ha, hb = first.meta.get("model", {}).get("config_hash"), run.meta.get("model", {}).get("config_hash")
        if ha is None or hb is None:
            continue  # a run imported without --model: only its shape identifies the model
        if ha != hb:
            raise HeadattrError(
                f"runs come from different models: {first.path} has config_hash {ha[:12]}, "
                f"{run.path} has {hb[:12]}; compare runs of the same model"
            )


def _scores_only_by_design(run: Run) -> bool:
    """Imported runs and ensembles of them have no samples and may lack the model's config hash."""
    return "imported" in run.meta or bool((run.meta.get("ensemble") or {}).get("scores_only"))


def _shape(run: Run) -> str:
    return "x".join(str(s) for s in run.scores.shape) + " (layers x heads)"
