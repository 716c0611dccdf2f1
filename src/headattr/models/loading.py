"""`load_model`: a checkpoint directory (or hub id) to a `ModelSpec`, by way of its family's adapter."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from headattr.errors import HeadattrError
from headattr.models import generic
from headattr.models.devices import check_device
from headattr.models.files import load_tokenizer, read_config, resolve_path
from headattr.models.registry import Family, family_for, load_family
from headattr.models.spec import ModelSpec, find_head_modules
from headattr.settings import Settings, choice

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
DTYPE_CHOICES = ("auto", *DTYPES)
LOGIT_SHIFT = ("auto", "on", "off")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


DEVICE_ENV = "HEADATTR_DEVICE"


def default_device() -> str:
    """Where models run unless `--device` says otherwise: `$HEADATTR_DEVICE` when set (the test suite sets
    cpu, so that its pinned numbers hold on a GPU host too), else the GPU when there is one."""
    return os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """The weights' dtype for a `--dtype` value on `device` ("auto": bfloat16 on CUDA, float32 elsewhere)."""
    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    choice("--dtype", dtype, DTYPE_CHOICES)
    return DTYPES[dtype]


@dataclass(frozen=True)
class ModelConfig(Settings):
    """How to load a model: the `--dtype`, `--device`, ... flags of every command that loads one.

    `dtype` "auto" means bfloat16 on CUDA and float32 on CPU; `logit_shift` "auto" takes the family's
    convention (Dream on, LLaDA off; generic models must say). `head_module` and `mask_token_id` override
    what the family or config says. `device=None` picks CUDA when there is one.
    """

    dtype: str = "auto"
    device: str | None = None
    trust_remote_code: bool = False
    head_module: str | None = None
    mask_token_id: int | None = None
    logit_shift: str = "auto"
    attn_implementation: str = "sdpa"
    grad_checkpoint: bool = False

    def validate(self) -> None:
        check_device(self.device)  # before anything loads: `--device cuda` on a CPU machine is one line
        choice("--dtype", self.dtype, DTYPE_CHOICES)
        choice("--logit-shift", self.logit_shift, LOGIT_SHIFT)
        choice("--attn-implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)

    def to_meta(self) -> dict:
        """The loading flags a run records (the device is recorded apart, as what was actually used)."""
        out = super().to_meta()
        out.pop("device")
        return out

    def load(self, path: str | Path) -> ModelSpec:
        return load_model(path, self)


def load_model(path: str | Path, config: ModelConfig | None = None, **options) -> ModelSpec:
    """Load a checkpoint directory (or hub id) with its tokenizer and describe it.

    `config` (or the same fields as keyword arguments) says how. Weights are frozen (`requires_grad=False`);
    the model is in eval mode. `device="meta"` reads only the config and the weights' names and shapes (no
    tensor data): enough to describe a 7B checkpoint in a second, not to run it.
    """
    config = (config or ModelConfig()).replace(**options) if options else (config or ModelConfig())
    root = resolve_path(path)
    raw = read_config(root)
    device = config.device or default_device()
    family = family_for(raw.get("model_type", "")) or generic.FAMILY
    spec = load_family(family, root, raw, resolve_dtype(config.dtype, device), device, config)
    spec.tokenizer = load_tokenizer(root, config.trust_remote_code)
    if config.head_module is not None and family is not generic.FAMILY:
        _select_head_module(spec, family, config.head_module)
    _apply_overrides(spec, config.mask_token_id, config.logit_shift)
    spec.backbone.set_grad_checkpoint(config.grad_checkpoint)
    spec.load_config = config
    spec.model.eval().requires_grad_(False)
    return spec


def _select_head_module(spec: ModelSpec, family: Family, name: str) -> None:
    """Gate `name` instead of the family's default projection (the checkpoint's own name is accepted too)."""
    module = family.head_module_aliases.get(name, name)
    if module == spec.head_module or spec.head_module.endswith("." + module):
        return
    spec.head_modules, spec.head_module = find_head_modules(spec.model, spec.num_layers, module)
    spec.head_module_label = name if module == name else f"{name} (as {module})"


def _apply_overrides(spec: ModelSpec, mask_token_id: int | None, logit_shift: str) -> None:
    """Apply user overrides; fill the mask token from the tokenizer when the config has none."""
    if mask_token_id is not None:
        spec.mask_token_id = int(mask_token_id)
    vocab = spec.vocab_size
    tok_mask = getattr(spec.tokenizer, "mask_token_id", None)
    if spec.mask_token_id is None and tok_mask is not None and tok_mask < vocab:
        spec.mask_token_id = int(tok_mask)
    if spec.mask_token_id is not None and not 0 <= spec.mask_token_id < vocab:
        raise HeadattrError(
            f"mask token id {spec.mask_token_id} is outside the model's vocabulary (0..{vocab - 1}); "
            "fix --mask-token-id"
        )
    if logit_shift != "auto":
        spec.logit_shift = logit_shift == "on"
    elif spec.family == "generic":
        raise HeadattrError(
            f"cannot tell whether {spec.name} shifts its logits; pass --logit-shift on "
            "(position j predicted from j-1, like Dream) or off (from j, like LLaDA)"
        )
