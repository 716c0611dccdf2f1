"""Head scores in and out: `headattr export` and `headattr import`.

Export formats of a run's [L, H] scores (every headattr score is "larger = more important"):

- `adaptive-dllm`: the `head_importance.pt` layout of the adaptive sparse-attention system for diffusion LMs,
  `{"importance_scores": {layer (int): FloatTensor[H]}, "metadata": {...}}`, loadable with
  `torch.load(path, weights_only=True)` (plain dicts, ints, strings and float tensors only). `metadata` names
  headattr, the run, the model and the sign convention.
- `npy`: [L, H] float32 (`numpy.load`). `csv`: the heads table of `heads.csv`. `json`: scores and identity.
- `head-mask`: [L, H] 0/1 masks (1 = keep) keeping the top fraction(s) `keep` of heads, over all heads or
  per layer, as `<out>.safetensors` (one uint8 tensor `keep_<fraction>` each) and `<out>.json`. Heads kept:
  round(fraction * count), halves up, the highest scores first, ties by (layer, head) order: exactly the
  heads `prune`'s `most` order would remove first.

Import: a `head_importance.pt` becomes a scores-only run directory. It is read with
`torch.load(..., weights_only=True)` only, which unpickles nothing but tensors and plain containers, so a
file carrying code runs none of it; anything malformed (not a dict, no `importance_scores`, layers that are
not 0..L-1, tensors that are not 1-D, of unequal length or not finite) is a `HeadattrError`. The file's raw
scores of that system attribute the loss (useful heads negative); `negate=True` turns them into "larger =
more important". run.json records `imported` (source, sha256, the file's metadata, negation) and `sign`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save as save_safetensors

from headattr.errors import HeadattrError
from headattr.runs.rundir import (
    Run,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    heads_csv,
    prepare_output_dir,
    read_run,
    run_meta,
    run_method,
    run_sign,
    write_run,
)

EXPORT_FORMATS = ("adaptive-dllm", "npy", "csv", "json", "head-mask")
SIGN_TEXT = "larger = more important"
KNOWN_PT_KEYS = ("importance_scores", "metadata")


def _run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else read_run(run)


def _identity(run: Run) -> dict[str, Any]:
    """What the exported files say about their origin."""
    from headattr.version import __version__

    model = run.meta.get("model") or {}
    return {
        "source": "headattr",
        "headattr_version": __version__,
        "run": str(Path(run.path).resolve()),
        "model": model.get("name"),
        "config_hash": model.get("config_hash"),
        "num_layers": run.num_layers,
        "num_heads": run.num_heads,
        "sign": SIGN_TEXT,
        "sign_convention": run_sign(run.meta),
        "method": run_method(run.meta),
        "score": _score_text(run),
    }


def _score_text(run: Run) -> str:
    """What the run's scores are, in its method's own words (`MethodConfig.describe`, English)."""
    from headattr.methods import METHODS, method_from_meta

    name = run_method(run.meta)
    if name not in METHODS:
        return {
            "imported": "scores imported from a file, not computed by headattr",
            "mixed": "an ensemble of runs that differ in method or origin",
        }.get(name, f"scores of method {name!r}")
    try:
        return method_from_meta({**run.meta.get("config", {}), "method": name}).describe("en")
    except (HeadattrError, TypeError, ValueError):  # an ensemble whose inputs' settings differ
        return f"{METHODS[name].label} head scores of an ensemble whose inputs differ in the method's settings"


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise HeadattrError(f"{path} already exists; pass --overwrite to replace it, or choose another --out")
    if path.exists() and path.is_dir():
        raise HeadattrError(f"{path} is a directory; --out must name a file")


def parse_keep(keep: str | Sequence[float]) -> list[float]:
    """'0.5,0.7' or numbers -> sorted distinct fractions in (0, 1]; anything else is a HeadattrError."""
    try:
        values = [float(x) for x in keep.split(",") if x.strip()] if isinstance(keep, str) else [float(k) for k in keep]
    except ValueError:
        raise HeadattrError(f"--keep must be comma-separated fractions, e.g. 0.5,0.7; got {keep!r}") from None
    if not values or any(not (0.0 < v <= 1.0) for v in values):
        raise HeadattrError(f"--keep fractions must lie in (0, 1]; got {keep!r}")
    return sorted(set(values))


def keep_mask(scores: np.ndarray, keep: float, per_layer: bool = False) -> np.ndarray:
    """[L, H] uint8 mask, 1 for the top `keep` fraction of heads (globally or per layer), see module docstring."""
    from headattr.runs.headmask import heads_to_remove

    scores = np.asarray(scores, dtype=np.float64)
    mask = np.zeros(scores.shape, dtype=np.uint8)
    for layer, head in heads_to_remove(scores, "most", keep, per_layer):
        mask[layer, head] = 1
    return mask


def adaptive_dllm_bytes(run: Run) -> bytes:
    """The `head_importance.pt` bytes of `run` (weights_only-loadable)."""
    scores = np.asarray(run.scores, dtype=np.float32)
    payload = {
        "importance_scores": {layer: torch.from_numpy(scores[layer].copy()) for layer in range(scores.shape[0])},
        "metadata": _identity(run),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def export_run(
    run: Run | str | Path,
    fmt: str,
    out: str | Path,
    *,
    keep: str | Sequence[float] = (0.5,),
    per_layer: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Write `run`'s scores to `out` in `fmt` (EXPORT_FORMATS); returns the files written (atomically)."""
    if fmt not in EXPORT_FORMATS:
        raise HeadattrError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    keeps = parse_keep(keep) if fmt == "head-mask" else []
    run = _run(run)
    if fmt == "head-mask":
        base = out.with_suffix("") if out.suffix in (".json", ".safetensors") else out
        paths = [base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")]
    else:
        paths = [out]
    for path in paths:
        _check_target(path, overwrite)
    scores = np.asarray(run.scores, dtype=np.float32)
    if fmt == "adaptive-dllm":
        atomic_write_bytes(out, adaptive_dllm_bytes(run))
    elif fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, scores)
        atomic_write_bytes(out, buf.getvalue())
    elif fmt == "csv":
        atomic_write_text(out, heads_csv(scores))
    elif fmt == "json":
        atomic_write_json(out, {"format": "headattr-scores", "version": 1, **_identity(run), "scores": scores.tolist()})
    else:
        masks = {f"{k:g}": keep_mask(scores, k, per_layer) for k in keeps}
        atomic_write_bytes(paths[0], save_safetensors({f"keep_{k}": m for k, m in masks.items()}))
        doc = {
            "format": "headattr-keep-mask",
            "version": 1,
            **_identity(run),
            "per_layer": per_layer,
            "rule": "1 = keep: the top round(fraction * count) heads (halves up; count = L*H, or H per layer), "
            "highest score first, ties by (layer, head) order",
            "masks": {k: m.tolist() for k, m in masks.items()},
            "kept": {k: int(m.sum()) for k, m in masks.items()},
        }
        atomic_write_json(paths[1], doc)
    return paths


