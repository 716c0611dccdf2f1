"""`--batch-size auto`: rows per pass from the device's free memory and the cost of one row.

A row is one (masked variant, quadrature node) pair of one sample. Its memory is dominated by the
activations autograd keeps for the backward pass, which grow with the sample's tokens:

- CUDA: measured on the first sample computed. One and two rows of the deepest pass (every layer, gates
  requiring gradients) run forward and backward under `torch.cuda.max_memory_allocated`; the difference is
  the cost of a row, which later samples scale by their token count. The rows are the variant with the most
  masked tokens: a row's logits grow with them (`measure_row_bytes`).
- CPU (nothing to measure peaks with): the activation model below, from the model's shapes.

Activation model, bytes per row (e = bytes per activation element: 2 bf16, 4 float32, 8 float64):

    per token and layer:  e * (6 d + 4 d_q + 2 d_kv + 4 w)     residual stream and norms (6 d); q, q after
                                                               RoPE, the heads' outputs before and after the
                                                               gates (4 d_q); k/v; the MLP (4 w)
                        + e * k d + 4 * 2 E                    mixture-of-experts layers only: each chosen
                                                               expert's weighted output; the router's logits
                                                               and scores (float32)
                        + e * 2 H T                            attention scores and probabilities (not on
                                                               CUDA, whose fused kernels keep none)
    per row:              T * (sum over the L layers)  +  3 * 4 * V * m      logits of the m = answer-length
                                                                             positions, their softmax and
                                                                             gradient, in float32

with d the hidden size, d_q = H x head_dim the query width (d in Dream and LLaDA; SDAR-4B's is 4096 against d
2560), d_kv the key/value width, H query heads, T tokens, L layers, V the vocabulary, and w the MLP width a
token passes through: a dense layer's `intermediate_size`; in a mixture-of-experts layer with E routed experts
of width I, k chosen per token, and shared experts of width I_s, w = k I + I_s: the activations are the active
experts', while the weights in memory are all E experts' (`engine.shapes`). With `--grad-checkpoint` only each
layer's input is kept (e * d per token and layer) plus one layer's activations (the largest). For Dream 7B in
bf16 the first term is 225 KB per token per layer.

The budget is `--max-memory` (bytes such as 40GB, or a fraction such as 0.8 of the free memory; default 0.9
of the free memory, the rest being slack for the allocator and temporaries), never more than the free memory,
less what the sample holds beside its passes: its cached layer inputs and, for Gate-IG's one-layer paths,
every layer's head outputs (V x T x width each, `cache_bytes`), which are allocated after the budget is taken.
On CUDA "free" is what this process can allocate: the device's free memory plus the blocks its caching
allocator holds but has not allocated (`free_memory`), which `mem_get_info` counts as used and which would
otherwise make every sample's budget what the previous one left over. Rows per pass = budget // cost of a
row, at least 1. On CPU a pass is also capped at `CPU_PASS_VALUES` hidden-state values (rows x T x d): larger
passes no longer fit the processor's caches and run slower per row (README, measured there).

An out-of-memory error anyway (fragmentation, a model underestimating; torch's error, CUDA's own "out of
memory", cuBLAS or cuDNN failing to allocate, `is_out_of_memory`) halves the batch and the same sample is
computed again; since rows never interact, the results are those of a run at the size it settled on. The
failed attempt's tensors are released before the next one (`attempt`, `release_memory`). Later samples'
budgets are held to what the rows fitted in, a ceiling that doubles after each sample without an error: a
persistent shortage costs a failed attempt every other sample at most, a passing one (fragmentation) does not
shrink the rest of the run. A probe that runs out of memory leaves the activation model for that sample. An
integer `--batch-size` is used as given.
"""

from __future__ import annotations

import functools
import gc
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from headattr.engine.shapes import hidden_size, mlp_widths, objective_tokens
from headattr.errors import HeadattrError

