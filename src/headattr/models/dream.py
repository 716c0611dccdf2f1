"""Dream (`model_type` "Dream"): loaded as transformers' Qwen2, bidirectional, logits shifted.

Dream's weight names are Qwen2's. Position j is predicted from the logits at j-1. Dream never applies a
sliding window, whatever `use_sliding_window` says, so it is forced off (the whole-model path would otherwise
apply one the layer stack does not). It generates with Dream's sampler (`headattr.generation.dream`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from headattr.models import native
from headattr.models.registry import Family, register
from headattr.models.spec import ModelSpec

IGNORED_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "rope_theta", "rope_scaling")


def qwen2_config(cfg: dict[str, Any]) -> Any:
    """transformers `Qwen2Config` equivalent to a Dream config.json."""
    from transformers import Qwen2Config

    fields = {k: v for k, v in cfg.items() if k not in IGNORED_KEYS}
    fields["rope_parameters"] = native.rope_parameters(cfg.get("rope_theta", 10000.0), cfg.get("rope_scaling"))
    fields["use_sliding_window"] = False
    fields["sliding_window"] = None
    return Qwen2Config(**fields)


def load(root: Path, cfg: dict[str, Any], dtype: torch.dtype, device: str, options: Any) -> ModelSpec:
    from transformers import Qwen2ForCausalLM

    weights = native.read_weights(root, dtype, device)
    model = native.build(Qwen2ForCausalLM, qwen2_config(cfg), weights, dtype, device, options.attn_implementation)
    return native.native_spec(model, root, "dream", cfg.get("mask_token_id"), logit_shift=True)


FAMILY = register(Family("dream", ("dream",), load, display_name="Dream", sampler="dream"))