# ---------------------------------------------------------------- import


def load_head_importance(path: str | Path) -> tuple[np.ndarray, dict[str, Any], list[str]]:
    """Read a `head_importance.pt` safely: ([L, H] float64 scores, JSON-safe metadata, ignored top-level keys).

    Only `torch.load(weights_only=True)` touches the file; every problem is a one-line HeadattrError.
    """
    path = Path(path)
    if not path.is_file():
        raise HeadattrError(f"{path} does not exist; pass a head_importance.pt file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses code (UnpicklingError) and corrupt files (several types)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HeadattrError(f"{path} is not a weights-only torch file (nothing was executed): {first}") from None
    if not isinstance(obj, dict) or "importance_scores" not in obj:
        raise HeadattrError(f"{path}: expected a dict with 'importance_scores' (layer -> tensor[heads])")
    table = obj["importance_scores"]
    if not isinstance(table, dict) or not table:
        raise HeadattrError(f"{path}: 'importance_scores' must be a non-empty dict of layer -> tensor[heads]")
    if not all(isinstance(k, int) and not isinstance(k, bool) for k in table):
        raise HeadattrError(
            f"{path}: 'importance_scores' keys must be integer layer indices, got {sorted(map(repr, table))[:5]}"
        )
    layers = sorted(table)
    if layers != list(range(len(layers))):
        raise HeadattrError(f"{path}: layers must be 0..{len(layers) - 1}, got {layers[:8]}")
    rows = []
    for layer in layers:
        t = table[layer]
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.numel() == 0 or not t.is_floating_point():
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise HeadattrError(f"{path}: layer {layer} must be a 1-D float tensor of head scores, got {shape}")
        rows.append(t.detach().to(torch.float64).numpy())
    if len({r.size for r in rows}) != 1:
        raise HeadattrError(f"{path}: layers have different head counts {sorted({r.size for r in rows})}")
    scores = np.stack(rows)
    if not np.isfinite(scores).all():
        raise HeadattrError(f"{path}: the scores contain NaN or infinity")
    meta = obj.get("metadata") or {}
    return (
        scores,
        _json_safe(meta if isinstance(meta, dict) else {}),
        sorted(str(k) for k in obj if k not in KNOWN_PT_KEYS),
    )


def _json_safe(obj: Any) -> Any:
    """The file's metadata as JSON values (tensors become lists, other objects their repr)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _json_safe(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return repr(obj)


def _model_section(model: str | None, shape: tuple[int, int], file_meta: dict[str, Any]) -> dict[str, Any]:
    """run.json `model`: the identity of `model` (read from its config and weight shapes only) or unknown."""
    num_layers, num_heads = shape
    if model is None:
        return {
            "name": file_meta.get("model") if isinstance(file_meta.get("model"), str) else None,
            "config_hash": None,
            "num_layers": num_layers,
            "num_heads": num_heads,
        }
    from headattr.models import load_model

    spec = load_model(model, device="meta", dtype="float32")
    if (spec.num_layers, spec.num_heads) != shape:
        raise HeadattrError(
            f"the file has {num_layers} layers x {num_heads} heads, model {model} has "
            f"{spec.num_layers} x {spec.num_heads} (query heads); pass the model the scores belong to"
        )
    d = spec.describe()
    keys = (
        "name",
        "path",
        "family",
        "config_hash",
        "num_parameters",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "mask_token_id",
        "logit_shift",
    )
    return {k: d.get(k) for k in keys}


def import_head_importance(
    path: str | Path,
    out: str | Path,
    *,
    negate: bool = False,
    model: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Turn a `head_importance.pt` into a scores-only run directory `out`; returns `out`.

    `negate` flips the sign (for files whose scores attribute the loss). `model` (a checkpoint directory or
    hub id) records the model's identity, which `prune` needs to accept the run; without it the run is
    compared by shape only.
    """
    path, out = Path(path), Path(out)
    scores, file_meta, ignored = load_head_importance(path)
    scores = -scores if negate else scores
    model_section = _model_section(model, scores.shape, file_meta)
    check_output_dir(out, overwrite)
    meta = run_meta(
        config={"postprocess": "signed"},
        model=model_section,
        samples=[],
        variants=[],
        sign="imported-negated" if negate else "imported",
        imported={
            "source": str(path.resolve()),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "format": "adaptive-dllm head_importance.pt",
            "negated": negate,
            "rule": "scores = -file scores" if negate else "scores = file scores",
            "metadata": file_meta,
            "ignored_keys": ignored,
        },
    )
    json.dumps(meta, allow_nan=False)  # fail here, before writing, if anything is not JSON
    prepare_output_dir(out, overwrite)
    empty = np.zeros((0, 0, *scores.shape), dtype=np.float32)
    write_run(out, scores.astype(np.float32), empty, meta)
    return out