AUTO = "auto"
DEFAULT_FRACTION = 0.9
MAX_ROWS = 1 << 16  # no pass holds more rows than this (a sample's rows are far fewer)
# CPU only: the most hidden-state values (rows x tokens x d) of one pass (README, "batch size auto" timings)
CPU_PASS_VALUES = 1 << 21
T = TypeVar("T")

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_batch_size(value: Any) -> int | str:
    """'auto' or a positive integer (as text or int); anything else is a one-line error."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise HeadattrError(f"--batch-size must be 'auto' or a positive integer, got {value!r}") from None
    if size < 1:
        raise HeadattrError(f"--batch-size must be 'auto' or a positive integer, got {value!r}")
    return size


def parse_max_memory(text: str | float | int | None) -> float | int | None:
    """'40GB' / '512MiB' / '4096' -> bytes (int); '0.8' -> that fraction of the free memory (float in (0, 1]);
    None stays None (the default fraction)."""
    if text is None:
        return None
    if isinstance(text, int | float) and not isinstance(text, bool):
        text = str(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else ""
    if m and unit in _UNITS:
        number = float(m.group(1))
        if unit == "" and 0.0 < number <= 1.0:
            return number
        if unit == "" and number.is_integer() and number > 1:  # a plain integer: bytes
            return int(number)
        if unit and number > 0:
            return int(number * _UNITS[unit])
    raise HeadattrError(f"--max-memory must be a size such as 40GB or 512MiB, or a fraction in (0, 1]; got {text!r}")


def free_memory(device: torch.device) -> int:
    """Bytes this process can allocate on `device` now: on CUDA the device's free memory plus what this
    process's caching allocator holds but has not allocated; the kernel's MemAvailable on CPU.

    `mem_get_info` counts the allocator's cached blocks as used, and nothing returns them to the device
    between samples, so without them the budget of every sample after the first would be what the first left
    over. The allocator frees its cached blocks and tries again before it reports an out-of-memory error, so
    they are free for this process (up to fragmentation: a partly used segment cannot be returned).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free) + max(int(cached), 0)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30  # no /proc (not Linux): assume a modest machine; --max-memory overrides


