"""Validation of `--device`: a device that cannot be used is a one-line error before anything loads.

Without it, `--device cuda` on a machine without CUDA fails deep inside loading (a `pin_memory` RuntimeError
with a traceback), after the user has waited for the checkpoint to be read.

Also `set_deterministic`, the `--deterministic` flag: deterministic kernels for the process.
"""

from __future__ import annotations

import os

import torch

from headattr.errors import HeadattrError


def _parse(device: str) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise HeadattrError(f"--device {device!r} is not a torch device; use e.g. cpu, cuda, cuda:1 or mps") from None


def _check_cuda(device: torch.device, text: str) -> None:
    if not torch.cuda.is_available():
        raise HeadattrError(f"--device {text}: CUDA is not available on this machine; use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise HeadattrError(f"--device {text}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")


def _check_mps(text: str) -> None:
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        raise HeadattrError(f"--device {text}: MPS is not available on this machine; use --device cpu")


def _check_other(device: torch.device, text: str) -> None:
    # other accelerators (xpu, ...) expose `torch.<type>.is_available()`; types without one are left to torch
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if device.type not in ("cpu", "meta") and callable(available) and not available():
        raise HeadattrError(f"--device {text}: {device.type} is not available on this machine; use --device cpu")


def check_device(device: str | None) -> str | None:
    """Return `device` unchanged if this machine can run on it (None: the default, always fine).

    Raises `HeadattrError` for text torch cannot parse, CUDA without CUDA or with an index past the device
    count, MPS (or another accelerator type) where it is unavailable. `meta` (shapes only, used by
    `headattr info`) is accepted.
    """
    if device is None:
        return None
    parsed = _parse(device)
    if parsed.type == "cuda":
        _check_cuda(parsed, device)
    elif parsed.type == "mps":
        _check_mps(device)
    else:
        _check_other(parsed, device)
    return device


CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS's deterministic workspace setting (NVIDIA's cuBLAS reproducibility notes)


def set_deterministic() -> None:
    """Run-to-run determinism for this process (the `--deterministic` flag; `headattr.cli.main` undoes it).

    `torch.use_deterministic_algorithms(True)`: CUDA ops with atomics switch to deterministic kernels
    (`index_add`, `index_put` with accumulate, the flash and memory-efficient attention backward), and an op
    with none raises. `CUBLAS_WORKSPACE_CONFIG` (unless set already) must be in place before cuBLAS starts, so
    this runs before the model loads; cuDNN deterministic, its autotuner off. Same machine, same software,
    same batch size: same bits. Not across batch sizes or GPU models (kernels are chosen by problem size).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
