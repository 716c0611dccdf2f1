"""Block-sparse attention in generation: where the keep ratios come from, and one generation run sparse.

`generate(spec, ids, ..., sparse=SparseAttention(...))` (`generation.sampling`) resolves the settings here
(`resolve_sparse`: a run directory's scores through the allocation rule, a `headattr budget` file's keep
ratios, an [L, H] array or one ratio, checked against the model) and runs the family's sampler inside
`engine.sparse_hook.sparse_generation` with a new `SparseState` per generation (`sparse_sample`): no masks at
the start, the sampler reporting each denoising step (`denoising_step`). The behaviour and every deviation from
the origin system are in `docs/generation.md` (Sparse attention).

`parse_sparse(text)` reads the command line's `--sparse` (`budget.json`, a run directory, `uniform:0.3`) and
`sparse_settings` the whole group of flags (or lm-eval's model_args of the same names);
`recording_usage()` collects, per generated row and mask build, the fraction of key blocks its masks attend.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headattr.engine.sparse_hook import SparseState, sparse_generation
from headattr.engine.sparse_schedule import SparseAttention, row_densities
from headattr.errors import HeadattrError
from headattr.models import ModelSpec
from headattr.runs.rundir import read_run

BUDGET_FORMAT = "headattr-budget"
UNIFORM = "uniform:"
# the mask builds' row densities of the generations inside `recording_usage()` (None: not recording)
_USAGE: ContextVar[list[float] | None] = ContextVar("headattr_sparse_usage", default=None)


def parse_sparse(text: str, flag: str = "--sparse") -> float | str:
    """`uniform:R` -> R (a float); an existing run directory or budget file -> its path; else a one-line error."""
    text = text.strip()
    if text.startswith(UNIFORM):
        try:
            ratio = float(text[len(UNIFORM) :])
        except ValueError:
            ratio = math.nan
        if not 0.0 <= ratio <= 1.0:
            raise HeadattrError(f"{flag} {text}: uniform:R needs a keep ratio R in [0, 1], e.g. uniform:0.3")
        return ratio
    if not Path(text).exists():
        raise HeadattrError(
            f"{flag} {text!r}: give a budget file (headattr budget), a run directory or uniform:RATIO; no such path"
        )
    return text


# the settings' names outside Python (command-line flags with _ for -, lm-eval model_args) -> field and type
SPARSE_ARGS: dict[str, tuple[str, type]] = {
    "sparse_skip": ("skip", float),
    "sparse_block": ("block_size", int),
    "sparse_select": ("select", float),
    "sparse_min_keep": ("min_keep", float),
    "sparse_gqa": ("gqa", str),
    "sparse_compat": ("compat", str),
    "sparse_kernel": ("kernel", str),
}
RUN_ONLY = ("sparse_select", "sparse_min_keep", "sparse_gqa")  # the allocation rule's: scores to keep ratios


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def sparse_settings(source: Any, given: dict[str, Any]) -> SparseAttention | None:
    """The `SparseAttention` of the command line or of lm-eval's model_args: `source` is `--sparse` (None: dense),
    `given` maps `SPARSE_ARGS` names to values (None: not given, the class default). The allocation rule's
    settings (select, min_keep, gqa) apply only to a run directory's scores: with a budget file or a uniform
    ratio they are refused, since those fix the keep ratios already."""
    given = {k: v for k, v in given.items() if v is not None}
    unknown = [k for k in given if k not in SPARSE_ARGS]
    if unknown:
        raise HeadattrError(f"unknown sparse setting {unknown[0]!r}; known: sparse, {', '.join(SPARSE_ARGS)}")
    if source is None or source == "":
        if given:
            raise HeadattrError(f"{_flag(next(iter(given)))} needs --sparse budget.json|RUN|uniform:RATIO")
        return None
    keep = parse_sparse(str(source))
    fixed = [k for k in RUN_ONLY if k in given]
    if fixed and not (isinstance(keep, str) and Path(keep).is_dir()):
        raise HeadattrError(
            f"{_flag(fixed[0])} shapes keep ratios computed from a run's scores; --sparse {source} fixes them already"
        )
    kwargs: dict[str, Any] = {}
    for name, value in given.items():
        field, kind = SPARSE_ARGS[name]
        try:
            kwargs[field] = kind(value)
        except (TypeError, ValueError):
            raise HeadattrError(f"{_flag(name)} {value!r}: expected {kind.__name__}") from None
    if kwargs.get("compat") == "none":
        kwargs["compat"] = None
    return SparseAttention(keep=keep, **kwargs)


def budget_keep(path: Path, num_heads: int) -> np.ndarray:
    """[L, H] keep ratios of a `headattr budget` file ([L, KV] ones repeated over each KV head's query heads)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeadattrError(f"--sparse {path}: not a readable budget file ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != BUDGET_FORMAT or "keep_ratios" not in doc:
        raise HeadattrError(f"--sparse {path}: not a budget file; write one with `headattr budget RUN --out FILE`")
    keep = np.asarray(doc["keep_ratios"], dtype=np.float64)
    if keep.ndim != 2 or keep.shape[1] < 1 or num_heads % keep.shape[1]:
        raise HeadattrError(f"--sparse {path}: keep ratios of shape {keep.shape} do not fit {num_heads} heads")
    return np.repeat(keep, num_heads // keep.shape[1], axis=1)  # KV head j -> query heads j*g .. (j+1)*g - 1


def resolve_sparse(spec: ModelSpec, sparse: SparseAttention) -> SparseAttention:
    """`sparse` with numeric keep ratios for `spec`: a run directory's scores through `from_scores` (this
    object's select, min_keep, gqa; the model's KV heads), a budget file's ratios, or the given ones; an
    [L, H] table must match the model's layers and heads."""
    if not isinstance(sparse, SparseAttention):
        raise HeadattrError(f"sparse= takes a SparseAttention, not {type(sparse).__name__}")
    if isinstance(sparse.keep, str):
        path = Path(sparse.keep)
        if path.is_dir():
            scores = read_run(path).scores
            _check_shape(spec, scores.shape, f"the scores of run {path}")
            sparse = sparse.from_scores(scores, kv_heads=spec.num_kv_heads)
        elif path.is_file():
            sparse = sparse.replace(keep=budget_keep(path, spec.num_heads))
        else:
            raise HeadattrError(f"--sparse {path}: no such run directory or budget file")
    if not isinstance(sparse.keep, float):
        _check_shape(spec, np.shape(sparse.keep), "the keep ratios")
    return sparse


def _check_shape(spec: ModelSpec, shape: tuple[int, ...], what: str) -> None:
    if tuple(shape) != (spec.num_layers, spec.num_heads):
        raise HeadattrError(
            f"{what} are {list(shape)}; {spec.name} has {spec.num_layers} layers x {spec.num_heads} heads"
        )


@contextmanager
def recording_usage() -> Iterator[list[float]]:
    """Within the block, every sparse generation appends, per row and per mask build (one per LLaDA generation
    block by default), the fraction of key blocks attended (`row_densities`) to the yielded list. Rows of a
    guided (cfg) batch count twice: the conditional and the unconditional pass have their own masks."""
    usage: list[float] = []
    token = _USAGE.set(usage)
    try:
        yield usage
    finally:
        _USAGE.reset(token)


def sparse_sample(
    sample: Callable[..., torch.Tensor],
    spec: ModelSpec,
    sparse: SparseAttention,
    generation_length: int,
    ids: torch.Tensor,
    valid: torch.Tensor,
    gates: dict[int, torch.Tensor],
    seed: int,
    s: dict[str, Any],
) -> torch.Tensor:
    """`sample(ids, valid, gates, seed, s)` with block-sparse attention (resolved `sparse`): a new state, so
    a generation (or a retried half of one) starts with no masks."""
    usage = _USAGE.get()
    record = None if usage is None else (lambda store: usage.extend(row_densities(store, sparse.block_size)))
    state = SparseState(sparse, steps=int(s["steps"]), generation_length=generation_length, on_reset=record)
    with sparse_generation(spec, state):
        out = sample(ids, valid, gates, seed, s)
    if record is not None:
        record(state.store)
    return out