# What running out of memory says, besides `torch.OutOfMemoryError` (the caching allocator's): the CUDA
# runtime's own error ("CUDA error: out of memory", a RuntimeError, e.g. from a kernel's launch), the CPU
# allocator, and the libraries that allocate their own workspaces (cuBLAS, cuDNN; cuDNN 9 names it
# ..._DEVICE_ALLOCATION_FAILED). Each is transient: fewer rows per pass need less memory.
OUT_OF_MEMORY_MESSAGES = (
    "out of memory",
    "can't allocate memory",
    "not enough memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "DEVICE_ALLOCATION_FAILED",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is torch, CUDA or a CUDA library running out of memory (`OUT_OF_MEMORY_MESSAGES`)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in OUT_OF_MEMORY_MESSAGES)


def attempt(compute: Callable[[], T]) -> tuple[bool, T | None]:
    """(True, compute()) or, when it runs out of memory, (False, None); other errors propagate.

    Returns instead of handling the failure inside the `except` block: until that block is left, the
    exception's traceback holds the frames of the failed attempt and so its tensors, and no memory could be
    released (`release_memory`).
    """
    try:
        return True, compute()
    except (RuntimeError, torch.OutOfMemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
    return False, None


def release_memory(device: torch.device) -> None:
    """After a failed attempt (`attempt`): collect what only reference cycles still hold, and on CUDA return
    the allocator's cached blocks, so that the next attempt starts from the memory the plan assumed."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def activation_bytes(spec: Any, tokens: int, answer_tokens: int) -> int:
    """The activation model's bytes for one row of a sample of `tokens` tokens (module docstring; the objective
    runs `shapes.objective_tokens` of them)."""
    tokens = objective_tokens(spec, tokens)
    d = hidden_size(spec)
    d_q, d_kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    chosen = getattr(spec, "active_experts", None) or 0
    e = torch.finfo(spec.dtype).bits // 8 if spec.dtype.is_floating_point else 4
    per_layer = []
    for width, experts in mlp_widths(spec):
        b = e * (6 * d + 4 * d_q + 2 * d_kv + 4 * width)
        if experts:  # the chosen experts' weighted outputs, the router's logits and scores in float32
            b += e * chosen * d + 4 * 2 * experts
        if spec.device.type != "cuda":
            b += e * 2 * spec.num_heads * tokens
        per_layer.append(b)
    if getattr(spec.backbone, "grad_checkpoint", False):
        body = tokens * (spec.num_layers * e * d + max(per_layer))
    else:
        body = tokens * sum(per_layer)
    return int(body + 3 * 4 * spec.vocab_size * answer_tokens)


def measure_row_bytes(spec: Any, rows: Any) -> int:
    """CUDA: peak memory of 2 rows minus that of 1 row, forward and backward through every layer (bytes).

    The rows are copies of the variant with the most masked tokens: a row's logits, their float32 copy and
    their gradient take a vocabulary's worth of values per masked token (152k for Dream), and the plan must
    hold for the densest variant, not the sparsest.
    """
    from headattr.engine import core
    from headattr.engine.gates import gated

    densest = max(range(rows.num_variants), key=lambda v: len(rows.labels[v]))

    def peak(n: int) -> int:
        torch.cuda.synchronize(spec.device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(spec.device)
        torch.cuda.reset_peak_memory_stats(spec.device)
        v_idx = torch.full((n,), densest, dtype=torch.long, device=spec.device)
        g = torch.ones(n, spec.num_layers, spec.num_heads, device=spec.device, requires_grad=True)
        with gated(spec, {layer: g[:, layer] for layer in range(spec.num_layers)}):
            j = core.objective(spec, rows, v_idx, 0).j
            torch.autograd.grad(j.sum(), g)
        torch.cuda.synchronize(spec.device)
        return torch.cuda.max_memory_allocated(spec.device) - base

    return max(peak(2) - peak(1), 1)


def cache_bytes(spec: Any, variants: int, tokens: int, width: int) -> int:
    """Bytes of the tensors a sample holds beside its passes, `width` elements per variant and token (the
    caller's method decides: `attribution.cached_width`, which counts wider residual-stream tensors as more
    elements), in the model's dtype."""
    e = torch.finfo(spec.dtype).bits // 8 if spec.dtype.is_floating_point else 4
    return int(width) * variants * tokens * e


@dataclass
class BatchPlanner:
    """Rows per pass for each sample of a run, and the out-of-memory retry (module docstring).

    `fixed`: an integer `--batch-size` (used as given); None: automatic. `max_memory`: bytes, a fraction of
    the free memory, or None (0.9 of it). `used` records the size each computed sample finished with.
    """

    spec: Any
    fixed: int | None = None
    max_memory: float | int | None = None
    bytes_per_row_token: float | None = None  # measured (CUDA) on the first sample, per token of a row
    ceiling: int | None = None  # bytes: what the rows fitted in after an out-of-memory error (`_adapt`)
    used: dict[int, int] = field(default_factory=dict)

    @classmethod
    def create(cls, spec: Any, batch_size: int | str, max_memory: str | float | int | None = None) -> BatchPlanner:
        size = parse_batch_size(batch_size)
        return cls(spec, fixed=None if size == AUTO else int(size), max_memory=parse_max_memory(max_memory))

    @property
    def auto(self) -> bool:
        return self.fixed is None

    def budget(self, held: int = 0) -> int:
        """Bytes the rows of one pass may take now, when the sample will hold `held` bytes beside them (its
        cached layer inputs and head outputs, `cache_bytes`: allocated after this is measured)."""
        free = free_memory(self.spec.device)
        cap = self.max_memory
        if cap is None:
            cap = DEFAULT_FRACTION
        limit = (int(free * cap) if isinstance(cap, float) else min(int(cap), free)) - held
        if self.ceiling is not None:
            limit = min(limit, self.ceiling)
        return max(limit, 1)

    def row_bytes(self, tokens: int, answer_tokens: int) -> int:
        """The cost of one row of a sample with `tokens` tokens: measured per token, or the model."""
        if self.bytes_per_row_token is not None:
            return max(int(math.ceil(self.bytes_per_row_token * tokens)), 1)
        return activation_bytes(self.spec, tokens, answer_tokens)

    def size_for(self, tokens: int, answer_tokens: int, most_rows: int = MAX_ROWS, held: int = 0) -> int:
        """Rows per pass for a sample of `tokens` tokens whose largest pass has `most_rows` rows (more
        would change nothing; capping there keeps the size printed meaningful and an OOM retry short) and
        which holds `held` bytes beside its passes (`budget`)."""
        if self.fixed is not None:
            return self.fixed
        fits = max(self.budget(held) // self.row_bytes(tokens, answer_tokens), 1)
        return int(min(fits, most_rows, MAX_ROWS, self.cache_rows(tokens)))

    def cache_rows(self, tokens: int) -> int:
        """CPU: the most rows of `tokens` tokens whose hidden states stay within `CPU_PASS_VALUES` (larger
        passes spill out of the caches); CUDA: no limit of this kind."""
        if self.spec.device.type == "cuda":
            return MAX_ROWS
        return max(CPU_PASS_VALUES // (tokens * hidden_size(self.spec)), 1)

    def calibrate(self, probe_rows: Callable[[], Any], tokens: int) -> None:
        """Measure the cost of a row on CUDA, once, on `probe_rows()` (a sample's `core.Rows`, embeddings
        only, of `tokens` tokens); on CPU the activation model stands. A probe that runs out of memory leaves
        the activation model for this sample, and the next sample probes again."""
        if not (self.auto and self.bytes_per_row_token is None and self.spec.device.type == "cuda"):
            return
        if not getattr(self.spec.backbone, "resumable", False):
            return
        ok, measured = attempt(lambda: measure_row_bytes(self.spec, probe_rows()))
        if ok:
            self.bytes_per_row_token = measured / tokens
        else:
            release_memory(self.spec.device)

    def run(
        self,
        index: int,
        tokens: int,
        answer_tokens: int,
        compute: Callable[[int], T],
        most_rows: int = MAX_ROWS,
        held: int = 0,
    ) -> T:
        """`compute(batch_size)` for sample `index` (which holds `held` bytes beside its passes, `budget`);
        under auto, an out-of-memory error halves the size and computes the sample again."""
        size = self.size_for(tokens, answer_tokens, most_rows, held)
        failed = False
        while True:
            ok, result = attempt(functools.partial(compute, size))
            if ok:
                break
            release_memory(self.spec.device)  # outside the except block: the failed attempt's tensors are gone
            self._check_retry(size)
            size, failed = size // 2, True
        if self.auto:
            self._adapt(failed, size * self.row_bytes(tokens, answer_tokens))
        self.used[index] = size
        return result  # type: ignore[return-value]

    def _adapt(self, failed: bool, fitted: int) -> None:
        """Later samples' budgets. After an out-of-memory error: at most `fitted`, the bytes this sample's rows
        fitted in (not half the budget: `most_rows` may have kept the plan below it, and half the budget would
        plan the same size again). After a sample without one, that ceiling doubles, so a passing shortage
        (fragmentation, another process) does not shrink the rest of the run."""
        if failed:
            self.ceiling = fitted
        elif self.ceiling is not None:
            self.ceiling *= 2

    def _check_retry(self, size: int) -> None:
        """After an out-of-memory error at `size` rows: a one-line error where halving cannot help."""
        if not self.auto:
            raise HeadattrError(
                f"out of memory at --batch-size {size}; use --batch-size auto (or a smaller size, "
                "--grad-checkpoint, a shorter --max-length)"
            )
        if size == 1:
            raise HeadattrError(
                "out of memory with one row per pass; use --grad-checkpoint, a shorter --max-length, "
                "or a device with more memory"
            )

    def record(self) -> dict[str, Any]:
        """run.json `timings` entries: the batch sizes used (smallest and largest over computed samples)."""
        if not self.used:
            return {"batch_size": self.fixed}
        sizes = list(self.used.values())
        return {"batch_size": min(sizes), "batch_size_max": max(sizes)}
